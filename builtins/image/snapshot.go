package image

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"pifarm/builtins/disk/qcow2"
	"pifarm/builtins/trace"
)

// Snapshots of a stopped instance's disk, and rollback to them.
//
// A clone's snapshot is a qcow2 internal snapshot (`qemu-img snapshot -c`:
// its tables are copied, its data clusters shared until the guest writes
// them, so it takes the same time on any size); instance 0's raw image is
// copied (cp --reflink=always where the file system shares extents, else a
// sparse copy). Next to it, in the instance folder's snapshots/, pifarm
// keeps the boot files the disk booted from and their signature (NAME.ker,
// NAME.dtb, NAME.sig: hard links), the instance's known_hosts (the host
// keys pifarm knew for that disk), and a record, NAME.snap, written last:
// a record names a complete snapshot. A rollback restores the disk, then
// the boot files and known_hosts of the snapshot.
//
// Live snapshots (with the guest's RAM) are impossible with the devices
// pifarm's machine has: QEMU 7.2 refuses savevm with "State blocked by
// non-migratable device usb-net". Snapshots are of a stopped guest's disk.

// maxSnapshotName bounds a snapshot's name (a file name part and a qcow2
// tag).
const maxSnapshotName = 64

// CheckSnapshotName refuses a snapshot name pifarm cannot keep as a file
// name part and a qcow2 tag: empty, longer than maxSnapshotName bytes, with
// a slash, a control character, invalid UTF-8 or blanks around it,
// starting with "." (temporary files) or "-" (an option), or all digits
// (qemu-img finds a snapshot by its id as well as by its name: "2" could
// name another snapshot).
func CheckSnapshotName(name string) error {
	bad := func(why string) error {
		return trace.Usagef("snapshot name %s: %s", trace.Quote(name), why)
	}
	switch {
	case name == "":
		return trace.Usagef("a snapshot needs a name (e.g. before-upgrade)")
	case len(name) > maxSnapshotName:
		return bad(fmt.Sprintf("%d bytes, at most %d", len(name), maxSnapshotName))
	case !utf8.ValidString(name):
		return bad("not valid UTF-8")
	case strings.ContainsRune(name, '/'):
		return bad("holds a slash")
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return bad("holds a control character")
	case strings.TrimSpace(name) != name:
		return bad("begins or ends with a blank")
	case strings.HasPrefix(name, "."), strings.HasPrefix(name, "-"):
		return bad("begins with " + name[:1])
	case strings.Trim(name, "0123456789") == "":
		return bad("all digits (qemu-img takes a number for a snapshot's id); add a letter")
	}
	return nil
}

// snapDir is the folder of instance id's snapshot files.
func (m *mod) snapDir(id int) string { return filepath.Join(m.f.InstanceDir(id), "snapshots") }

// snapFile is a file of snapshot name: the record (snap), the boot files
// (ker, dtb, sig), the known_hosts and, for instance 0, the disk copy (raw).
func (m *mod) snapFile(id int, name, ext string) string {
	return filepath.Join(m.snapDir(id), name+"."+ext)
}

// snapExts are the extensions of a snapshot's files; the record comes
// first (removed first, so a half-removed snapshot has none).
var snapExts = []string{"snap", "ker", "dtb", "sig", "known_hosts", "raw"}

// SnapInfo is one snapshot of an instance's disk.
type SnapInfo struct {
	Name string
	// Kind is "qcow2" (an internal snapshot of a clone) or "copy" (a copy
	// of instance 0's raw image).
	Kind string
	// ID is a qcow2 snapshot's id ("" for a copy).
	ID   string
	Date time.Time
	// Size is the bytes the snapshot references in the qcow2 file, or the
	// space the copy takes; Own is the part only it holds (what deleting
	// it frees; for a copy the same as Size, or less where extents are
	// shared).
	Size, Own int64
	// Boot is the boot files' signature recorded with it ("" when pifarm
	// kept none: the boot files are read from the disk after a rollback).
	Boot string
	// Recorded says pifarm's record (boot files, known_hosts) belongs to
	// it; a qcow2 snapshot made by hand, or one whose record a killed
	// pifarm did not finish, has none.
	Recorded bool
	// KnownHosts says the record holds the instance's known_hosts.
	KnownHosts bool
	// Disk is the disk file it was taken of.
	Disk string
	// Note says what is odd about it ("" when nothing).
	Note string
}

