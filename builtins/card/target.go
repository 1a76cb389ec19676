package card

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// Target is where an image is written: a whole block device (an SD card in
// a reader) or an image file, as inspected before anything is written.
type Target struct {
	// Path is the target as given; Block reports a block device.
	Path  string
	Block bool
	// Disk describes a block device; nil for a file.
	Disk *Disk
	// Parts are the partitions the target holds now (a block device's, as
	// the kernel knows them), with what they hold.
	Parts []PartInfo
	// Exists reports that a file target exists; Mode is its mode.
	Exists bool
	Mode   os.FileMode
	// Capacity is what the target holds: a device's size; for a file, the
	// larger of its size and the image's (a file grows, a card does not).
	Capacity int64
	// Refusals are the reasons not to write it; Forceable ones are lifted
	// by --force naming the target.
	Refusals []Refusal
}

// Refusal is one reason not to write a target.
type Refusal struct {
	Why       string
	Forceable bool
}

// PartInfo is a partition of a target and its content.
type PartInfo struct {
	Name          string
	Size          int64
	FSType, Label string
	Mounted       string // mount point, "" when not mounted
}

// Inspect looks at the target path for writing src (never writing
// anything): what it is, and every reason not to write it.
func (s System) Inspect(path string, src *Source) (*Target, error) {
	t := &Target{Path: path}
	refuse := func(forceable bool, format string, args ...any) {
		t.Refusals = append(t.Refusals, Refusal{Why: fmt.Sprintf(format, args...), Forceable: forceable})
	}
	fi, err := os.Lstat(path)
	switch {
	case isNotExist(err):
		dir := filepath.Dir(path)
		if di, err := os.Stat(dir); err != nil || !di.IsDir() {
			return nil, fmt.Errorf("%s: its folder %s does not exist (make it, or give an existing block device such as /dev/sdb)", path, dir)
		}
		if strings.HasPrefix(filepath.Clean(path), "/dev/") {
			return nil, fmt.Errorf("%s: no such device (is the card in its reader? pifarm run flash --list shows the block devices)", path)
		}
		t.Capacity = src.Size
		return t, nil
	case err != nil:
		return nil, err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		st, err := os.Stat(path)
		if err != nil || st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
			return nil, fmt.Errorf("%s is a symbolic link: an image file is never written through a link; give the file it points to", path)
		}
		fi = st // /dev/disk/by-id/...: a link to a block device is how devices are named
	}
	switch {
	case fi.Mode().IsRegular():
		return s.inspectFile(t, fi, src, refuse)
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
	default:
		return nil, fmt.Errorf("%s is neither a block device nor an image file (%s)", path, fi.Mode().Type())
	}
	t.Block = true
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	name, err := s.DiskOf(uint64(st.Rdev))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s.inspectDisk(t, name, src)
}

// inspectDisk inspects the whole disk name for target t: sysfs, mounts,
// swaps, processes, size, removability.
func (s System) inspectDisk(t *Target, name string, src *Source) (*Target, error) {
	path := t.Path
	refuse := func(forceable bool, format string, args ...any) {
		t.Refusals = append(t.Refusals, Refusal{Why: fmt.Sprintf(format, args...), Forceable: forceable})
	}
	d, err := s.ReadDisk(name)
	if err != nil {
		return nil, err
	}
	t.Block, t.Disk, t.Capacity = true, d, d.Size
	mounts, swaps, err := s.Mounts(d)
	if err != nil {
		return nil, fmt.Errorf("%s: read the mounts: %w", path, err)
	}
	devs := d.Devices()
	for _, p := range d.Parts {
		pi := PartInfo{Name: p.Name, Size: p.Size}
		pi.FSType, pi.Label = probePart(p.Path, p.Size)
		for _, m := range mounts {
			if m.Dev == p.Dev && pi.Mounted == "" {
				pi.Mounted = m.Point
			}
		}
		t.Parts = append(t.Parts, pi)
	}
	for _, m := range mounts {
		if m.Point == "/" {
			refuse(false, "it holds the running system: / is %s (%s)", devs[m.Dev], m.Source)
		}
	}
	for _, m := range mounts {
		if m.Point != "/" {
			refuse(false, "%s is mounted on %s: unmount it first (umount %s)", devs[m.Dev], m.Point, trace.Quote(m.Point))
			break
		}
	}
	for _, sw := range swaps {
		refuse(false, "%s is a swap area in use: swapoff %s first", sw, sw)
	}
	for _, h := range d.Holders {
		if !mountedDev(mounts, h.Dev) {
			refuse(false, "%s is stacked on it (device mapper, RAID): remove %s first", h.Name, h.Name)
		}
	}
	paths := []string{d.Path}
	for _, p := range d.Parts {
		paths = append(paths, p.Path)
	}
	for _, h := range d.Holders {
		paths = append(paths, filepath.Join(s.Dev, h.Name))
	}
	for _, p := range paths {
		hs, _ := farm.Holders(p)
		for _, h := range hs {
			switch {
			case h.IsQEMU(""):
				refuse(false, "%s is in use by a QEMU, %s: stop that guest first", filepath.Base(p), h)
			case h.Write:
				refuse(false, "%s is open for writing by %s", filepath.Base(p), h)
			}
		}
	}
	if d.ReadOnly {
		refuse(false, "it is read-only (an SD card's lock switch, or a write-protected reader)")
	}
	if d.Size == 0 {
		refuse(false, "it holds no medium (size 0): is the card in the reader? (a loop device: is a file attached?)")
	} else if d.Size < src.Need {
		refuse(false, "it is too small: %s, the image needs %s (its partitions and data end at byte %d)", Bytes(d.Size), Bytes(src.Need), src.Need)
	}
	if !d.Removable {
		what := "a fixed disk"
		if d.Transport == "loop" {
			what = "a loop device"
			if d.Backing != "" {
				what += " of " + d.Backing
			}
		}
		refuse(true, "it is not removable (%s, %s): if it really is the card, --force %s", what, Bytes(d.Size), path)
	}
	for p := range src.files {
		if d.Backing != "" && sameFile(p, d.Backing) {
			refuse(false, "it is a loop device of the image itself (%s)", p)
		}
	}
	return t, nil
}

