package trace

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// tree is a folder's content, one line per entry: path, type and mode,
// then the file content or the link target.
func tree(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v", rel, fi.Mode())
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			line += fmt.Sprintf(" %q", b)
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// layout makes the starting tree of every case in dir.
func layout(t *testing.T, dir string) {
	t.Helper()
	for _, d := range []string{"d/sub", "empty", "-dash dir"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range map[string]string{"a": "A\n", "b": "B\n", "a b": "spaced\n", "it's": "quoted\n", "-x": "dash\n", "d/sub/f": "deep\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("d", filepath.Join(dir, "ld")); err != nil {
		t.Fatal(err)
	}
}

// TestFSActionsMatchTheirTraceLines runs each action live in one tree and
// its dry-run trace line in /bin/sh in an identical tree, and compares the
// trees: the line does exactly what the action does. The dry run itself
// changes nothing. Refused actions fail live and change nothing there.
func TestFSActionsMatchTheirTraceLines(t *testing.T) {
	for _, tc := range []struct {
		name     string
		act      func(d *Door) error
		line     string // the trace line; "" when the action prints nothing
		liveErr  string // the live action is refused with this error
		checkErr string // refused in every mode, before any line is printed
	}{
		{"remove file", func(d *Door) error { return d.Remove("a") }, "rm -f a", "", ""},
		{"remove missing", func(d *Door) error { return d.Remove("nope") }, "rm -f nope", "", ""},
		{"remove several odd names", func(d *Door) error { return d.Remove("a b", "it's", "-x", "nope") },
			`rm -f -- 'a b' 'it'\''s' -x nope`, "", ""},
		{"remove link to folder", func(d *Door) error { return d.Remove("ld") }, "rm -f ld", "", ""},
		{"remove folder refused", func(d *Door) error { return d.Remove("a", "empty") }, "rm -f a empty", "rm -f empty: a folder; nothing was removed", ""},
		{"remove no paths", func(d *Door) error { return d.Remove() }, "", "", ""},
		{"remove empty path", func(d *Door) error { return d.Remove("a", "") }, "", "", "rm -f: empty path"},
		{"remove root", func(d *Door) error { return d.Remove("/") }, "", "", "refusing to remove the root"},
		{"removeall tree", func(d *Door) error { return d.RemoveAll("d") }, "rm -rf d", "", ""},
		{"removeall link", func(d *Door) error { return d.RemoveAll("ld") }, "rm -rf ld", "", ""},
		{"removeall missing", func(d *Door) error { return d.RemoveAll("nope") }, "rm -rf nope", "", ""},
		{"removeall dash", func(d *Door) error { return d.RemoveAll("-dash dir") }, "rm -rf -- '-dash dir'", "", ""},
		{"removeall dot", func(d *Door) error { return d.RemoveAll("d/..") }, "", "", "rm -rf d/..: refusing"},
		{"rename to new", func(d *Door) error { return d.Rename("a", "c") }, "mv -f a c", "", ""},
		{"rename over file", func(d *Door) error { return d.Rename("a", "b") }, "mv -f a b", "", ""},
		{"rename folder", func(d *Door) error { return d.Rename("d", "e") }, "mv -f d e", "", ""},
		{"rename odd names", func(d *Door) error { return d.Rename("-x", "it's") }, `mv -f -- -x 'it'\''s'`, "", ""},
		{"rename onto folder refused", func(d *Door) error { return d.Rename("a", "empty") }, "mv -f a empty", "the target is a folder; nothing was moved", ""},
		{"rename onto link to folder refused", func(d *Door) error { return d.Rename("a", "ld") }, "mv -f a ld", "the target is a folder", ""},
		{"mkdir parents", func(d *Door) error { return d.MkdirAll("n/o/p", 0) }, "mkdir -p n/o/p", "", ""},
		{"mkdir mode", func(d *Door) error { return d.MkdirAll("n/o", 0o700) }, "mkdir -p -m 700 n/o", "", ""},
		{"mkdir mode beyond umask", func(d *Door) error { return d.MkdirAll("w", 0o777) }, "mkdir -p -m 777 w", "", ""},
		{"mkdir dash", func(d *Door) error { return d.MkdirAll("-m", 0o750) }, "mkdir -p -m 750 -- -m", "", ""},
		{"mkdir existing", func(d *Door) error { return d.MkdirAll("d/sub", 0o700) }, "", "", ""},
		{"mkdir over file refused", func(d *Door) error { return d.MkdirAll("a", 0) }, "mkdir -p a", "a exists and is not a folder", ""},
		{"symlink", func(d *Door) error { return d.Symlink("../x y", "l") }, "ln -s '../x y' l", "", ""},
		{"symlink dash", func(d *Door) error { return d.Symlink("a", "-l") }, "ln -s -- a -l", "", ""},
		{"symlink over file refused", func(d *Door) error { return d.Symlink("a", "b") }, "ln -s a b", "b already exists; nothing was changed", ""},
		{"symlink onto folder refused", func(d *Door) error { return d.Symlink("a", "empty") }, "ln -s a empty", "empty already exists", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			live, shell := t.TempDir(), t.TempDir()
			layout(t, live)
			layout(t, shell)
			start := tree(t, live)

			// dry run in the shell tree: prints the line, changes nothing
			t.Chdir(shell)
			var out bytes.Buffer
			err := tc.act(New(context.Background(), true, false, &out))
			if tc.checkErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.checkErr) || out.Len() > 0 {
					t.Fatalf("dry run: err %v, output %q; want the error %q and no line", err, out.String(), tc.checkErr)
				}
			} else if err != nil {
				t.Fatalf("dry run: %v", err)
			}
			want := tc.line
			if want != "" {
				want += "\n"
			}
			if out.String() != want {
				t.Fatalf("dry-run line %q, want %q", out.String(), want)
			}
			if got := tree(t, shell); got != start {
				t.Fatalf("the dry run changed the tree:\n%s", got)
			}

			// live (verbose) in the live tree: prints the same line first
			t.Chdir(live)
			out.Reset()
			err = tc.act(New(context.Background(), false, true, &out))
			if out.String() != want {
				t.Fatalf("verbose line %q, want %q", out.String(), want)
			}
			switch {
			case tc.checkErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.checkErr) {
					t.Fatalf("live: err %v, want %q", err, tc.checkErr)
				}
			case tc.liveErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.liveErr) {
					t.Fatalf("live: err %v, want %q", err, tc.liveErr)
				}
			case err != nil:
				t.Fatalf("live: %v", err)
			}
			if tc.liveErr != "" || tc.checkErr != "" {
				if got := tree(t, live); got != start {
					t.Fatalf("a refused action changed the tree:\n%s", got)
				}
				return
			}

			// the line in /bin/sh does what the live action did
			if tc.line != "" {
				sh := exec.Command("/bin/sh", "-c", tc.line)
				sh.Dir = shell
				if b, err := sh.CombinedOutput(); err != nil {
					t.Fatalf("sh -c %q: %v\n%s", tc.line, err, b)
				}
			}
			if got, want := tree(t, shell), tree(t, live); got != want {
				t.Fatalf("sh -c %q left\n%s\nthe live action left\n%s", tc.line, got, want)
			}
		})
	}
}

// TestFSActionsStopWhenCancelled: like every action, nothing runs or prints
// after the run's context ends.
func TestFSActionsStopWhenCancelled(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	os.WriteFile(p, []byte("x"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out bytes.Buffer
	d := New(ctx, false, true, &out)
	for _, err := range []error{d.Remove(p), d.RemoveAll(p), d.Rename(p, p+"2"), d.MkdirAll(p+"d", 0), d.Symlink(p, p+"l")} {
		if err == nil {
			t.Error("an action ran after cancel")
		}
	}
	if _, err := os.Stat(p); err != nil || out.Len() > 0 {
		t.Fatalf("cancelled actions acted or printed: %v %q", err, out.String())
	}
}

// TestFSLinesMaskSecrets: the lines pass through the door's masking like
// any other (a secret in a path is shown as ****).
func TestFSLinesMaskSecrets(t *testing.T) {
	var out bytes.Buffer
	d := New(context.Background(), true, false, &out)
	d.Secret("hunter2")
	d.Remove("/tmp/hunter2.txt")
	if strings.Contains(out.String(), "hunter2") {
		t.Fatalf("secret in the trace: %q", out.String())
	}
}
