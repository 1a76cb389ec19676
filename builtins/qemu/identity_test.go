package qemu

import (
	"bytes"
	"crypto/des"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"pifarm/builtins/farm"
)

// linkedFarm is f's configuration with the cache reached through a
// symbolic link (as PIFARM_CACHE=/path/link does).
func linkedFarm(t *testing.T, f *farm.Farm) *farm.Farm {
	t.Helper()
	link := f.Config.CacheDir() + "-link"
	if err := os.Symlink(f.Config.CacheDir(), link); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(link) })
	return farmAt(t, link)
}

// startPaused starts instance id's QEMU (paused, no TAPs) and returns its
// pid; it is stopped when the test ends.
func startPaused(t *testing.T, in *Instances, id int) int {
	t.Helper()
	provide(t, in.F, id)
	n, _ := in.F.Resolve(strconv.Itoa(id))
	st, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone})
	if err != nil || !st.Running || st.PID == 0 {
		t.Fatalf("start %d: %+v %v", id, st, err)
	}
	t.Cleanup(func() {
		syscallKill(st.PID)
	})
	return st.PID
}

func syscallKill(pid int) {
	if p, err := os.FindProcess(pid); err == nil {
		p.Kill()
	}
}

func mustExist(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
}

// TestStatusThroughASymlinkedCache: a running QEMU is recognised when the
// cache is reached through a symbolic link; neither a status nor the
// instance table deletes its pidfile or QMP socket, and quit stops it.
func TestStatusThroughASymlinkedCache(t *testing.T) {
	f := testFarm(t)
	in, _ := testInstances(t, f, false)
	pid := startPaused(t, in, 1)
	via, out := testInstances(t, linkedFarm(t, f), false)
	via.D.Verbose = true
	n, _ := via.F.Resolve("1")
	for _, probe := range []struct {
		name string
		run  func() Status
	}{
		{"status", func() Status { return via.Status(n) }},
		{"table", func() Status { return via.All()[1] }},
	} {
		st := probe.run()
		if !st.Running || st.PID != pid || st.StaleReason != "" || st.State != "prelaunch" {
			t.Fatalf("%s through the link: %+v", probe.name, st)
		}
		mustExist(t, f.Pidfile(1), f.QMP(1))
	}
	if strings.Contains(out.String(), "rm ") {
		t.Fatalf("a query removed files: %q", out.String())
	}
	if was, err := via.Quit(n, 10*time.Second); err != nil || !was {
		t.Fatalf("quit through the link: %v %v", was, err)
	}
	if _, alive := procArgs(pid); alive {
		t.Fatal("QEMU still runs")
	}
}

// TestPidfileNotNamingItsQEMU: a pidfile whose content is garbage or
// another process while this instance's QEMU runs (and holds the
// pidfile's lock) is not stale: status reports that QEMU and deletes
// nothing, dry or live; quit stops that QEMU.
func TestPidfileNotNamingItsQEMU(t *testing.T) {
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	for _, tc := range []struct{ name, content string }{
		{"garbage", "hello\n"},
		{"empty", ""},
		{"another process", strconv.Itoa(sleeper.Process.Pid) + "\n"},
		{"a process that is gone", "999999999\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := testFarm(t)
			in, _ := testInstances(t, f, false)
			pid := startPaused(t, in, 2)
			n, _ := f.Resolve("2")
			// The same file (QEMU's lock stays), other content.
			if err := os.WriteFile(f.Pidfile(2), []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, dry := range []bool{true, false} {
				x, out := testInstances(t, f, dry)
				x.D.Verbose = true
				if st := x.Status(n); !st.Running || st.PID != pid || st.StaleReason != "" {
					t.Fatalf("dry=%v status: %+v", dry, st)
				}
				if out.Len() != 0 {
					t.Fatalf("dry=%v status printed %q", dry, out.String())
				}
				mustExist(t, f.Pidfile(2), f.QMP(2))
			}
			if was, err := in.Quit(n, 10*time.Second); err != nil || !was {
				t.Fatalf("quit: %v %v", was, err)
			}
			if _, alive := procArgs(pid); alive {
				t.Fatal("QEMU still runs")
			}
			if _, alive := procArgs(sleeper.Process.Pid); !alive {
				t.Fatal("the other process was hit")
			}
		})
	}
}

