package image

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/term"
	"pifarm/builtins/disk/qcow2"
	"pifarm/builtins/trace"
)

// baseFile records, next to a linked clone, the identity of its base.
func (m *mod) baseFile(id int) string {
	return strings.TrimSuffix(m.f.Disk(id), ".qcow2") + ".base"
}

// CloneResult is what Clone made.
type CloneResult struct {
	Path, Base string
	Linked     bool
	// Made is false when replace was not asked for and the clone was
	// there already (made meanwhile by another pifarm): it was kept as it
	// is (Base and Linked are then those of the clone found).
	Made bool
}

// Clone creates instance id's qcow2 from instance 0's raw image: a full
// copy (`qemu-img convert -p`, with progress) or a linked clone (a qcow2
// whose absolute backing file is the base, `-F raw`) that records the
// base's identity. Written to a temporary name, made 0600 (a clone holds
// the guest's /etc/shadow and host keys), then renamed; a replaced clone
// is kept as NAME~. The instance folder is made (or narrowed to) 0700.
// When instance 0's boot files are current they are copied along with its
// signature (the same boot files: nothing is read again).
//
// Everything is decided under the instance locks. The base must not be
// open for writing in another process (a QEMU of instance 0, also one
// whose pidfile is gone) and a clone being replaced not open at all.
func (m *mod) Clone(id int, linked bool) (*CloneResult, error) {
	return m.clone(id, linked, true)
}

// clone is Clone; without replace, a clone that exists once the instance
// locks are held (a parallel `pifarm run box --run N` made it while this
// one waited for them) is kept and reported (Made false), neither
// replaced nor refused.
func (m *mod) clone(id int, linked, replace bool) (*CloneResult, error) {
	if id <= 0 {
		return nil, trace.Usagef("clone: instance %d: clones are instances 1 and up (0 is the raw image)", id)
	}
	base0, err := m.diskPath(0)
	if err != nil {
		return nil, err
	}
	base, err := filepath.EvalSymlinks(base0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", base0, err)
	}
	d, err := m.open(base)
	if err != nil {
		return nil, err
	}
	d.Close()
	op := fmt.Sprintf("clone %d", id)
	release, err := m.lockInstances(op)
	if err != nil {
		return nil, err
	}
	defer release()
	dst := m.f.Disk(id)
	if !replace {
		if st, err := m.CheckClone(id); err == nil && st.Exists {
			m.d.Note("%s: %s exists already (made meanwhile by another pifarm): kept", op, dst)
			return &CloneResult{Path: dst, Base: st.Base, Linked: st.Linked}, nil
		}
	}
	run, err := m.running()
	if err != nil {
		return nil, err
	}
	for _, r := range run {
		if r.ID == 0 || r.ID == id {
			return nil, fmt.Errorf("clone %d: instance %d is running (pid %d); stop it first", id, r.ID, r.Pid)
		}
	}
	if err := m.refuseOpen(op, base, true); err != nil {
		return nil, err
	}
	if err := m.refuseOpen(op, dst, false); err != nil {
		return nil, err
	}
	if mnts, _ := m.mounts(base); len(mnts) > 0 {
		return nil, fmt.Errorf("clone %d: %s is mounted (%s on %s); unmount first", id, base, mnts[0].Source, mnts[0].Target)
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return nil, fmt.Errorf("clone %d: qemu-img is not installed (Debian: apt install qemu-utils)", id)
	}
	tmp := tmpName(dst)
	if err := m.f.MakeInstanceDir(m.d, id); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(tmp); err == nil {
		if err := m.d.Remove(tmp); err != nil {
			return nil, err
		}
	}
	var c trace.Cmd
	if linked {
		c = trace.Cmd{Argv: []string{"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", tmp}}
	} else {
		c = trace.Cmd{Argv: []string{"qemu-img", "convert", "-p", "-f", "raw", "-O", "qcow2", base, tmp}}
		if term.IsTerminal(int(os.Stderr.Fd())) {
			c.Stdout = os.Stderr // qemu-img's progress
		}
	}
	if _, err := m.d.Exec(c); err != nil {
		if !m.d.DryRun {
			os.Remove(tmp)
		}
		return nil, err
	}
	if err := m.d.Do("chmod 600 "+trace.Quote(tmp), func() error { return os.Chmod(tmp, 0o600) }); err != nil {
		os.Remove(tmp)
		return nil, err
	}
	if err := m.moveAside(dst, m.baseFile(id), m.f.Kernel(id), m.f.DTB(id), m.f.Sig(id)); err != nil {
		return nil, err
	}
	if err := m.d.Rename(tmp, dst); err != nil {
		return nil, err
	}
	if linked {
		id0, err := statID(base)
		if err != nil {
			return nil, err
		}
		if err := m.d.WriteFile(m.baseFile(id), []byte(baseRecord(id, id0)), 0o600, false); err != nil {
			return nil, err
		}
	}
	if st, err := m.CheckBoot(0); err == nil && st.State == "ok" {
		if err := m.copyBootFiles(id, dst); err != nil {
			return nil, err
		}
	}
	return &CloneResult{Path: dst, Base: base, Linked: linked, Made: true}, nil
}

