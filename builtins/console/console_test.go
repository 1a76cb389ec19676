package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.starlark.net/starlark"
	"pifarm/builtins/console/fakeguest"
	"pifarm/builtins/farm"
	"pifarm/builtins/startest"
	"pifarm/builtins/trace"
)

// Ports: this package uses 21000-21099 (console base 21000 + node id).
const consoleBase = 21000

func testFarm(t *testing.T) *farm.Farm {
	t.Helper()
	src := fmt.Sprintf(`
cache = %q
ports = {"ssh": 21100, "console": %d, "vnc": 21900}
pi_passwords = ["raspberrypi", "raspberry"]
nodes = [node(id = i, alias = "n%%d" %% i, lan = "192.168.66.%%d" %% (10 + i), wan = "100.65.%%d.15" %% i) for i in range(1, 40)]
`, filepath.Join(t.TempDir(), "cache"), consoleBase)
	c, err := farm.Load("test-config.star", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return farm.New(c)
}

func addr(id int) string { return fmt.Sprintf("127.0.0.1:%d", consoleBase+id) }

func dial(t *testing.T, d *trace.Door, id int) *Session {
	t.Helper()
	s, err := Dial(d, fmt.Sprintf("console %d", consoleBase+id), addr(id), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(false) })
	return s
}

func liveDoor(out *bytes.Buffer) *trace.Door {
	return trace.New(context.Background(), false, false, out)
}

