package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

// FS reads files of an ext2/3/4 file system in a disk image, read-only and
// without the kernel (no mount, no root): small files such as a guest's
// /etc/hostname, /etc/machine-id or public host keys, and the head of a
// program (its ELF header). It follows extents and the block maps of
// ext2/3, directories block by block (hashed ones too: their leaves are
// ordinary blocks), and symbolic links inside the file system. A file
// system a guest left unclean may hold newer content in its journal,
// which is not read.
type FS struct {
	r         io.ReaderAt
	off       int64 // byte offset of the file system in r
	bs        int64
	inodes    uint32
	ipg       uint32
	inodeSize int64
	descSize  int64
	gdt       int64 // byte offset of the group descriptors
	is64      bool
	filetype  bool // directory entries carry the file type
}

// Limits: what a damaged or hostile file system may ask for is bounded.
const (
	maxDepth     = 5        // extent tree depth (the kernel allows 5)
	maxLinks     = 40       // symbolic links followed in one lookup (as the kernel)
	maxDirBytes  = 64 << 20 // a directory larger than this is damaged
	maxFileBytes = 64 << 20 // ReadFile's limit
)

// Incompatible features this reader refuses (meta_bg moves the group
// descriptors).
const incompatMetaBG = 0x10

// Open checks the superblock of the file system at byte off of r (see
// Read) and prepares to read its files.
func Open(r io.ReaderAt, off int64) (*FS, error) {
	if _, err := Read(r, off); err != nil {
		return nil, err
	}
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, off+1024); err != nil {
		return nil, err
	}
	le16 := func(i int) int64 { return int64(binary.LittleEndian.Uint16(sb[i:])) }
	le32 := func(i int) int64 { return int64(binary.LittleEndian.Uint32(sb[i:])) }
	f := &FS{r: r, off: off, bs: 1024 << le32(sbLogBlockSize), inodes: uint32(le32(sbInodes)), ipg: uint32(le32(sbInodesPerGroup)),
		inodeSize: 128, descSize: 32}
	incompat := le32(sbFeatureIncompt)
	if incompat&incompatMetaBG != 0 {
		return nil, fmt.Errorf("ext4 at byte %d: the meta_bg feature is not supported", off)
	}
	f.filetype = incompat&0x2 != 0
	if le32(sbRevLevel) >= 1 {
		f.inodeSize = le16(0x58)
	}
	if f.inodeSize < 128 || f.inodeSize > f.bs || f.inodeSize&(f.inodeSize-1) != 0 {
		return nil, fmt.Errorf("ext4 at byte %d: inode size %d", off, f.inodeSize)
	}
	if incompat&incompat64Bit != 0 {
		f.is64 = true
		f.descSize = le16(0xfe)
		if f.descSize < 64 || f.descSize > 1024 || f.descSize&(f.descSize-1) != 0 {
			return nil, fmt.Errorf("ext4 at byte %d: group descriptor size %d", off, f.descSize)
		}
	}
	f.gdt = (le32(sbFirstDataBlock) + 1) * f.bs
	return f, nil
}

// inode is what this reader uses of an inode.
type inode struct {
	num   uint32
	mode  uint16
	size  int64
	flags uint32
	block [60]byte
}

const (
	flagExtents    = 0x80000
	flagInlineData = 0x10000000
	flagEncrypted  = 0x800
	modeType       = 0xf000
	modeDir        = 0x4000
	modeFile       = 0x8000
	modeLink       = 0xa000
	rootInode      = 2
)

// readAt reads len(b) bytes at byte off of the file system.
func (f *FS) readAt(b []byte, off int64) error {
	if off < 0 {
		return fmt.Errorf("ext4: negative offset")
	}
	if _, err := f.r.ReadAt(b, f.off+off); err != nil {
		return fmt.Errorf("ext4: read %d bytes at %d: %w", len(b), f.off+off, err)
	}
	return nil
}

// inode reads inode n.
func (f *FS) inode(n uint32) (*inode, error) {
	if n == 0 || n > f.inodes {
		return nil, fmt.Errorf("ext4: inode %d out of range (1-%d)", n, f.inodes)
	}
	g, i := int64((n-1)/f.ipg), int64((n-1)%f.ipg)
	d := make([]byte, f.descSize)
	if err := f.readAt(d, f.gdt+g*f.descSize); err != nil {
		return nil, err
	}
	table := int64(binary.LittleEndian.Uint32(d[8:]))
	if f.is64 {
		table |= int64(binary.LittleEndian.Uint32(d[0x28:])) << 32
	}
	b := make([]byte, 160)
	if err := f.readAt(b[:min(160, f.inodeSize)], table*f.bs+i*f.inodeSize); err != nil {
		return nil, err
	}
	in := &inode{num: n, mode: binary.LittleEndian.Uint16(b), flags: binary.LittleEndian.Uint32(b[0x20:])}
	in.size = int64(binary.LittleEndian.Uint32(b[4:])) | int64(binary.LittleEndian.Uint32(b[0x6c:]))<<32
	copy(in.block[:], b[0x28:0x28+60])
	if in.size < 0 {
		return nil, fmt.Errorf("ext4: inode %d: size out of range", n)
	}
	return in, nil
}