// snapRecord is the content of a NAME.snap record.
type snapRecord struct {
	Name, Kind, Disk string
	Instance         int
	Date             time.Time
	QcowID           string
	QcowDate         time.Time // the internal snapshot's own date (matches it to the record)
	Boot             string
	KnownHosts       bool
}

const snapComment = "# a snapshot of an instance's disk, taken by pifarm; the files NAME.ker, NAME.dtb, NAME.sig (boot files) and NAME.known_hosts next to it belong to it"

func (r snapRecord) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nname %s\ninstance %d\nkind %s\ndisk %s\ndate %d\n", snapComment, r.Name, r.Instance, r.Kind, r.Disk, r.Date.UnixNano())
	if r.Kind == "qcow2" {
		fmt.Fprintf(&b, "qcow2-id %s\nqcow2-date %d\n", r.QcowID, r.QcowDate.UnixNano())
	}
	boot := r.Boot
	if boot == "" {
		boot = "none"
	}
	fmt.Fprintf(&b, "boot %s\nknown-hosts %t\n", boot, r.KnownHosts)
	return b.String()
}

// readSnapRecord reads a NAME.snap record; a line it does not know is
// skipped, a record without name or kind is an error.
func readSnapRecord(path string) (snapRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return snapRecord{}, err
	}
	defer f.Close()
	var r snapRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		switch k {
		case "name":
			r.Name = v
		case "instance":
			r.Instance, _ = strconv.Atoi(v)
		case "kind":
			r.Kind = v
		case "disk":
			r.Disk = v
		case "date":
			n, _ := strconv.ParseInt(v, 10, 64)
			r.Date = time.Unix(0, n)
		case "qcow2-id":
			r.QcowID = v
		case "qcow2-date":
			n, _ := strconv.ParseInt(v, 10, 64)
			r.QcowDate = time.Unix(0, n)
		case "boot":
			if v != "none" {
				r.Boot = v
			}
		case "known-hosts":
			r.KnownHosts = v == "true"
		}
	}
	if err := sc.Err(); err != nil {
		return snapRecord{}, fmt.Errorf("read %s: %w", path, err)
	}
	if r.Name == "" || (r.Kind != "qcow2" && r.Kind != "copy") {
		return snapRecord{}, fmt.Errorf("%s: not a snapshot record pifarm wrote (no name or kind)", path)
	}
	return r, nil
}

// records reads instance id's snapshot records by name; unreadable ones
// are left out.
func (m *mod) records(id int) map[string]snapRecord {
	out := map[string]snapRecord{}
	ents, err := os.ReadDir(m.snapDir(id))
	if err != nil {
		return out
	}
	for _, e := range ents {
		n, ok := strings.CutSuffix(e.Name(), ".snap")
		if !ok || strings.HasPrefix(n, ".") || !e.Type().IsRegular() {
			continue
		}
		if r, err := readSnapRecord(filepath.Join(m.snapDir(id), e.Name())); err == nil && r.Name == n {
			out[n] = r
		}
	}
	return out
}

