// Package fat reads and writes the FAT32 boot partition of a disk image
// in place, through an io.ReaderAt and io.WriterAt over the whole image:
// files anywhere in the tree are read (whole, or streamed cluster run by
// cluster run), and new or replaced files are written into a folder as
// mkfs.vfat and mcopy would, so that fsck.vfat -n finds nothing to fix.
// It never mounts anything and needs no root.
package fat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf16"
)

// FS is a small FAT32 reader and writer over a partition of an image.
// It reads files anywhere in the tree and writes new or replaced files into
// a directory the way mkfs.vfat/mcopy would (8.3 name with case flags, or a
// long-name entry set; both FAT copies; FSInfo kept current), so that
// `fsck.vfat -n` finds nothing to fix. go-diskfs' FAT writer does not pass
// fsck, and its reader loads and compares both FATs as Go structures,
// which is slower than reading the few clusters needed.
type FS struct {
	r   io.ReaderAt
	w   io.WriterAt // nil: read-only
	off int64       // partition offset in the image
	// geometry
	bps         int64
	spc         int64
	reserved    int64
	nfats       int64
	fatSectors  int64
	rootCluster uint32
	fsInfo      int64
	dataOff     int64 // relative to the partition
	clusterSize int64
	nClusters   uint32 // clusters 2..nClusters+1 exist
	fat         []byte // the first FAT, loaded on demand
	// Now stamps written entries; nil means time.Now.
	Now func() time.Time
}

// Open reads the boot sector of the FAT32 file system at byte off of r
// (size bytes long). w may be nil for read-only use; WriteFile then fails.
func Open(r io.ReaderAt, w io.WriterAt, off, size int64) (*FS, error) {
	bs := make([]byte, 512)
	if _, err := r.ReadAt(bs, off); err != nil {
		return nil, fmt.Errorf("read FAT boot sector at byte %d: %w", off, err)
	}
	if bs[510] != 0x55 || bs[511] != 0xaa {
		return nil, fmt.Errorf("no FAT boot sector at byte %d (signature %02x %02x)", off, bs[510], bs[511])
	}
	le16 := func(i int) int64 { return int64(binary.LittleEndian.Uint16(bs[i:])) }
	le32 := func(i int) int64 { return int64(binary.LittleEndian.Uint32(bs[i:])) }
	f := &FS{r: r, w: w, off: off, bps: le16(11), spc: int64(bs[13]), reserved: le16(14), nfats: int64(bs[16])}
	if f.bps != 512 {
		return nil, fmt.Errorf("FAT boot sector at byte %d says %d bytes per sector, want 512", off, f.bps)
	}
	if f.spc == 0 || f.spc&(f.spc-1) != 0 || f.reserved == 0 || f.nfats == 0 {
		return nil, fmt.Errorf("no FAT file system at byte %d (sectors per cluster %d, reserved %d, FATs %d)", off, f.spc, f.reserved, f.nfats)
	}
	if le16(17) != 0 || le16(22) != 0 {
		return nil, fmt.Errorf("FAT12/16 file system at byte %d, want FAT32", off)
	}
	total := le16(19)
	if total == 0 {
		total = le32(32)
	}
	f.fatSectors = le32(36)
	f.rootCluster = uint32(le32(44))
	f.fsInfo = le16(48)
	f.dataOff = (f.reserved + f.nfats*f.fatSectors) * f.bps
	f.clusterSize = f.spc * f.bps
	if total*f.bps > size {
		return nil, fmt.Errorf("FAT file system at byte %d claims %d sectors, the partition holds %d", off, total, size/f.bps)
	}
	dataSectors := total - f.reserved - f.nfats*f.fatSectors
	if dataSectors <= 0 || f.fatSectors == 0 {
		return nil, fmt.Errorf("no FAT32 file system at byte %d (bad geometry)", off)
	}
	f.nClusters = uint32(dataSectors / f.spc)
	if int64(f.nClusters)+2 > f.fatSectors*f.bps/4 {
		f.nClusters = uint32(f.fatSectors*f.bps/4 - 2)
	}
	if f.rootCluster < 2 || f.rootCluster >= f.nClusters+2 {
		return nil, fmt.Errorf("FAT32 at byte %d: root cluster %d out of range", off, f.rootCluster)
	}
	return f, nil
}

func (f *FS) loadFAT() error {
	if f.fat != nil {
		return nil
	}
	n := (int64(f.nClusters) + 2) * 4
	b := make([]byte, n)
	if _, err := f.r.ReadAt(b, f.off+f.reserved*f.bps); err != nil {
		return fmt.Errorf("read FAT: %w", err)
	}
	f.fat = b
	return nil
}