func (s System) inspectFile(t *Target, fi os.FileInfo, src *Source, refuse func(bool, string, ...any)) (*Target, error) {
	t.Exists, t.Mode = true, fi.Mode().Perm()
	t.Capacity = max(fi.Size(), src.Size)
	for p := range src.files {
		if sameFile(p, t.Path) {
			refuse(false, "it is the image itself (%s)", p)
		}
	}
	if src.img != nil && sameFile(src.Path, t.Path) {
		refuse(false, "it is the image itself")
	}
	hs, _ := farm.Holders(t.Path)
	for _, h := range hs {
		switch {
		case h.IsQEMU(""):
			refuse(false, "it is in use by a QEMU, %s (a board running from this card): stop it first", h)
		case h.Write:
			refuse(false, "it is open for writing by %s", h)
		}
	}
	if loops := farm.LoopsOf(t.Path); len(loops) > 0 {
		refuse(false, "it is attached to %s: detach it first (losetup -d %s)", strings.Join(loops, ", "), strings.Join(loops, " "))
	}
	return t, nil
}

func mountedDev(ms []Mount, dev uint64) bool {
	for _, m := range ms {
		if m.Dev == dev {
			return true
		}
	}
	return false
}

// sameFile reports whether a and b are one file (device and inode).
func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// probePart reads a partition's first bytes and names its file system
// (empty when it cannot be read: no permission).
func probePart(path string, size int64) (string, string) {
	f, err := os.Open(path)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	b := make([]byte, min(size, ProbeSize))
	n, _ := f.ReadAt(b, 0)
	return Probe(b[:n])
}

// Describe is a target in one line for the confirmation and the trace:
// "/dev/sdb: Generic STORAGE DEVICE, 31.9 GB, removable (usb); partitions:
// sdb1 vfat bootfs 256 MiB, sdb2 ext4 rootfs 3.5 GiB".
func (t *Target) Describe() string {
	if !t.Block {
		if !t.Exists {
			return fmt.Sprintf("%s: a new image file of %s", t.Path, Bytes(t.Capacity))
		}
		return fmt.Sprintf("%s: an image file of %s (the old one kept as %s~)", t.Path, Bytes(t.Capacity), filepath.Base(t.Path))
	}
	d := t.Disk
	var b strings.Builder
	b.WriteString(t.Path)
	if d.Path != t.Path {
		b.WriteString(" (" + d.Path + ")")
	}
	b.WriteString(": ")
	if d.Model != "" {
		b.WriteString(d.Model + ", ")
	}
	b.WriteString(Bytes(d.Size))
	if d.Removable {
		b.WriteString(", removable")
	} else {
		b.WriteString(", not removable")
	}
	b.WriteString(" (" + d.Transport + ")")
	if len(t.Parts) == 0 {
		b.WriteString("; no partitions")
	} else {
		b.WriteString("; partitions:")
		for i, p := range t.Parts {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(" " + p.Name)
			if p.FSType != "" {
				b.WriteString(" " + p.FSType)
			}
			if p.Label != "" {
				b.WriteString(" " + p.Label)
			}
			b.WriteString(" " + Bytes(p.Size))
			if p.Mounted != "" {
				b.WriteString(" on " + p.Mounted)
			}
		}
	}
	return b.String()
}

// Bytes renders a size for people: "3.9 GiB (4.2 GB)" style is too long
// for a line per card, so binary units with one decimal.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
