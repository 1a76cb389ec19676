package image

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"pifarm/builtins/trace"
)

// The image module's files in the cache (the boot files .ker and .dtb,
// their .sig, the .base records of linked clones, NAME~ backups and the
// link clone-0.raw) are written through a cacheFS, an os.Root opened on
// the cache folder:
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
	dir  string // the cache folder
}

// openCache opens the cache folder, creating it (0700, the user's alone)
// when missing.
func (m *mod) openCache() (*cacheFS, error) {
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
	return &cacheFS{root: r, dir: dir}, nil
}

// withCache runs fn on the opened cache.
func (m *mod) withCache(fn func(c *cacheFS) error) error {
	c, err := m.openCache()
	if err != nil {
		return err
	}
	defer c.root.Close()
	return fn(c)
}

// rel is path relative to the cache folder; paths outside it are refused.
func (c *cacheFS) rel(path string) (string, error) {
	r, err := filepath.Rel(c.dir, path)
	if err != nil || r == "." || r == ".." || strings.HasPrefix(r, "../") {
		return "", fmt.Errorf("%s is not in the cache %s", path, c.dir)
	}
	return r, nil
}

// fail turns an error of an operation on path into one that names the
// planted link when a symbolic link is why it failed.
func (c *cacheFS) fail(op, path string, err error) error {
	if r, rerr := c.rel(path); rerr == nil {
		p := c.dir
		for _, part := range strings.Split(r, "/") {
			p = filepath.Join(p, part)
			fi, lerr := os.Lstat(p)
			if lerr != nil {
				break
			}
			if fi.Mode()&os.ModeSymlink != 0 {
				t, _ := os.Readlink(p)
				if p == path {
					return fmt.Errorf("%s %s: it is a symbolic link (to %s); pifarm writes only regular files in its cache: remove the link", op, path, t)
				}
				return fmt.Errorf("%s %s: %s is a symbolic link (to %s) and pifarm writes only into folders of its cache %s: remove the link (look at what it points to first)", op, path, p, t, c.dir)
			}
		}
	}
	return fmt.Errorf("%s %s: %w", op, path, err)
}

// tmpName is the fixed temporary name of path: .NAME.tmp next to it.
func tmpName(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
}

// mkdirAll creates the folder path (and its parents) below the cache.
func (c *cacheFS) mkdirAll(path string) error {
	r, err := c.rel(path)
	if err != nil {
		return err
	}
	if err := c.root.MkdirAll(r, 0o755); err != nil {
		return c.fail("mkdir -p", path, err)
	}
	return nil
}

// stage writes data to tmp (a fixed temporary name): a file or link left
// there is removed first, the new file is created exclusively with exactly
// mode and synced. On failure nothing is left at tmp.
func (c *cacheFS) stage(tmp string, data []byte, mode os.FileMode) error {
	r, err := c.rel(tmp)
	if err != nil {
		return err
	}
	if err := c.root.Remove(r); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return c.fail("remove", tmp, err)
	}
	f, err := c.root.OpenFile(r, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode.Perm())
	if err != nil {
		return c.fail("create", tmp, err)
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
	rt, err := c.rel(tmp)
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
	ro, err := c.rel(old)
	if err != nil {
		return err
	}
	rp, err := c.rel(path)
	if err != nil {
		return err
	}
	if _, err := c.root.Lstat(rp); backup && err == nil {
		if err := c.root.Remove(rp + "~"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return c.fail("remove", path+"~", err)
		}
		if err := c.root.Link(rp, rp+"~"); err != nil {
			if err := c.root.Rename(rp, rp+"~"); err != nil {
				return c.fail("keep the old file as", path+"~", err)
			}
		}
	}
	if err := c.root.Rename(ro, rp); err != nil {
		return c.fail("rename "+old+" to", path, err)
	}
	return c.syncDir(filepath.Dir(path))
}

// syncDir makes the renames in folder dir durable.
func (c *cacheFS) syncDir(dir string) error {
	r := "."
	if dir != c.dir {
		var err error
		if r, err = c.rel(dir); err != nil {
			return err
		}
	}
	f, err := c.root.Open(r)
	if err != nil {
		return c.fail("open", dir, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// symlink creates link (below the cache) pointing to target (anywhere).
func (c *cacheFS) symlink(target, link string) error {
	r, err := c.rel(link)
	if err != nil {
		return err
	}
	if err := c.root.Symlink(target, r); err != nil {
		return c.fail("ln -s "+target, link, err)
	}
	return nil
}

// remove removes files (or links; never followed) below the cache; a
// missing one is fine.
func (c *cacheFS) remove(paths ...string) error {
	for _, p := range paths {
		r, err := c.rel(p)
		if err != nil {
			return err
		}
		if err := c.root.Remove(r); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return c.fail("rm -f", p, err)
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
	dir := m.f.InstanceDir(id)
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	var left []string
	for _, e := range ents {
		if sm := leftoverRE.FindStringSubmatch(e.Name()); sm != nil && sm[1] == strconv.Itoa(id) && !e.IsDir() {
			left = append(left, filepath.Join(dir, e.Name()))
		}
	}
	if len(left) == 0 {
		return nil
	}
	return m.d.Do("rm -f "+trace.Join(left), func() error {
		return m.withCache(func(c *cacheFS) error { return c.remove(left...) })
	})
}
