package image

import (
	"fmt"
	"os"
	"path/filepath"

	"go.starlark.net/starlark"
	"pifarm/builtins/disk/qcow2"
	"pifarm/builtins/trace"
)

// PromoteResult is what Promote did.
type PromoteResult struct {
	// Image is instance 0's image (the same path as before), now the
	// promoted clone's content; Backup the old image, kept.
	Image, Backup string
	// Rebased are the linked clones of the old image, now backed by
	// Backup.
	Rebased []int
	// Size is the space the new image takes (a sparse file).
	Size int64
}

// backupName is the first free numbered backup name of path, PATH.~N~
// (as GNU cp --backup=numbered names them).
func backupName(path string) string {
	for n := 1; ; n++ {
		p := fmt.Sprintf("%s.~%d~", path, n)
		if _, err := os.Lstat(p); err != nil {
			return p
		}
	}
}

// Promote makes clone id instance 0's image: `qemu-img convert -O raw`
// (sparse) of the clone to a temporary file next to the registered image,
// synced; the old image gets a second name, a numbered backup (IMG.~N~,
// a hard link: no copy), onto which the linked clones of the old image are
// rebased (`qemu-img rebase -u`: the same content under another name) and
// their base records rewritten; then the new file is renamed over the
// image, so the registered path stays. Refused while any instance runs,
// while the clone or the image is open in another process or mounted,
// for a linked clone whose base changed, and when the copy would not fit.
// The caller provides instance 0's boot files afterwards (ProvideQboot:
// the clone's, read from the new image).
func (m *mod) Promote(id int) (*PromoteResult, error) {
	op := fmt.Sprintf("promote %d", id)
	if id <= 0 {
		return nil, trace.Usagef("%s: promote a clone (instance 1 and up) to instance 0's image", op)
	}
	clone, err := m.diskPath(id)
	if err != nil {
		return nil, err
	}
	reg := m.Registered()
	if reg == "" {
		return nil, fmt.Errorf("%s: %w", op, ErrNoImage)
	}
	img, err := filepath.EvalSymlinks(reg)
	if err != nil {
		return nil, fmt.Errorf("%s: the registered image %s: %w", op, reg, err)
	}
	if !qcow2.Is(clone) {
		return nil, fmt.Errorf("%s: %s is not a qcow2 clone", op, clone)
	}
	// Every instance stopped: the linked clones are rebased, instance 0's
	// image replaced.
	release, err := m.guard(op, img, -1)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := m.refuseOpen(op, clone, true); err != nil {
		return nil, err
	}
	if st, err := m.CheckClone(id); err != nil {
		return nil, err
	} else if !st.OK {
		return nil, fmt.Errorf("%s: %s", op, st.Reason)
	}
	linked, err := m.LinkedClones(img)
	if err != nil {
		return nil, err
	}
	for _, l := range linked {
		if st, _ := m.CheckClone(l); !st.OK {
			return nil, fmt.Errorf("%s: the linked clone %d of %s is invalid already (%s); remove it first (pifarm run box --flush-clone %d)", op, l, img, st.Reason, l)
		}
	}
	if err := m.refuseTooBig(op, clone, filepath.Dir(img)); err != nil {
		return nil, err
	}
	fi, err := os.Stat(img)
	if err != nil {
		return nil, err
	}
	tmp := tmpName(img)
	if _, err := os.Lstat(tmp); err == nil {
		if err := m.d.Remove(tmp); err != nil {
			return nil, err
		}
	}
	res := &PromoteResult{Image: img, Backup: backupName(img), Rebased: linked}
	if err := m.convertRaw(op, clone, tmp, fi.Mode().Perm()); err != nil {
		return nil, err
	}
	if err := m.d.Do("ln "+trace.Quote(img)+" "+trace.Quote(res.Backup), func() error { return os.Link(img, res.Backup) }); err != nil {
		m.d.Remove(tmp)
		return nil, fmt.Errorf("%s: keep the old image as %s: %w; nothing else was changed", op, res.Backup, err)
	}
	for _, l := range linked {
		if err := m.rebase(op, l, res.Backup); err != nil {
			return nil, err
		}
	}
	if err := m.d.Rename(tmp, img); err != nil {
		return nil, err
	}
	if !m.d.DryRun {
		if fi, err := os.Stat(img); err == nil {
			res.Size = allocated(fi)
		}
	}
	return res, nil
}

// refuseTooBig refuses a raw copy of the guest view of clone in dir when
// the space its files take (the qcow2 and its backing chain: what the raw
// file can hold at the most) would not fit.
func (m *mod) refuseTooBig(op, clone, dir string) error {
	d, err := m.open(clone)
	if err != nil {
		return err
	}
	ids, err := d.chainIDs()
	d.Close()
	if err != nil {
		return err
	}
	var need int64
	for _, id := range ids {
		if fi, err := os.Stat(id.Path); err == nil {
			need += allocated(fi)
		}
	}
	p, err := planCopy(clone, dir)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if need+copyHeadroom > p.Free {
		return fmt.Errorf("%s: the raw image of %s takes up to %d MiB, the file system of %s has %d MiB free (and keeps %d MiB); nothing was changed: free space first", op, clone, need/mib, dir, p.Free/mib, copyHeadroom/mib)
	}
	m.d.Note("%s: the raw image takes up to %d MiB of %d MiB free", op, need/mib, p.Free/mib)
	return nil
}

// convertRaw writes the guest view of the qcow2 clone to the raw file dst
// (sparse: zero blocks are holes), synced, with mode.
func (m *mod) convertRaw(op, clone, dst string, mode os.FileMode) error {
	if err := m.qemuImg(op, "convert", "-f", "qcow2", "-O", "raw", clone, dst); err != nil {
		if !m.d.DryRun {
			os.Remove(dst)
		}
		return err
	}
	err := m.d.Do(fmt.Sprintf("chmod %o %s && sync %s", mode, trace.Quote(dst), trace.Quote(dst)), func() error {
		f, err := os.OpenFile(dst, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Chmod(mode); err != nil {
			return err
		}
		return f.Sync()
	})
	if err != nil && !m.d.DryRun {
		os.Remove(dst)
	}
	return err
}

// rebase points linked clone id at base (the same content under another
// name): `qemu-img rebase -u`, then its base record.
func (m *mod) rebase(op string, id int, base string) error {
	if err := m.qemuImg(op, "rebase", "-u", "-f", "qcow2", "-b", base, "-F", "raw", m.f.Disk(id)); err != nil {
		return fmt.Errorf("%w (rebase linked clone %d onto %s by hand with the same command)", err, id, base)
	}
	line := fmt.Sprintf("# record %s as the base of linked clone %d in %s", base, id, m.baseFile(id))
	return m.d.Do(line, func() error {
		bid, err := statID(base)
		if err != nil {
			return err
		}
		return m.writeCache(m.baseFile(id), []byte(baseRecord(id, bid)), 0o600, false)
	})
}

func (m *mod) promoteFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, err := m.instanceArg(b, args, kwargs, "instance")
	if err != nil {
		return nil, err
	}
	if err := m.onHost(n, "promotion"); err != nil {
		return nil, err
	}
	r, err := m.Promote(n)
	if err != nil {
		return nil, err
	}
	return mkstruct("promotion", starlark.StringDict{
		"image": starlark.String(r.Image), "backup": starlark.String(r.Backup),
		"rebased": trace.Ints(r.Rebased), "size": starlark.MakeInt64(r.Size),
	}), nil
}
