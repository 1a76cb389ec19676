package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// Disk is an opened, verified image: a raw file or a qcow2 clone.
type Disk struct {
	Path   string // as named by the caller (may be a link)
	Real   string // the file behind links
	Qcow2  bool
	Layout *Layout
	r      io.ReaderAt
	f      *os.File // raw images
	q      *Qcow2
	// Ctx, when set, stops long reads (the signature) on cancellation.
	Ctx context.Context
}

// Open opens and verifies the image at path read-only.
func Open(path string) (*Disk, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if t, lerr := os.Readlink(path); lerr == nil {
				return nil, fmt.Errorf("%s: links to %s, which does not exist", path, t)
			}
			return nil, fmt.Errorf("%s: no such file", path)
		}
		return nil, err
	}
	d := &Disk{Path: path, Real: real}
	fi, err := os.Stat(real)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	}
	size := fi.Size()
	if IsQcow2(real) {
		q, err := OpenQcow2(real)
		if err != nil {
			return nil, err
		}
		d.Qcow2, d.q, d.r, size = true, q, q, q.Size
	} else {
		f, err := os.Open(real)
		if err != nil {
			return nil, err
		}
		d.f, d.r = f, f
	}
	head, err := readHead(d.r)
	if err == nil {
		d.Layout, err = ParseMBR(head, size)
	}
	if err == nil {
		// 512-byte sectors: the FAT boot sector must sit at sector Start*512
		var bs [512]byte
		if _, rerr := d.r.ReadAt(bs[:], d.Layout.Boot().Offset()); rerr != nil {
			err = layoutErr("cannot read partition 1: %v", rerr)
		} else if bs[510] != 0x55 || bs[511] != 0xaa || bs[11] != 0 || bs[12] != 2 {
			err = layoutErr("no FAT boot sector with 512-byte sectors at partition 1 (byte %d): not a 512-byte-sector image", d.Layout.Boot().Offset())
		}
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// Close releases the files.
func (d *Disk) Close() error {
	if d.q != nil {
		return d.q.Close()
	}
	if d.f != nil {
		return d.f.Close()
	}
	return nil
}

// ReaderAt is the guest view of the disk.
func (d *Disk) ReaderAt() io.ReaderAt { return d.r }

// Boot opens the FAT32 boot partition read-only.
func (d *Disk) Boot() (*FAT32, error) {
	b := d.Layout.Boot()
	fs, err := OpenFAT32(d.r, nil, b.Offset(), b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%s partition 1: %w", d.Path, err)
	}
	return fs, nil
}

// Root reads the ext4 superblock of partition 2.
func (d *Disk) Root() (Ext4, error) {
	e, err := ReadExt4(d.r, d.Layout.Root().Offset())
	if err != nil {
		return e, fmt.Errorf("%s partition 2: %w", d.Path, err)
	}
	return e, nil
}

// Signature hashes the used extent of partition 1 (see FAT32.UsedBytes),
// streamed, with SHA-256, and returns it as "sha256:HEX" with the number
// of 512-byte sectors hashed: it equals
// `dd if=IMG bs=512 skip=START count=N | sha256sum`. The free tail of the
// partition holds no file data; skipping it makes the signature of a
// RaspiOS boot partition (512 MiB, about 70 MiB in use) several times
// cheaper while every change to its files is still seen.
func (d *Disk) Signature() (string, uint64, error) {
	b := d.Layout.Boot()
	fs, err := d.Boot()
	if err != nil {
		return "", 0, err
	}
	used, err := fs.UsedBytes()
	if err != nil {
		return "", 0, fmt.Errorf("%s partition 1: %w", d.Path, err)
	}
	n := (used + SectorSize - 1) / SectorSize
	if n > int64(b.Sectors) {
		n = int64(b.Sectors)
	}
	ctx := d.Ctx
	if ctx == nil {
		ctx = context.Background()
	}
	sum, err := hashRange(ctx, d.r, b.Offset(), n*SectorSize)
	if err != nil {
		return "", 0, fmt.Errorf("%s: signature of partition 1: %w", d.Path, err)
	}
	return "sha256:" + sum, uint64(n), nil
}

// hashRange is the SHA-256 of n bytes at off, read in 1 MiB blocks by one
// goroutine while another hashes (two cores: reading and hashing overlap).
func hashRange(ctx context.Context, r io.ReaderAt, off, n int64) (string, error) {
	const bs = 1 << 20
	type blk struct {
		b   []byte
		err error
	}
	free := make(chan []byte, 4)
	for i := 0; i < 4; i++ {
		free <- make([]byte, bs)
	}
	full := make(chan blk, 4)
	done := make(chan struct{})
	defer close(done)
	go func() {
		defer close(full)
		for pos := int64(0); pos < n; {
			var b []byte
			select {
			case b = <-free:
			case <-done:
				return
			case <-ctx.Done():
				full <- blk{err: ctx.Err()}
				return
			}
			m := int64(bs)
			if n-pos < m {
				m = n - pos
			}
			k, err := r.ReadAt(b[:m], off+pos)
			if err != nil && !(errors.Is(err, io.EOF) && int64(k) == m) {
				full <- blk{err: fmt.Errorf("read at byte %d: %w", off+pos, err)}
				return
			}
			full <- blk{b: b[:m]}
			pos += m
		}
	}()
	h := sha256.New()
	for x := range full {
		if x.err != nil {
			return "", x.err
		}
		h.Write(x.b)
		free <- x.b[:cap(x.b)]
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fileID is what the cheap unchanged-check compares: a file's identity,
// size and modification time.
type fileID struct {
	Path  string
	Size  int64
	MTime int64 // ns
	Ino   uint64
	Dev   uint64
}

func statID(path string) (fileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	id := fileID{Path: path, Size: fi.Size(), MTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.Ino, id.Dev = st.Ino, uint64(st.Dev)
	}
	return id, nil
}

func (id fileID) String() string {
	return fmt.Sprintf("%s size=%d mtime=%d ino=%d dev=%d", id.Path, id.Size, id.MTime, id.Ino, id.Dev)
}

// chainIDs are the identities of every file the disk's content depends
// on: the image and, for qcow2, its backing chain.
func (d *Disk) chainIDs() ([]fileID, error) {
	var ids []fileID
	id, err := statID(d.Real)
	if err != nil {
		return nil, err
	}
	ids = append(ids, id)
	for q := d.q; q != nil && q.Backing != ""; {
		id, err := statID(q.Backing)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
		next, _ := q.backing.(*Qcow2)
		q = next
	}
	return ids, nil
}

// open opens an image for a builtin: long reads stop on Ctrl-C.
func (m *mod) open(path string) (*Disk, error) {
	d, err := Open(path)
	if d != nil {
		d.Ctx = m.d.Context()
	}
	return d, err
}
