// Package mbr reads and checks the DOS partition table (MBR) of a RaspiOS
// disk image: 512-byte sectors, partition 1 the FAT32 boot partition
// (type 0x0c) from sector 8192 on, partition 2 the Linux root partition
// (type 0x83) after it. It renders a table as an sfdisk script and gives
// the table with partition 2 resized (disk identifier and boot code kept),
// which go-diskfs writes. It reads bytes only: no file is opened here and
// nothing is written.
package mbr

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	diskmbr "github.com/diskfs/go-diskfs/partition/mbr"
)

// SectorSize is the only logical sector size pifarm accepts: RaspiOS images
// and QEMU's SD card use 512-byte sectors.
const SectorSize = 512

// MinBootStart is the first sector partition 1 may start at (4 MiB, as every
// RaspiOS image has it).
const MinBootStart = 8192

// Part is one primary partition of the MBR, in sectors.
type Part struct {
	Index    int    // 1..4
	Type     byte   // MBR system id
	Bootable bool   // active flag
	Start    uint64 // first sector
	Sectors  uint64 // length in sectors
}

// End is the first sector after the partition.
func (p Part) End() uint64 { return p.Start + p.Sectors }

// Offset is the partition's first byte.
func (p Part) Offset() int64 { return int64(p.Start) * SectorSize }

// Bytes is the partition's length in bytes.
func (p Part) Bytes() int64 { return int64(p.Sectors) * SectorSize }

// Layout is a verified RaspiOS partition table: partition 1 is the FAT32
// boot partition, partition 2 the Linux root partition.
type Layout struct {
	DiskID uint32  // disk identifier at byte 440 (PARTUUID prefix)
	Parts  [4]Part // the four primary entries (Type 0 = empty)
	// FileSize is the size of the image (the virtual size for qcow2).
	FileSize int64

	table *diskmbr.Table
}

// Boot is partition 1, Root partition 2.
func (l *Layout) Boot() Part { return l.Parts[0] }

// Root is partition 2, the Linux root file system.
func (l *Layout) Root() Part { return l.Parts[1] }

// memFile lets go-diskfs read a table from a byte slice.
type memFile struct{ *bytes.Reader }

func (memFile) Close() error                 { return nil }
func (m memFile) Stat() (fs.FileInfo, error) { return memInfo(m.Size()), nil }

type memInfo int64

func (memInfo) Name() string       { return "mbr" }
func (i memInfo) Size() int64      { return int64(i) }
func (memInfo) Mode() fs.FileMode  { return 0o444 }
func (memInfo) ModTime() time.Time { return time.Time{} }
func (memInfo) IsDir() bool        { return false }
func (memInfo) Sys() any           { return nil }

// ErrLayout marks a partition table that is not a RaspiOS layout (errors.Is
// finds it in every error of Parse).
var ErrLayout = errors.New("not a RaspiOS partition layout")

// LayoutError is an error wrapping ErrLayout, for what a caller finds
// wrong with a layout past the table itself (the sector size of the boot
// partition's file system).
func LayoutError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrLayout, fmt.Sprintf(format, args...))
}

