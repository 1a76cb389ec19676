package chroot

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
	"pifarm/builtins/virt"
)

// Part is a partition of a disk image: its byte offset and length.
type Part struct {
	Offset, Size int64
}

// Options says what Open mounts.
type Options struct {
	// Root is partition 2 (ext4), Boot partition 1 (vfat; nil: not mounted).
	Root Part
	Boot *Part
	// BootDir is where Boot goes inside the root ("" = where the guest's
	// /etc/fstab mounts its vfat file system).
	BootDir string
	// Grow grows the root file system to the end of its partition first.
	Grow bool
}

// Root is an instance's disk opened on the host.
type Root struct {
	d *trace.Door
	f *farm.Farm

	// ID is the instance; Disk the file QEMU boots (a raw image or a qcow2
	// clone), Format "raw" or "qcow2".
	ID           int
	Disk, Format string
	// Dir is the instance's chroot folder; Path the guest's / in it.
	Dir, Path string
	// BootDir is where partition 1 is mounted inside the guest ("" when not).
	BootDir string
	// Arch is the guest's architecture as uname -m names it (aarch64).
	Arch string

	lock    *os.File
	source  string   // what the loop devices read: Disk, or the FUSE export
	loops   []string // loop devices attached, detached at close
	mounted []string // targets, in mount order
	made    []string // files made inside the guest, removed at close
	qsdPid  string   // qemu-storage-daemon's pidfile, when running
	boot    *bootCopy
	closed  bool
}

// lockWait is how long Open waits for the instance's lock, which a start,
// a clone (of any instance: it takes every instance lock) or another open
// holds: a clone takes seconds, a start less; another open of the disk
// holds it for its whole provisioning, and that wait ends in an error.
var lockWait = 2 * time.Minute

// closeTimeout bounds each clean-up command (an unmount, the daemon's stop).
const closeTimeout = 30 * time.Second

