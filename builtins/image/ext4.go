package image

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Ext4 holds what status needs from an ext2/3/4 superblock.
type Ext4 struct {
	BlockSize  int64
	Blocks     int64 // file system size in blocks
	FreeBlocks int64
	Label      string
}

// Size is the file system size in bytes.
func (e Ext4) Size() int64 { return e.Blocks * e.BlockSize }

// Used is the space the file system has allocated, in bytes.
func (e Ext4) Used() int64 { return (e.Blocks - e.FreeBlocks) * e.BlockSize }

// ReadExt4 reads the superblock of the ext2/3/4 file system at byte off.
func ReadExt4(r io.ReaderAt, off int64) (Ext4, error) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, off+1024); err != nil {
		return Ext4{}, fmt.Errorf("read ext4 superblock at byte %d: %w", off+1024, err)
	}
	le32 := func(i int) int64 { return int64(binary.LittleEndian.Uint32(sb[i:])) }
	if m := binary.LittleEndian.Uint16(sb[0x38:]); m != 0xef53 {
		return Ext4{}, fmt.Errorf("no ext2/3/4 file system at byte %d (magic %#04x)", off, m)
	}
	logBS := le32(0x18)
	if logBS > 6 {
		return Ext4{}, fmt.Errorf("ext4 superblock at byte %d: block size 2^%d out of range", off, 10+logBS)
	}
	e := Ext4{BlockSize: 1024 << logBS, Blocks: le32(0x4), FreeBlocks: le32(0xc)}
	if le32(0x60)&0x80 != 0 { // 64bit feature
		e.Blocks |= le32(0x150) << 32
		e.FreeBlocks |= le32(0x158) << 32
	}
	label := sb[0x78:0x88]
	for i, c := range label {
		if c == 0 {
			label = label[:i]
			break
		}
	}
	e.Label = string(label)
	return e, nil
}
