// Package chroot is the Starlark module `chroot`: a stopped instance's disk
// opened on the host, so that the guest's own programs (apt, dpkg, useradd,
// the post-install scripts of a tree) run in its root file system at host
// speed: natively when the guest has the host's architecture, else through
// the kernel's binfmt_misc handler for qemu-user (qemu-user-static), never
// through full-system emulation.
//
// chroot.open mounts partition 2 of the disk (a raw image through a loop
// device; a qcow2 clone through a FUSE export of qemu-storage-daemon, then a
// loop device), partition 1 where the guest's /etc/fstab mounts its vfat file
// system, /proc, /sys, /dev, /dev/pts and a fresh /run, the host's name
// resolution and a policy-rc.d that keeps package scripts from starting
// services. The
// returned value runs commands like an SSH connection (c.run), so provisioning
// recipes work on it unchanged; close() undoes every step in reverse order,
// and the module's end hook does so for every root a run leaves open, however
// the run ends. Every step is a command the trace prints, with the privilege
// prefix (sudo) where pifarm does not run as root.
package chroot

import (
	"fmt"
	"sync"

	"go.starlark.net/starlark"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// module holds the roots a run has open.
type module struct {
	d *trace.Door
	f *farm.Farm

	mu   sync.Mutex
	open map[*Root]bool
}

// New returns the chroot module.
func New(d *trace.Door, f *farm.Farm) *trace.Module {
	m := &module{d: d, f: f, open: map[*Root]bool{}}
	return &trace.Module{
		Name: "chroot",
		Doc: "A stopped instance's disk opened on the host, its own programs run in its root file system.\n" +
			"Natively, or through qemu-user's binfmt handler: no full-system emulation.",
		Funcs: []trace.Func{
			{Name: "open", Args: "instance, root, boot=None, boot_dir=None, grow=False", Fn: m.openFn, Doc: openDoc + "\n\n" + methods.Reference()},
		},
		End: m.end,
	}
}

const openDoc = `Open instance N's disk on the host (an action); returns a chroot value.

root and boot are partitions 2 and 1 as image.verify(N) returns them (anything with
offset and bytes). Refused while a process holds the disk open (a QEMU), while a loop
device is attached to it (image --mount-*), or while another pifarm holds the instance
lock (a start, a clone, another chroot); the lock is held until close(). A qcow2
clone is exported as a raw file by qemu-storage-daemon (FUSE), so its backing image
is only read. The files of boot are copied (mtools) into a tmpfs on the folder where
the guest's /etc/fstab mounts its vfat file system (/boot/firmware on Bookworm, /boot
before), or on boot_dir, and those that commands changed are written back at close:
no kernel vfat driver is needed. The guest gets /proc, a read-only /sys, a /dev of
its own (never the host's), a fresh /run, the host's resolver and a policy-rc.d that
keeps package scripts from starting services (apt reaches the farm's package cache
through pkgcache's proxy on the host's loopback). grow=True first grows the root
file system to the end of partition 2 (e2fsck -f, then resize2fs, offline), as
enrolment does in a running guest. A guest of another architecture needs the
kernel's binfmt_misc handler for qemu-user with the F flag (Debian:
qemu-user-static); the error names the fix.
Dry run: prints every mount, the daemon and the clean-up, changes nothing.`

func (m *module) openFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ref := farm.InstanceRef{Farm: m.f}
	var root, boot starlark.Value
	var bootDir trace.OptString
	grow := false
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "instance", &ref, "root", &root, "boot?", &boot, "boot_dir?", &bootDir, "grow?", &grow); err != nil {
		return nil, err
	}
	o := Options{BootDir: bootDir.S, Grow: grow}
	var err error
	if o.Root, err = partOf(root, "root"); err != nil {
		return nil, err
	}
	if boot != nil && boot != starlark.None {
		p, err := partOf(boot, "boot")
		if err != nil {
			return nil, err
		}
		o.Boot = &p
	}
	r, err := Open(m.d, m.f, ref.Node, o)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.open[r] = true
	m.mu.Unlock()
	return &value{r: r, m: m}, nil
}

// partOf reads offset and bytes from a partition struct.
func partOf(v starlark.Value, name string) (Part, error) {
	hv, ok := v.(starlark.HasAttrs)
	if !ok {
		return Part{}, fmt.Errorf("%s: want a partition (image.verify(N).%s), got %s", name, name, v.Type())
	}
	get := func(attr string) (int64, error) {
		x, err := hv.Attr(attr)
		if err != nil || x == nil {
			return 0, fmt.Errorf("%s: want a partition with offset and bytes (image.verify(N).%s), it has no %s", name, name, attr)
		}
		var n int64
		if err := starlark.AsInt(x, &n); err != nil {
			return 0, fmt.Errorf("%s.%s: %v", name, attr, err)
		}
		if n <= 0 {
			return 0, fmt.Errorf("%s.%s is %d, want a positive number of bytes", name, attr, n)
		}
		return n, nil
	}
	off, err := get("offset")
	if err != nil {
		return Part{}, err
	}
	size, err := get("bytes")
	if err != nil {
		return Part{}, err
	}
	return Part{Offset: off, Size: size}, nil
}

// end closes every root the run left open.
func (m *module) end() {
	m.mu.Lock()
	var rs []*Root
	for r := range m.open {
		rs = append(rs, r)
	}
	m.open = map[*Root]bool{}
	m.mu.Unlock()
	for _, r := range rs {
		if err := r.Close(); err != nil {
			m.d.Note("chroot: %v", err)
		}
	}
}

// closed forgets r (closed by the recipe).
func (m *module) closed(r *Root) {
	m.mu.Lock()
	delete(m.open, r)
	m.mu.Unlock()
}
