package trace

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Root confines the door's file actions to a folder (pifarm's cache): they
// act through an os.Root opened on Dir, so no symbolic link planted below
// Dir leads them out of it, whether it stands at a folder on the way or at
// the path acted on (a link there is removed or renamed itself, never
// followed out). Dir itself may be a link. Each action prints the line of
// its Door counterpart (Door.Remove, Rename, MkdirAll, Symlink) and refuses
// what that one refuses; where a planted link is why an action failed, the
// error names the link and the fix.
type Root struct {
	// Door prints and gates the actions.
	Door *Door
	// Dir is the folder; every path given to an action must be below it
	// (paths are written as Dir joined with the rest, as the trace shows
	// them).
	Dir string
	// What names Dir in errors, e.g. "its cache" ("pifarm writes only into
	// folders of its cache DIR"); empty means plain Dir.
	What string
	// Open, when set, opens Dir for one live action (to create it first,
	// say); nil means os.OpenRoot(Dir). A dry run never opens Dir.
	Open func() (*os.Root, error)
}

// Rel is path relative to Dir, the name the os.Root takes. A path that is
// Dir itself or outside it is an error.
func (r *Root) Rel(path string) (string, error) {
	rel, err := filepath.Rel(r.Dir, path)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%s is not in %s", path, r.name())
	}
	return rel, nil
}

// name is Dir as errors name it.
func (r *Root) name() string {
	if r.What == "" {
		return r.Dir
	}
	return r.What + " " + r.Dir
}

// With opens Dir and runs fn on it (live only: it is for the action of a
// line the caller has printed, or for a clean-up that prints none).
func (r *Root) With(fn func(root *os.Root) error) error {
	open := r.Open
	if open == nil {
		open = func() (*os.Root, error) { return os.OpenRoot(r.Dir) }
	}
	root, err := open()
	if err != nil {
		return err
	}
	defer root.Close()
	return fn(root)
}

// Explain is the error of operation op (a command, "rm -f") on path: when
// a symbolic link at path or at a folder between Dir and path is why it
// failed, the error names that link and says to remove it; otherwise it is
// "OP PATH: ERR".
func (r *Root) Explain(op, path string, err error) error {
	if rel, rerr := r.Rel(path); rerr == nil {
		p := r.Dir
		for _, part := range strings.Split(rel, "/") {
			p = filepath.Join(p, part)
			fi, lerr := os.Lstat(p)
			if lerr != nil {
				break
			}
			if fi.Mode()&fs.ModeSymlink != 0 {
				t, _ := os.Readlink(p)
				if p == path {
					return fmt.Errorf("%s %s: it is a symbolic link (to %s), and pifarm does not act through links in %s: remove the link (look at what it points to first)", op, path, t, r.name())
				}
				return fmt.Errorf("%s %s: %s is a symbolic link (to %s) and pifarm writes only into folders of %s: remove the link (look at what it points to first)", op, path, p, t, r.name())
			}
		}
	}
	return fmt.Errorf("%s %s: %w", op, path, err)
}

// Remove removes files and symbolic links below Dir, as Door.Remove does
// ("rm -f -- P..."; a missing path is fine, a folder is refused before
// anything is removed), never through a link out of Dir.
func (r *Root) Remove(paths ...string) error {
	if len(paths) == 0 {
		return nil
	}
	rels := make([]string, len(paths))
	for i, p := range paths {
		if err := checkOperand("rm -f", p); err != nil {
			return err
		}
		rel, err := r.Rel(p)
		if err != nil {
			return fmt.Errorf("rm -f %s: %w", Quote(p), err)
		}
		rels[i] = rel
	}
	return r.Door.Do(shellLine("rm", []string{"-f"}, paths...), func() error {
		return r.With(func(root *os.Root) error {
			for i, rel := range rels {
				fi, err := root.Lstat(rel)
				switch {
				case err == nil && fi.IsDir():
					return fmt.Errorf("rm -f %s: a folder; nothing was removed (remove its content first, or use a recursive removal)", Quote(paths[i]))
				case err != nil && !errors.Is(err, fs.ErrNotExist):
					return r.Explain("rm -f", paths[i], fmt.Errorf("%w; nothing was removed", err))
				}
			}
			for i, rel := range rels {
				if err := root.Remove(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return r.Explain("rm -f", paths[i], err)
				}
			}
			return nil
		})
	})
}

// Rename renames oldpath to newpath, both below Dir, replacing a file or
// link there, as Door.Rename does ("mv -f -- OLD NEW"; a folder at newpath
// is refused), and syncs newpath's folder so that the rename is durable.
func (r *Root) Rename(oldpath, newpath string) error {
	if oldpath == "" || newpath == "" {
		return fmt.Errorf("mv -f %s %s: empty path (an unset variable?)", Quote(oldpath), Quote(newpath))
	}
	ro, err := r.Rel(oldpath)
	if err != nil {
		return fmt.Errorf("mv -f %s %s: %w", Quote(oldpath), Quote(newpath), err)
	}
	rn, err := r.Rel(newpath)
	if err != nil {
		return fmt.Errorf("mv -f %s %s: %w", Quote(oldpath), Quote(newpath), err)
	}
	return r.Door.Do(shellLine("mv", []string{"-f"}, oldpath, newpath), func() error {
		return r.With(func(root *os.Root) error {
			if fi, err := root.Lstat(rn); err == nil && fi.IsDir() {
				return fmt.Errorf("mv -f %s %s: the target is a folder; nothing was moved (remove it first, or name the file inside it)", Quote(oldpath), Quote(newpath))
			}
			if err := root.Rename(ro, rn); err != nil {
				if _, lerr := root.Lstat(ro); lerr != nil {
					return r.Explain("mv -f", oldpath, err)
				}
				return r.Explain("mv -f "+oldpath, newpath, err)
			}
			return SyncIn(root, filepath.Dir(rn))
		})
	})
}

