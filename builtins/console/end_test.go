package console_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"pifarm/builtins/console/fakeguest"
	"pifarm/builtins/runtime"
)

// waitFor polls cond every 10 ms for at most d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timeout after %s waiting for %s", d, what)
		}
	}
}

// Every way a run can end with a console session logged in - an error, a
// command's timeout, Ctrl-C while a command runs or while the log-in is
// answered, a recipe that never closes its session - leaves the console at
// its login prompt, logged out with deadlines of its own.
func TestEveryExitPathLogsTheConsoleOut(t *testing.T) {
	cfg := guestConfig(t)
	for i, tc := range []struct {
		name       string
		body       string        // after the log-in; STARTED is a file the guest's command touches
		loginDelay time.Duration // the guest's answer to the right password
		cancel     func(fc *fakeguest.Console, started string) bool
		code       int
		interrupts int // Ctrl-Cs that stopped a command
		says       string
	}{
		{name: "error", body: `fail("the recipe broke")`, code: 1, says: "logged in as pi: logged out"},
		{name: "command timeout", body: `s.run("touch STARTED; sleep 30", timeout = 0.5)`, code: 1, interrupts: 1,
			says: "logged in as pi: logged out"},
		{name: "ctrl-c during a command", body: `s.run("touch STARTED; sleep 30")`, code: 1, interrupts: 1,
			cancel: func(_ *fakeguest.Console, started string) bool { _, err := os.Stat(started); return err == nil },
			says:   "logged in as pi: logged out"},
		{name: "ctrl-c while the log-in is answered", loginDelay: 1500 * time.Millisecond, code: 1,
			cancel: func(fc *fakeguest.Console, _ string) bool { st, _ := fc.State(); return st == fakeguest.AtPassword },
			says:   "logged in as pi: logged out"},
		{name: "success, session never closed", body: `print("ran", s.run("true").exit_code)`, code: 0,
			says: "logged in as pi: logged out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := 21040 + i
			dir := t.TempDir()
			fc := fakeguest.NewConsole(t, fmt.Sprintf("127.0.0.1:%d", port), func(c *fakeguest.Console) {
				c.Dir = dir
				c.LoginDelay = tc.loginDelay
			})
			recipe := filepath.Join(dir, "r.star")
			os.WriteFile(recipe, []byte(fmt.Sprintf(`
SUMMARY = "log in, then %s"
def main(opts):
    s = console.open("127.0.0.1:%d")
    if not s.login("pi", ["raspberry"]):
        fail("refused")
    %s
`, tc.name, port, strings.ReplaceAll(tc.body, "STARTED", filepath.Join(dir, "started")))), 0o644)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var cancelled time.Time
			if tc.cancel != nil {
				go func() {
					for !tc.cancel(fc, filepath.Join(dir, "started")) {
						time.Sleep(10 * time.Millisecond)
					}
					time.Sleep(200 * time.Millisecond)
					cancelled = time.Now()
					cancel() // what Ctrl-C does to the run's context
				}()
			}
			var out bytes.Buffer
			code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: []string{"-c", cfg, "run", recipe}, Stdout: &out, Stderr: &out, Ctx: ctx})
			if !cancelled.IsZero() && time.Since(cancelled) > 8*time.Second {
				t.Errorf("the run took %s after Ctrl-C to end", time.Since(cancelled))
			}
			st, _ := fc.State()
			if code != tc.code || st != fakeguest.AtLogin || !strings.Contains(out.String(), tc.says) {
				t.Errorf("exit %d (want %d), console state %d (want %d, logged out):\n%s", code, tc.code, st, fakeguest.AtLogin, out.String())
			}
			if n := fc.Interrupts(); n != tc.interrupts {
				t.Errorf("%d commands interrupted, want %d", n, tc.interrupts)
			}
			if regexp.MustCompile(`\braspberry\b`).MatchString(out.String()) {
				t.Errorf("a password in the output:\n%s", out.String())
			}
		})
	}
}

