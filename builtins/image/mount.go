package image

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"pifarm/builtins/disk/mbr"
	"pifarm/builtins/trace"
)

// MountResult says where and how a partition was mounted.
type MountResult struct {
	Target, Source, How string // How: "guestmount", "loop" or "already"
}

// Mount mounts partition 1 ("boot", read-only) or 2 ("root", read-write)
// of instance id's disk on the cache's mnt/boot or mnt/root: through
// guestmount (no root) when it is installed and allowed, else with
// `sudo mount -o loop,offset=...,sizelimit=...`. It refuses while the instance runs.
func (m *mod) Mount(part string, id int, useSudo bool) (*MountResult, error) {
	pn, ro, err := partNum(part)
	if err != nil {
		return nil, err
	}
	path, err := m.diskPath(id)
	if err != nil {
		return nil, err
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, err
	}
	d, err := m.open(real)
	if err != nil {
		return nil, err
	}
	isQ := d.Qcow2
	d.Close()
	release, err := m.lockInstances(fmt.Sprintf("mount %s of %s", part, path))
	if err != nil {
		return nil, err
	}
	defer release()
	run, err := m.running()
	if err != nil {
		return nil, err
	}
	var linked []int
	if id == 0 && !ro {
		linked, _ = m.LinkedClones(real)
	}
	for _, r := range run {
		if r.ID == id {
			return nil, fmt.Errorf("mount %s of %s: instance %d is running (pid %d); stop it first", part, path, id, r.Pid)
		}
		for _, l := range linked {
			if r.ID == l {
				return nil, fmt.Errorf("mount %s of %s read-write: instance %d runs on a linked clone of it (pid %d); stop it first", part, path, l, r.Pid)
			}
		}
	}
	mnt := m.f.MountDir(part)
	mnts, err := m.mounts()
	if err != nil {
		return nil, err
	}
	for _, x := range mnts {
		if x.Target == mnt {
			if !mountOf(x, real, pn, m.layoutPart(real, pn)) {
				return nil, fmt.Errorf("mount %s of %s: %s already holds %s (%s), not this disk's partition %d; unmount it first: pifarm run image --umount-%s", part, path, mnt, x.Source, x.FSType, pn, part)
			}
			m.d.Note("%s is already mounted on %s (%s)", x.Source, mnt, x.FSType)
			return &MountResult{Target: mnt, Source: x.Source, How: "already"}, nil
		}
	}
	if err := m.refuseOpen(fmt.Sprintf("mount %s of %s", part, path), real, ro); err != nil {
		return nil, err
	}
	if err := m.mkdir(mnt); err != nil {
		return nil, err
	}
	gm, _ := exec.LookPath("guestmount")
	if !useSudo && gm != "" && m.f.Config.Tools["guestmount"] {
		format := "raw"
		if isQ {
			format = "qcow2"
		}
		argv := []string{"guestmount", "--format=" + format, "-a", real, "-m", fmt.Sprintf("/dev/sda%d", pn)}
		if ro {
			argv = append(argv, "--ro")
		}
		argv = append(argv, mnt)
		if _, err := m.d.Exec(trace.Cmd{Argv: argv}); err != nil {
			return nil, err
		}
		return &MountResult{Target: mnt, Source: real, How: "guestmount"}, nil
	}
	if isQ {
		return nil, fmt.Errorf("mount %s of %s: a qcow2 clone needs guestmount (apt install guestmount); loop devices take raw images only", part, path)
	}
	// One loop device per partition (offset and size limit) instead of
	// losetup --partscan: partition scanning is not available on every
	// kernel (containers, micro-VMs), and mount's auto-clear detaches the
	// device again on umount.
	p := m.layoutPart(real, pn)
	opts := fmt.Sprintf("loop,offset=%d,sizelimit=%d", p.Offset(), p.Bytes())
	if ro {
		opts = "ro," + opts
	}
	c := trace.Cmd{Argv: []string{"mount", "-o", opts, real, mnt}, Sudo: true}
	if _, err := m.d.Exec(c); err != nil {
		return nil, err
	}
	dev := real
	if l := loopDevices(real); len(l) > 0 {
		dev = l[len(l)-1]
	}
	return &MountResult{Target: mnt, Source: dev, How: "loop"}, nil
}

// mountOf reports whether mount x is partition pn (p) of the image real: a
// loop device backed by real at p's offset (or real's partition device
// loopNpN), or a guestmount of real's partition pn on x's target.
func mountOf(x Mount, real string, pn int, p mbr.Part) bool {
	for _, l := range loopDevices(real) {
		if x.Source == fmt.Sprintf("%sp%d", l, pn) {
			return true
		}
		if x.Source == l {
			b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(l), "loop/offset"))
			return err == nil && strings.TrimSpace(string(b)) == strconv.FormatInt(p.Offset(), 10)
		}
	}
	if !strings.HasPrefix(x.FSType, "fuse") {
		return false
	}
	target, err := filepath.EvalSymlinks(x.Target)
	if err != nil {
		return false
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, c := range procs {
		b, err := os.ReadFile(c)
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(argv[0]) != "guestmount" {
			continue
		}
		img, dev, tgt := false, false, false
		for i, a := range argv {
			next := ""
			if i+1 < len(argv) {
				next = argv[i+1]
			}
			img = img || (a == "-a" && next == real)
			dev = dev || (a == "-m" && next == fmt.Sprintf("/dev/sda%d", pn))
			if r, err := filepath.EvalSymlinks(a); err == nil && r == target {
				tgt = true
			}
		}
		if img && dev && tgt {
			return true
		}
	}
	return false
}

// layoutPart is partition pn of an image already verified by the caller.
func (m *mod) layoutPart(path string, pn int) mbr.Part {
	d, err := m.open(path)
	if err != nil {
		return mbr.Part{}
	}
	defer d.Close()
	return d.Layout.Parts[pn-1]
}

func partNum(part string) (int, bool, error) {
	switch part {
	case "boot":
		return 1, true, nil
	case "root":
		return 2, false, nil
	}
	return 0, false, trace.Usagef("partition %q: want \"boot\" or \"root\"", part)
}

// Umount unmounts mnt/boot or mnt/root (a loop mount's device is
// detached by the kernel's auto-clear).
func (m *mod) Umount(part string) (bool, error) {
	if _, _, err := partNum(part); err != nil {
		return false, err
	}
	mnt := m.f.MountDir(part)
	mnts, err := m.mounts()
	if err != nil {
		return false, err
	}
	var cur *Mount
	for i := range mnts {
		if mnts[i].Target == mnt {
			cur = &mnts[i]
		}
	}
	if cur == nil {
		m.d.Note("nothing is mounted on %s", mnt)
		return false, nil
	}
	if strings.HasPrefix(cur.FSType, "fuse") {
		prog := "guestunmount"
		if _, err := exec.LookPath(prog); err != nil {
			prog = "fusermount"
		}
		argv := []string{prog, mnt}
		if prog == "fusermount" {
			argv = []string{prog, "-u", mnt}
		}
		if _, err := m.d.Exec(trace.Cmd{Argv: argv}); err != nil {
			return false, err
		}
		return true, nil
	}
	if _, err := m.d.Exec(trace.Cmd{Argv: []string{"umount", mnt}, Sudo: true}); err != nil {
		return false, err
	}
	return true, nil
}