// Snapshots lists instance id's snapshots, oldest first: a clone's qcow2
// internal snapshots (with what each holds in the file, read from its
// tables and refcounts), or instance 0's copies.
func (m *mod) Snapshots(id int) ([]SnapInfo, error) {
	disk, err := m.diskPath(id)
	if err != nil {
		return nil, err
	}
	real, err := filepath.EvalSymlinks(disk)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", disk, err)
	}
	recs := m.records(id)
	var out []SnapInfo
	if id == 0 {
		for _, r := range recs {
			if r.Kind != "copy" {
				continue
			}
			s := SnapInfo{Name: r.Name, Kind: "copy", Date: r.Date, Boot: r.Boot, Recorded: true, KnownHosts: r.KnownHosts, Disk: r.Disk}
			if fi, err := os.Stat(m.snapFile(0, r.Name, "raw")); err == nil {
				s.Size = allocated(fi)
				s.Own = s.Size
			} else {
				s.Note = "its copy " + m.snapFile(0, r.Name, "raw") + " is missing"
			}
			if r.Disk != real {
				s.Note = fmt.Sprintf("taken of %s; instance 0 is now %s", r.Disk, real)
			}
			out = append(out, s)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Date.Before(out[j].Date) })
		return out, nil
	}
	q, err := qcow2.Open(real)
	if err != nil {
		return nil, fmt.Errorf("snapshots of instance %d: %w", id, err)
	}
	defer q.Close()
	ss, err := q.Snapshots()
	if err != nil {
		return nil, fmt.Errorf("snapshots of instance %d (%s): %w", id, real, err)
	}
	for _, s := range ss {
		u, err := q.SnapshotUsage(s)
		if err != nil {
			return nil, fmt.Errorf("snapshot %q of instance %d (%s): %w", s.Name, id, real, err)
		}
		in := SnapInfo{Name: s.Name, Kind: "qcow2", ID: s.ID, Date: s.Date, Size: u.Referenced, Own: u.Exclusive, Disk: real}
		if r, ok := recs[s.Name]; ok && r.Kind == "qcow2" && r.QcowID == s.ID && r.QcowDate.Equal(s.Date) {
			in.Recorded, in.Boot, in.KnownHosts = true, r.Boot, r.KnownHosts
		}
		if s.VMStateSize > 0 {
			in.Note = "holds a guest's RAM (savevm): pifarm restores its disk only"
		}
		out = append(out, in)
	}
	return out, nil
}

