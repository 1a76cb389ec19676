// Package qcow2 reads the guest view of a qcow2 disk image and its backing
// chain (raw or qcow2) in pure Go, read-only: no qemu-nbd, no root, no
// temporary copy. It also tells which guest byte ranges the file itself
// holds, which is how pifarm knows whether a linked clone's guest wrote a
// partition or reads it from its base.
package qcow2

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// magic starts every qcow2 file.
var magic = []byte{'Q', 'F', 'I', 0xfb}

// The limits QEMU sets on what a header may ask for: a larger L1 table or
// backing file name is a damaged header, not a reason to allocate it.
const (
	maxL1Bytes      = 32 << 20
	maxBackingBytes = 1023
)

// Image reads the guest view of a qcow2 image: allocated clusters from the
// file, unallocated ones from the backing file (raw or qcow2) or as zeros.
// It handles what `qemu-img create`/`convert` produce (versions 2 and 3,
// standard L2 entries, zero clusters, deflate-compressed clusters);
// encryption, zstd compression, external data files and extended L2
// entries are refused by name. A
// pure-Go reader needs no temporary copy and no root (qemu-nbd).
type Image struct {
	r           io.ReaderAt // the qcow2 file
	Path        string      // the qcow2 file's path as opened
	Size        int64       // virtual size
	Backing     string      // absolute backing file path, "" if none
	BackingFmt  string      // "raw", "qcow2" or "" (probe)
	backing     io.ReaderAt
	backingSize int64
	closers     []io.Closer
	clusterBits uint
	l1          []uint64
	mu          sync.Mutex
	l2          map[uint64][]uint64
	zEntry      uint64 // the cached compressed cluster
	zData       []byte
	header      []byte // the header as read (snapshot table, refcounts: see snapshots.go)
}

// Is reports whether the file at path starts with the qcow2 magic (a file
// that cannot be read is not a qcow2 image).
func Is(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, 4)
	_, err = io.ReadFull(f, b)
	return err == nil && bytes.Equal(b, magic)
}

// Open opens a qcow2 image and its backing chain read-only. Errors name
// the file: "qcow2 PATH: what is wrong".
func Open(path string) (*Image, error) {
	return open(path, 0)
}

