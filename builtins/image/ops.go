package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"pifarm/builtins/disk/mbr"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// mod is the image module's state: the run's door and the farm.
type mod struct {
	d *trace.Door
	f *farm.Farm
	// lockWait bounds the wait for instance locks held by another pifarm
	// (a start, a clone, a change of the image); 0 means defaultLockWait.
	lockWait time.Duration
	// fault, when set (tests), is called at the named steps of a change
	// (see seeding); an error it returns is the step's failure.
	fault func(step string) error
}

// hook calls the fault-injection hook of tests (nothing in pifarm).
func (m *mod) hook(step string) error {
	if m.fault == nil {
		return nil
	}
	return m.fault(step)
}

// defaultLockWait is long enough for another pifarm's full clone of a
// large image (qemu-img convert) to finish.
const defaultLockWait = 10 * time.Minute

const gib = int64(1) << 30
const mib = int64(1) << 20

// ErrNoImage means instance 0 has no registered image.
var ErrNoImage = errors.New("instance 0 has no registered image (register one with: pifarm run image --disk-image=FILE)")

// diskPath is the disk of instance id, checked to exist.
func (m *mod) diskPath(id int) (string, error) {
	p := m.f.Disk(id)
	if _, err := os.Lstat(p); err != nil {
		if id == 0 {
			return "", ErrNoImage
		}
		return "", fmt.Errorf("instance %d has no clone (%s does not exist)", id, p)
	}
	return p, nil
}

// Registered is the image registered as instance 0, or "".
func (m *mod) Registered() string {
	t, err := os.Readlink(m.f.Disk(0))
	if err != nil {
		return ""
	}
	return t
}

// mkdir creates the folder dir of the cache (and its parents). A symbolic
// link there is refused in every mode: nothing is written through it.
func (m *mod) mkdir(dir string) error {
	return m.cache().MkdirAll(dir, 0)
}

// moveAside renames path to path~ (one backup generation) when it exists.
func (m *mod) moveAside(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		if err := m.cache().Rename(p, p+"~"); err != nil {
			return err
		}
	}
	return nil
}

// Register verifies the raw image at path and makes it instance 0's disk
// (clone-0.raw links to it). Boot files of a previously registered image
// are moved aside as NAME~.
func (m *mod) Register(path string) (string, error) {
	if strings.TrimSpace(path) == "" {
		return "", trace.Usagef("register: the image path is empty (an unset variable in --disk-image=$IMG?)")
	}
	abs, err := filepath.EvalSymlinks(farm.ExpandPath(path))
	if err != nil {
		return "", fmt.Errorf("register %s: %w", path, err)
	}
	d, err := m.open(abs)
	if err != nil {
		return "", err
	}
	q := d.Qcow2
	if q {
		d.Close()
		return "", fmt.Errorf("%s: a qcow2 image; instance 0 needs a raw image (qemu-img convert -O raw %s IMG)", path, trace.Quote(path))
	}
	err = refuseUnusable("register", d)
	d.Close()
	if err != nil {
		return "", err
	}
	link := m.f.Disk(0)
	if cur, err := os.Readlink(link); err == nil && cur == abs {
		m.d.Note("%s is already registered as instance 0 (%s)", abs, link)
		return abs, nil
	}
	release, err := m.lockInstances("register " + abs)
	if err != nil {
		return "", err
	}
	defer release()
	run, err := m.running()
	if err != nil {
		return "", err
	}
	for _, r := range run {
		if r.ID == 0 {
			return "", fmt.Errorf("register %s: instance 0 is running (pid %d) on the image registered now; stop it first (pifarm run shutdown 0)", path, r.Pid)
		}
	}
	if err := m.mkdir(filepath.Dir(link)); err != nil {
		return "", err
	}
	// A new image has other host keys: its known_hosts goes with the old one.
	if err := m.moveAside(link, m.f.Kernel(0), m.f.DTB(0), m.f.Sig(0), m.f.KnownHosts(0)); err != nil {
		return "", err
	}
	if err := m.cache().Symlink(abs, link); err != nil {
		return "", err
	}
	return abs, nil
}

// sizeArg renders a byte count for truncate(1): 4G, 512M, or bytes.
func sizeArg(n int64) string {
	switch {
	case n%gib == 0:
		return fmt.Sprintf("%dG", n/gib)
	case n%mib == 0:
		return fmt.Sprintf("%dM", n/mib)
	}
	return fmt.Sprint(n)
}

// ExpandPlan is what Expand decided.
type ExpandPlan struct {
	Path            string
	SizeBefore      int64
	Size            int64 // target file size
	RootBefore      uint64
	Root            uint64 // target partition 2 sectors
	NoNeed          bool
	Script          string // sfdisk script of the new table
	layout          *mbr.Layout
	fsEnd           uint64 // first sector after the ext4 file system
	marginRequested float64
}