// allocated is the space a file takes on its file system.
func allocated(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// findSnapshot is instance id's snapshot name, or an error listing the
// names there are.
func (m *mod) findSnapshot(id int, name string) (SnapInfo, error) {
	ss, err := m.Snapshots(id)
	if err != nil {
		return SnapInfo{}, err
	}
	var names []string
	found := -1
	for i, s := range ss {
		names = append(names, s.Name)
		if s.Name == name {
			if found >= 0 {
				return SnapInfo{}, fmt.Errorf("instance %d has two snapshots named %s (made by hand?); qemu-img would take the first: delete one with qemu-img snapshot -d", id, trace.Quote(name))
			}
			found = i
		}
	}
	if found < 0 {
		have := "it has none"
		if len(names) > 0 {
			have = "it has " + strings.Join(names, ", ")
		}
		return SnapInfo{}, fmt.Errorf("instance %d has no snapshot %s (%s; list them with pifarm run box --snapshots %d)", id, trace.Quote(name), have, id)
	}
	return ss[found], nil
}

// busyStopped takes the instance locks for a change of instance id's disk
// and refuses while it runs, another process holds the disk open (a QEMU
// without a pidfile, an open chroot) or one of its partitions is mounted.
// What a killed pifarm left in the snapshots folder is removed.
func (m *mod) busyStopped(op string, id int, disk string) (func(), error) {
	release, err := m.lockStopped(op, id, func(pid int) error {
		return fmt.Errorf("%s: instance %d is running (pid %d); snapshots are of a stopped guest's disk (live ones, with RAM, are impossible with its usb-net NICs): stop it first (pifarm run box --terminate %d)", op, id, pid, id)
	})
	if err != nil {
		return nil, err
	}
	if err := m.refuseOpen(op, disk, false); err != nil {
		release()
		return nil, err
	}
	if mnts, err := m.mounts(disk); err != nil || len(mnts) > 0 {
		release()
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%s: %s is mounted (%s on %s); unmount it first (pifarm run image --umount-boot/--umount-root)", op, disk, mnts[0].Source, mnts[0].Target)
	}
	if err := m.removeSnapLeftovers(id); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// lockedSnapshot is busyStopped, then instance id's snapshot name (see
// findSnapshot); the caller releases the locks.
func (m *mod) lockedSnapshot(op string, id int, name, disk string) (SnapInfo, func(), error) {
	release, err := m.busyStopped(op, id, disk)
	if err != nil {
		return SnapInfo{}, nil, err
	}
	s, err := m.findSnapshot(id, name)
	if err != nil {
		release()
		return SnapInfo{}, nil, fmt.Errorf("%s: %w", op, err)
	}
	return s, release, nil
}

// snapLeftoverRE matches what a killed pifarm leaves in a snapshots folder:
// the fixed temporary names of its files.
var snapLeftoverRE = regexp.MustCompile(`^\..+\.tmp$`)

// removeSnapLeftovers removes the temporary files a killed pifarm left in
// instance id's snapshots folder (the caller holds the instance locks).
func (m *mod) removeSnapLeftovers(id int) error {
	return m.removeIn(m.snapDir(id), snapLeftoverRE.MatchString)
}

// snapFilesOf lists the files of snapshot name that exist.
func (m *mod) snapFilesOf(id int, name string) []string {
	var have []string
	for _, ext := range snapExts {
		p := m.snapFile(id, name, ext)
		if _, err := os.Lstat(p); err == nil {
			have = append(have, p)
		}
	}
	return have
}

// linkInCache makes dst (in the cache) a hard link to src through dst's
// fixed temporary name, keeping a replaced dst as dst~ when backup is set;
// where the file system has no hard links, src's content is copied. The
// boot files are only ever replaced by a rename, never written in place,
// so sharing their inode is safe.
func (m *mod) linkInCache(src, dst string, backup bool) error {
	return m.putInCache(src, dst, backup, true)
}

// copyInCache is linkInCache with a copy of the content: for a file
// another program may write in place (ssh appends to a known_hosts).
func (m *mod) copyInCache(src, dst string, backup bool) error {
	return m.putInCache(src, dst, backup, false)
}

func (m *mod) putInCache(src, dst string, backup, link bool) error {
	line := "cp -p " + trace.Quote(src) + " " + trace.Quote(dst)
	if link {
		line = "ln -f " + trace.Quote(src) + " " + trace.Quote(dst)
	}
	if _, err := os.Lstat(dst); err == nil && backup {
		line = "ln -f " + trace.Quote(dst) + " " + trace.Quote(dst+"~") + "\n" + line
	}
	return m.d.Do(line, func() error {
		return m.withCache(func(c *cacheFS) error {
			tmp := tmpName(dst)
			rs, err := c.tr.Rel(src)
			if err != nil {
				return err
			}
			rt, err := c.tr.Rel(tmp)
			if err != nil {
				return err
			}
			if err := c.root.Remove(rt); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return c.tr.Explain("remove", tmp, err)
			}
			if !link || c.root.Link(rs, rt) != nil {
				fi, err := c.root.Lstat(rs)
				if err != nil {
					return c.tr.Explain("read", src, err)
				}
				if !fi.Mode().IsRegular() {
					return fmt.Errorf("copy %s: not a regular file (%s)", src, fi.Mode().Type())
				}
				b, err := c.root.ReadFile(rs)
				if err != nil {
					return c.tr.Explain("read", src, err)
				}
				if err := c.stage(tmp, b, fi.Mode().Perm()); err != nil {
					return err
				}
			}
			return c.commit(tmp, dst, backup)
		})
	})
}

// snapTarget checks a snapshot's name and returns instance id's disk (as
// the cache names it) and the file behind it.
func (m *mod) snapTarget(id int, name string) (disk, real string, err error) {
	if err := CheckSnapshotName(name); err != nil {
		return "", "", err
	}
	if disk, err = m.diskPath(id); err != nil {
		return "", "", err
	}
	if real, err = filepath.EvalSymlinks(disk); err != nil {
		return "", "", fmt.Errorf("%s: %w", disk, err)
	}
	return disk, real, nil
}

// TakeSnapshot takes snapshot name of stopped instance id's disk: a qcow2
// internal snapshot of a clone, a copy of instance 0's raw image (refused
// when it would not fit the file system). The boot files and their
// signature, when they match the disk, and the instance's known_hosts are
// kept with it. A name in use is refused.
func (m *mod) TakeSnapshot(id int, name string) (*SnapInfo, error) {
	disk, real, err := m.snapTarget(id, name)
	if err != nil {
		return nil, err
	}
	op := fmt.Sprintf("snapshot %d %s", id, name)
	kind := "copy"
	if id > 0 {
		if !qcow2.Is(real) {
			return nil, fmt.Errorf("%s: %s is not a qcow2 clone; re-create it (pifarm run box --force-clone %d)", op, real, id)
		}
		kind = "qcow2"
	}
	if _, err := os.Stat(m.Registered()); id == 0 && err != nil {
		return nil, fmt.Errorf("%s: %w", op, ErrNoImage)
	}
	// The boot files are current (checked before the locks: a re-hash may
	// refresh the record under the instance's lock).
	boot := ""
	if st, err := m.CheckBoot(id); err == nil && st.State == "ok" {
		if rec, err := readSig(m.f.Sig(id)); err == nil {
			boot = rec.Sum
		}
	}
	release, err := m.busyStopped(op, id, real)
	if err != nil {
		return nil, err
	}
	defer release()
	ss, err := m.Snapshots(id)
	if err != nil {
		return nil, err
	}
	for _, s := range ss {
		if s.Name == name {
			return nil, fmt.Errorf("%s: instance %d has a snapshot %s already (taken %s); delete it first (pifarm run box --delete-snapshot %d %s) or choose another name", op, id, trace.Quote(name), s.Date.Format("2006-01-02 15:04:05"), id, trace.Quote(name))
		}
	}
	// Files of a snapshot that has no record (a killed pifarm's, or that
	// of a replaced clone) are not a snapshot: they go.
	if stale := m.snapFilesOf(id, name); len(stale) > 0 {
		if err := m.cache().Remove(stale...); err != nil {
			return nil, err
		}
	}
	if err := m.mkdir(m.snapDir(id)); err != nil {
		return nil, err
	}
	rec := snapRecord{Name: name, Instance: id, Kind: kind, Disk: real, Date: time.Now()}
	err = m.snapDisk(op, &rec, disk)
	if err == nil {
		err = m.keepWith(&rec, boot)
	}
	if err == nil {
		p := m.snapFile(id, name, "snap")
		line := fmt.Sprintf("# record snapshot %s of instance %d (boot files %s) in %s", trace.Quote(name), id, orNone(rec.Boot), p)
		err = m.d.Do(line, func() error { return m.writeCache(p, []byte(rec.String()), 0o600, false) })
	}
	if err != nil {
		if !m.d.DryRun { // what was kept for it is no snapshot
			m.withCache(func(c *cacheFS) error { return c.remove(m.snapFilesOf(id, name)...) })
		}
		return nil, err
	}
	info := &SnapInfo{Name: name, Kind: kind, ID: rec.QcowID, Date: rec.Date, Boot: rec.Boot, Recorded: true, KnownHosts: rec.KnownHosts, Disk: real}
	if !m.d.DryRun {
		if got, err := m.Snapshots(id); err == nil {
			for _, s := range got {
				if s.Name == name {
					*info = s
				}
			}
		}
	}
	return info, nil
}

// snapDisk takes the snapshot of the disk rec names: a qcow2 internal
// snapshot (whose id and date go into rec) or a copy of the raw image.
func (m *mod) snapDisk(op string, rec *snapRecord, disk string) error {
	if rec.Kind == "copy" {
		dst := m.snapFile(0, rec.Name, "raw")
		if err := m.copyDisk(op, rec.Disk, tmpName(dst)); err != nil {
			return err
		}
		if err := m.d.Do("chmod 600 "+trace.Quote(tmpName(dst)), func() error { return os.Chmod(tmpName(dst), 0o600) }); err != nil {
			return err
		}
		return m.cache().Rename(tmpName(dst), dst)
	}
	if err := m.qemuImg(op, "snapshot", "-c", rec.Name, disk); err != nil {
		return err
	}
	if m.d.DryRun {
		return nil
	}
	q, err := qcow2.Open(rec.Disk)
	if err != nil {
		return err
	}
	defer q.Close()
	ss, err := q.Snapshots()
	if err != nil {
		return err
	}
	for _, s := range ss {
		if s.Name == rec.Name {
			rec.QcowID, rec.QcowDate = s.ID, s.Date
		}
	}
	return nil
}

// keepWith keeps the instance's boot files (when boot, their signature,
// is set: they match the disk) and its known_hosts with the snapshot rec
// names.
func (m *mod) keepWith(rec *snapRecord, boot string) error {
	id, name := rec.Instance, rec.Name
	if boot != "" {
		for _, p := range [][2]string{{m.f.Kernel(id), "ker"}, {m.f.DTB(id), "dtb"}, {m.f.Sig(id), "sig"}} {
			if err := m.linkInCache(p[0], m.snapFile(id, name, p[1]), false); err != nil {
				return err
			}
		}
		rec.Boot = boot
	}
	if _, err := os.Lstat(m.f.KnownHosts(id)); err == nil {
		if err := m.copyInCache(m.f.KnownHosts(id), m.snapFile(id, name, "known_hosts"), false); err != nil {
			return err
		}
		rec.KnownHosts = true
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none: they are read from the disk after a rollback"
	}
	return s
}

// qemuImg runs qemu-img with args (an action).
func (m *mod) qemuImg(op string, args ...string) error {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return fmt.Errorf("%s: qemu-img is not installed (Debian: apt install qemu-utils)", op)
	}
	_, err := m.d.Exec(trace.Cmd{Argv: append([]string{"qemu-img"}, args...)})
	return err
}