// extent maps count blocks of a file from logical block logical to
// physical block phys (0: a hole or an unwritten extent, read as zeros).
type extent struct {
	logical, count, phys int64
}

// extents lists the block runs of in covering its first n bytes.
func (f *FS) extents(in *inode, n int64) ([]extent, error) {
	if in.flags&flagInlineData != 0 {
		return nil, fmt.Errorf("ext4: inode %d keeps its data inline, which is not supported", in.num)
	}
	if in.flags&flagEncrypted != 0 {
		return nil, fmt.Errorf("ext4: inode %d is encrypted", in.num)
	}
	blocks := (n + f.bs - 1) / f.bs
	if in.flags&flagExtents != 0 {
		var out []extent
		return out, f.extentNode(in.block[:], 0, blocks, &out)
	}
	var out []extent
	ptrs := make([]int64, 15)
	for i := range ptrs {
		ptrs[i] = int64(binary.LittleEndian.Uint32(in.block[i*4:]))
	}
	logical := int64(0)
	for i := 0; i < 12 && logical < blocks; i++ {
		out = append(out, extent{logical, 1, ptrs[i]})
		logical++
	}
	for level := 1; level <= 3 && logical < blocks; level++ {
		if err := f.indirect(ptrs[11+level], level, &logical, blocks, &out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// indirect follows a block map of ext2/3: block holds the block numbers
// (level 1) or the maps (levels 2 and 3) of the next blocks of the file.
func (f *FS) indirect(block int64, level int, logical *int64, blocks int64, out *[]extent) error {
	per := f.bs / 4
	span := per
	for i := 1; i < level; i++ {
		span *= per
	}
	if block == 0 { // a hole
		n := min(span, blocks-*logical)
		*out = append(*out, extent{*logical, n, 0})
		*logical += n
		return nil
	}
	b := make([]byte, f.bs)
	if err := f.readAt(b, block*f.bs); err != nil {
		return err
	}
	for i := int64(0); i < per && *logical < blocks; i++ {
		p := int64(binary.LittleEndian.Uint32(b[i*4:]))
		if level == 1 {
			*out = append(*out, extent{*logical, 1, p})
			*logical++
			continue
		}
		if err := f.indirect(p, level-1, logical, blocks, out); err != nil {
			return err
		}
	}
	return nil
}

// extentNode reads a node of an extent tree (the root in the inode, or a
// block) and appends the extents it maps below block blocks.
func (f *FS) extentNode(node []byte, depth int, blocks int64, out *[]extent) error {
	if len(node) < 12 || binary.LittleEndian.Uint16(node) != 0xf30a {
		return errors.New("ext4: an extent tree node without its magic")
	}
	entries := int(binary.LittleEndian.Uint16(node[2:]))
	d := int(binary.LittleEndian.Uint16(node[6:]))
	if 12+entries*12 > len(node) || d > maxDepth || depth > maxDepth {
		return errors.New("ext4: a damaged extent tree node")
	}
	for i := 0; i < entries; i++ {
		e := node[12+i*12:]
		logical := int64(binary.LittleEndian.Uint32(e))
		if logical >= blocks {
			break
		}
		if d == 0 {
			n := int64(binary.LittleEndian.Uint16(e[4:]))
			phys := int64(binary.LittleEndian.Uint16(e[6:]))<<32 | int64(binary.LittleEndian.Uint32(e[8:]))
			if n > 32768 { // unwritten: reads as zeros
				n, phys = n-32768, 0
			}
			*out = append(*out, extent{logical, n, phys})
			continue
		}
		leaf := int64(binary.LittleEndian.Uint16(e[8:]))<<32 | int64(binary.LittleEndian.Uint32(e[4:]))
		b := make([]byte, f.bs)
		if err := f.readAt(b, leaf*f.bs); err != nil {
			return err
		}
		if err := f.extentNode(b, depth+1, blocks, out); err != nil {
			return err
		}
	}
	return nil
}

// data reads the first n bytes of in's content (n at most its size).
func (f *FS) data(in *inode, n int64) ([]byte, error) {
	n = min(n, in.size)
	exts, err := f.extents(in, n)
	if err != nil {
		return nil, err
	}
	out := make([]byte, n)
	for _, e := range exts {
		if e.phys == 0 {
			continue
		}
		start := e.logical * f.bs
		if start >= n {
			continue
		}
		end := min(n, (e.logical+e.count)*f.bs)
		if err := f.readAt(out[start:end], e.phys*f.bs); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// DirEntry is an entry of a directory.
type DirEntry struct {
	Name  string
	Inode uint32
}

// entries reads the entries of directory inode in.
func (f *FS) entries(in *inode) ([]DirEntry, error) {
	if in.mode&modeType != modeDir {
		return nil, fmt.Errorf("ext4: inode %d is not a directory", in.num)
	}
	if in.size > maxDirBytes {
		return nil, fmt.Errorf("ext4: directory inode %d of %d bytes: damaged", in.num, in.size)
	}
	b, err := f.data(in, in.size)
	if err != nil {
		return nil, err
	}
	var out []DirEntry
	for blk := int64(0); blk < int64(len(b)); blk += f.bs {
		end := min(blk+f.bs, int64(len(b)))
		for p := blk; p+8 <= end; {
			ino := binary.LittleEndian.Uint32(b[p:])
			rec := int64(binary.LittleEndian.Uint16(b[p+4:]))
			if rec == 0 || rec == 65535 {
				rec = 65536
			}
			nameLen := int64(b[p+6])
			if !f.filetype {
				nameLen = int64(binary.LittleEndian.Uint16(b[p+6:]))
			}
			if rec < 8 || p+rec > end || 8+nameLen > rec {
				return nil, fmt.Errorf("ext4: directory inode %d: a damaged entry at byte %d", in.num, p)
			}
			if ino != 0 && nameLen > 0 {
				out = append(out, DirEntry{Name: string(b[p+8 : p+8+nameLen]), Inode: ino})
			}
			p += rec
		}
	}
	return out, nil
}

// lookup resolves name (absolute, in the file system) to its inode,
// following symbolic links on the way, and at the end when follow is set.
// A link's target is joined to the path of the folder holding it and the
// whole path cleaned, then resolved from the root again: the guest's ".."
// never leaves its root.
func (f *FS) lookup(name string, follow bool) (*inode, error) {
	root, err := f.inode(rootInode)
	if err != nil {
		return nil, err
	}
	parts := strings.Split(strings.TrimPrefix(path.Clean("/"+name), "/"), "/")
	cur := root
	for links, i := 0, 0; i < len(parts); i++ {
		if parts[i] == "" {
			continue
		}
		ents, err := f.entries(cur)
		if err != nil {
			return nil, err
		}
		var next *inode
		for _, e := range ents {
			if e.Name == parts[i] {
				if next, err = f.inode(e.Inode); err != nil {
					return nil, err
				}
				break
			}
		}
		if next == nil {
			return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
		}
		if next.mode&modeType == modeLink && (i < len(parts)-1 || follow) {
			if links++; links > maxLinks {
				return nil, fmt.Errorf("%s: too many symbolic links", name)
			}
			target, err := f.linkTarget(next)
			if err != nil {
				return nil, err
			}
			if !strings.HasPrefix(target, "/") {
				target = "/" + strings.Join(parts[:i], "/") + "/" + target
			}
			rest := append([]string{target}, parts[i+1:]...)
			parts = strings.Split(strings.TrimPrefix(path.Clean(strings.Join(rest, "/")), "/"), "/")
			cur, i = root, -1
			continue
		}
		cur = next
	}
	return cur, nil
}

// linkTarget reads a symbolic link (kept in the inode when short).
func (f *FS) linkTarget(in *inode) (string, error) {
	if in.size < 60 && in.flags&(flagExtents|flagInlineData) == 0 {
		return string(in.block[:in.size]), nil
	}
	if in.size > 4096 {
		return "", fmt.Errorf("ext4: symbolic link inode %d of %d bytes", in.num, in.size)
	}
	b, err := f.data(in, in.size)
	return string(b), err
}

// ReadFile reads the regular file name (an absolute path in the file
// system; symbolic links followed) up to max bytes (at most 64 MiB). A
// missing file wraps fs.ErrNotExist.
func (f *FS) ReadFile(name string, max int64) ([]byte, error) {
	in, err := f.lookup(name, true)
	if err != nil {
		return nil, err
	}
	if in.mode&modeType != modeFile {
		return nil, fmt.Errorf("%s: not a regular file", name)
	}
	return f.data(in, min(max, maxFileBytes))
}

// ReadDir lists the directory name (symbolic links followed), without
// "." and "..".
func (f *FS) ReadDir(name string) ([]DirEntry, error) {
	in, err := f.lookup(name, true)
	if err != nil {
		return nil, err
	}
	ents, err := f.entries(in)
	if err != nil {
		return nil, err
	}
	out := ents[:0]
	for _, e := range ents {
		if e.Name != "." && e.Name != ".." {
			out = append(out, e)
		}
	}
	return out, nil
}

// Kind says what name is without following a last symbolic link: "file",
// "dir", "link", "other"; a missing one wraps fs.ErrNotExist.
func (f *FS) Kind(name string) (string, error) {
	in, err := f.lookup(name, false)
	if err != nil {
		return "", err
	}
	switch in.mode & modeType {
	case modeFile:
		return "file", nil
	case modeDir:
		return "dir", nil
	case modeLink:
		return "link", nil
	}
	return "other", nil
}
