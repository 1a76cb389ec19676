package card

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"pifarm/builtins/disk/qcow2"
	"pifarm/builtins/farm"
)

// Source is a disk image to write: a raw image or a qcow2 clone (its guest
// view), with its allocation map.
type Source struct {
	Path   string
	Format string // "raw" or "qcow2"
	// Size is the guest size; Need is how much of it a card must hold:
	// the end of the last partition of its MBR or of its last data,
	// whichever is later (an image expanded with a margin fits a card a
	// little smaller than the image file).
	Size, Need int64
	// Map covers [0, Size): where each range's data is, or zeros.
	Map []qcow2.Extent
	// Data is the number of bytes of data in the map.
	Data int64
	// MBR reports that the first sector carries the boot signature 55 AA.
	MBR bool

	img   *qcow2.Image
	files map[string]*os.File
}

// OpenSource opens the image at path and reads its allocation map. A
// source another process writes (a running QEMU) is refused: a card
// written from a disk that changes under it is a torn copy.
func OpenSource(path string) (*Source, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("image %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	s := &Source{Path: path, files: map[string]*os.File{}}
	if qcow2.Is(path) {
		img, err := qcow2.Open(path)
		if err != nil {
			return nil, err
		}
		s.img, s.Format, s.Size = img, "qcow2", img.Size
		if s.Map, err = img.Map(); err != nil {
			img.Close()
			return nil, err
		}
	} else {
		s.Format, s.Size = "raw", fi.Size()
		if s.Map, err = qcow2.RawMap(path, s.Size); err != nil {
			return nil, fmt.Errorf("image %s: allocation map: %w", path, err)
		}
	}
	for _, e := range s.Map {
		if !e.Data {
			continue
		}
		s.Data += e.Length
		s.Need = max(s.Need, e.End())
		if e.Offset >= 0 && s.files[e.File] == nil {
			f, err := os.Open(e.File)
			if err != nil {
				s.Close()
				return nil, fmt.Errorf("image %s: %w", path, err)
			}
			s.files[e.File] = f
		}
	}
	for p := range s.files {
		hs, err := farm.Holders(p)
		if err != nil {
			continue
		}
		for _, h := range hs {
			if h.Write {
				s.Close()
				return nil, fmt.Errorf("image %s: %s is open for writing by %s: shut the guest down first (a card written from a disk that changes is a torn copy)", path, p, h)
			}
		}
	}
	head := make([]byte, 512)
	if _, err := s.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		s.Close()
		return nil, fmt.Errorf("image %s: read the first sector: %w", path, err)
	}
	if head[510] == 0x55 && head[511] == 0xaa {
		s.MBR = true
		s.Need = max(s.Need, mbrEnd(head))
	}
	if s.Need == 0 || s.Need > s.Size {
		s.Need = s.Size
	}
	return s, nil
}

// mbrEnd is the end in bytes of the last primary partition of an MBR
// (a protective GPT entry covers the whole disk: it says nothing of the
// space used, so it is skipped, as are empty entries).
func mbrEnd(head []byte) int64 {
	var end int64
	for i := 0; i < 4; i++ {
		e := head[446+16*i:]
		typ := e[4]
		start := int64(binary.LittleEndian.Uint32(e[8:]))
		n := int64(binary.LittleEndian.Uint32(e[12:]))
		if typ == 0 || typ == 0xee || n == 0 {
			continue
		}
		end = max(end, (start+n)*512)
	}
	return end
}

// ReadAt reads guest bytes: from the data files directly, zeros for the
// holes, inflated clusters through the qcow2 reader.
func (s *Source) ReadAt(p []byte, off int64) (int, error) {
	if s.img != nil {
		return s.img.ReadAt(p, off)
	}
	f := s.files[s.Path]
	if f == nil { // all holes
		if off >= s.Size {
			return 0, io.EOF
		}
		n := min(int64(len(p)), s.Size-off)
		clear(p[:n])
		if n < int64(len(p)) {
			return int(n), io.EOF
		}
		return len(p), nil
	}
	return f.ReadAt(p, off)
}

// readExtent reads len(p) guest bytes at off of data extent e (which holds
// them all).
func (s *Source) readExtent(e qcow2.Extent, p []byte, off int64) error {
	if e.Offset < 0 {
		_, err := s.img.ReadAt(p, off)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return err
	}
	_, err := s.files[e.File].ReadAt(p, e.Offset+(off-e.Start))
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s ends before byte %d: the image changed while it was read", e.File, e.Offset+(off-e.Start)+int64(len(p)))
	}
	return err
}

// Close closes the image's files.
func (s *Source) Close() error {
	for _, f := range s.files {
		f.Close()
	}
	if s.img != nil {
		return s.img.Close()
	}
	return nil
}
