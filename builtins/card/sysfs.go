package card

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// System is where the kernel's views are read: /sys, /proc/self/mountinfo,
// /proc/swaps and /dev. Tests point it at a fixture tree.
type System struct {
	Sys, Mountinfo, Swaps, Dev string
}

// Host is the running system's.
var Host = System{Sys: "/sys", Mountinfo: "/proc/self/mountinfo", Swaps: "/proc/swaps", Dev: "/dev"}

// Disk is a whole block device as sysfs describes it.
type Disk struct {
	// Name is the kernel's name (sdb, mmcblk0, loop3), Path its node in /dev.
	Name, Path string
	// Dev is its device number.
	Dev uint64
	// Size in bytes; LogicalBlock is the size of its sectors (512, 4096).
	Size         int64
	LogicalBlock int64
	// Removable is the kernel's flag (a card reader's medium, a USB stick);
	// an SD card in an MMC slot counts as removable too.
	Removable, ReadOnly bool
	// Model is the vendor and model (or an MMC card's name), Transport
	// the bus: usb, mmc, nvme, virtio, loop, scsi.
	Model, Transport string
	// Backing is a loop device's backing file.
	Backing string
	// ZeroOffload reports that the device zeroes ranges itself (write
	// zeroes), so zeroing costs no transfer.
	ZeroOffload bool
	Parts       []Part
	// Holders are the devices stacked on the disk or its partitions
	// (device mapper, md), transitively, by name.
	Holders []Holder
}

// Part is a partition of a disk.
type Part struct {
	Name, Path  string
	Dev         uint64
	Number      int
	Start, Size int64 // bytes
}

// Holder is a device stacked on a disk (a dm or md device).
type Holder struct {
	Name string
	Dev  uint64
}

// readAttr reads a sysfs attribute, trimmed.
func readAttr(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func attrInt(p string) int64 {
	v, _ := strconv.ParseInt(readAttr(p), 10, 64)
	return v
}

// parseDev reads "MAJ:MIN" as a device number.
func parseDev(s string) (uint64, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), ":")
	ma, err1 := strconv.ParseUint(a, 10, 32)
	mi, err2 := strconv.ParseUint(b, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("device number %q is not MAJOR:MINOR", s)
	}
	return unix.Mkdev(uint32(ma), uint32(mi)), nil
}

func devString(d uint64) string { return fmt.Sprintf("%d:%d", unix.Major(d), unix.Minor(d)) }

// ReadDisk describes the whole disk named name (sdb) from sysfs.
func (s System) ReadDisk(name string) (*Disk, error) {
	dir := filepath.Join(s.Sys, "block", name)
	dev, err := parseDev(readAttr(filepath.Join(dir, "dev")))
	if err != nil {
		return nil, fmt.Errorf("%s: no block device %s in %s: %w", name, name, filepath.Join(s.Sys, "block"), err)
	}
	d := &Disk{Name: name, Path: filepath.Join(s.Dev, name), Dev: dev,
		Size:         attrInt(filepath.Join(dir, "size")) * 512,
		LogicalBlock: attrInt(filepath.Join(dir, "queue", "logical_block_size")),
		Removable:    readAttr(filepath.Join(dir, "removable")) == "1",
		ReadOnly:     readAttr(filepath.Join(dir, "ro")) == "1",
		ZeroOffload:  attrInt(filepath.Join(dir, "queue", "write_zeroes_max_bytes")) > 0,
		Backing:      readAttr(filepath.Join(dir, "loop", "backing_file")),
	}
	if d.LogicalBlock <= 0 {
		d.LogicalBlock = 512
	}
	real, _ := filepath.EvalSymlinks(dir)
	d.Transport = transport(name, real)
	vendor := readAttr(filepath.Join(dir, "device", "vendor"))
	model := readAttr(filepath.Join(dir, "device", "model"))
	if model == "" {
		model = readAttr(filepath.Join(dir, "device", "name")) // MMC
	}
	if strings.HasPrefix(vendor, "0x") {
		vendor = "" // a bus's vendor number (virtio), not a name
	}
	d.Model = strings.Join(strings.Fields(vendor+" "+model), " ")
	if d.Transport == "mmc" && readAttr(filepath.Join(dir, "device", "type")) == "SD" {
		d.Removable = true // an SD card: the slot's kernel flag says nothing of the card
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		pdir := filepath.Join(dir, e.Name())
		if _, err := os.Stat(filepath.Join(pdir, "partition")); err != nil {
			continue
		}
		pdev, err := parseDev(readAttr(filepath.Join(pdir, "dev")))
		if err != nil {
			continue
		}
		num, _ := strconv.Atoi(readAttr(filepath.Join(pdir, "partition")))
		d.Parts = append(d.Parts, Part{Name: e.Name(), Path: filepath.Join(s.Dev, e.Name()), Dev: pdev, Number: num,
			Start: attrInt(filepath.Join(pdir, "start")) * 512, Size: attrInt(filepath.Join(pdir, "size")) * 512})
	}
	sort.Slice(d.Parts, func(i, j int) bool { return d.Parts[i].Number < d.Parts[j].Number })
	seen := map[string]bool{}
	var walk func(hdir string, depth int)
	walk = func(hdir string, depth int) {
		hs, _ := os.ReadDir(filepath.Join(hdir, "holders"))
		for _, h := range hs {
			if seen[h.Name()] || depth > 8 {
				continue
			}
			seen[h.Name()] = true
			hd := filepath.Join(s.Sys, "block", h.Name())
			if dev, err := parseDev(readAttr(filepath.Join(hd, "dev"))); err == nil {
				d.Holders = append(d.Holders, Holder{Name: h.Name(), Dev: dev})
			}
			walk(hd, depth+1)
		}
	}
	walk(dir, 0)
	for _, p := range d.Parts {
		walk(filepath.Join(dir, p.Name), 0)
	}
	return d, nil
}

