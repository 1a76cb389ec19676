package trace

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHelperDoor is not a test: run by TestChildrenDieWithPifarm as a
// separate process, it stands for a pifarm that runs one command through
// the door (PIFARM_DOOR_HELPER=exec|query ARGV...) and then waits to be
// killed.
func TestHelperDoor(t *testing.T) {
	mode := os.Getenv("PIFARM_DOOR_HELPER")
	if mode == "" {
		t.Skip("helper process only")
	}
	argv := strings.Split(os.Getenv("PIFARM_DOOR_ARGV"), "\x1f")
	d := New(context.Background(), false, false, nil)
	d.Root = true
	switch mode {
	case "exec":
		d.Exec(Cmd{Argv: argv})
	case "query":
		d.Query(Cmd{Argv: argv})
	}
	os.WriteFile(os.Getenv("PIFARM_DOOR_DONE"), nil, 0o644)
	time.Sleep(time.Hour)
}

// alive reports whether pid is a process that has not exited (a zombie
// waiting to be reaped has exited).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func readPid(t *testing.T, path string, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				return pid
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no pid in %s after %v", path, within)
	return 0
}

// TestChildrenDieWithPifarm: a command run through the door (an action or
// a query) dies with the pifarm that started it, even when pifarm is killed
// with SIGKILL and can clean nothing up (a killed full clone left
// `qemu-img convert` running). A process that daemonizes itself on purpose
// (QEMU's -daemonize for box --run) is not a child of pifarm any more and
// stays.
func TestChildrenDieWithPifarm(t *testing.T) {
	type tc struct {
		name, mode string
		argv       func(pidfile string) []string
		survives   bool
	}
	cases := []tc{
		{"exec", "exec", func(pf string) []string { return []string{"sh", "-c", "echo $$ > " + pf + "; exec sleep 300"} }, false},
		{"query", "query", func(pf string) []string { return []string{"sh", "-c", "echo $$ > " + pf + "; exec sleep 300"} }, false},
		{"daemonized", "exec", func(pf string) []string {
			return []string{"sh", "-c", "setsid sh -c 'echo $$ > " + pf + "; exec sleep 300' </dev/null >/dev/null 2>&1 &"}
		}, true},
	}
	if q, err := exec.LookPath("qemu-system-aarch64"); err == nil {
		cases = append(cases, tc{"qemu -daemonize", "exec", func(pf string) []string {
			return []string{q, "-M", "none", "-display", "none", "-nodefaults", "-daemonize", "-pidfile", pf}
		}, true})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pf := filepath.Join(t.TempDir(), "child.pid")
			helper := exec.Command(os.Args[0], "-test.run=^TestHelperDoor$")
			done := filepath.Join(filepath.Dir(pf), "done")
			helper.Env = append(os.Environ(), "PIFARM_DOOR_HELPER="+c.mode, "PIFARM_DOOR_ARGV="+strings.Join(c.argv(pf), "\x1f"), "PIFARM_DOOR_DONE="+done)
			if err := helper.Start(); err != nil {
				t.Fatal(err)
			}
			pid := readPid(t, pf, 10*time.Second)
			if c.survives {
				// a daemon is on its own once the command that made it
				// has returned (QEMU's first process waits until the
				// daemon is ready)
				for i := 0; ; i++ {
					if _, err := os.Stat(done); err == nil {
						break
					}
					if i == 500 {
						t.Fatal("the command that daemonizes did not return")
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
			defer syscall.Kill(pid, syscall.SIGKILL)
			helper.Process.Signal(syscall.SIGKILL)
			helper.Wait()
			wait := 5 * time.Second
			if c.survives {
				wait = time.Second
			}
			deadline := time.Now().Add(wait)
			for alive(pid) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if got := alive(pid); got != c.survives {
				t.Fatalf("after SIGKILL of its pifarm, child %d alive=%v, want %v", pid, got, c.survives)
			}
		})
	}
}
