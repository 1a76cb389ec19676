package card

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// align is the alignment of direct reads: a page, a multiple of every
// logical block size (512, 4096) and of what file systems ask.
const align = 4096

// reader reads a target back for verification past the page cache: with
// O_DIRECT into a page-aligned buffer, or, where the file system refuses
// O_DIRECT (EINVAL), through the cache after dropping the target's cached
// pages (the write descriptor's fsync came first).
type reader struct {
	f      *os.File
	direct bool
	buf    []byte // page-aligned (mmap), chunk + 2*align
}

func openReader(path string, block bool) (*reader, error) {
	buf, err := unix.Mmap(-1, 0, chunk+2*align, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("verify buffer: %w", err)
	}
	r := &reader{buf: buf}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err == nil {
		r.f, r.direct = os.NewFile(uintptr(fd), path), true
		// probe: some file systems accept the flag and refuse the read
		if _, err := unix.Pread(fd, r.buf[:align], 0); errors.Is(err, unix.EINVAL) {
			r.f.Close()
			r.f, r.direct = nil, false
		}
	}
	if r.f == nil {
		f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			unix.Munmap(buf)
			return nil, fmt.Errorf("open %s to verify it: %w", path, err)
		}
		r.f = f
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	}
	return r, nil
}

// read returns n bytes of the target at off (n at most chunk); the slice
// is valid until the next read.
func (r *reader) read(off, n int64) ([]byte, error) {
	if !r.direct {
		b := r.buf[:n]
		if _, err := r.f.ReadAt(b, off); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("the target ends before byte %d", off+n)
			}
			return nil, err
		}
		return b, nil
	}
	a := off &^ (align - 1)
	end := (off + n + align - 1) &^ (align - 1)
	b := r.buf[:end-a]
	got := 0
	for got < len(b) {
		m, err := unix.Pread(int(r.f.Fd()), b[got:], a+int64(got))
		if err != nil {
			return nil, err
		}
		got += m
		if m == 0 || m%align != 0 {
			break // the end of a file whose size is not a multiple of a page
		}
	}
	if int64(got) < off-a+n {
		return nil, fmt.Errorf("the target ends before byte %d", off+n)
	}
	return b[off-a : off-a+n], nil
}

func (r *reader) close() {
	r.f.Close()
	unix.Munmap(r.buf)
}