// transport names the bus of a disk from its name and its device path in
// sysfs (/sys/devices/.../usb1/.../block/sdb).
func transport(name, real string) string {
	switch {
	case strings.HasPrefix(name, "loop"):
		return "loop"
	case strings.Contains(real, "/usb"):
		return "usb"
	case strings.HasPrefix(name, "mmcblk") || strings.Contains(real, "/mmc"):
		return "mmc"
	case strings.HasPrefix(name, "nvme"):
		return "nvme"
	case strings.Contains(real, "/virtio"):
		return "virtio"
	case strings.Contains(real, "/virtual/"):
		return "virtual"
	}
	return "scsi"
}

// errPartition is the refusal of a partition given as the target.
type errPartition struct{ part, disk string }

func (e *errPartition) Error() string {
	return fmt.Sprintf("%s is a partition of %s: give the whole card, /dev/%s", e.part, e.disk, e.disk)
}

// DiskOf finds the whole disk of the block device with number dev, by
// /sys/dev/block/MAJ:MIN. A partition is an *errPartition.
func (s System) DiskOf(dev uint64) (string, error) {
	link := filepath.Join(s.Sys, "dev", "block", devString(dev))
	real, err := filepath.EvalSymlinks(link)
	if err != nil {
		return "", fmt.Errorf("block device %s is not in %s: %w", devString(dev), filepath.Join(s.Sys, "dev", "block"), err)
	}
	name := filepath.Base(real)
	if _, err := os.Stat(filepath.Join(real, "partition")); err == nil {
		return "", &errPartition{part: name, disk: filepath.Base(filepath.Dir(real))}
	}
	return name, nil
}

// Disks lists the whole disks of the system, by name, without the ones
// that hold nothing (size 0: an unused loop device, an empty card reader)
// and RAM disks (zram, ram).
func (s System) Disks() ([]*Disk, error) {
	ents, err := os.ReadDir(filepath.Join(s.Sys, "block"))
	if err != nil {
		return nil, err
	}
	var out []*Disk
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "zram") || strings.HasPrefix(n, "ram") {
			continue
		}
		d, err := s.ReadDisk(n)
		if err != nil || d.Size == 0 {
			continue
		}
		out = append(out, d)
	}
	return out, nil
}

// Devices are the device numbers of the disk, its partitions and the
// devices stacked on them: what must not be in use for the disk to be
// written.
func (d *Disk) Devices() map[uint64]string {
	m := map[uint64]string{d.Dev: d.Name}
	for _, p := range d.Parts {
		m[p.Dev] = p.Name
	}
	for _, h := range d.Holders {
		m[h.Dev] = h.Name
	}
	return m
}

// Mounts returns the mounts of the disk, its partitions and the devices
// stacked on them, and the swap areas among them, read from s.
func (s System) Mounts(d *Disk) (mounts []Mount, swaps []string, err error) {
	devs := d.Devices()
	f, err := os.Open(s.Mountinfo)
	if err != nil {
		return nil, nil, err
	}
	all, err := ParseMountinfo(f)
	f.Close()
	if err != nil {
		return nil, nil, err
	}
	for _, m := range all {
		if _, ok := devs[m.Dev]; ok {
			mounts = append(mounts, m)
		}
	}
	if sf, err := os.Open(s.Swaps); err == nil {
		names, _ := ParseSwaps(sf)
		sf.Close()
		for _, n := range names {
			var st unix.Stat_t
			if unix.Stat(n, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
				if _, ok := devs[uint64(st.Rdev)]; ok {
					swaps = append(swaps, n)
				}
			}
		}
	}
	return mounts, swaps, nil
}

// isNotExist reports a missing file.
func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
