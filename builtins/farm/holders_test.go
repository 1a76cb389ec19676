package farm

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"pifarm/builtins/trace"
)

// holderChild starts a child process (this test binary, in
// TestHelperHolder) that opens path with the given flags, takes a POSIX
// write lock on it when lock is set, says "ready" and waits until its
// stdin closes.
func holderChild(t *testing.T, path string, write, lock bool) *exec.Cmd {
	t.Helper()
	c := exec.Command(os.Args[0], "-test.run=^TestHelperHolder$")
	c.Env = append(os.Environ(), "PIFARM_HOLDER_PATH="+path)
	if write {
		c.Env = append(c.Env, "PIFARM_HOLDER_WRITE=1")
	}
	if lock {
		c.Env = append(c.Env, "PIFARM_HOLDER_LOCK=1")
	}
	in, err := c.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); c.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("holder child: %q %v", line, err)
	}
	return c
}

func TestHelperHolder(t *testing.T) {
	path := os.Getenv("PIFARM_HOLDER_PATH")
	if path == "" {
		t.Skip("a helper process of TestHolders")
	}
	flags := os.O_RDONLY
	if os.Getenv("PIFARM_HOLDER_WRITE") != "" {
		flags = os.O_RDWR
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		os.Stdout.WriteString("error " + err.Error() + "\n")
		os.Exit(1)
	}
	if os.Getenv("PIFARM_HOLDER_LOCK") != "" {
		lk := unix.Flock_t{Type: unix.F_WRLCK}
		if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk); err != nil {
			os.Stdout.WriteString("error " + err.Error() + "\n")
			os.Exit(1)
		}
	}
	os.Stdout.WriteString("ready\n")
	var b [1]byte
	os.Stdin.Read(b[:])
	os.Exit(0)
}

func pids(hs []Holder) map[int]bool {
	m := map[int]bool{}
	for _, h := range hs {
		m[h.PID] = h.Write
	}
	return m
}

