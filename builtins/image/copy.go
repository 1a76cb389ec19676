package image

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
	"pifarm/builtins/trace"
)

// Copies of raw images (instance 0's snapshots, their rollback): shared
// extents where the file system has them (cp --reflink=always: instant, no
// space), else a sparse copy (cp --sparse=always: the image's holes and
// zero blocks stay holes), refused when it would not fit.

// reflinkFS are the file systems (statfs f_type) whose files can share
// extents: btrfs, XFS (reflink=1, mkfs.xfs's default since xfsprogs 5.1)
// and bcachefs.
var reflinkFS = map[int64]string{0x9123683e: "btrfs", 0x58465342: "xfs", 0xca451a4e: "bcachefs"}

// copyHeadroom is the space a sparse copy leaves free on its file system
// at least (the guest's runs, logs and the next snapshot need room too).
const copyHeadroom = 64 * mib

// copyPlan is how a raw image is copied to a folder.
type copyPlan struct {
	Reflink    bool   // the same file system, and one that shares extents
	FS         string // its name when it can
	Need, Free int64  // bytes a sparse copy takes; bytes free for this user
}

// existingDir is dir or its nearest existing parent (a dry run's folders
// are not made).
func existingDir(dir string) string {
	for {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			return dir
		}
		up := filepath.Dir(dir)
		if up == dir {
			return dir
		}
		dir = up
	}
}

// planCopy says how src would be copied into dir.
func planCopy(src, dir string) (copyPlan, error) {
	dir = existingDir(dir)
	var p copyPlan
	fi, err := os.Stat(src)
	if err != nil {
		return p, err
	}
	di, err := os.Stat(dir)
	if err != nil {
		return p, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return p, fmt.Errorf("statfs %s: %w", dir, err)
	}
	p.Need = allocated(fi)
	p.Free = int64(st.Bavail) * int64(st.Bsize)
	s1, ok1 := fi.Sys().(*syscall.Stat_t)
	s2, ok2 := di.Sys().(*syscall.Stat_t)
	p.FS = reflinkFS[int64(st.Type)]
	p.Reflink = ok1 && ok2 && s1.Dev == s2.Dev && p.FS != ""
	return p, nil
}

// copyDisk copies the raw image src to dst, a new file (see copyPlan).
func (m *mod) copyDisk(op, src, dst string) error {
	p, err := planCopy(src, filepath.Dir(dst))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	sparse := func() error {
		if p.Need+copyHeadroom > p.Free {
			return fmt.Errorf("%s: a copy of %s takes %d MiB, the file system of %s has %d MiB free (and keeps %d MiB); nothing was copied: free space, or delete snapshots (pifarm run box --snapshots N lists them)",
				op, src, p.Need/mib, existingDir(filepath.Dir(dst)), p.Free/mib, copyHeadroom/mib)
		}
		m.d.Note("%s: a sparse copy of %s: %d MiB of %d MiB free", op, src, p.Need/mib, p.Free/mib)
		_, err := m.d.Exec(trace.Cmd{Argv: []string{"cp", "--sparse=always", src, dst}})
		if err != nil && !m.d.DryRun {
			os.Remove(dst)
		}
		return err
	}
	if !p.Reflink {
		return sparse()
	}
	_, err = m.d.Exec(trace.Cmd{Argv: []string{"cp", "--reflink=always", src, dst}})
	if err == nil {
		return nil
	}
	// XFS made without reflink, a bind mount across file systems
	os.Remove(dst)
	m.d.Note("%s: %s cannot share the extents of %s here (%v)", op, p.FS, src, err)
	return sparse()
}