func open(path string, depth int) (*Image, error) {
	if depth > 8 {
		return nil, fmt.Errorf("qcow2 %s: backing chain deeper than 8", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	q, err := parse(f, path, depth)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("qcow2 %s: %w", path, err)
	}
	q.closers = append([]io.Closer{f}, q.closers...)
	q.Path = path
	return q, nil
}

// parse reads the header of the qcow2 file r (at path, which relative
// backing file names are relative to) and opens its backing chain; depth
// is how deep in a chain r is.
func parse(r io.ReaderAt, path string, depth int) (*Image, error) {
	h := make([]byte, 112)
	n, err := r.ReadAt(h, 0)
	if n < 72 {
		return nil, fmt.Errorf("truncated header: %v", err)
	}
	be32 := func(i int) uint32 { return binary.BigEndian.Uint32(h[i:]) }
	be64 := func(i int) uint64 { return binary.BigEndian.Uint64(h[i:]) }
	if !bytes.Equal(h[:4], magic) {
		return nil, errors.New("not a qcow2 file (no QFI magic)")
	}
	version := be32(4)
	if version != 2 && version != 3 {
		return nil, fmt.Errorf("qcow2 version %d not supported", version)
	}
	q := &Image{r: r, clusterBits: uint(be32(20)), Size: int64(be64(24)), l2: map[uint64][]uint64{}, header: h[:n]}
	if q.clusterBits < 9 || q.clusterBits > 21 {
		return nil, fmt.Errorf("cluster bits %d out of range", q.clusterBits)
	}
	if be32(32) != 0 {
		return nil, errors.New("encrypted images are not supported")
	}
	hdrLen := uint32(72)
	if version == 3 {
		if n < 104 {
			return nil, errors.New("truncated v3 header")
		}
		incompat := be64(72)
		for bit, what := range map[uint64]string{1: "marked corrupt", 2: "external data file", 3: "zstd compression", 4: "extended L2 entries"} {
			if incompat&(1<<bit) != 0 {
				return nil, fmt.Errorf("%s is not supported (use qemu-img convert)", what)
			}
		}
		if incompat>>5 != 0 {
			return nil, fmt.Errorf("unknown incompatible features %#x", incompat)
		}
		hdrLen = be32(100)
	}
	l1Size, l1Off := be32(36), be64(40)
	if int64(l1Size)*8 > maxL1Bytes {
		return nil, fmt.Errorf("L1 table of %d entries, more than QEMU allows (%d bytes): a damaged header", l1Size, maxL1Bytes)
	}
	l1b := make([]byte, int(l1Size)*8)
	if _, err := r.ReadAt(l1b, int64(l1Off)); err != nil {
		return nil, fmt.Errorf("read L1 table: %w", err)
	}
	q.l1 = make([]uint64, l1Size)
	for i := range q.l1 {
		q.l1[i] = binary.BigEndian.Uint64(l1b[i*8:])
	}
	// header extensions: backing format
	ext := make([]byte, 4096)
	if m, _ := r.ReadAt(ext, int64(hdrLen)); m > 8 {
		ext = ext[:m]
		for p := 0; p+8 <= len(ext); {
			typ, ln := binary.BigEndian.Uint32(ext[p:]), int(binary.BigEndian.Uint32(ext[p+4:]))
			if typ == 0 || p+8+ln > len(ext) {
				break
			}
			if typ == 0xe2792aca {
				q.BackingFmt = string(ext[p+8 : p+8+ln])
			}
			p += 8 + (ln+7)/8*8
		}
	}
	if bo, bl := be64(8), be32(16); bo != 0 && bl != 0 {
		if bl > maxBackingBytes {
			return nil, fmt.Errorf("backing file name of %d bytes, more than QEMU allows (%d): a damaged header", bl, maxBackingBytes)
		}
		nb := make([]byte, bl)
		if _, err := r.ReadAt(nb, int64(bo)); err != nil {
			return nil, fmt.Errorf("read backing file name: %w", err)
		}
		q.Backing = string(nb)
		if !filepath.IsAbs(q.Backing) {
			q.Backing = filepath.Join(filepath.Dir(path), q.Backing)
		}
		if q.BackingFmt == "qcow2" || (q.BackingFmt == "" && Is(q.Backing)) {
			b, err := open(q.Backing, depth+1)
			if err != nil {
				return nil, err
			}
			q.backing, q.backingSize = b, b.Size
			q.closers = append(q.closers, b)
		} else {
			bf, err := os.Open(q.Backing)
			if err != nil {
				return nil, fmt.Errorf("backing file: %w", err)
			}
			fi, err := bf.Stat()
			if err != nil {
				bf.Close()
				return nil, err
			}
			q.backing, q.backingSize = bf, fi.Size()
			q.closers = append(q.closers, bf)
		}
	}
	return q, nil
}

// BackingImage is the qcow2 image the image is backed by, or nil when it
// has no backing file or a raw one (Backing names it).
func (q *Image) BackingImage() *Image {
	b, _ := q.backing.(*Image)
	return b
}

// Close closes the image and its backing chain.
func (q *Image) Close() error {
	var first error
	for _, c := range q.closers {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

const (
	qOffMask    = 0x00fffffffffffe00
	qCompressed = 1 << 62
)

func (q *Image) l2Table(off uint64) ([]uint64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if t, ok := q.l2[off]; ok {
		return t, nil
	}
	cs := 1 << q.clusterBits
	b := make([]byte, cs)
	if _, err := q.r.ReadAt(b, int64(off)); err != nil {
		return nil, fmt.Errorf("read L2 table at %d: %w", off, err)
	}
	t := make([]uint64, cs/8)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(b[i*8:])
	}
	q.l2[off] = t
	return t, nil
}

// compressed inflates a compressed cluster (raw deflate, as QEMU writes
// with `qemu-img convert -c`); the last one is cached.
func (q *Image) compressed(entry uint64) ([]byte, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.zEntry == entry && q.zData != nil {
		return q.zData, nil
	}
	cb := q.clusterBits
	x := 62 - (cb - 8)
	off := entry & (1<<x - 1)
	sectors := (entry>>x)&(1<<(cb-8)-1) + 1
	n := int64(sectors)*512 - int64(off&511)
	raw := make([]byte, n)
	m, err := q.r.ReadAt(raw, int64(off))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	out := make([]byte, 1<<cb)
	zr := flate.NewReader(bytes.NewReader(raw[:m]))
	defer zr.Close()
	if _, err := io.ReadFull(zr, out); err != nil {
		return nil, fmt.Errorf("inflate: %w", err)
	}
	q.zEntry, q.zData = entry, out
	return out, nil
}

// ReadAt reads guest bytes; io.EOF past the virtual size.
func (q *Image) ReadAt(p []byte, off int64) (int, error) {
	if off >= q.Size {
		return 0, io.EOF
	}
	want := len(p)
	if off+int64(len(p)) > q.Size {
		p = p[:q.Size-off]
	}
	cs := int64(1) << q.clusterBits
	l2Bits := q.clusterBits - 3
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		in := pos & (cs - 1)
		n := int(cs - in)
		if n > len(p)-done {
			n = len(p) - done
		}
		buf := p[done : done+n]
		l1i := uint64(pos) >> (q.clusterBits + l2Bits)
		l2i := (uint64(pos) >> q.clusterBits) & (1<<l2Bits - 1)
		var entry uint64
		if l1i < uint64(len(q.l1)) && q.l1[l1i]&qOffMask != 0 {
			t, err := q.l2Table(q.l1[l1i] & qOffMask)
			if err != nil {
				return done, err
			}
			entry = t[l2i]
		}
		switch {
		case entry&qCompressed != 0:
			c, err := q.compressed(entry)
			if err != nil {
				return done, fmt.Errorf("qcow2: compressed cluster at guest byte %d: %w", pos, err)
			}
			copy(buf, c[in:])
		case entry&1 != 0: // reads as zeros
			clear(buf)
		case entry&qOffMask != 0:
			if _, err := q.r.ReadAt(buf, int64(entry&qOffMask)+in); err != nil && !errors.Is(err, io.EOF) {
				return done, err
			}
		case q.backing != nil && pos < q.backingSize:
			m := buf
			if pos+int64(len(m)) > q.backingSize {
				m = m[:q.backingSize-pos]
				clear(buf[len(m):])
			}
			if _, err := q.backing.ReadAt(m, pos); err != nil && !errors.Is(err, io.EOF) {
				return done, err
			}
		default:
			clear(buf)
		}
		done += n
	}
	if done < want {
		return done, io.EOF
	}
	return done, nil
}

// HoldsData reports whether the qcow2 file itself (not its backing file)
// holds any cluster of the guest byte range [off, off+n): a written,
// compressed or zeroed cluster. A linked clone whose guest never wrote
// that range reads all of it from its base.
func (q *Image) HoldsData(off, n int64) (bool, error) {
	if n <= 0 || off >= q.Size {
		return false, nil
	}
	end := min(off+n, q.Size)
	l2Bits := q.clusterBits - 3
	for c := uint64(off) >> q.clusterBits; c <= uint64(end-1)>>q.clusterBits; c++ {
		l1i := c >> l2Bits
		if l1i >= uint64(len(q.l1)) {
			return false, nil
		}
		if q.l1[l1i]&qOffMask == 0 {
			c = (l1i+1)<<l2Bits - 1 // the whole L2 range is unallocated
			continue
		}
		t, err := q.l2Table(q.l1[l1i] & qOffMask)
		if err != nil {
			return false, err
		}
		if t[c&(1<<l2Bits-1)] != 0 {
			return true, nil
		}
	}
	return false, nil
}