// baseRecord is the content of a linked clone's .base file: the identity
// of its base.
func baseRecord(id int, base fileID) string {
	return fmt.Sprintf("# instance %d is a linked clone of this base; it is valid while the base is unchanged\nbase %s\n", id, base)
}

// copyBootFiles gives a new clone instance 0's boot files and a signature
// record naming the clone's files.
func (m *mod) copyBootFiles(id int, dst string) error {
	// Hard links: instance 0's files are only ever replaced (new inode,
	// rename), never written in place, so sharing the inode is safe.
	for _, p := range [][2]string{{m.f.Kernel(0), m.f.Kernel(id)}, {m.f.DTB(0), m.f.DTB(id)}} {
		src, to := p[0], p[1]
		err := m.d.Do("ln -f "+trace.Quote(src)+" "+trace.Quote(to), func() error {
			_ = os.Remove(to)
			if err := os.Link(src, to); err == nil {
				return nil
			}
			b, err := os.ReadFile(src)
			if err != nil {
				return err
			}
			return trace.WriteAtomic(to, b, 0o600, false)
		})
		if err != nil {
			return err
		}
	}
	rec, err := readSig(m.f.Sig(0))
	if err != nil {
		return err
	}
	sig := m.f.Sig(id)
	line := fmt.Sprintf("# record the boot files' signature %s (that of instance 0: the clone boots from the same files) in %s", rec.Sum, sig)
	return m.d.Do(line, func() error {
		ids := []fileID{}
		d, err := m.open(dst)
		if err != nil {
			return err
		}
		defer d.Close()
		if ids, err = d.chainIDs(); err != nil {
			return err
		}
		r := rec
		r.Files = ids
		return trace.WriteAtomic(sig, []byte(r.String()), 0o600, false)
	})
}

// CloneState says whether instance id's clone may be used.
type CloneState struct {
	Exists, Linked, OK bool
	Base, Reason       string
}

// CheckClone reports whether instance id's clone exists and, for a linked
// clone, whether its base is still the file it was linked to, unchanged
// (size, mtime, inode, device as recorded).
func (m *mod) CheckClone(id int) (CloneState, error) {
	dst := m.f.Disk(id)
	if _, err := os.Stat(dst); err != nil {
		return CloneState{Reason: fmt.Sprintf("instance %d has no clone (%s)", id, dst)}, nil
	}
	st := CloneState{Exists: true, OK: true}
	f, err := os.Open(m.baseFile(id))
	if errors.Is(err, fs.ErrNotExist) {
		if qcow2.Is(dst) {
			if q, err := qcow2.Open(dst); err == nil {
				st.Base = q.Backing
				q.Close()
			} else {
				return CloneState{Exists: true, Reason: err.Error()}, nil
			}
			if st.Base != "" {
				st.Linked, st.OK = true, false
				st.Reason = fmt.Sprintf("instance %d is a linked clone of %s without a base record (%s); re-create it", id, st.Base, m.baseFile(id))
			}
		}
		return st, nil
	}
	if err != nil {
		return CloneState{}, err
	}
	defer f.Close()
	st.Linked = true
	var want fileID
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "base "); ok {
			want = parseFileID(line)
		}
	}
	st.Base = want.Path
	q, err := qcow2.Open(dst)
	if err != nil {
		st.OK, st.Reason = false, err.Error()
		return st, nil
	}
	backing := q.Backing
	q.Close()
	if backing != want.Path {
		st.OK, st.Reason = false, fmt.Sprintf("instance %d: %s is backed by %s, the record says %s", id, dst, backing, want.Path)
		return st, nil
	}
	got, err := statID(want.Path)
	if err != nil {
		st.OK, st.Reason = false, fmt.Sprintf("instance %d: base %s of the linked clone is gone: %v", id, want.Path, err)
		return st, nil
	}
	if got != want {
		st.OK = false
		st.Reason = fmt.Sprintf("instance %d: base %s changed since the linked clone was made (size %d -> %d, mtime %d -> %d); its content is no longer consistent: re-create the clone", id, want.Path, want.Size, got.Size, want.MTime, got.MTime)
	}
	return st, nil
}

