package card

import (
	"bytes"
	"encoding/binary"
	"strings"
)

// ProbeSize is how many bytes at a partition's start Probe needs.
const ProbeSize = 68 << 10

// Probe names the file system whose first bytes are head (ProbeSize of
// them, fewer when the partition is smaller) and its label, as far as the
// signatures tell: vfat, ext2/3/4, swap, ntfs, exfat, btrfs, xfs, LUKS,
// iso9660. Unknown content is "" (an empty partition, raw data).
func Probe(head []byte) (fstype, label string) {
	at := func(off int, sig string) bool {
		return off+len(sig) <= len(head) && string(head[off:off+len(sig)]) == sig
	}
	text := func(off, n int) string {
		if off+n > len(head) {
			return ""
		}
		b := head[off : off+n]
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		return strings.TrimSpace(strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f || r == 0xfffd {
				return -1
			}
			return r
		}, string(b)))
	}
	switch {
	case at(0, "LUKS\xba\xbe"):
		return "crypto_LUKS", ""
	case at(0, "XFSB"):
		return "xfs", text(108, 12)
	case at(3, "NTFS    "):
		return "ntfs", ""
	case at(3, "EXFAT   "):
		return "exfat", ""
	case at(1080, "\x53\xef"):
		kind := "ext2"
		if len(head) >= 1024+0x64 {
			compat := binary.LittleEndian.Uint32(head[1024+0x5c:])
			incompat := binary.LittleEndian.Uint32(head[1024+0x60:])
			switch {
			case incompat&^0x6 != 0: // beyond FILETYPE and RECOVER: extents, 64bit, flex_bg...
				kind = "ext4"
			case compat&0x4 != 0: // a journal
				kind = "ext3"
			}
		}
		return kind, text(1024+0x78, 16)
	case at(65600, "_BHRfS_M"):
		return "btrfs", text(65536+0x12b, 256)
	case at(4086, "SWAPSPACE2"), at(4086, "SWAP-SPACE"):
		return "swap", text(1024+28, 16)
	case at(32769, "CD001"):
		return "iso9660", text(32808, 32)
	case len(head) >= 512 && head[510] == 0x55 && head[511] == 0xaa:
		switch {
		case at(0x52, "FAT32   "):
			return "vfat", fatLabel(text(0x47, 11))
		case at(0x36, "FAT16   "), at(0x36, "FAT12   "), at(0x36, "FAT     "):
			return "vfat", fatLabel(text(0x2b, 11))
		}
	}
	return "", ""
}

// fatLabel drops the placeholder label of an unlabelled FAT.
func fatLabel(s string) string {
	if s == "NO NAME" {
		return ""
	}
	return s
}