// Open mounts instance n's disk for commands in its root file system. On an
// error, whatever was done is undone.
func Open(d *trace.Door, f *farm.Farm, n *farm.Node, o Options) (*Root, error) {
	op := fmt.Sprintf("chroot.open %d", n.ID)
	if err := virt.RefuseOnHost(f, n, "opening the root file system"); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	disk := f.Disk(n.ID)
	real, err := filepath.EvalSymlinks(disk)
	if err != nil {
		if os.IsNotExist(err) {
			if n.ID == 0 {
				return nil, fmt.Errorf("%s: instance 0 has no registered image (register one with: pifarm run image --disk-image=FILE)", op)
			}
			return nil, fmt.Errorf("%s: instance %d has no clone yet (make it with: pifarm run box --force-clone %d)", op, n.ID, n.ID)
		}
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	format, err := formatOf(real)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	r := &Root{d: d, f: f, ID: n.ID, Disk: real, Format: format,
		Dir: filepath.Join(f.InstanceDir(n.ID), "chroot")}
	r.Path = filepath.Join(r.Dir, "root")
	if !d.DryRun {
		l, err := farm.WaitLock(d.Context(), f.Lock(n.ID), lockWait, func() {
			d.Note("%s: waiting for %s, held by another pifarm or another node's run (at most %s)", op, f.Lock(n.ID), lockWait)
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		if l == nil {
			return nil, fmt.Errorf("%s: instance %d is being started, changed or opened by another pifarm (%s is still locked after %s); try again when it is done", op, n.ID, f.Lock(n.ID), lockWait)
		}
		r.lock = l
	}
	if err := r.leftovers(); err != nil {
		r.release()
		return nil, fmt.Errorf("%s: what an earlier pifarm left open: %w", op, err)
	}
	if err := r.refuseBusy(op); err != nil {
		r.release()
		return nil, err
	}
	if err := r.open(o); err != nil {
		if cerr := r.Close(); cerr != nil {
			err = fmt.Errorf("%w (and undoing it: %v)", err, cerr)
		}
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return r, nil
}

// formatOf tells a qcow2 file by its magic; anything else is raw.
func formatOf(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil {
		return "", fmt.Errorf("%s: %v (not a disk image?)", path, err)
	}
	if bytes.Equal(magic, []byte("QFI\xfb")) {
		return "qcow2", nil
	}
	return "raw", nil
}

// refuseBusy refuses a disk a process holds open (a running QEMU) or a loop
// device reads (a mount).
func (r *Root) refuseBusy(op string) error {
	hs, err := farm.Holders(r.Disk)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if len(hs) > 0 {
		return fmt.Errorf("%s: %s is open in %s; stop it first (pifarm run shutdown %d)", op, r.Disk, hs[0], r.ID)
	}
	if loops := farm.LoopsOf(r.Disk); len(loops) > 0 {
		return fmt.Errorf("%s: %s is attached to %s (mounted?); unmount it first (pifarm run image --umount-root, --umount-boot, or umount and losetup -d)", op, r.Disk, strings.Join(loops, ", "))
	}
	return nil
}

func (r *Root) open(o Options) error {
	d := r.d
	if err := d.MkdirAll(r.Path, 0o700); err != nil {
		return err
	}
	r.source = r.Disk
	if r.Format == "qcow2" {
		if err := r.export(); err != nil {
			return err
		}
	}
	dev, err := r.attach(o.Root)
	if err != nil {
		return err
	}
	if o.Grow {
		if err := r.grow(dev, o.Root); err != nil {
			return err
		}
	}
	if err := r.mount([]string{"mount", dev, r.Path}); err != nil {
		return err
	}
	if err := r.checkArch(); err != nil {
		return err
	}
	if o.Boot != nil {
		dir := o.BootDir
		if dir == "" {
			dir = r.vfatDir()
		}
		if !strings.HasPrefix(dir, "/") || strings.Contains("/"+dir+"/", "/../") {
			return fmt.Errorf("boot_dir %q: want an absolute path inside the guest", dir)
		}
		target := filepath.Join(r.Path, dir)
		if err := r.inside(target); err != nil {
			return err
		}
		r.BootDir = dir
		if err := r.copyInBoot(*o.Boot, target); err != nil {
			return err
		}
	}
	// Nothing of the host's /dev is bound into the guest: its /dev is a
	// tmpfs of its own with the few nodes programs need and a new devpts
	// instance, so that removing the instance folder while it is open (rm
	// -rf of the cache) cannot reach the host's device nodes.
	fss := [][]string{
		{"mount", "-t", "proc", "proc", filepath.Join(r.Path, "proc")},
		{"mount", "-t", "sysfs", "-o", "ro", "sysfs", filepath.Join(r.Path, "sys")},
		{"mount", "-t", "tmpfs", "-o", "mode=755,size=1m", "tmpfs", filepath.Join(r.Path, "dev")},
	}
	for _, m := range fss {
		if err := r.inside(m[len(m)-1]); err != nil {
			return err
		}
		if err := r.mount(m); err != nil {
			return err
		}
	}
	if err := r.devNodes(); err != nil {
		return err
	}
	for _, m := range [][]string{
		{"mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=620", "devpts", filepath.Join(r.Path, "dev/pts")},
		{"mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", filepath.Join(r.Path, "dev/shm")},
		{"mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", filepath.Join(r.Path, "run")},
	} {
		if err := r.inside(m[len(m)-1]); err != nil {
			return err
		}
		if err := r.mount(m); err != nil {
			return err
		}
	}
	if err := r.resolver(); err != nil {
		return err
	}
	if err := r.policy(); err != nil {
		return err
	}
	return nil
}

// attach gives partition p of the source its loop device (losetup, ending
// where the partition ends, so the file system can neither be read nor
// grown past it) and returns the device. Dry, it is "$dev".
func (r *Root) attach(p Part) (string, error) {
	c := trace.Cmd{Argv: []string{"losetup", "--find", "--show", "--offset", strconv.FormatInt(p.Offset, 10),
		"--sizelimit", strconv.FormatInt(p.Size, 10), r.source}, Sudo: true}
	if r.d.DryRun {
		r.d.Print("dev=$(" + r.d.Line(c) + ")")
		r.loops = append(r.loops, "$dev")
		return "$dev", nil
	}
	res, err := r.d.Exec(c)
	if err != nil {
		return "", fmt.Errorf("attach partition 2 of %s to a loop device: %w", r.source, err)
	}
	dev := strings.TrimSpace(string(res.Stdout))
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", fmt.Errorf("losetup --show printed %q, not a loop device", dev)
	}
	r.loops = append(r.loops, dev)
	// for the next open, should this pifarm be killed before it closes
	if err := os.WriteFile(r.loopsFile(), []byte(strings.Join(r.loops, "\n")+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("record the loop device: %w", err)
	}
	return dev, nil
}

// loopsFile records the loop devices an open root attached.
func (r *Root) loopsFile() string { return filepath.Join(r.Dir, "loops") }

// run runs an action whose argv may name the dry run's "$dev": dry, such a
// line is printed with the variable left for the shell to expand.
func (r *Root) exec(argv []string) (trace.Result, error) {
	c := trace.Cmd{Argv: argv, Sudo: true}
	if r.d.DryRun {
		r.d.Print(strings.ReplaceAll(r.d.Line(c), "'$dev'", `"$dev"`))
		return trace.Result{}, nil
	}
	return r.d.Exec(c)
}

// mount runs a mount command whose last word is its target and records the
// target for Close.
func (r *Root) mount(argv []string) error {
	if _, err := r.exec(argv); err != nil {
		return err
	}
	r.mounted = append(r.mounted, argv[len(argv)-1])
	return nil
}

// inside refuses a target that leaves the guest's root through a symbolic
// link of the guest (a mount there would cover a host folder) or does not
// exist. Dry runs, with nothing mounted, check nothing.
func (r *Root) inside(target string) error {
	if r.d.DryRun {
		return nil
	}
	rel, err := filepath.Rel(r.Path, target)
	if err != nil {
		return err
	}
	p := r.Path
	for _, part := range strings.Split(rel, "/") {
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("the guest has no /%s to mount on (%v)", rel, err)
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("/%s in the guest is a symbolic link; pifarm mounts nothing through a link of the guest", rel)
		}
	}
	return nil
}

// export makes a qcow2 disk readable as a raw file: qemu-storage-daemon
// exports it over FUSE on Dir/disk.raw (writes go to the qcow2; a backing
// image is only read).
func (r *Root) export() error {
	raw := r.exportFile()
	pid := filepath.Join(r.Dir, "qsd.pid")
	if err := r.d.WriteFile(raw, nil, 0o600, false); err != nil {
		return err
	}
	blockdev := fmt.Sprintf(`{"driver":"qcow2","node-name":"disk","file":{"driver":"file","filename":%q}}`, r.Disk)
	argv := []string{"qemu-storage-daemon", "--daemonize", "--pidfile", pid,
		"--blockdev", blockdev,
		"--export", "type=fuse,id=disk,node-name=disk,mountpoint=" + raw + ",writable=on"}
	if _, err := r.d.Exec(trace.Cmd{Argv: argv, Sudo: true}); err != nil {
		return fmt.Errorf("%w (qemu-storage-daemon with FUSE exports: apt install qemu-system-common fuse3)", err)
	}
	r.qsdPid = pid
	r.source = raw
	return nil
}

// Close undoes Open in reverse order: the files made inside, every mount
// (a process the run left inside the guest is ended first), the export;
// then it lets the instance lock go. It goes on after a failed step and
// reports the first.
func (r *Root) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	if r.boot != nil {
		keep(r.copyOutBoot())
	}
	for i := len(r.made) - 1; i >= 0; i-- {
		_, err := r.d.ExecFinally(trace.Cmd{Argv: []string{"rm", "-f", r.made[i]}, Sudo: true}, closeTimeout)
		keep(err)
	}
	for i := len(r.mounted) - 1; i >= 0; i-- {
		keep(r.umount(r.mounted[i]))
	}
	for i := len(r.loops) - 1; i >= 0; i-- {
		keep(r.detach(r.loops[i]))
	}
	if !r.d.DryRun && len(r.loops) > 0 && first == nil {
		os.Remove(r.loopsFile())
	}
	if r.qsdPid != "" {
		keep(r.stopExport())
	}
	if !r.d.DryRun && len(r.mounted) > 0 {
		syscall.Sync()
	}
	r.release()
	return first
}

func (r *Root) release() {
	if r.lock != nil {
		r.lock.Close()
		r.lock = nil
	}
}

// umount unmounts target; when processes started in the guest still use
// it, they are ended (SIGTERM, then SIGKILL) and the unmount tried again.
func (r *Root) umount(target string) error {
	c := trace.Cmd{Argv: []string{"umount", target}, Sudo: true}
	_, err := r.d.ExecFinally(c, closeTimeout)
	if err == nil || r.d.DryRun {
		return err
	}
	pids := r.processesInside()
	if len(pids) == 0 {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	r.d.Note("chroot: ending processes left in the guest's root: %s", strings.Join(pids, " "))
	for _, sig := range []string{"-TERM", "-KILL"} {
		r.d.ExecFinally(trace.Cmd{Argv: append([]string{"kill", sig}, pids...), Sudo: true}, closeTimeout)
		time.Sleep(500 * time.Millisecond)
		if _, err = r.d.ExecFinally(c, closeTimeout); err == nil {
			return nil
		}
	}
	return fmt.Errorf("unmount %s: %w", target, err)
}

// processesInside lists the processes whose root is the guest's.
func (r *Root) processesInside() []string {
	ents, _ := os.ReadDir("/proc")
	var pids []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if root, err := os.Readlink(filepath.Join("/proc", e.Name(), "root")); err == nil && root == r.Path {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// stopExport ends qemu-storage-daemon and waits until its FUSE export is
// gone (every write is then in the qcow2).
func (r *Root) stopExport() error {
	if r.d.DryRun {
		r.d.Print("kill $(cat " + trace.Quote(r.qsdPid) + ")")
		return nil
	}
	b, err := os.ReadFile(r.qsdPid)
	if err != nil {
		return fmt.Errorf("stop qemu-storage-daemon: %w", err)
	}
	pid := strings.TrimSpace(string(b))
	if _, err := strconv.Atoi(pid); err != nil {
		return fmt.Errorf("stop qemu-storage-daemon: pidfile %s holds %q", r.qsdPid, pid)
	}
	// a loop device let go by umount is detached by the kernel a moment
	// later: the export must outlive it, or its last writes are lost
	for wait := time.Now().Add(closeTimeout); len(farm.LoopsOf(r.exportFile())) > 0 && time.Now().Before(wait); {
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := r.d.ExecFinally(trace.Cmd{Argv: []string{"kill", pid}, Sudo: true}, closeTimeout); err != nil {
		return fmt.Errorf("stop qemu-storage-daemon: %w", err)
	}
	deadline := time.Now().Add(closeTimeout)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join("/proc", pid)); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("stop qemu-storage-daemon: pid %s still runs after %s", pid, closeTimeout)
}

// leftovers undoes what a pifarm killed while the root was open left
// behind (it held the instance lock, which is now this run's): the mounts
// under Dir, deepest first, and the qemu-storage-daemon of its export.
func (r *Root) leftovers() error {
	if r.d.DryRun {
		return nil
	}
	var targets []string
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		// the export's own FUSE mount goes with its daemon, below
		if t := unescape(f[4]); strings.HasPrefix(t, r.Dir+"/") && t != r.exportFile() {
			targets = append(targets, t)
		}
	}
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	for _, t := range targets {
		r.d.Note("chroot: %s is still mounted by a pifarm that ended without closing it", t)
		if err := r.umount(t); err != nil {
			return err
		}
	}
	// the loop devices it attached (recorded in Dir/loops), when they
	// still read this disk and nothing is mounted from them any more
	ours := farm.LoopsOf(r.Disk, r.exportFile())
	rec, _ := os.ReadFile(r.loopsFile())
	for _, dev := range strings.Fields(string(rec)) {
		if slices.Contains(ours, dev) && !mountedFrom(dev) {
			r.d.Note("chroot: %s is still attached by a pifarm that ended without closing it", dev)
			if err := r.detach(dev); err != nil {
				return err
			}
		}
	}
	os.Remove(r.loopsFile())
	defer func() {
		if mountedAt(r.exportFile()) {
			r.umount(r.exportFile())
		}
	}()
	pidfile := filepath.Join(r.Dir, "qsd.pid")
	pb, err := os.ReadFile(pidfile)
	if err != nil {
		return nil
	}
	pid := strings.TrimSpace(string(pb))
	cmdline, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
	if _, aerr := strconv.Atoi(pid); aerr != nil || err != nil ||
		!bytes.Contains(cmdline, []byte("qemu-storage-daemon")) || !bytes.Contains(cmdline, []byte(pidfile)) {
		return nil
	}
	r.qsdPid = pidfile
	err = r.stopExport()
	r.qsdPid = ""
	return err
}

// devNodes are the device nodes of the guest's /dev while it is open.
var devNodes = []struct {
	name         string
	major, minor int
}{
	{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
}

// devLinks are the symbolic links of the guest's /dev.
var devLinks = [][2]string{
	{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
	{"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
}

// devNodes fills the guest's fresh /dev (a tmpfs) with the character
// devices and links programs expect, and the folders devpts and shm are
// mounted on.
func (r *Root) devNodes() error {
	dev := filepath.Join(r.Path, "dev")
	for _, n := range devNodes {
		argv := []string{"mknod", "-m", "666", filepath.Join(dev, n.name), "c", strconv.Itoa(n.major), strconv.Itoa(n.minor)}
		if _, err := r.d.Exec(trace.Cmd{Argv: argv, Sudo: true}); err != nil {
			return err
		}
	}
	argv := []string{"mkdir", "-m", "755", filepath.Join(dev, "pts"), filepath.Join(dev, "shm")}
	if _, err := r.d.Exec(trace.Cmd{Argv: argv, Sudo: true}); err != nil {
		return err
	}
	for _, l := range devLinks {
		if _, err := r.d.Exec(trace.Cmd{Argv: []string{"ln", "-s", l[0], filepath.Join(dev, l[1])}, Sudo: true}); err != nil {
			return err
		}
	}
	return nil
}

// exportFile is where qemu-storage-daemon exports a qcow2 disk as raw.
func (r *Root) exportFile() string { return filepath.Join(r.Dir, "disk.raw") }

// mountedAt reports whether something is mounted on path.
func mountedAt(path string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && unescape(f[4]) == path {
			return true
		}
	}
	return false
}

// grow grows the root file system on dev to the end of its loop device
// (the partition) before it is mounted: resize2fs offline, since growing a
// mounted ext4 needs CAP_SYS_RESOURCE, which containers often lack; first
// the forced check resize2fs demands. A file system that fills the
// partition already is left alone.
func (r *Root) grow(dev string, p Part) error {
	if !r.d.DryRun {
		res, err := r.d.Query(trace.Cmd{Argv: []string{"dumpe2fs", "-h", dev}, Sudo: true})
		if err != nil {
			return fmt.Errorf("read the root file system's size: %w", err)
		}
		blocks, size := superField(string(res.Stdout), "Block count:"), superField(string(res.Stdout), "Block size:")
		if blocks <= 0 || size <= 0 {
			return fmt.Errorf("read the root file system's size: dumpe2fs -h %s shows no block count or size", dev)
		}
		if (blocks+1)*size > p.Size {
			return nil // it fills partition 2 (to the last block)
		}
	}
	// e2fsck -p exits 1 when it fixed something: that is fine to go on
	if res, err := r.exec([]string{"e2fsck", "-f", "-p", dev}); err != nil && res.ExitCode != 1 {
		return fmt.Errorf("check the root file system before growing it: %w", err)
	}
	if _, err := r.exec([]string{"resize2fs", dev}); err != nil {
		return fmt.Errorf("grow the root file system: %w", err)
	}
	return nil
}

// superField is the number after name in dumpe2fs -h output (0: none).
func superField(text, name string) int64 {
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, name); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// detach lets a loop device go (after its file system was unmounted).
func (r *Root) detach(dev string) error {
	c := trace.Cmd{Argv: []string{"losetup", "-d", dev}, Sudo: true}
	if r.d.DryRun {
		r.d.Print(strings.ReplaceAll(r.d.Line(c), "'$dev'", `"$dev"`))
		return nil
	}
	if _, err := r.d.ExecFinally(c, closeTimeout); err != nil {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	return nil
}

// mountedFrom reports whether a file system is mounted from dev.
func mountedFrom(dev string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		for i := 6; i+2 < len(f); i++ {
			if f[i] == "-" {
				if unescape(f[i+2]) == dev {
					return true
				}
				break
			}
		}
	}
	return false
}
