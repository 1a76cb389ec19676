package qcow2

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Extent is a run of guest bytes and where they come from: the guest
// image's allocation map, what `qemu-img map --output=json` prints, read
// in process.
type Extent struct {
	// Start and Length are the guest byte range.
	Start, Length int64
	// Data reports that the range holds data; otherwise it reads as zeros
	// (never written, a zero cluster, a hole of a raw file, past the end of
	// a shorter backing file).
	Data bool
	// File is the file that holds the data, Offset where in it: the bytes
	// are File's [Offset, Offset+Length). Offset is -1 for compressed
	// clusters, which only the Image reads (inflated).
	File   string
	Offset int64
	// Depth is 0 for the image itself, 1 for its backing file, and so on.
	Depth int
}

// End is the first guest byte after the extent.
func (e Extent) End() int64 { return e.Start + e.Length }

// Map returns the allocation map of the guest view, in order, covering
// [0, Size) without gaps; adjacent extents of one kind (zeros, or data
// that continues in the same file) are merged. Unallocated clusters come
// from the backing chain: a qcow2 backing file's own map, a raw one's
// data and holes (SEEK_DATA/SEEK_HOLE).
func (q *Image) Map() ([]Extent, error) {
	return q.mapDepth(0)
}

func (q *Image) mapDepth(depth int) ([]Extent, error) {
	var own []Extent // unallocated ranges have File == "" and Offset == -2
	cs := int64(1) << q.clusterBits
	l2Bits := q.clusterBits - 3
	const unalloc = -2
	for pos := int64(0); pos < q.Size; {
		l1i := uint64(pos) >> (q.clusterBits + l2Bits)
		n := min(cs, q.Size-pos)
		var entry uint64
		if l1i < uint64(len(q.l1)) && q.l1[l1i]&qOffMask != 0 {
			t, err := q.l2Table(q.l1[l1i] & qOffMask)
			if err != nil {
				return nil, fmt.Errorf("qcow2 %s: %w", q.Path, err)
			}
			entry = t[(uint64(pos)>>q.clusterBits)&(1<<l2Bits-1)]
		} else {
			// a whole L2 range unallocated at once
			n = min(int64(1)<<(q.clusterBits+l2Bits)-pos&(int64(1)<<(q.clusterBits+l2Bits)-1), q.Size-pos)
		}
		var e Extent
		switch {
		case entry&qCompressed != 0:
			e = Extent{Data: true, File: q.Path, Offset: -1}
		case entry&1 != 0:
			e = Extent{}
		case entry&qOffMask != 0:
			e = Extent{Data: true, File: q.Path, Offset: int64(entry & qOffMask)}
		default:
			e = Extent{Offset: unalloc}
		}
		e.Start, e.Length, e.Depth = pos, n, depth
		own = appendMerged(own, e)
		pos += n
	}
	var below []Extent
	if q.backing != nil {
		var err error
		if b, ok := q.backing.(*Image); ok {
			below, err = b.mapDepth(depth + 1)
		} else {
			below, err = RawMap(q.Backing, q.backingSize)
			for i := range below {
				below[i].Depth = depth + 1
			}
		}
		if err != nil {
			return nil, err
		}
	}
	var out []Extent
	j := 0
	for _, e := range own {
		if e.Offset != unalloc {
			out = appendMerged(out, e)
			continue
		}
		// the range comes from below, or reads as zeros past its end
		for pos := e.Start; pos < e.End(); {
			for j < len(below) && below[j].End() <= pos {
				j++
			}
			if j == len(below) {
				out = appendMerged(out, Extent{Start: pos, Length: e.End() - pos, Depth: depth})
				break
			}
			b := below[j]
			if b.Start > pos { // cannot happen for a map without gaps
				return nil, fmt.Errorf("qcow2 %s: the map of its backing file has a gap at %d", q.Path, pos)
			}
			end := min(b.End(), e.End())
			piece := Extent{Start: pos, Length: end - pos, Data: b.Data, File: b.File, Offset: b.Offset, Depth: b.Depth}
			if b.Data && b.Offset >= 0 {
				piece.Offset = b.Offset + (pos - b.Start)
			}
			if !b.Data {
				piece.File, piece.Offset = "", 0
			}
			out = appendMerged(out, piece)
			pos = end
		}
	}
	return out, nil
}

// appendMerged appends e to m, merging it into the last extent when both
// read as zeros, or both are data that continues in the same file.
func appendMerged(m []Extent, e Extent) []Extent {
	if e.Length <= 0 {
		return m
	}
	if len(m) > 0 {
		l := &m[len(m)-1]
		if l.End() == e.Start && l.Data == e.Data && l.File == e.File && l.Depth == e.Depth {
			switch {
			case !e.Data && l.Offset == e.Offset:
				l.Length += e.Length
				return m
			case e.Data && e.Offset == -1 && l.Offset == -1:
				l.Length += e.Length
				return m
			case e.Data && e.Offset >= 0 && l.Offset >= 0 && l.Offset+l.Length == e.Offset:
				l.Length += e.Length
				return m
			}
		}
	}
	return append(m, e)
}

// RawMap returns the map of the first size bytes of the raw file at path:
// its data and holes as the file system reports them (SEEK_DATA and
// SEEK_HOLE; a file system without them reports all data), and zeros past
// the file's end. Data extents have File path and Offset equal to Start.
func RawMap(path string, size int64) ([]Extent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	end := min(size, fi.Size())
	fd := int(f.Fd())
	var out []Extent
	for pos := int64(0); pos < end; {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || (err == nil && data >= end) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("seek data in %s at %d: %w", path, pos, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole in %s at %d: %w", path, data, err)
		}
		hole = min(hole, end)
		out = appendMerged(out, Extent{Start: pos, Length: data - pos})
		out = appendMerged(out, Extent{Start: data, Length: hole - data, Data: true, File: path, Offset: data})
		pos = hole
	}
	last := int64(0)
	if len(out) > 0 {
		last = out[len(out)-1].End()
	}
	out = appendMerged(out, Extent{Start: last, Length: size - last})
	return out, nil
}
