package image

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"

	"pifarm/builtins/trace"
)

// The image module's files in the cache (the boot files .ker and .dtb,
// their .sig, the .base records of linked clones, NAME~ backups and the
// link clone-0.raw) are written through an os.Root opened on the cache
// folder: the plain file actions (mkdir -p, mv -f, ln -s, rm -f) through
// m.cache(), the door's trace.Root on it, the writing of files through a
// cacheFS:
//
//   - no write follows a symbolic link out of the cache: an absolute link,
//     or one through "..", planted at a folder or file name below the cache
//     is an error naming it (the cache folder itself may be a link);
//   - no file is written in place: its content goes to a fixed temporary
//     name next to it, .NAME.tmp, created exclusively (a link planted there
//     is replaced, not followed) with its mode set exactly, is synced, and
//     is renamed over NAME (a link at NAME is replaced); the folder is
//     synced after the rename;
//   - a backup NAME~ is a hard link to the replaced file (a link at NAME is
//     linked as a link, not followed).
//
// The fixed temporary names are what lets the next run find and remove
// what a killed one left (removeLeftovers); they are written only under
// the instance locks, so two pifarms never share one.
type cacheFS struct {
	root *os.Root
	tr   *trace.Root // the cache as the door's Root: names, errors
}

// cache is the cache folder as a trace.Root: the door's file actions
// (rm -f, mv -f, mkdir -p, ln -s) confined to it, opened (and made when
// missing) by openCacheRoot.
func (m *mod) cache() *trace.Root {
	return &trace.Root{Door: m.d, Dir: m.f.Config.CacheDir(), What: "its cache", Open: m.openCacheRoot}
}

// openCacheRoot opens the cache folder, creating it (0700, the user's
// alone) when missing.
func (m *mod) openCacheRoot() (*os.Root, error) {
	dir := m.f.Config.CacheDir()
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return nil, fmt.Errorf("create the cache %s: %w", dir, err)
		}
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create the cache %s: %w", dir, err)
		}
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open the cache %s: %w", dir, err)
	}
	return r, nil
}

// withCache runs fn on the opened cache. It acts: the caller has passed
// the door (or cleans up after a failed action, live).
func (m *mod) withCache(fn func(c *cacheFS) error) error {
	tr := m.cache()
	return tr.With(func(root *os.Root) error { return fn(&cacheFS{root: root, tr: tr}) })
}

// tmpName is the fixed temporary name of path: .NAME.tmp next to it.
func tmpName(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
}

// stage writes data to tmp (a fixed temporary name): a file or link left
// there is removed first, the new file is created exclusively with exactly
// mode and synced. On failure nothing is left at tmp.
func (c *cacheFS) stage(tmp string, data []byte, mode os.FileMode) error {
	r, err := c.tr.Rel(tmp)
	if err != nil {
		return err
	}
	if err := c.root.Remove(r); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return c.tr.Explain("remove", tmp, err)
	}
	f, err := c.root.OpenFile(r, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode.Perm())
	if err != nil {
		return c.tr.Explain("create", tmp, err)
	}
	err = writeSync(f, data, mode)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		c.root.Remove(r)
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	return nil
}

func writeSync(f *os.File, data []byte, mode os.FileMode) error {
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(mode.Perm()); err != nil { // exactly, whatever the umask
		return err
	}
	return f.Sync()
}

// commit renames tmp over path (keeping the replaced file as path~ when
// backup is set) and syncs the folder. On failure tmp is removed.
func (c *cacheFS) commit(tmp, path string, backup bool) error {
	rt, err := c.tr.Rel(tmp)
	if err != nil {
		return err
	}
	err = c.rename(tmp, path, backup)
	if err != nil {
		c.root.Remove(rt)
	}
	return err
}