// TestOrphanedQEMU: a QEMU whose pidfile and QMP socket were deleted (as
// a status through a symlinked cache used to do) still holds its disk: a
// start is refused, naming it, also dry; quit finds and stops it.
func TestOrphanedQEMU(t *testing.T) {
	f := testFarm(t)
	in, _ := testInstances(t, f, false)
	pid := startPaused(t, in, 3)
	n, _ := f.Resolve("3")
	os.Remove(f.Pidfile(3))
	os.Remove(f.QMP(3))
	for _, dry := range []bool{true, false} {
		x, _ := testInstances(t, f, dry)
		_, err := x.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone})
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("its disk %s is open in pid %d (", f.Disk(3), pid)) ||
			!strings.Contains(err.Error(), "pifarm run box --terminate 3") {
			t.Fatalf("dry=%v start over an orphaned QEMU: %v", dry, err)
		}
	}
	if pids := qemusOf(f, 3); len(pids) != 1 {
		t.Fatalf("QEMUs of instance 3: %v", pids)
	}
	if was, err := in.Quit(n, 10*time.Second); err != nil || !was {
		t.Fatalf("quit of the orphan: %v %v", was, err)
	}
	if _, alive := procArgs(pid); alive {
		t.Fatal("the orphan still runs")
	}
}

// TestSymlinksAreNotFollowed: a symbolic link at the pidfile or lock path
// is never written through (QEMU would create or truncate its target).
func TestSymlinksAreNotFollowed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		path    func(f *farm.Farm) string
		wantErr string // "" when the start goes on (the link is removed)
	}{
		{"pidfile", func(f *farm.Farm) string { return f.Pidfile(1) }, ""},
		{"lock", func(f *farm.Farm) string { return f.Lock(1) }, "is a symbolic link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := testFarm(t)
			provide(t, f, 1)
			n, _ := f.Resolve("1")
			victim := filepath.Join(f.Config.CacheDir(), "victim")
			if err := os.Symlink(victim, tc.path(f)); err != nil {
				t.Fatal(err)
			}
			in, _ := testInstances(t, f, false)
			defer stopAll(t, in)
			st, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone})
			if tc.wantErr == "" && (err != nil || !st.Running) {
				t.Fatalf("start: %+v %v", st, err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("start: %+v %v", st, err)
			}
			if _, err := os.Lstat(victim); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the link's target was created: %v", err)
			}
		})
	}
}

// TestModes: the instance folder is the user's alone (0700), also one an
// older pifarm made 0755, and so is the VNC password file (0600).
func TestModes(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 2)
	os.Chmod(f.InstanceDir(2), 0o755)
	dry, out := testInstances(t, f, true)
	n, _ := f.Resolve("2")
	if _, err := dry.Start(n, Options{Paused: true, NoTAP: true, GlobalBind: true}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "chmod 700 "+f.InstanceDir(2)+"\n") {
		t.Errorf("dry run lacks the chmod:\n%s", out.String())
	}
	if fi, _ := os.Stat(f.InstanceDir(2)); fi.Mode().Perm() != 0o755 {
		t.Fatal("dry run changed the mode")
	}
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	if _, err := in.Start(n, Options{Paused: true, NoTAP: true, GlobalBind: true}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{f.InstanceDir(2): 0o700, in.vncPasswordFile(2): 0o600, f.Lock(2): 0o600} {
		if fi, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		} else if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
}

// vncAuth runs the RFB 3.8 handshake with VNC authentication (DES of the
// server's challenge, keyed with the password's bit-reversed bytes)
// against 127.0.0.1:port and returns the security types offered and
// whether the password was accepted.
func vncAuth(t *testing.T, port int, password string) ([]byte, bool) {
	t.Helper()
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	ver := make([]byte, 12)
	if _, err := io.ReadFull(c, ver); err != nil || !bytes.HasPrefix(ver, []byte("RFB ")) {
		t.Fatalf("RFB version %q %v", ver, err)
	}
	c.Write([]byte("RFB 003.008\n"))
	var k [1]byte
	io.ReadFull(c, k[:])
	types := make([]byte, k[0])
	io.ReadFull(c, types)
	if !bytes.Contains(types, []byte{2}) {
		return types, false
	}
	c.Write([]byte{2})
	challenge := make([]byte, 16)
	if _, err := io.ReadFull(c, challenge); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 8)
	copy(key, password)
	for i, b := range key {
		var r byte
		for j := 0; j < 8; j++ {
			r |= (b >> j & 1) << (7 - j)
		}
		key[i] = r
	}
	ciph, _ := des.NewCipher(key)
	resp := make([]byte, 16)
	ciph.Encrypt(resp[:8], challenge[:8])
	ciph.Encrypt(resp[8:], challenge[8:])
	c.Write(resp)
	var res [4]byte
	if _, err := io.ReadFull(c, res[:]); err != nil {
		t.Fatal(err)
	}
	return types, res == [4]byte{}
}