// SyncIn syncs the folder rel of root (after a rename or a new file in
// it, so that the change survives a crash).
func SyncIn(root *os.Root, rel string) error {
	f, err := root.Open(rel)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", filepath.Join(root.Name(), rel), err)
	}
	return nil
}

// MkdirAll creates the folder path below Dir and its missing parents, as
// Door.MkdirAll does ("mkdir -p [-m MODE] -- P"; nothing printed for a
// folder that exists). A symbolic link at path is refused in every mode,
// and one out of Dir on the way fails the live action: nothing is created
// through a link.
func (r *Root) MkdirAll(path string, mode os.FileMode) error {
	if path == "" {
		return errors.New("mkdir -p: empty path (an unset variable?)")
	}
	rel, err := r.Rel(path)
	if err != nil {
		return fmt.Errorf("mkdir -p %s: %w", Quote(path), err)
	}
	fi, err := os.Lstat(path)
	switch {
	case err == nil && fi.IsDir():
		return nil
	case err == nil && fi.Mode()&fs.ModeSymlink != 0:
		return r.Explain("mkdir -p", path, fs.ErrExist)
	}
	flags := []string{"-p"}
	if mode != 0 {
		flags = append(flags, "-m", fmt.Sprintf("%o", mode.Perm()))
	}
	return r.Door.Do(shellLine("mkdir", flags, path), func() error {
		return r.With(func(root *os.Root) error {
			if err := mkdirIn(root, rel, mode); err != nil {
				return r.Explain("mkdir -p", path, err)
			}
			return nil
		})
	})
}

// dirMaker is what mkdirIn makes folders with: the os package (osDirs)
// or an os.Root.
type dirMaker interface {
	Stat(name string) (fs.FileInfo, error)
	MkdirAll(name string, perm fs.FileMode) error
	Mkdir(name string, perm fs.FileMode) error
	Chmod(name string, mode fs.FileMode) error
}

// osDirs is the os package as a dirMaker.
type osDirs struct{}

func (osDirs) Stat(name string) (fs.FileInfo, error)        { return os.Stat(name) }
func (osDirs) MkdirAll(name string, perm fs.FileMode) error { return os.MkdirAll(name, perm) }
func (osDirs) Mkdir(name string, perm fs.FileMode) error    { return os.Mkdir(name, perm) }
func (osDirs) Chmod(name string, mode fs.FileMode) error    { return os.Chmod(name, mode) }

// mkdirIn creates the folder path and its missing parents with dm: the
// parents with the default mode (0777 less the umask), path with exactly
// mode (the default when 0). An existing folder is left as it is.
func mkdirIn(dm dirMaker, path string, mode os.FileMode) error {
	if fi, err := dm.Stat(path); err == nil {
		if fi.IsDir() {
			return nil
		}
		return fmt.Errorf("%s exists and is not a folder", path)
	}
	if mode == 0 {
		return dm.MkdirAll(path, 0o777)
	}
	if dir := filepath.Dir(filepath.Clean(path)); dir != "." {
		if err := dm.MkdirAll(dir, 0o777); err != nil {
			return err
		}
	}
	if err := dm.Mkdir(path, mode.Perm()); err != nil {
		if fi, serr := dm.Stat(path); serr == nil && fi.IsDir() {
			return nil // made meanwhile by someone else: mkdir -p is content
		}
		return err
	}
	return dm.Chmod(path, mode.Perm())
}

// Symlink creates the symbolic link link below Dir pointing to target
// (anywhere), as Door.Symlink does ("ln -s -- TARGET LINK"; anything
// already at link is refused).
func (r *Root) Symlink(target, link string) error {
	if target == "" || link == "" {
		return fmt.Errorf("ln -s %s %s: empty path (an unset variable?)", Quote(target), Quote(link))
	}
	rel, err := r.Rel(link)
	if err != nil {
		return fmt.Errorf("ln -s %s %s: %w", Quote(target), Quote(link), err)
	}
	return r.Door.Do(shellLine("ln", []string{"-s"}, target, link), func() error {
		return r.With(func(root *os.Root) error {
			if _, err := root.Lstat(rel); err == nil {
				return fmt.Errorf("ln -s %s %s: %s already exists; nothing was changed (move it aside first)", Quote(target), Quote(link), link)
			}
			if err := root.Symlink(target, rel); err != nil {
				return r.Explain("ln -s "+target, link, err)
			}
			return nil
		})
	})
}
