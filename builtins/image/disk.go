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

	"pifarm/builtins/disk/ext4"
	"pifarm/builtins/disk/fat"
	"pifarm/builtins/disk/mbr"
	"pifarm/builtins/disk/qcow2"
)

// Disk is an opened, verified image: a raw file or a qcow2 clone.
type Disk struct {
	Path   string // as named by the caller (may be a link)
	Real   string // the file behind links
	Qcow2  bool
	Layout *mbr.Layout
	r      io.ReaderAt
	f      *os.File // raw images
	q      *qcow2.Image
	// Ctx, when set, stops reading the boot files on cancellation.
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
	if qcow2.Is(real) {
		q, err := qcow2.Open(real)
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
	head, err := mbr.ReadHead(d.r)
	if err == nil {
		d.Layout, err = mbr.Parse(head, size)
	}
	if err == nil {
		// 512-byte sectors: the FAT boot sector must sit at sector Start*512
		var bs [512]byte
		if _, rerr := d.r.ReadAt(bs[:], d.Layout.Boot().Offset()); rerr != nil {
			err = mbr.LayoutError("cannot read partition 1: %v", rerr)
		} else if bs[510] != 0x55 || bs[511] != 0xaa || bs[11] != 0 || bs[12] != 2 {
			err = mbr.LayoutError("no FAT boot sector with 512-byte sectors at partition 1 (byte %d): not a 512-byte-sector image", d.Layout.Boot().Offset())
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
func (d *Disk) Boot() (*fat.FS, error) {
	b := d.Layout.Boot()
	fs, err := fat.Open(d.r, nil, b.Offset(), b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%s partition 1: %w", d.Path, err)
	}
	return fs, nil
}

// Root reads the ext4 superblock of partition 2.
func (d *Disk) Root() (ext4.Superblock, error) {
	e, err := ext4.Read(d.r, d.Layout.Root().Offset())
	if err != nil {
		return e, fmt.Errorf("%s partition 2: %w", d.Path, err)
	}
	return e, nil
}

// BootSignature reads the boot files (BootFiles, in that order) from
// partition 1 and returns their signature with their sizes: the SHA-256,
// as "sha256:HEX", over "NAME\nLENGTH\n" and the content of each file.
// It covers exactly what QEMU boots from: other files in partition 1,
// the FAT's dirty flags and its FSInfo hints do not count. The files are
// streamed into the hash (no copy in memory). A boot file missing from
// partition 1 is an error naming it.
func (d *Disk) BootSignature() (string, []int64, error) {
	fs, err := d.Boot()
	if err != nil {
		return "", nil, err
	}
	h := sha256.New()
	var sizes []int64
	for _, bf := range BootFiles {
		e, err := fs.Stat(bf.Name)
		if err != nil {
			return "", nil, fmt.Errorf("%s partition 1: %w (not a RaspiOS boot partition for a Pi 3 B+?)", d.Path, err)
		}
		fmt.Fprintf(h, "%s\n%d\n", bf.Name, e.Size)
		n, err := fs.CopyFile(d.Ctx, h, bf.Name)
		if err != nil {
			return "", nil, fmt.Errorf("%s partition 1: %w", d.Path, err)
		}
		sizes = append(sizes, n)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), sizes, nil
}

// bootSum is the boot files' signature of contents already read (in
// BootFiles order): the same as Disk.BootSignature.
func bootSum(data [][]byte) string {
	h := sha256.New()
	for i, b := range data {
		fmt.Fprintf(h, "%s\n%d\n", BootFiles[i].Name, len(b))
		h.Write(b)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
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
		q = q.BackingImage()
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