// A real Ctrl-C (SIGINT) to a pifarm binary while enrol runs its console
// command: the command is interrupted and the console logged out.
func TestSigintDuringEnrolLogsTheConsoleOut(t *testing.T) {
	if testing.Short() {
		t.Skip("builds pifarm")
	}
	cfg := guestConfig(t)
	os.WriteFile(cfg, append(mustRead(t, cfg), []byte(`nodes = [node(id = 23, alias = "signalled", lan = "192.168.66.23", wan = "100.65.23.15")]`+"\n")...), 0o644)
	g := newFakeGuest(t, "127.0.0.1:21023", "127.0.0.1:21323", false)
	started := filepath.Join(g.root, "state", "started")
	// systemctl hangs while enabling SSH, as a slow emulated guest does
	os.WriteFile(filepath.Join(g.root, "bin", "systemctl"), []byte("#!/bin/sh\ntouch \"$FAKEGUEST/started\"\nexec sleep 30\n"), 0o755)
	bin := filepath.Join(t.TempDir(), "pifarm")
	if out, err := exec.Command("go", "build", "-o", bin, "../..").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-c", cfg, "run", "enrol", "signalled")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	waitFor(t, 20*time.Second, "the console command to start", func() bool { _, err := os.Stat(started); return err == nil })
	if st, user := g.con.State(); st != fakeguest.InShell || user != "pi" {
		t.Fatalf("console state %d %q before the signal", st, user)
	}
	sent := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("pifarm still runs 15 s after SIGINT:\n%s", out.String())
	}
	t.Logf("ended %s after SIGINT:\n%s", time.Since(sent), out.String())
	if cmd.ProcessState.ExitCode() != 1 {
		t.Errorf("exit status %d, want 1", cmd.ProcessState.ExitCode())
	}
	if st, _ := g.con.State(); st != fakeguest.AtLogin || g.con.Interrupts() != 1 ||
		!strings.Contains(out.String(), "console 21023: the run ended while logged in as pi: logged out") {
		t.Errorf("console state %d (want %d), %d interrupts (want 1):\n%s", st, fakeguest.AtLogin, g.con.Interrupts(), out.String())
	}
}

// status reports a console left at a shell prompt (and only reports it);
// guest --logout-console logs it out.
func TestStatusReportsAShellLeftOnTheConsole(t *testing.T) {
	cfg := guestConfig(t)
	os.WriteFile(cfg, append(mustRead(t, cfg), []byte(`nodes = [node(id = 24, alias = "forgotten", lan = "192.168.66.24", wan = "100.65.24.15")]`+"\n")...), 0o644)
	g := newFakeGuest(t, "127.0.0.1:21024", "127.0.0.1:21324", false)
	g.con.SetState(fakeguest.InShell, "root")
	for _, tc := range []struct {
		args  []string
		says  []string
		state int
	}{
		{[]string{"status", "24"}, []string{"console  answers on port 21024",
			"WARNING: it is left logged in at a shell prompt (root@", "anyone who reaches port 21024 has that shell; log it out: pifarm run guest --logout-console 24"}, fakeguest.InShell},
		{[]string{"guest", "--logout-console", "forgotten"}, []string{"the console (port 21024) was left logged in (root@"}, fakeguest.AtLogin},
		{[]string{"status", "24"}, []string{"it shows a login prompt"}, fakeguest.AtLogin},
		{[]string{"guest", "--logout-console", "24"}, []string{"the console (port 21024) shows a login prompt"}, fakeguest.AtLogin},
	} {
		out, code := pifarmRun(t, cfg, append([]string{"run"}, tc.args...)...)
		st, _ := g.con.State()
		if code != 0 || st != tc.state {
			t.Errorf("%v: exit %d, console state %d (want %d):\n%s", tc.args, code, st, tc.state, out)
		}
		for _, want := range tc.says {
			if !strings.Contains(out, want) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, want, out)
			}
		}
	}
}