func TestCleanerStripsEscapesAcrossChunks(t *testing.T) {
	for _, tc := range []struct {
		name   string
		chunks []string
		want   string
	}{
		{"bracketed paste", []string{"\x1b[?2004hpi@raspberrypi:~ $ "}, "pi@raspberrypi:~ $ "},
		{"split CSI", []string{"a\x1b[", "?20", "04lb"}, "ab"},
		{"colours and CR", []string{"\x1b[01;32mpi\x1b[0m\r\n"}, "pi\n"},
		{"OSC title", []string{"\x1b]0;pi@raspberrypi: ~\x07$ "}, "$ "},
		{"OSC with ST", []string{"\x1b]0;t", "itle\x1b\\x"}, "x"},
		{"backspace", []string{"pj\bi"}, "pi"},
		{"NUL and BEL", []string{"a\x00b\x07c"}, "abc"},
		{"charset", []string{"\x1b(Bok"}, "ok"},
	} {
		var c cleaner
		var got []byte
		for _, ch := range tc.chunks {
			got = c.clean(got, []byte(ch))
		}
		if string(got) != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestDropKernelLines(t *testing.T) {
	in := "one\n[   42.000001] usb 1-1: new device\ntwo\n[12345.678901] x\n"
	if got := dropKernelLines(in); got != "one\ntwo\n" {
		t.Fatalf("got %q", got)
	}
}

func TestLoginRunHalt(t *testing.T) {
	fc := fakeguest.NewConsole(t, addr(1))
	fc.Noise = true
	var out bytes.Buffer
	d := liveDoor(&out)
	s := dial(t, d, 1)
	start := time.Now()
	ok, err := s.Login("pi", []string{"raspberrypi", "raspberry"}, 10*time.Second)
	if err != nil || !ok {
		t.Fatalf("login: %v %v", ok, err)
	}
	// One wrong password costs the guest's fail delay, nothing more.
	if el := time.Since(start); el > fc.FailDelay+2*time.Second {
		t.Fatalf("login took %s", el)
	}
	for _, tc := range []struct {
		cmd  string
		out  string
		code int
	}{
		{"echo hello", "hello", 0},
		{"printf 'a\\nb\\n'", "a\nb", 0},
		{"sh -c 'exit 3'", "", 3},
		{"cat /nonexistent", "cat: /nonexistent: No such file or directory", 1},
		{"echo '# not a comment' # a comment", "# not a comment", 0},
		{"x='$?'; echo \"$x\" done", "$? done", 0},
		{"(\nset -e\nprintf '100%% a\\\\b\\n'\nfalse\necho not reached\n)", "100% a\\b", 1},
	} {
		r, err := s.Run(tc.cmd, 5*time.Second)
		if err != nil {
			t.Fatalf("run %q: %v", tc.cmd, err)
		}
		if r.Output != tc.out || r.ExitCode != tc.code {
			t.Errorf("run %q = %q, %d; want %q, %d", tc.cmd, r.Output, r.ExitCode, tc.out, tc.code)
		}
	}
	if err := s.Send("halt\r"); err != nil {
		t.Fatal(err)
	}
	what, err := s.WaitHalted(5 * time.Second)
	if err != nil || what != "reboot: System halted" {
		t.Fatalf("wait_halted: %q %v", what, err)
	}
	if strings.Contains(out.String(), "raspberry") {
		t.Fatalf("password leaked into the trace: %q", out.String())
	}
}

func TestLongOutputAndFloods(t *testing.T) {
	fakeguest.NewConsole(t, addr(15))
	s := dial(t, liveDoor(nil), 15)
	if ok, err := s.Login("pi", []string{"raspberry"}, 5*time.Second); !ok || err != nil {
		t.Fatal(ok, err)
	}
	start := time.Now()
	// ~290 KB of output, far more than the rescan window: the end marker
	// is still found, and the output is whole.
	r, err := s.Run("seq 1 50000", 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(r.Output, "\n")
	if len(lines) != 50000 || lines[0] != "1" || lines[49999] != "50000" {
		t.Fatalf("output: %d lines, first %q, last %q", len(lines), lines[0], lines[len(lines)-1])
	}
	// A flood of kernel messages before a prompt-like line.
	s.Send("seq 1 30000 | sed 's/^/[    1.000000] usb 1-1: message /'; echo 'ready> '\r")
	if _, err := s.Expect([]*regexp.Regexp{regexp.MustCompile(`(?m)^ready> $`)}, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("%s for 0.6 MB of console output", el)
	}
	t.Logf("0.6 MB of console output in %s", time.Since(start))
}

func TestLoginEveryPasswordRefused(t *testing.T) {
	fc := fakeguest.NewConsole(t, addr(2))
	fc.FailDelay = 50 * time.Millisecond
	delete(fc.Users, "pi") // RaspiOS Bullseye 2022-04+: no pi user
	s := dial(t, liveDoor(nil), 2)
	ok, err := s.Login("pi", []string{"raspberry", "raspberrypi"}, 5*time.Second)
	if err != nil || ok {
		t.Fatalf("login without a pi user: %v %v", ok, err)
	}
}

func TestLoginLogsOutFirstAndAnswersPendingPassword(t *testing.T) {
	for _, st := range []int{fakeguest.InShell, fakeguest.AtPassword} {
		fc := fakeguest.NewConsole(t, addr(3+st))
		fc.FailDelay = 50 * time.Millisecond
		fc.SetState(st, "pi")
		s := dial(t, liveDoor(nil), 3+st)
		ok, err := s.Login("pi", []string{"raspberry"}, 5*time.Second)
		if err != nil || !ok {
			t.Fatalf("state %d: login %v %v", st, ok, err)
		}
		r, err := s.Run("echo $((6*7))", 5*time.Second)
		if err != nil || r.Output != "42" {
			t.Fatalf("state %d: run %+v %v", st, r, err)
		}
		if st == fakeguest.InShell && (len(fc.Lines()) < 2 || fc.Lines()[1] != "exit") {
			t.Fatalf("did not log out first: %q", fc.Lines())
		}
	}
}

func TestTimeoutQuotesLastLines(t *testing.T) {
	fakeguest.NewConsole(t, addr(7))
	s := dial(t, liveDoor(nil), 7)
	if ok, err := s.Login("pi", []string{"raspberry"}, 5*time.Second); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if _, err := s.Run("echo first-line; echo second-line", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := s.Run("echo working; sleep 5", 300*time.Millisecond)
	if err == nil {
		t.Fatal("no timeout")
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("timeout took %s", time.Since(start))
	}
	for _, want := range []string{"timeout after 300ms", "last lines received", "  | working", "sleep 5"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestNothingReceivedNamesTheLikelyCause(t *testing.T) {
	fakeguest.NewConsole(t, addr(8), func(c *fakeguest.Console) { c.Silent = true })
	s := dial(t, liveDoor(nil), 8)
	_, err := s.Login("pi", []string{"raspberry"}, 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "nothing was received") || !strings.Contains(err.Error(), "one console client at a time") {
		t.Fatalf("error: %v", err)
	}
}

func TestPoweroffClosesConsole(t *testing.T) {
	fakeguest.NewConsole(t, addr(9))
	s := dial(t, liveDoor(nil), 9)
	if ok, err := s.Login("pi", []string{"raspberry"}, 5*time.Second); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if s.WaitClosed(50 * time.Millisecond) {
		t.Fatal("closed before poweroff")
	}
	s.Send("poweroff\r")
	what, err := s.WaitHalted(5 * time.Second)
	if err != nil || (what != "reboot: Power down" && what != "console closed") {
		t.Fatalf("wait_halted: %q %v", what, err)
	}
	if !s.WaitClosed(5 * time.Second) {
		t.Fatal("not closed after poweroff")
	}
	_, err = s.Expect([]*regexp.Regexp{regexp.MustCompile("x")}, time.Second)
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("expect after close: %v", err)
	}
}

func TestInterruptStopsExpect(t *testing.T) {
	fakeguest.NewConsole(t, addr(10), func(c *fakeguest.Console) { c.Silent = true })
	ctx, cancel := context.WithCancel(context.Background())
	d := trace.New(ctx, false, false, nil)
	s := dial(t, d, 10)
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	start := time.Now()
	_, err := s.Expect([]*regexp.Regexp{regexp.MustCompile("never")}, time.Minute)
	if !errors.Is(err, context.Canceled) || time.Since(start) > 5*time.Second {
		t.Fatalf("cancel: %v after %s", err, time.Since(start))
	}
}

// fixture is a startest fixture with the console module on a test farm.
func fixture(t *testing.T, o startest.Options) *startest.Fixture {
	t.Helper()
	o.Farm = testFarm(t)
	fx := startest.New(t, o)
	return fx.Add(New(fx.Door, fx.Farm))
}

func TestStarlarkSession(t *testing.T) {
	fakeguest.NewConsole(t, addr(11))
	fx := fixture(t, startest.Options{Verbose: true})
	fx.Run("session.star", `
assert.true(console.probe("n11"))
assert.true(not console.probe(38))
assert.fails(lambda: console.open(38, timeout = 1), "console 21038: connect to 127.0.0.1:21038: .*connection refused \\(is the instance running\\?\\)")
assert.fails(lambda: console.open("nosuch"), "unknown instance")
s = console.open("n11")
assert.eq(s.label, "console 21011")
assert.true(console.open(11) == s)   # one client per console: the session is reused
assert.true(s.login())
assert.eq(s.user, "pi")
r = s.run("echo hi; echo err >&2; exit_code() { return 4; }; exit_code")
assert.eq(r.output, "hi\nerr")
assert.eq(r.exit_code, 4)
s.sendline("echo marker-$((1+1))")
m = s.expect(["nope", r"marker-(\d)"], timeout = 5)
assert.eq(m.index, 1)
assert.eq(m.groups, ("2",))
assert.fails(lambda: s.expect("never", timeout = 0.2), "timeout after 200ms")
assert.eq(s.expect("never", timeout = 0.1, fail = False), None)
s.close()
assert.fails(lambda: s.run("true"), "closed")
`)
	trace := fx.Output()
	for _, want := range []string{"# console 21011: send 'pi'", "# console 21011: send '****'", "# console 21011: run 'echo hi;", "# console 21011: send 'exit'"} {
		if !strings.Contains(trace, want) {
			t.Errorf("verbose trace lacks %q:\n%s", want, trace)
		}
	}
	if strings.Contains(trace, "raspberry") {
		t.Errorf("password in trace:\n%s", trace)
	}
}

func TestDryRunTouchesNothing(t *testing.T) {
	fc := fakeguest.NewConsole(t, addr(12))
	fx := fixture(t, startest.Options{Dry: true})
	fx.Run("dry.star", `
s = console.open(12)
assert.true(s.login("pi"))
r = s.run("sudo systemctl enable --now ssh")
assert.eq(r.exit_code, 0)
assert.eq(r.output, "")
s.sendline("halt")
assert.eq(s.wait_halted(), "reboot: Power down")
s.close()
`)
	want := `# console 21012: connect to 127.0.0.1:21012
# console 21012: log in as pi (fresh prompt; a logged-in shell is logged out first; passwords ****, **** in turn)
# console 21012: send 'pi'
# console 21012: send '****'
# console 21012: run 'sudo systemctl enable --now ssh'
# console 21012: send 'halt'
# console 21012: wait until the guest reports it stopped (reboot: System halted / reboot: Power down)
# console 21012: disconnect
`
	if fx.Output() != want {
		t.Fatalf("dry-run trace:\n%s\nwant:\n%s", fx.Output(), want)
	}
	if n := fc.Connections(); n != 0 {
		t.Fatalf("dry run connected %d times", n)
	}
}

// BenchmarkRun times one command round trip on a logged-in console (the
// fake guest answers at once: this is pifarm's own overhead).
func BenchmarkRun(b *testing.B) {
	fakeguest.NewConsole(b, addr(13))
	s, err := Dial(liveDoor(nil), "console", addr(13), time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(false)
	if ok, err := s.Login("pi", []string{"raspberry"}, 5*time.Second); !ok || err != nil {
		b.Fatal(ok, err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r, err := s.Run("true", 5*time.Second); err != nil || r.ExitCode != 0 {
			b.Fatal(r, err)
		}
	}
}

// BenchmarkLogin times a log-in with one wrong password first (the fake's
// fail delay is set to zero: this is pifarm's own overhead).
func BenchmarkLogin(b *testing.B) {
	fakeguest.NewConsole(b, addr(14), func(c *fakeguest.Console) { c.FailDelay = 0 })
	s, err := Dial(liveDoor(nil), "console", addr(14), time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(false)
	for i := 0; i < b.N; i++ {
		if ok, err := s.Login("pi", []string{"wrong", "raspberry"}, 5*time.Second); !ok || err != nil {
			b.Fatal(ok, err)
		}
		s.Logout()
	}
}

// A password given to login stays masked in the error of a command that
// holds it.
func TestRunErrorMasksThePassword(t *testing.T) {
	fakeguest.NewConsole(t, "127.0.0.1:26030")
	s, err := Dial(liveDoor(nil), "console 26030", "127.0.0.1:26030", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(false) })
	if ok, err := s.Login("pi", []string{"raspberry"}, 5*time.Second); !ok || err != nil {
		t.Fatal(ok, err)
	}
	_, err = s.Run("echo 'pi:raspberry' >/dev/null; sleep 5", 300*time.Millisecond)
	if err == nil || regexp.MustCompile(`\braspberry\b`).MatchString(err.Error()) || !strings.Contains(err.Error(), "timeout after 300ms") {
		t.Errorf("error: %v", err)
	}
}

// Opening a console again after QEMU closed it (a restarted instance)
// closes the dead session's socket instead of keeping it open for the rest
// of the run.
func TestReopenClosesTheDeadSession(t *testing.T) {
	const a = "127.0.0.1:26032"
	fc := fakeguest.NewConsole(t, a)
	m := &module{d: liveDoor(nil), f: testFarm(t), sessions: map[string]*sessionValue{}}
	open := func() *sessionValue {
		t.Helper()
		v, err := m.open(nil, starlark.NewBuiltin("open", nil), starlark.Tuple{starlark.String(a)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return v.(*sessionValue)
	}
	old := open()
	t.Cleanup(func() { old.s.Close(false) })
	old.s.Send("\r") // the fake guest holds the connection once it answers
	if _, err := old.s.Expect([]*regexp.Regexp{reLogin}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	fc.PowerDown()
	if !old.s.WaitClosed(5 * time.Second) {
		t.Fatal("not closed after the power-down")
	}
	fakeguest.NewConsole(t, a) // the instance started again
	cur := open()
	t.Cleanup(func() { cur.s.Close(false) })
	if cur == old {
		t.Fatal("the dead session was reused")
	}
	if _, err := old.s.conn.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("the dead session's socket is still open (write: %v)", err)
	}
}

// TestArgs runs testdata/args.star: the arguments of every function and
// method, and the errors of wrong ones (### markers).
func TestArgs(t *testing.T) {
	if err := sessionMethods.Validate(); err != nil {
		t.Fatal(err)
	}
	fixture(t, startest.Options{Dry: true}).RunChunks("testdata/args.star")
}
