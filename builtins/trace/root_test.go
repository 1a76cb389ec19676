package trace

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRootActionsAreTheDoorsConfined: each Root action prints the line of
// its Door counterpart, dry and live, and does what that one does (the
// trees compare equal; TestFSActionsMatchTheirTraceLines holds the Door's
// actions to their lines). Through the link "up" (to "..", out of the
// folder) it refuses, naming the link, and changes nothing; the link
// itself is removed or renamed like a file.
func TestRootActionsAreTheDoorsConfined(t *testing.T) {
	for _, tc := range []struct {
		name     string
		root     func(r *Root) error
		door     func(d *Door) error // nil: the live action is refused
		line     string              // the trace line; "" when nothing is printed
		liveErr  string              // the live action is refused with this error
		checkErr string              // refused in every mode, before any line
	}{
		{"remove", func(r *Root) error { return r.Remove("a", "a b", "-x", "nope") }, func(d *Door) error { return d.Remove("a", "a b", "-x", "nope") },
			`rm -f -- a 'a b' -x nope`, "", ""},
		{"remove the link out", func(r *Root) error { return r.Remove("up") }, func(d *Door) error { return d.Remove("up") }, "rm -f up", "", ""},
		{"remove through the link out", func(r *Root) error { return r.Remove("a", "up/a") }, nil, "rm -f a up/a", "up is a symbolic link (to ..)", ""},
		{"remove a folder", func(r *Root) error { return r.Remove("a", "empty") }, nil, "rm -f a empty", "rm -f empty: a folder; nothing was removed", ""},
		{"remove outside", func(r *Root) error { return r.Remove("../a") }, nil, "", "", "../a is not in ."},
		{"remove nothing", func(r *Root) error { return r.Remove() }, func(d *Door) error { return d.Remove() }, "", "", ""},
		{"rename", func(r *Root) error { return r.Rename("a", "d/sub/f") }, func(d *Door) error { return d.Rename("a", "d/sub/f") }, "mv -f a d/sub/f", "", ""},
		{"rename the link out", func(r *Root) error { return r.Rename("up", "up~") }, func(d *Door) error { return d.Rename("up", "up~") }, `mv -f up 'up~'`, "", ""},
		{"rename into the link out", func(r *Root) error { return r.Rename("a", "up/a") }, nil, "mv -f a up/a", "up is a symbolic link (to ..)", ""},
		{"rename onto a folder", func(r *Root) error { return r.Rename("a", "empty") }, nil, "mv -f a empty", "the target is a folder; nothing was moved", ""},
		{"mkdir", func(r *Root) error { return r.MkdirAll("n/o/p", 0) }, func(d *Door) error { return d.MkdirAll("n/o/p", 0) }, "mkdir -p n/o/p", "", ""},
		{"mkdir mode", func(r *Root) error { return r.MkdirAll("d/n", 0o700) }, func(d *Door) error { return d.MkdirAll("d/n", 0o700) }, "mkdir -p -m 700 d/n", "", ""},
		{"mkdir existing", func(r *Root) error { return r.MkdirAll("d/sub", 0) }, func(d *Door) error { return d.MkdirAll("d/sub", 0) }, "", "", ""},
		{"mkdir the link out", func(r *Root) error { return r.MkdirAll("up", 0) }, nil, "", "", "mkdir -p up: it is a symbolic link (to ..)"},
		{"mkdir through the link out", func(r *Root) error { return r.MkdirAll("up/n", 0o700) }, nil, "mkdir -p -m 700 up/n", "up is a symbolic link (to ..)", ""},
		{"mkdir over a file", func(r *Root) error { return r.MkdirAll("a", 0) }, nil, "mkdir -p a", "a exists and is not a folder", ""},
		{"symlink", func(r *Root) error { return r.Symlink("/x y", "d/l") }, func(d *Door) error { return d.Symlink("/x y", "d/l") }, "ln -s '/x y' d/l", "", ""},
		{"symlink through the link out", func(r *Root) error { return r.Symlink("a", "up/l") }, nil, "ln -s a up/l", "up is a symbolic link (to ..)", ""},
		{"symlink over a file", func(r *Root) error { return r.Symlink("a", "b") }, nil, "ln -s a b", "b already exists; nothing was changed", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			inRoot, byDoor := filepath.Join(parent, "root"), filepath.Join(parent, "door")
			for _, dir := range []string{inRoot, byDoor} {
				layout(t, dir)
				if err := os.Symlink("..", filepath.Join(dir, "up")); err != nil {
					t.Fatal(err)
				}
			}
			start, outside := tree(t, inRoot), tree(t, parent)
			want := tc.line
			if want != "" {
				want += "\n"
			}
			t.Chdir(inRoot)
			for _, dry := range []bool{true, false} {
				var out bytes.Buffer
				err := tc.root(&Root{Door: New(context.Background(), dry, true, &out), Dir: "."})
				switch {
				case tc.checkErr != "" || !dry && tc.liveErr != "":
					if msg := tc.checkErr + tc.liveErr; err == nil || !strings.Contains(err.Error(), msg) {
						t.Fatalf("dry %v: err %v, want %q", dry, err, msg)
					}
				case err != nil:
					t.Fatalf("dry %v: %v", dry, err)
				}
				if out.String() != want {
					t.Fatalf("dry %v: line %q, want %q", dry, out.String(), want)
				}
				if dry || tc.door == nil {
					if got := tree(t, parent); got != outside {
						t.Fatalf("dry %v: the action changed\n%s", dry, got)
					}
				}
			}
			if tc.door == nil {
				return
			}
			t.Chdir(byDoor)
			var out bytes.Buffer
			if err := tc.door(New(context.Background(), false, true, &out)); err != nil || out.String() != want {
				t.Fatalf("the door's action: %v, line %q", err, out.String())
			}
			if got, want := tree(t, inRoot), tree(t, byDoor); got != want {
				t.Fatalf("in the root:\n%s\nby the door:\n%s", got, want)
			}
			if tc.line != "" && tree(t, inRoot) == start {
				t.Fatal("the action changed nothing")
			}
		})
	}
}

// TestRootOpen: a live action opens the folder through Open (which may
// make it first); a dry run never does.
func TestRootOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	opened := 0
	open := func() (*os.Root, error) {
		opened++
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		return os.OpenRoot(dir)
	}
	var out bytes.Buffer
	for _, dry := range []bool{true, false} {
		r := &Root{Door: New(context.Background(), dry, false, &out), Dir: dir, What: "its cache", Open: open}
		if err := r.MkdirAll(filepath.Join(dir, "clones/raspi-clone-0"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "clones/raspi-clone-0")); err != nil || fi.Mode().Perm() != 0o700 || opened != 1 {
		t.Fatalf("opened %d times: %v %v", opened, fi, err)
	}
	if _, err := (&Root{Dir: dir, What: "its cache"}).Rel("/elsewhere"); err == nil || err.Error() != "/elsewhere is not in its cache "+dir {
		t.Fatalf("a path outside: %v", err)
	}
}