// Parse checks the first sector of an image of fileSize bytes (head holds
// at least the first 512 bytes, and the next 512 when available, to tell a
// GPT apart; ReadHead reads them) and returns its layout. The error wraps
// ErrLayout and says what was found instead.
func Parse(head []byte, fileSize int64) (*Layout, error) {
	if fileSize < SectorSize || len(head) < SectorSize {
		return nil, LayoutError("truncated: %d bytes, too short for a partition table", fileSize)
	}
	sec := head[:SectorSize]
	if len(head) >= 2*SectorSize && string(head[SectorSize:SectorSize+8]) == "EFI PART" {
		return nil, LayoutError("GPT partition table (found \"EFI PART\" in sector 1); RaspiOS images use an MBR (DOS) table")
	}
	if sec[510] != 0x55 || sec[511] != 0xaa {
		if allZero(sec) {
			return nil, LayoutError("no partition table (sector 0 is all zeros)")
		}
		return nil, LayoutError("no partition table (no MBR signature 55 aa at byte 510, found %02x %02x)", sec[510], sec[511])
	}
	for i := 0; i < 4; i++ {
		if sec[446+16*i+4] == 0xee {
			return nil, LayoutError("GPT partition table (protective MBR entry %d of type 0xee); RaspiOS images use an MBR (DOS) table", i+1)
		}
	}
	t, err := diskmbr.Read(memFile{bytes.NewReader(sec)}, SectorSize, SectorSize)
	if err != nil {
		return nil, LayoutError("unreadable MBR: %v", err)
	}
	for _, p := range t.Partitions {
		if p.Index == 0 {
			return nil, LayoutError("unreadable MBR: partition without index")
		}
	}
	l := &Layout{DiskID: binary.LittleEndian.Uint32(sec[440:444]), FileSize: fileSize, table: t}
	for i, p := range t.Partitions {
		if i >= 4 {
			break
		}
		l.Parts[i] = Part{Index: p.Index, Type: byte(p.Type), Bootable: p.Bootable, Start: uint64(p.Start), Sectors: uint64(p.Size)}
	}
	b, r := l.Parts[0], l.Parts[1]
	switch {
	case b.Type == 0 && r.Type == 0:
		return nil, LayoutError("empty partition table (partitions 1 and 2 are unused)")
	case b.Type == 0:
		return nil, LayoutError("partition 1 is unused, want the FAT32 boot partition (type 0x0c)")
	case b.Type != 0x0c:
		return nil, LayoutError("partition 1 has type 0x%02x (%s), want 0x0c (FAT32 LBA)", b.Type, typeName(b.Type))
	case b.Start < MinBootStart:
		return nil, LayoutError("partition 1 starts at sector %d, want %d or later", b.Start, MinBootStart)
	case b.Sectors == 0:
		return nil, LayoutError("partition 1 is empty (0 sectors)")
	case r.Type == 0:
		return nil, LayoutError("partition 2 is unused, want the Linux root partition (type 0x83)")
	case r.Type != 0x83:
		return nil, LayoutError("partition 2 has type 0x%02x (%s), want 0x83 (Linux)", r.Type, typeName(r.Type))
	case r.Sectors == 0:
		return nil, LayoutError("partition 2 is empty (0 sectors)")
	case r.Start < b.End():
		return nil, LayoutError("partition 2 (sectors %d..%d) overlaps partition 1 (sectors %d..%d)", r.Start, r.End()-1, b.Start, b.End()-1)
	}
	for i := 2; i < 4; i++ {
		p := l.Parts[i]
		if p.Type == 0 {
			continue
		}
		for j := 0; j < i; j++ {
			q := l.Parts[j]
			if p.Start < q.End() && q.Start < p.End() {
				return nil, LayoutError("partition %d (sectors %d..%d) overlaps partition %d (sectors %d..%d)", i+1, p.Start, p.End()-1, j+1, q.Start, q.End()-1)
			}
		}
	}
	for _, p := range l.Parts {
		if p.Type != 0 && int64(p.End())*SectorSize > fileSize {
			return nil, LayoutError("truncated file: partition %d ends at byte %d but the image holds only %d bytes", p.Index, int64(p.End())*SectorSize, fileSize)
		}
	}
	return l, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func typeName(t byte) string {
	switch t {
	case 0x01:
		return "FAT12"
	case 0x04, 0x06, 0x0e:
		return "FAT16"
	case 0x05, 0x0f, 0x85:
		return "extended"
	case 0x07:
		return "NTFS/exFAT"
	case 0x0b:
		return "FAT32 CHS"
	case 0x0c:
		return "FAT32 LBA"
	case 0x82:
		return "Linux swap"
	case 0x83:
		return "Linux"
	case 0x8e:
		return "Linux LVM"
	case 0xee:
		return "GPT protective"
	case 0xef:
		return "EFI system"
	}
	return "unknown"
}

// chs is the CHS address of lba with the 255-head, 63-sector geometry fdisk
// and sfdisk use for images, saturated at cylinder 1023.
func chs(lba uint64) (head, sector, cyl byte) {
	const heads, spt = 255, 63
	c := lba / (heads * spt)
	if c > 1023 {
		return 254, 63 | 0xc0, 0xff
	}
	h := (lba / spt) % heads
	s := lba%spt + 1
	return byte(h), byte(s) | byte((c>>8)&3)<<6, byte(c)
}

// WithRoot returns the go-diskfs table with partition 2 resized to sectors
// (start unchanged, CHS recomputed); the disk id and boot code are not part
// of what its Write writes, so they stay.
func (l *Layout) WithRoot(sectors uint64) (*diskmbr.Table, error) {
	if l.table == nil {
		return nil, errors.New("no partition table read")
	}
	t := *l.table
	t.Partitions = nil
	for _, p := range l.table.Partitions {
		q := *p
		if q.Index == 2 {
			if sectors > 0xffffffff {
				return nil, fmt.Errorf("partition 2 of %d sectors does not fit an MBR", sectors)
			}
			q.Size = uint32(sectors)
			q.EndHead, q.EndSector, q.EndCylinder = chs(uint64(q.Start) + sectors - 1)
		}
		t.Partitions = append(t.Partitions, &q)
	}
	return &t, nil
}

// SfdiskScript renders a layout as an sfdisk script (the part of `sfdisk -d`
// that describes the table), with partition 2 sized rootSectors when that
// is not zero.
func (l *Layout) SfdiskScript(rootSectors uint64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "label: dos\nlabel-id: 0x%08x\nunit: sectors\nsector-size: 512\n\n", l.DiskID)
	for _, p := range l.Parts {
		if p.Type == 0 {
			continue
		}
		n := p.Sectors
		if p.Index == 2 && rootSectors != 0 {
			n = rootSectors
		}
		fmt.Fprintf(&b, "start=%d, size=%d, type=%x", p.Start, n, p.Type)
		if p.Bootable {
			b.WriteString(", bootable")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// ReadHead reads the first two sectors (or what there is of them): the
// head Parse wants.
func ReadHead(r io.ReaderAt) ([]byte, error) {
	head := make([]byte, 2*SectorSize)
	n, err := r.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return head[:n], nil
}