// RollbackResult is what Rollback restored.
type RollbackResult struct {
	Snapshot SnapInfo
	// BootRestored: the boot files kept with the snapshot were put back;
	// else they were read from the disk (ProvideQboot).
	BootRestored bool
	// KnownHostsRestored: the known_hosts kept with it was put back.
	KnownHostsRestored bool
	// Boot is the boot files' state after the rollback.
	Boot BootState
}

// Rollback returns stopped instance id's disk to snapshot name, then its
// boot files and known_hosts to those kept with it. The snapshot stays. For
// instance 0 the copy is copied back (to a temporary file next to the
// image, then renamed over it), refused while linked clones rest on the
// image (they would read another disk under their own writes) or when the
// snapshot was taken of another image than the one registered now.
func (m *mod) Rollback(id int, name string) (*RollbackResult, error) {
	disk, real, err := m.snapTarget(id, name)
	if err != nil {
		return nil, err
	}
	op := fmt.Sprintf("rollback %d %s", id, name)
	res, err := m.rollback(op, id, name, disk, real)
	if err != nil {
		return nil, err
	}
	// After the locks: a boot file record that only needs refreshing is
	// refreshed under the instance's lock.
	if !res.BootRestored {
		if _, err := m.ProvideQboot(id, ""); err != nil {
			return nil, fmt.Errorf("%s: the disk is rolled back, but its boot files could not be read from it: %w", op, err)
		}
	}
	if res.BootRestored && m.trustKeptBoot(id, res.Snapshot.Boot) {
		res.Boot = BootState{State: "ok", Message: fmt.Sprintf("instance %d: boot files as kept with snapshot %s, which they matched when it was taken", id, name)}
		return res, nil
	}
	if res.Boot, err = m.CheckBoot(id); err != nil {
		return nil, err
	}
	return res, nil
}