func (f *FS) next(c uint32) uint32 {
	return binary.LittleEndian.Uint32(f.fat[c*4:]) & 0x0fffffff
}

func (f *FS) clusterOff(c uint32) int64 {
	return f.off + f.dataOff + int64(c-2)*f.clusterSize
}

// chain lists the clusters of a chain starting at c.
func (f *FS) chain(c uint32) ([]uint32, error) {
	if err := f.loadFAT(); err != nil {
		return nil, err
	}
	var out []uint32
	for c >= 2 && c < 0x0ffffff8 {
		if c >= f.nClusters+2 {
			return nil, fmt.Errorf("cluster %d beyond the file system (%d clusters)", c, f.nClusters)
		}
		out = append(out, c)
		if len(out) > int(f.nClusters) {
			return nil, errors.New("cluster chain loops")
		}
		c = f.next(c)
	}
	return out, nil
}

// readChain reads n bytes (all clusters when n < 0) of the chain at c,
// merging runs of consecutive clusters into one read.
func (f *FS) readChain(c uint32, n int64) ([]byte, error) {
	cl, err := f.chain(c)
	if err != nil {
		return nil, err
	}
	if n < 0 {
		n = int64(len(cl)) * f.clusterSize
	}
	if int64(len(cl))*f.clusterSize < n {
		return nil, fmt.Errorf("cluster chain holds %d bytes, want %d", int64(len(cl))*f.clusterSize, n)
	}
	buf := make([]byte, n)
	pos := int64(0)
	for i := 0; i < len(cl) && pos < n; {
		j := i + 1
		for j < len(cl) && cl[j] == cl[j-1]+1 {
			j++
		}
		run := int64(j-i) * f.clusterSize
		if pos+run > n {
			run = n - pos
		}
		if _, err := f.r.ReadAt(buf[pos:pos+run], f.clusterOff(cl[i])); err != nil {
			return nil, err
		}
		pos += run
		i = j
	}
	return buf, nil
}

// DirEntry is one file or folder in a FAT directory.
type DirEntry struct {
	Name    string // long name, or the 8.3 name with its case flags applied
	Short   string // the 8.3 name as stored, "NAME.EXT"
	Dir     bool
	Cluster uint32
	Size    int64
	// slot is the index of the short entry in its directory, first the
	// index of the first long-name entry belonging to it.
	slot, first int
}

func shortName(e []byte) string {
	base := strings.TrimRight(string(e[0:8]), " ")
	ext := strings.TrimRight(string(e[8:11]), " ")
	if base != "" && base[0] == 0x05 {
		base = "\xe5" + base[1:]
	}
	if ext == "" {
		return base
	}
	return base + "." + ext
}

func lfnChecksum(short []byte) byte {
	var s byte
	for _, c := range short[:11] {
		s = (s>>1 | s<<7) + c
	}
	return s
}

// parseDir lists the entries of a raw directory.
func parseDir(raw []byte) []DirEntry {
	var out []DirEntry
	var lfn []uint16
	lfnSum, lfnFirst, lfnNext := byte(0), -1, 0
	for i := 0; i+32 <= len(raw); i += 32 {
		e := raw[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xe5 {
			lfnFirst, lfn = -1, nil
			continue
		}
		attr := e[11]
		if attr&0x3f == 0x0f {
			seq := int(e[0] & 0x1f)
			if e[0]&0x40 != 0 {
				lfn = make([]uint16, seq*13)
				lfnSum, lfnFirst, lfnNext = e[13], i/32, seq
			}
			if lfnFirst < 0 || seq != lfnNext || seq == 0 || e[13] != lfnSum {
				lfnFirst, lfn = -1, nil
				continue
			}
			pos := (seq - 1) * 13
			for k, o := range []int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30} {
				lfn[pos+k] = binary.LittleEndian.Uint16(e[o:])
			}
			lfnNext--
			continue
		}
		if attr&0x08 != 0 { // volume label
			lfnFirst, lfn = -1, nil
			continue
		}
		d := DirEntry{Short: shortName(e), Dir: attr&0x10 != 0,
			Cluster: uint32(binary.LittleEndian.Uint16(e[20:]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:])),
			Size:    int64(binary.LittleEndian.Uint32(e[28:])), slot: i / 32, first: i / 32}
		if lfnFirst >= 0 && lfnNext == 0 && lfnSum == lfnChecksum(e) {
			end := len(lfn)
			for k, c := range lfn {
				if c == 0 || c == 0xffff {
					end = k
					break
				}
			}
			d.Name = string(utf16.Decode(lfn[:end]))
			d.first = lfnFirst
		} else {
			base := strings.TrimRight(string(e[0:8]), " ")
			ext := strings.TrimRight(string(e[8:11]), " ")
			if e[12]&0x08 != 0 {
				base = strings.ToLower(base)
			}
			if e[12]&0x10 != 0 {
				ext = strings.ToLower(ext)
			}
			d.Name = base
			if ext != "" {
				d.Name += "." + ext
			}
		}
		lfnFirst, lfn = -1, nil
		out = append(out, d)
	}
	return out
}