func TestHolders(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	os.WriteFile(disk, []byte("disk"), 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(dir, link)
	reader := holderChild(t, disk, false, false)
	writer := holderChild(t, filepath.Join(link, "disk.img"), true, false)
	// This process holding the file does not count.
	self, _ := os.Open(disk)
	defer self.Close()

	for _, tc := range []struct {
		name, path string
		want       map[int]bool // pid -> write
	}{
		{"by its own path", disk, map[int]bool{reader.Process.Pid: false, writer.Process.Pid: true}},
		{"through a symbolic link to its folder", filepath.Join(link, "disk.img"), map[int]bool{reader.Process.Pid: false, writer.Process.Pid: true}},
		{"a path with . and ..", filepath.Join(dir, ".", "x", "..", "disk.img"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == nil {
				os.Mkdir(filepath.Join(dir, "x"), 0o700)
				tc.want = map[int]bool{reader.Process.Pid: false, writer.Process.Pid: true}
			}
			hs, err := Holders(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			got := pids(hs)
			if len(got) != len(tc.want) {
				t.Fatalf("holders %v, want %v", hs, tc.want)
			}
			for pid, w := range tc.want {
				if gw, ok := got[pid]; !ok || gw != w {
					t.Errorf("pid %d: held %v write %v, want write %v (%v)", pid, ok, gw, w, hs)
				}
			}
			for _, h := range hs {
				if !strings.Contains(h.String(), "pid ") || len(h.Args) == 0 || h.Exe == "" {
					t.Errorf("holder %+v not described", h)
				}
			}
		})
	}
	if held, write := Holds(writer.Process.Pid, disk); !held || !write {
		t.Errorf("Holds(writer) = %v %v", held, write)
	}
	if held, _ := Holds(os.Getpid(), filepath.Join(dir, "nothing")); held {
		t.Error("a missing file is held")
	}

	// A file replaced at the path (rename) is another file: the processes
	// holding the old one do not hold the new one.
	repl := filepath.Join(dir, "new.img")
	os.WriteFile(repl, []byte("new"), 0o600)
	if err := os.Rename(repl, disk); err != nil {
		t.Fatal(err)
	}
	if hs, err := Holders(disk); err != nil || len(hs) != 0 {
		t.Fatalf("holders of the replacement: %v %v", hs, err)
	}
	if _, err := Holders(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestLockHolder(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "qemu.pid")
	os.WriteFile(pidfile, []byte("garbage\n"), 0o600)
	if locked, _, err := LockHolder(pidfile); err != nil || locked {
		t.Fatalf("unlocked file: %v %v", locked, err)
	}
	c := holderChild(t, pidfile, true, true)
	locked, pid, err := LockHolder(pidfile)
	if err != nil || !locked || pid != c.Process.Pid {
		t.Fatalf("locked by %d: %v %d %v", c.Process.Pid, locked, pid, err)
	}
	link := filepath.Join(dir, "link.pid")
	os.Symlink(pidfile, link)
	if _, _, err := LockHolder(link); !IsSymlinkErr(err) {
		t.Fatalf("a symbolic link was followed: %v", err)
	}
}

func TestTryLock(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lock")
	l, err := TryLock(path)
	if err != nil || l == nil {
		t.Fatalf("first lock: %v %v", l, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file mode %v", fi.Mode())
	}
	if l2, err := TryLock(path); err != nil || l2 != nil {
		t.Fatalf("second lock while held: %v %v", l2, err)
	}
	// Removed while held (a folder removed under its lock): the next
	// taker gets a lock on the file that is there, not on the old one.
	os.Remove(path)
	l2, err := TryLock(path)
	if err != nil || l2 == nil {
		t.Fatalf("lock after removal: %v %v", l2, err)
	}
	l2.Close()
	l.Close()
	// A symbolic link is not followed.
	target := filepath.Join(dir, "target")
	os.WriteFile(target, nil, 0o644)
	link := filepath.Join(dir, "linklock")
	os.Symlink(target, link)
	if l, err := TryLock(link); err == nil || l != nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("lock through a link: %v %v", l, err)
	}
	// A missing folder is ErrNotExist.
	if _, err := TryLock(filepath.Join(dir, "gone", "lock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing folder: %v", err)
	}
	// A wide lock file of an older pifarm is narrowed.
	old := filepath.Join(dir, "old")
	os.WriteFile(old, nil, 0o644)
	os.Chmod(old, 0o644)
	l, _ = TryLock(old)
	l.Close()
	if fi, _ := os.Stat(old); fi.Mode().Perm() != 0o600 {
		t.Errorf("old lock file mode %v", fi.Mode())
	}
}

func TestMakeInstanceDir(t *testing.T) {
	dir := t.TempDir()
	c := Default()
	c.Cache = dir
	f := New(c)
	for _, tc := range []struct {
		name  string
		setup func()
		dry   bool
		want  string
		mode  os.FileMode
	}{
		{"missing, dry", func() {}, true, "mkdir -p -m 700 " + f.InstanceDir(1) + "\n", 0},
		{"missing", func() {}, false, "mkdir -p -m 700 " + f.InstanceDir(1) + "\n", 0o700},
		{"right already", func() {}, false, "", 0o700},
		{"wide, dry", func() { os.Chmod(f.InstanceDir(1), 0o755) }, true, "chmod 700 " + f.InstanceDir(1) + "\n", 0o755},
		{"wide", func() {}, false, "chmod 700 " + f.InstanceDir(1) + "\n", 0o700},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			var out strings.Builder
			d := trace.New(nil, tc.dry, true, &out)
			if err := f.MakeInstanceDir(d, 1); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Errorf("trace %q, want %q", out.String(), tc.want)
			}
			fi, err := os.Stat(f.InstanceDir(1))
			if tc.mode == 0 {
				if err == nil {
					t.Fatal("dry run made the folder")
				}
				return
			}
			if err != nil || fi.Mode().Perm() != tc.mode {
				t.Fatalf("mode %v %v, want %v", fi.Mode(), err, tc.mode)
			}
		})
	}
	os.WriteFile(f.InstanceDir(2), nil, 0o600)
	os.MkdirAll(filepath.Dir(f.InstanceDir(2)), 0o700)
	if err := f.MakeInstanceDir(trace.New(nil, false, false, nil), 2); err == nil || !strings.Contains(err.Error(), "not a folder") {
		t.Fatalf("a file in the way: %v", err)
	}
}

func TestInfoWrites(t *testing.T) {
	for _, tc := range []struct {
		text string
		want bool
	}{
		{"pos:\t0\nflags:\t0100000\nmnt_id:\t29\n", false}, // O_RDONLY|O_LARGEFILE
		{"pos:\t0\nflags:\t02100002\n", true},              // O_RDWR|O_CLOEXEC|O_LARGEFILE
		{"flags:\t0100001\n", true},                        // O_WRONLY
		{"flags:\t02000000\n", false},                      // O_RDONLY|O_CLOEXEC
		{"flags:\tnonsense\n", true},
		{"pos:\t0\n", true},
		{"", true},
	} {
		if got := infoWrites(strings.NewReader(tc.text)); got != tc.want {
			t.Errorf("%q: write %v, want %v", tc.text, got, tc.want)
		}
	}
}

// FuzzInfoWrites: any fdinfo text is read without panicking, and only a
// well-formed flags line with a read-only access mode counts as not
// writing.
func FuzzInfoWrites(f *testing.F) {
	for _, s := range []string{"flags:\t0100000\n", "flags:\t02100002\n", "pos:\t0\n", "flags:", "flags:\t-1\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		if !infoWrites(strings.NewReader(text)) && !strings.Contains(text, "flags:") {
			t.Fatalf("%q: not writing without a flags line", text)
		}
	})
}