func parseFileID(s string) fileID {
	fl := strings.Fields(s)
	if len(fl) < 5 {
		return fileID{Path: s}
	}
	id := fileID{Path: strings.Join(fl[:len(fl)-4], " ")}
	for _, kv := range fl[len(fl)-4:] {
		k, v, _ := strings.Cut(kv, "=")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "size":
			id.Size = n
		case "mtime":
			id.MTime = n
		case "ino":
			id.Ino = uint64(n)
		case "dev":
			id.Dev = uint64(n)
		}
	}
	return id
}

// RemoveClone deletes instance id's clone with its backups, boot files,
// base record and the files kept with its snapshots. It refuses, under the
// instance locks, while the instance runs or another process holds its
// disk open.
func (m *mod) RemoveClone(id int) ([]string, error) {
	if id <= 0 {
		return nil, trace.Usagef("remove clone: instance %d: clones are instances 1 and up", id)
	}
	op := fmt.Sprintf("remove clone %d", id)
	release, err := m.lockStopped(op, id, func(pid int) error {
		return fmt.Errorf("remove clone %d: instance %d is running (pid %d); stop it first", id, id, pid)
	})
	if err != nil {
		return nil, err
	}
	defer release()
	dst := m.f.Disk(id)
	if err := m.refuseOpen(op, dst, false); err != nil {
		return nil, err
	}
	var have []string
	for _, p := range []string{dst, m.baseFile(id), m.f.Kernel(id), m.f.DTB(id), m.f.Sig(id)} {
		for _, q := range []string{p, p + "~"} {
			if _, err := os.Lstat(q); err == nil {
				have = append(have, q)
			}
		}
	}
	tmp := tmpName(dst)
	if _, err := os.Lstat(tmp); err == nil {
		have = append(have, tmp)
	}
	// the files kept with its snapshots, which go with the disk
	if ents, err := os.ReadDir(m.snapDir(id)); err == nil {
		for _, e := range ents {
			if !e.IsDir() {
				have = append(have, filepath.Join(m.snapDir(id), e.Name()))
			}
		}
	}
	if len(have) == 0 {
		m.d.Note("instance %d has no clone files", id)
		return nil, nil
	}
	return have, m.d.Remove(have...)
}

// Clones lists the instance ids > 0 that have a clone file (or backup),
// in order.
func (m *mod) Clones() ([]int, error) {
	all, err := m.instanceIDs()
	if err != nil {
		return nil, err
	}
	var ids []int
	for _, id := range all {
		if id == 0 {
			continue
		}
		for _, p := range []string{m.f.Disk(id), m.f.Disk(id) + "~"} {
			if _, err := os.Lstat(p); err == nil {
				ids = append(ids, id)
				break
			}
		}
	}
	return ids, nil
}

// LinkedClones lists the instances whose linked clone has the file at
// path (links resolved) as its base.
func (m *mod) LinkedClones(path string) ([]int, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, err
	}
	ids, err := m.Clones()
	if err != nil {
		return nil, err
	}
	var out []int
	for _, id := range ids {
		st, err := m.CheckClone(id)
		if err == nil && st.Linked && st.Base == real {
			out = append(out, id)
		}
	}
	return out, nil
}
