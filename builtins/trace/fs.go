package trace

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The file-system actions below derive their trace line from the very
// arguments they act on, so a dry run cannot describe something other than
// what a live run does. Each prints one POSIX shell command (quoted with
// Quote) that does the same thing whenever the live action succeeds; where
// the shell command would do something else (mv onto a folder moves into
// it), the live action refuses instead. "--" ends the options only when an
// operand starts with "-", so ordinary lines read as they always did.

// shellLine renders a command with its flags and operands, putting "--"
// before the operands when one of them could be taken for an option.
func shellLine(cmd string, flags []string, operands ...string) string {
	argv := append([]string{cmd}, flags...)
	for _, o := range operands {
		if strings.HasPrefix(o, "-") {
			argv = append(argv, "--")
			break
		}
	}
	return Join(append(argv, operands...))
}

// checkOperand refuses paths a removal must never be given: empty, "/",
// "." and ".." (also spelled "a/.." or "//"), whatever the mode: a dry run
// fails as the live one would.
func checkOperand(op, p string) error {
	if p == "" {
		return fmt.Errorf("%s: empty path (an unset variable?)", op)
	}
	switch filepath.Clean(p) {
	case ".", "/", "..":
		return fmt.Errorf("%s %s: refusing to remove the root or the working folder (name the folder to remove)", op, Quote(p))
	}
	return nil
}

// Remove removes files and symbolic links, as "rm -f -- P..." does: a
// missing path is fine, a folder is an error (use RemoveAll). Every path is
// checked before any is removed, so a folder among them removes nothing.
func (d *Door) Remove(paths ...string) error {
	if len(paths) == 0 {
		return nil
	}
	for _, p := range paths {
		if err := checkOperand("rm -f", p); err != nil {
			return err
		}
	}
	return d.Do(shellLine("rm", []string{"-f"}, paths...), func() error {
		for _, p := range paths {
			if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
				return fmt.Errorf("rm -f %s: a folder; nothing was removed (remove its content first, or use a recursive removal)", Quote(p))
			}
		}
		for _, p := range paths {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("rm -f %s: %w", Quote(p), err)
			}
		}
		return nil
	})
}

// RemoveAll removes path and everything below it, as "rm -rf -- P" does; a
// missing path is fine and a symbolic link is removed, not followed. "", "/",
// "." and ".." are refused in every mode.
func (d *Door) RemoveAll(path string) error {
	if err := checkOperand("rm -rf", path); err != nil {
		return err
	}
	return d.Do(shellLine("rm", []string{"-rf"}, path), func() error {
		if err := os.RemoveAll(path); err != nil {
			return fmt.Errorf("rm -rf %s: %w", Quote(path), err)
		}
		return nil
	})
}

// Rename renames oldpath to newpath, replacing a file there, as
// "mv -f -- OLD NEW" does. A folder at newpath is refused: mv would move
// oldpath into it, rename(2) would replace it when empty.
func (d *Door) Rename(oldpath, newpath string) error {
	if oldpath == "" || newpath == "" {
		return fmt.Errorf("mv -f %s %s: empty path (an unset variable?)", Quote(oldpath), Quote(newpath))
	}
	return d.Do(shellLine("mv", []string{"-f"}, oldpath, newpath), func() error {
		if fi, err := os.Stat(newpath); err == nil && fi.IsDir() {
			return fmt.Errorf("mv -f %s %s: the target is a folder; nothing was moved (remove it first, or name the file inside it)", Quote(oldpath), Quote(newpath))
		}
		if err := os.Rename(oldpath, newpath); err != nil {
			return fmt.Errorf("mv -f %s %s: %w", Quote(oldpath), Quote(newpath), err)
		}
		return nil
	})
}

// MkdirAll creates path and its missing parents, as "mkdir -p -m MODE -- P"
// does. The parents get the default mode (0777 less the umask); path itself
// gets exactly mode (no umask), or the default mode when mode is 0 (the line
// is then plain "mkdir -p P"). An existing folder is left as it is, mode
// and all, and prints nothing in any mode: nothing would happen.
func (d *Door) MkdirAll(path string, mode os.FileMode) error {
	if path == "" {
		return errors.New("mkdir -p: empty path (an unset variable?)")
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return nil
	}
	flags := []string{"-p"}
	if mode != 0 {
		flags = append(flags, "-m", fmt.Sprintf("%o", mode.Perm()))
	}
	line := shellLine("mkdir", flags, path)
	return d.Do(line, func() error {
		if err := mkdirIn(osDirs{}, path, mode); err != nil {
			return fmt.Errorf("%s: %w", line, err)
		}
		return nil
	})
}

// Symlink creates the symbolic link link pointing to target, as
// "ln -s -- TARGET LINK" does. Anything already at link is refused (ln -s
// would put the link inside a folder there).
func (d *Door) Symlink(target, link string) error {
	if target == "" || link == "" {
		return fmt.Errorf("ln -s %s %s: empty path (an unset variable?)", Quote(target), Quote(link))
	}
	return d.Do(shellLine("ln", []string{"-s"}, target, link), func() error {
		if _, err := os.Lstat(link); err == nil {
			return fmt.Errorf("ln -s %s %s: %s already exists; nothing was changed (move it aside first)", Quote(target), Quote(link), link)
		}
		if err := os.Symlink(target, link); err != nil {
			return fmt.Errorf("ln -s %s %s: %w", Quote(target), Quote(link), err)
		}
		return nil
	})
}