// rename renames old over path (keeping the replaced file as path~ when
// backup is set: a hard link, or the file itself moved aside where the
// file system has no hard links) and syncs the folder.
func (c *cacheFS) rename(old, path string, backup bool) error {
	ro, err := c.tr.Rel(old)
	if err != nil {
		return err
	}
	rp, err := c.tr.Rel(path)
	if err != nil {
		return err
	}
	if _, err := c.root.Lstat(rp); backup && err == nil {
		if err := c.root.Remove(rp + "~"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return c.tr.Explain("remove", path+"~", err)
		}
		if err := c.root.Link(rp, rp+"~"); err != nil {
			if err := c.root.Rename(rp, rp+"~"); err != nil {
				return c.tr.Explain("keep the old file as", path+"~", err)
			}
		}
	}
	if err := c.root.Rename(ro, rp); err != nil {
		return c.tr.Explain("rename "+old+" to", path, err)
	}
	return c.syncDir(filepath.Dir(path))
}

// syncDir makes the renames in folder dir durable.
func (c *cacheFS) syncDir(dir string) error {
	r := "."
	if dir != c.tr.Dir {
		var err error
		if r, err = c.tr.Rel(dir); err != nil {
			return err
		}
	}
	return trace.SyncIn(c.root, r)
}

// remove removes files (or links; never followed) below the cache, with
// no trace line (the clean-up of a failed action); a missing one is fine.
func (c *cacheFS) remove(paths ...string) error {
	for _, p := range paths {
		r, err := c.tr.Rel(p)
		if err != nil {
			return err
		}
		if err := c.root.Remove(r); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return c.tr.Explain("rm -f", p, err)
		}
	}
	return nil
}

// writeCache is the live half of writing a file of the cache: data goes
// to path through its fixed temporary name (see cacheFS). The caller
// holds the instance locks and has passed the door.
func (m *mod) writeCache(path string, data []byte, mode os.FileMode, backup bool) error {
	return m.withCache(func(c *cacheFS) error {
		tmp := tmpName(path)
		if err := c.stage(tmp, data, mode); err != nil {
			return err
		}
		return c.commit(tmp, path, backup)
	})
}

// sameInCache reports whether the cache file path holds exactly data (read
// through the cache's root: a symbolic link is never followed out of it).
// Any failure to read it is "no".
func (m *mod) sameInCache(path string, data []byte) bool {
	same := false
	m.withCache(func(c *cacheFS) error {
		r, err := c.tr.Rel(path)
		if err != nil {
			return err
		}
		f, err := c.root.Open(r)
		if err != nil {
			return err
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() || fi.Size() != int64(len(data)) {
			return err
		}
		b := make([]byte, len(data)+1)
		n, _ := io.ReadFull(f, b)
		same = n == len(data) && bytes.Equal(b[:n], data)
		return nil
	})
	return same
}

// leftoverRE matches the temporary files of an instance folder that a
// killed pifarm leaves: the fixed names of the boot files and the .sig
// (.clone-N.ker.tmp), and the names with random digits that earlier
// versions used for those and the .base records (.clone-N.base.tmp123).
// The fixed name of a .base record, .clone-N.base.tmp, is a prepared
// record of an interrupted seed: only Seed decides on it (see
// finishPendingRecords).
var leftoverRE = regexp.MustCompile(`^\.clone-(\d+)\.(?:(?:ker|dtb|sig)\.tmp|(?:ker|dtb|sig|base)\.tmp\d+)$`)

// removeLeftovers removes the temporary files that a killed pifarm left in
// instance id's folder. The caller holds the instance locks (no pifarm
// writes such a file meanwhile).
func (m *mod) removeLeftovers(id int) error {
	return m.removeIn(m.f.InstanceDir(id), func(name string) bool {
		sm := leftoverRE.FindStringSubmatch(name)
		return sm != nil && sm[1] == strconv.Itoa(id)
	})
}

// removeIn removes the files of folder dir (in the cache) whose names
// match (rm -f); a missing folder has none.
func (m *mod) removeIn(dir string, match func(name string) bool) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	var left []string
	for _, e := range ents {
		if match(e.Name()) && !e.IsDir() {
			left = append(left, filepath.Join(dir, e.Name()))
		}
	}
	if len(left) == 0 {
		return nil
	}
	return m.cache().Remove(left...)
}