// trustKeptBoot records, after a rollback put back the boot files kept with
// a snapshot whose signature was sum, that they match the disk: it is the
// snapshot's guest view again, and that view's boot files had signature
// sum when the snapshot was taken (CheckBoot then). The .sig record gets
// the disk's new identity, so that nothing is read again; false (and
// CheckBoot decides) when the restored record is not that signature's or
// the disk cannot be opened.
func (m *mod) trustKeptBoot(id int, sum string) bool {
	rec, err := readSig(m.f.Sig(id))
	if err != nil || sum == "" || rec.Sum != sum || rec.older() != "" {
		return false
	}
	path, err := m.diskPath(id)
	if err != nil {
		return false
	}
	d, err := m.open(path)
	if err != nil {
		return false
	}
	defer d.Close()
	ids, err := d.chainIDs()
	if err != nil {
		return false
	}
	return m.refreshSig(id, newSigRecord(rec.Sum, rec.Sizes, ids)) == nil
}

func (m *mod) rollback(op string, id int, name, disk, real string) (*RollbackResult, error) {
	s, release, err := m.lockedSnapshot(op, id, name, real)
	if err != nil {
		return nil, err
	}
	defer release()
	res := &RollbackResult{Snapshot: s}
	if s.Kind == "qcow2" {
		if err := m.qemuImg(op, "snapshot", "-a", name, disk); err != nil {
			return nil, err
		}
	} else {
		if s.Disk != real {
			return nil, fmt.Errorf("%s: the snapshot was taken of %s, instance 0 is now %s; register that image again first (pifarm run image --disk-image=%s)", op, s.Disk, real, trace.Quote(s.Disk))
		}
		if ids, err := m.LinkedClones(real); err != nil {
			return nil, err
		} else if len(ids) > 0 {
			return nil, fmt.Errorf("%s: the linked clones %s rest on instance 0's image, which a rollback changes under them; remove them first (pifarm run box --flush-clone N) or make them full clones (pifarm run box --force-clone N without --linked)", op, intsText(ids))
		}
		if err := m.refuseOpen(op, real, false); err != nil {
			return nil, err
		}
		fi, err := os.Stat(real)
		if err != nil {
			return nil, err
		}
		tmp := tmpName(real)
		if _, err := os.Lstat(tmp); err == nil {
			if err := m.d.Remove(tmp); err != nil {
				return nil, err
			}
		}
		if err := m.copyDisk(op, m.snapFile(0, name, "raw"), tmp); err != nil {
			return nil, err
		}
		mode := fi.Mode().Perm()
		if err := m.d.Do(fmt.Sprintf("chmod %o %s", mode, trace.Quote(tmp)), func() error { return os.Chmod(tmp, mode) }); err != nil {
			return nil, err
		}
		if err := m.d.Rename(tmp, real); err != nil {
			return nil, err
		}
	}
	if s.Recorded && s.Boot != "" {
		for _, p := range [][2]string{{"ker", m.f.Kernel(id)}, {"dtb", m.f.DTB(id)}, {"sig", m.f.Sig(id)}} {
			if err := m.linkInCache(m.snapFile(id, name, p[0]), p[1], true); err != nil {
				return nil, err
			}
		}
		res.BootRestored = true
	}
	if s.Recorded && s.KnownHosts {
		if err := m.copyInCache(m.snapFile(id, name, "known_hosts"), m.f.KnownHosts(id), true); err != nil {
			return nil, err
		}
		res.KnownHostsRestored = true
	}
	return res, nil
}

// DeleteSnapshot deletes snapshot name of stopped instance id: the qcow2
// internal snapshot or the copy, and the files kept with it (the record
// first). It returns the files removed.
func (m *mod) DeleteSnapshot(id int, name string) ([]string, error) {
	disk, real, err := m.snapTarget(id, name)
	if err != nil {
		return nil, err
	}
	op := fmt.Sprintf("delete snapshot %d %s", id, name)
	s, release, err := m.lockedSnapshot(op, id, name, real)
	if err != nil {
		return nil, err
	}
	defer release()
	if s.Kind == "qcow2" {
		if err := m.qemuImg(op, "snapshot", "-d", name, disk); err != nil {
			return nil, err
		}
	}
	files := m.snapFilesOf(id, name)
	return files, m.cache().Remove(files...)
}

func intsText(ids []int) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(id)
	}
	return strings.Join(s, ", ")
}