// PlanExpand computes the expansion of the raw image at path.
func (m *mod) PlanExpand(path string) (*ExpandPlan, error) {
	d, err := m.open(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if d.Qcow2 {
		return nil, fmt.Errorf("%s: a qcow2 clone has the size of its base; expand the raw image of instance 0", path)
	}
	l := d.Layout
	for _, p := range l.Parts[2:] {
		if p.Type != 0 {
			return nil, fmt.Errorf("%s: partition %d (type 0x%02x) follows the root partition; pifarm grows partition 2 only when it is the last", path, p.Index, p.Type)
		}
	}
	if err := refuseUnusable("expand", d); err != nil {
		return nil, err
	}
	root := l.Root()
	e, err := d.Root()
	if err != nil {
		return nil, err
	}
	minEnd := root.Start + uint64((e.Size()+mbr.SectorSize-1)/mbr.SectorSize)
	pl := &ExpandPlan{Path: path, SizeBefore: l.FileSize, RootBefore: root.Sectors, layout: l, fsEnd: minEnd, marginRequested: m.f.Config.MarginPercent}
	sizes := m.f.Config.ImageSizesGiB
	maxS := int64(sizes[len(sizes)-1]) * gib
	if l.FileSize > maxS {
		return nil, fmt.Errorf("%s: %d bytes (%.1f GiB) is more than the largest configured image size %d GiB (image_sizes_gib in %s)", path, l.FileSize, float64(l.FileSize)/float64(gib), sizes[len(sizes)-1], m.f.Config.Path)
	}
	for _, s := range sizes {
		S := int64(s) * gib
		if S < l.FileSize {
			continue
		}
		end := rootEnd(S, m.f.Config.MarginPercent)
		if end <= root.Start || end < minEnd {
			continue
		}
		pl.Size, pl.Root = S, end-root.Start
		break
	}
	if pl.Size == 0 {
		return nil, fmt.Errorf("%s: partition 2 (ending at sector %d) does not fit the largest configured size %d GiB with a %g%% margin", path, minEnd, sizes[len(sizes)-1], m.f.Config.MarginPercent)
	}
	pl.NoNeed = pl.Size == l.FileSize && pl.Root == root.Sectors
	pl.Script = l.SfdiskScript(pl.Root)
	return pl, nil
}

// rootEnd is the first sector after partition 2 in an image of size bytes
// with a margin of pct percent: size minus the margin, down to a MiB.
func rootEnd(size int64, pct float64) uint64 {
	margin := int64(float64(size) * pct / 100)
	end := (size - margin) / mib * mib
	return uint64(end / mbr.SectorSize)
}

// guard takes the instance locks (see lockInstances) and then refuses
// when an instance runs (any when instance < 0) or a partition of the
// image is mounted. The caller releases the locks when done.
func (m *mod) guard(op, path string, instance int) (func(), error) {
	release, err := m.lockInstances(op + " " + path)
	if err != nil {
		return nil, err
	}
	if err := m.refuseBusy(op, path, instance); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// refuseBusy fails when any instance runs or a partition of the image is
// mounted.
func (m *mod) refuseBusy(op, path string, instance int) error {
	run, err := m.running()
	if err != nil {
		return err
	}
	for _, r := range run {
		if instance < 0 || r.ID == instance {
			return fmt.Errorf("%s %s: instance %d is running (pid %d); stop it first", op, path, r.ID, r.Pid)
		}
	}
	if err := m.refuseOpen(op+" "+path, path, false); err != nil {
		return err
	}
	mnts, err := m.mounts(path)
	if err != nil {
		return err
	}
	if len(mnts) > 0 {
		var s []string
		for _, x := range mnts {
			s = append(s, x.Source+" on "+x.Target)
		}
		return fmt.Errorf("%s %s: mounted (%s); unmount first (pifarm run image --umount-boot/--umount-root)", op, path, strings.Join(s, ", "))
	}
	return nil
}

// Expand pads the raw image to the smallest configured size that holds it
// and grows partition 2 to end the margin before the end. The file grows
// first and is synced; only then is the table rewritten, so no table ever
// points past the end of the file. The disk identifier stays.
func (m *mod) Expand(path string) (*ExpandPlan, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	pl, err := m.PlanExpand(real)
	if err != nil {
		return nil, err
	}
	pl.Path = path
	if pl.NoNeed {
		return pl, nil
	}
	release, err := m.guard("expand", real, -1)
	if err != nil {
		return nil, err
	}
	defer release()
	if pl.Size > pl.SizeBefore {
		line := "truncate -s " + sizeArg(pl.Size) + " " + trace.Quote(real)
		if err := m.d.Do(line, func() error { return growFile(real, pl.Size) }); err != nil {
			return nil, err
		}
	}
	if pl.Root != pl.RootBefore {
		line := m.d.Line(trace.Cmd{Argv: []string{"sfdisk", "--no-reread", "-q", real}, Heredoc: pl.Script})
		if err := m.d.Do(line, func() error { return writeRoot(real, pl) }); err != nil {
			return nil, err
		}
	}
	return pl, nil
}

func growFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() > size {
		return fmt.Errorf("%s grew to %d bytes meanwhile; not shrinking it to %d", path, fi.Size(), size)
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("truncate %s: %w", path, err)
	}
	return f.Sync()
}

// writeRoot rewrites the partition table of the (reopened) file after
// checking that it is still the table the plan was made from.
func writeRoot(path string, pl *ExpandPlan) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	head, err := mbr.ReadHead(f)
	if err != nil {
		return err
	}
	cur, err := mbr.Parse(head, fi.Size())
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if cur.Parts != pl.layout.Parts || cur.DiskID != pl.layout.DiskID {
		return fmt.Errorf("%s: the partition table changed while pifarm was planning; nothing written", path)
	}
	if int64(pl.layout.Root().Start+pl.Root)*mbr.SectorSize > fi.Size() {
		return fmt.Errorf("%s: %d bytes, too short for partition 2 to end at sector %d; nothing written", path, fi.Size(), pl.layout.Root().Start+pl.Root)
	}
	t, err := cur.WithRoot(pl.Root)
	if err != nil {
		return err
	}
	if err := t.Write(f, fi.Size()); err != nil {
		return fmt.Errorf("%s: write partition table: %w", path, err)
	}
	return f.Sync()
}