// ReadDir lists the directory at path ("" or "/" for the root).
func (f *FS) ReadDir(path string) ([]DirEntry, error) {
	c, err := f.dirCluster(path)
	if err != nil {
		return nil, err
	}
	raw, err := f.readChain(c, -1)
	if err != nil {
		return nil, fmt.Errorf("read directory %q: %w", path, err)
	}
	var out []DirEntry
	for _, e := range parseDir(raw) {
		if e.Name != "." && e.Name != ".." {
			out = append(out, e)
		}
	}
	return out, nil
}

func (f *FS) dirCluster(path string) (uint32, error) {
	c := f.rootCluster
	for _, part := range strings.Split(strings.Trim(path, "/"), "/") {
		if part == "" {
			continue
		}
		raw, err := f.readChain(c, -1)
		if err != nil {
			return 0, err
		}
		e, ok := lookup(parseDir(raw), part)
		if !ok || !e.Dir {
			return 0, fmt.Errorf("no folder %q in the FAT file system", path)
		}
		c = e.Cluster
		if c == 0 {
			c = f.rootCluster
		}
	}
	return c, nil
}

func lookup(es []DirEntry, name string) (DirEntry, bool) {
	for _, e := range es {
		if strings.EqualFold(e.Name, name) || strings.EqualFold(e.Short, name) {
			return e, true
		}
	}
	return DirEntry{}, false
}

// Stat finds the entry at path.
func (f *FS) Stat(path string) (DirEntry, error) {
	dir, name := splitPath(path)
	es, err := f.ReadDir(dir)
	if err != nil {
		return DirEntry{}, err
	}
	e, ok := lookup(es, name)
	if !ok {
		return DirEntry{}, fmt.Errorf("no file %q in the FAT file system", strings.TrimPrefix(path, "/"))
	}
	return e, nil
}

// ReadFile returns the content of the file at path (case-insensitive, as
// FAT names are).
func (f *FS) ReadFile(path string) ([]byte, error) {
	e, err := f.Stat(path)
	if err != nil {
		return nil, err
	}
	if e.Dir {
		return nil, fmt.Errorf("%q is a folder", path)
	}
	if e.Size == 0 {
		return []byte{}, nil
	}
	b, err := f.readChain(e.Cluster, e.Size)
	if err != nil {
		return nil, fmt.Errorf("read %q: %w", path, err)
	}
	return b, nil
}

// CopyFile writes the content of the regular file at path to w, reading
// runs of consecutive clusters in pieces of at most 1 MiB (no copy of the
// whole file in memory), and returns the file's size. ctx, when not nil,
// stops it between pieces.
func (f *FS) CopyFile(ctx context.Context, w io.Writer, path string) (int64, error) {
	e, err := f.Stat(path)
	if err != nil {
		return 0, err
	}
	if e.Dir {
		return 0, fmt.Errorf("%q is a folder", path)
	}
	if e.Size == 0 {
		return 0, nil
	}
	cl, err := f.chain(e.Cluster)
	if err != nil {
		return 0, fmt.Errorf("read %q: %w", path, err)
	}
	if int64(len(cl))*f.clusterSize < e.Size {
		return 0, fmt.Errorf("read %q: cluster chain holds %d bytes, want %d", path, int64(len(cl))*f.clusterSize, e.Size)
	}
	const piece = 1 << 20
	buf := make([]byte, min(e.Size, piece))
	pos := int64(0)
	for i := 0; i < len(cl) && pos < e.Size; {
		j := i + 1
		for j < len(cl) && cl[j] == cl[j-1]+1 {
			j++
		}
		run := min(int64(j-i)*f.clusterSize, e.Size-pos)
		for done := int64(0); done < run; {
			if ctx != nil {
				if err := ctx.Err(); err != nil {
					return pos, err
				}
			}
			n := min(run-done, int64(len(buf)))
			if _, err := f.r.ReadAt(buf[:n], f.clusterOff(cl[i])+done); err != nil {
				return pos, fmt.Errorf("read %q: %w", path, err)
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return pos, err
			}
			done += n
			pos += n
		}
		i = j
	}
	return pos, nil
}

func splitPath(p string) (dir, name string) {
	p = strings.Trim(p, "/")
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i], p[i+1:]
	}
	return "", p
}