// TestGlobalBindVNCPassword: VNC listening beyond loopback asks for a
// fresh password, set over QMP; the password is in the 0600 file, never
// in QEMU's argv or a trace line (dry, the trace masks it).
func TestGlobalBindVNCPassword(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 4)
	n, _ := f.Resolve("4")
	dry, dout := testInstances(t, f, true)
	if _, err := dry.Start(n, Options{Paused: true, NoTAP: true, GlobalBind: true}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"# warning: instance 4 listens on all addresses (global bind)",
		"cat > " + dry.vncPasswordFile(4) + " <<'EOF'\n****\nEOF\nchmod 600 " + dry.vncPasswordFile(4) + "\n",
		"-vnc 0.0.0.0:14404,password=on ",
		`'{"arguments":{"password":"****"},"execute":"change-vnc-password"}' | socat - UNIX-CONNECT:` + f.QMP(4) + "\n",
	} {
		if !strings.Contains(dout.String(), want) {
			t.Errorf("dry trace lacks %q:\n%s", want, dout.String())
		}
	}
	if _, err := os.Stat(dry.vncPasswordFile(4)); err == nil {
		t.Fatal("dry run wrote the password file")
	}

	in, out := testInstances(t, f, false)
	in.D.Verbose = true
	defer stopAll(t, in)
	st, err := in.Start(n, Options{Paused: true, NoTAP: true, GlobalBind: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(in.vncPasswordFile(4))
	pw := strings.TrimSpace(string(b))
	if err != nil || len(pw) != 8 || st.VNCPasswordFile != in.vncPasswordFile(4) {
		t.Fatalf("password file: %q %v %+v", b, err, st)
	}
	args, _ := procArgs(st.PID)
	for what, s := range map[string]string{"argv": strings.Join(args, " "), "trace": out.String(), "line": st.Line} {
		if strings.Contains(s, pw) {
			t.Errorf("the password is in the %s: %s", what, s)
		}
	}
	if !strings.Contains(out.String(), `"password":"****"`) {
		t.Errorf("the trace lacks the masked QMP command:\n%s", out.String())
	}
	if types, ok := vncAuth(t, f.VNCPort(n), pw); !ok {
		t.Fatalf("VNC with the password: security types %v, not accepted", types)
	}
	if types, ok := vncAuth(t, f.VNCPort(n), "wrong"); ok || bytes.Contains(types, []byte{1}) {
		t.Fatalf("VNC with a wrong password: types %v accepted %v", types, ok)
	}
	if st := in.Status(n); st.VNCPasswordFile != in.vncPasswordFile(4) {
		t.Errorf("status does not name the password file: %+v", st)
	}
	// A start without global bind has no password, and the old file goes.
	in.Quit(n, 10*time.Second)
	if _, err := in.Start(n, Options{Paused: true, NoTAP: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(in.vncPasswordFile(4)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old password file left: %v", err)
	}
	if types, _ := vncAuth(t, f.VNCPort(n), ""); !bytes.Contains(types, []byte{1}) {
		t.Errorf("VNC on loopback: security types %v, want None", types)
	}
}

// holdLock runs `flock -o LOCK sh -c SCRIPT` (another pifarm holding instance
// id's lock while it does SCRIPT) and returns once the lock is held.
func holdLock(t *testing.T, f *farm.Farm, id int, script string, args ...string) *exec.Cmd {
	t.Helper()
	c := exec.Command("flock", append([]string{"-o", f.Lock(id), "sh", "-c", script, "sh"}, args...)...)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Wait() }) // the script is short
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		l, err := farm.TryLock(f.Lock(id))
		if err != nil {
			t.Fatal(err)
		}
		if l == nil {
			return c
		}
		l.Close()
		if time.Now().After(deadline) {
			t.Fatal("flock never took the lock")
		}
	}
}

