// Package ext4 probes the superblock of an ext2/3/4 file system in a disk
// image: its size, free space, label and whether the kernel recorded
// errors in it, after the checks the kernel makes before it mounts one
// (magic, checksum, sizes that agree with each other). It reads 1 KiB and
// writes nothing.
package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Superblock holds what pifarm's status and usability check need from an
// ext2/3/4 superblock.
type Superblock struct {
	BlockSize  int64
	Blocks     int64 // file system size in blocks
	FreeBlocks int64
	Label      string
	// Errors: the kernel found the file system damaged and recorded it in
	// the superblock's state (e2fsck -f clears it when it has repaired).
	Errors bool
}

// Size is the file system size in bytes.
func (e Superblock) Size() int64 { return e.Blocks * e.BlockSize }

// Used is the space the file system has allocated, in bytes.
func (e Superblock) Used() int64 { return (e.Blocks - e.FreeBlocks) * e.BlockSize }

// Superblock fields (offsets in the 1024-byte superblock, as in the
// kernel's struct ext4_super_block).
const (
	sbInodes         = 0x0
	sbBlocks         = 0x4
	sbFreeBlocks     = 0xc
	sbFreeInodes     = 0x10
	sbFirstDataBlock = 0x14
	sbLogBlockSize   = 0x18
	sbBlocksPerGroup = 0x20
	sbInodesPerGroup = 0x28
	sbMagic          = 0x38
	sbState          = 0x3a
	sbRevLevel       = 0x4c
	sbFeatureIncompt = 0x60
	sbFeatureROCompt = 0x64
	sbLabel          = 0x78
	sbBlocksHi       = 0x150
	sbFreeBlocksHi   = 0x158
	sbChecksumType   = 0x175
	sbChecksum       = 0x3fc

	incompat64Bit      = 0x80
	roCompatMetaCsum   = 0x400
	stateErrorsFound   = 0x2
	maxLogBlockSize    = 6 // 64 KiB blocks
	maxSupportedRevLvl = 1
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// ErrNoFileSystem marks a superblock without the ext2/3/4 magic: no such
// file system at all, rather than a damaged one.
var ErrNoFileSystem = errors.New("no ext2/3/4 file system")

// Read reads and checks the superblock of the ext2/3/4 file system at byte
// off of r. A superblock the kernel would not mount (a wrong checksum,
// sizes that contradict each other) is an error naming what is wrong;
// one without the magic wraps ErrNoFileSystem.
func Read(r io.ReaderAt, off int64) (Superblock, error) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, off+1024); err != nil {
		return Superblock{}, fmt.Errorf("read ext4 superblock at byte %d: %w", off+1024, err)
	}
	return parse(sb, off)
}

// parse checks the superblock sb of the file system at byte off.
func parse(sb []byte, off int64) (Superblock, error) {
	le32 := func(i int) int64 { return int64(binary.LittleEndian.Uint32(sb[i:])) }
	bad := func(format string, args ...any) (Superblock, error) {
		return Superblock{}, fmt.Errorf("ext4 superblock at byte %d: "+format, append([]any{off + 1024}, args...)...)
	}
	if m := binary.LittleEndian.Uint16(sb[sbMagic:]); m != 0xef53 {
		return Superblock{}, fmt.Errorf("%w at byte %d (magic %#04x)", ErrNoFileSystem, off, m)
	}
	if le32(sbFeatureROCompt)&roCompatMetaCsum != 0 {
		if t := sb[sbChecksumType]; t != 1 {
			return bad("checksum type %d, want 1 (crc32c)", t)
		}
		want := uint32(le32(sbChecksum))
		if got := ^crc32.Update(0, crc32c, sb[:sbChecksum]); got != want {
			return bad("superblock checksum %#08x does not match its content (%#08x): the superblock is damaged", want, got)
		}
	}
	if rev := le32(sbRevLevel); rev > maxSupportedRevLvl {
		return bad("revision %d, want 0 or 1", rev)
	}
	logBS := le32(sbLogBlockSize)
	if logBS > maxLogBlockSize {
		return bad("block size 2^%d out of range", 10+logBS)
	}
	e := Superblock{BlockSize: 1024 << logBS, Blocks: le32(sbBlocks), FreeBlocks: le32(sbFreeBlocks)}
	if le32(sbFeatureIncompt)&incompat64Bit != 0 {
		e.Blocks |= le32(sbBlocksHi) << 32
		e.FreeBlocks |= le32(sbFreeBlocksHi) << 32
	}
	inodes, freeInodes := le32(sbInodes), le32(sbFreeInodes)
	bpg, ipg, first := le32(sbBlocksPerGroup), le32(sbInodesPerGroup), le32(sbFirstDataBlock)
	switch {
	case e.Blocks == 0:
		return bad("0 blocks")
	case e.Blocks < 0 || e.FreeBlocks < 0:
		return bad("%d blocks, %d free: out of range", uint64(e.Blocks), uint64(e.FreeBlocks))
	case e.FreeBlocks > e.Blocks:
		return bad("%d free blocks of %d", e.FreeBlocks, e.Blocks)
	case first >= e.Blocks:
		return bad("first data block %d of %d", first, e.Blocks)
	case bpg == 0 || bpg > 8*e.BlockSize:
		return bad("%d blocks per group (block size %d)", bpg, e.BlockSize)
	case ipg == 0 || ipg > 8*e.BlockSize:
		return bad("%d inodes per group (block size %d)", ipg, e.BlockSize)
	case freeInodes > inodes:
		return bad("%d free inodes of %d", freeInodes, inodes)
	}
	if groups := (e.Blocks - first + bpg - 1) / bpg; groups*ipg != inodes {
		return bad("%d inodes, but %d groups of %d inodes", inodes, groups, ipg)
	}
	e.Errors = binary.LittleEndian.Uint16(sb[sbState:])&stateErrorsFound != 0
	label := sb[sbLabel : sbLabel+16]
	for i, c := range label {
		if c == 0 {
			label = label[:i]
			break
		}
	}
	e.Label = string(label)
	return e, nil
}