// TestRemoveFilesWaitsForAStart: removing an instance's files while
// another pifarm starts it (holding the instance lock) waits for the lock
// and then refuses, saying what happened; nothing is removed and the QEMU
// runs on.
func TestRemoveFilesWaitsForAStart(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 2)
	n, _ := f.Resolve("2")
	p, err := Command(f, n, Options{Paused: true, NoTAP: true, Display: DisplayNone})
	if err != nil {
		t.Fatal(err)
	}
	holdLock(t, f, 2, `sleep 0.5; exec "$@"`, p.Argv...)
	in, _ := testInstances(t, f, false)
	in.LockWait = 20 * time.Second
	defer stopAll(t, in)
	t0 := time.Now()
	ids, err := in.RemoveFiles(n)
	if err == nil || !strings.Contains(err.Error(), "another pifarm started its QEMU") || len(ids) != 0 {
		t.Fatalf("remove during a start: %v %v", ids, err)
	}
	if time.Since(t0) < 400*time.Millisecond {
		t.Errorf("the removal did not wait for the lock (%s)", time.Since(t0))
	}
	mustExist(t, f.Disk(2), f.Kernel(2), f.Pidfile(2))
	if st := in.Status(n); !st.Running {
		t.Fatalf("QEMU of the start: %+v", st)
	}
}

// TestStartAfterRemovalMeanwhile: a start that waited for the instance lock
// while another pifarm removed the instance's folder says so, and starts
// nothing.
func TestStartAfterRemovalMeanwhile(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 1)
	n, _ := f.Resolve("1")
	// another pifarm's removal (RemoveFiles: rename aside, then delete)
	holdLock(t, f, 1, `sleep 0.4; mv "$1" "$1.removing"; rm -rf "$1.removing"`, f.InstanceDir(1))
	in, _ := testInstances(t, f, false)
	in.LockWait = 20 * time.Second
	defer stopAll(t, in)
	st, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone})
	if err == nil || !strings.Contains(err.Error(), "removed") || !strings.Contains(err.Error(), "while this start waited for the instance lock") {
		t.Fatalf("start after a removal: %+v %v", st, err)
	}
	if len(qemusOf(f, 1)) != 0 {
		t.Fatal("a QEMU was started")
	}
	if _, err := os.Lstat(f.InstanceDir(1)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the folder came back: %v", err)
	}
}

// FuzzReadPid: any pidfile content is read without panicking; a pid comes
// back exactly when the content, blanks trimmed, is a positive decimal
// number, and garbage is an error naming the file.
func FuzzReadPid(f *testing.F) {
	for _, s := range []string{"1234\n", "", "hello\n", "-5", "0", " 42 ", "99999999999999999999", "12\x0034"} {
		f.Add(s)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content string) {
		path := filepath.Join(dir, "qemu.pid")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		pid, err := readPid(path)
		want, perr := strconv.Atoi(strings.TrimSpace(content))
		if len(content) > 64 {
			return // only the first 64 bytes are read
		}
		switch {
		case perr == nil && want > 0:
			if err != nil || pid != want {
				t.Fatalf("%q: %d %v, want %d", content, pid, err, want)
			}
		default:
			if err == nil || pid != 0 || !strings.Contains(err.Error(), path) {
				t.Fatalf("%q: %d %v, want an error naming %s", content, pid, err, path)
			}
		}
	})
}

func TestReadPidRefusesLinksAndFIFOs(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("1\n"), 0o600)
	link := filepath.Join(dir, "link.pid")
	os.Symlink(target, link)
	fifo := filepath.Join(dir, "fifo.pid")
	if err := syscallMkfifo(fifo); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{link: "is a symbolic link", fifo: "not a regular file"} {
		if pid, err := readPid(path); err == nil || pid != 0 || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %d %v, want %q", path, pid, err, want)
		}
	}
	if pid, err := readPid(filepath.Join(dir, "none")); pid != 0 || err != nil {
		t.Errorf("missing pidfile: %d %v", pid, err)
	}
}

// TestRemovalRacesNoLockFile: a start polling for the instance lock while
// the folder is removed (farm.TryLock creates the lock file it opens)
// neither makes the removal fail half-way nor brings the folder back: the
// folder is renamed aside before it is deleted.
func TestRemovalRacesNoLockFile(t *testing.T) {
	for round := 0; round < 20; round++ {
		f := testFarm(t)
		provide(t, f, 3)
		n, _ := f.Resolve("3")
		in, _ := testInstances(t, f, false)
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if l, err := farm.TryLock(f.Lock(3)); err == nil && l != nil {
					l.Close()
				}
			}
		}()
		ids, err := in.RemoveFiles(n)
		close(stop)
		<-done
		if err != nil || len(ids) != 1 {
			t.Fatalf("round %d: remove while a start polls the lock: %v %v", round, ids, err)
		}
		if _, err := os.Lstat(f.InstanceDir(3)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("round %d: the folder came back: %v", round, err)
		}
	}
}
