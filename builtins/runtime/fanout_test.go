package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"pifarm/builtins/farm"
	"pifarm/builtins/startest"
)

const fanRecipe = "testdata/recipes/fan.star"

// fanEnv is goldenEnv with a cache of the test's own (runs records the
// live fan-outs there); it returns the cache folder.
func fanEnv(t *testing.T) string {
	t.Helper()
	goldenEnv(t)
	cache := t.TempDir()
	t.Setenv("PIFARM_CACHE", cache)
	return cache
}

// TestFanOutInAPipe: a node set runs the recipe once per node; in a pipe
// every line is prefixed with its node, standard output and error kept
// apart; one node's failure stops no other; the summary table names the
// cause; the exit status is 1.
func TestFanOutInAPipe(t *testing.T) {
	fanEnv(t)
	o, e, code := pifarm(t, "run", fanRecipe, "--fail-on", "2", "1-3")
	if code != ExitFailed {
		t.Errorf("exit %d, want 1", code)
	}
	for _, want := range []string{
		"<1> enone   | hello from <1> enone (verbose False)\n",
		"<1> enone   | streamed from 1\n",
		"<1> enone   | done with enone\n",
		"<2> entwo   | hello from <2> entwo (verbose False)\n",
		"<3> enthree | done with enthree\n",
	} {
		if !strings.Contains(o, want) {
			t.Errorf("stdout lacks %q:\n%s", want, o)
		}
	}
	if strings.Contains(o, "done with entwo") || strings.Contains(o, "to stderr") {
		t.Errorf("stdout:\n%s", o)
	}
	for _, want := range []string{
		"<2> entwo   | to stderr from 2\n",
		"<2> entwo   | Error in fail: fail: asked to fail on <2> entwo\n",
		"node         result  seconds  cause\n",
		"<2> entwo    failed  ",
		"  asked to fail on <2> entwo\n",
		"pifarm: fan 1-3: 1 of 3 nodes failed: <2> entwo\n",
	} {
		if !strings.Contains(e, want) {
			t.Errorf("stderr lacks %q:\n%s", want, e)
		}
	}
	if strings.Contains(e, "sh -c") {
		t.Errorf("trace lines without -v:\n%s", e)
	}
	for _, line := range strings.Split(strings.TrimSpace(o), "\n") {
		if !strings.Contains(line, " | ") {
			t.Errorf("an unprefixed line: %q", line)
		}
	}

	// -v: the trace lines too, and farm.verbose is True
	o, e, code = pifarm(t, "-v", "run", fanRecipe, "1,2")
	if code != 0 || !strings.Contains(e, "<1> enone | sh -c 'echo streamed from 1;") || !strings.Contains(o, "<2> entwo | hello from <2> entwo (verbose True)") {
		t.Errorf("-v: exit %d\n%s%s", code, o, e)
	}
}

// TestFanOutFailFast: with --fail-fast (before or after the recipe name)
// the nodes after a failure do not run; without it they all do.
func TestFanOutFailFast(t *testing.T) {
	fanEnv(t)
	for _, args := range [][]string{
		{"--fail-fast", "-j", "1", "run", fanRecipe, "--fail-on", "1", "1-3"},
		{"run", fanRecipe, "-j1", "--fail-fast", "--fail-on", "1", "1-3"},
	} {
		o, e, code := pifarm(t, args...)
		if code != ExitFailed || strings.Contains(o, "enthree") || !strings.Contains(e, "<3> enthree  not run  -        not run: another node failed (--fail-fast)") ||
			!strings.Contains(e, "pifarm: fan 1-3: 1 of 3 nodes failed, 2 did not run: <1> enone, <2> entwo, <3> enthree") {
			t.Errorf("%v: exit %d\n%s%s", args, code, o, e)
		}
	}
	o, e, code := pifarm(t, "-j", "1", "run", fanRecipe, "--fail-on", "1", "1-3")
	if code != ExitFailed || !strings.Contains(o, "done with enthree") || !strings.Contains(e, "1 of 3 nodes failed") {
		t.Errorf("without --fail-fast: exit %d\n%s%s", code, o, e)
	}
}

// TestFanOutRunsConcurrently: three nodes that each wait 0.4 s take about
// 0.4 s with -j 3 and about 1.2 s with -j 1.
func TestFanOutRunsConcurrently(t *testing.T) {
	fanEnv(t)
	took := func(j string) time.Duration {
		t0 := time.Now()
		o, e, code := pifarm(t, "-j", j, "run", fanRecipe, "--sleep", "0.4", "1-3")
		if code != 0 {
			t.Fatalf("-j %s: exit %d\n%s%s", j, code, o, e)
		}
		return time.Since(t0)
	}
	par, seq := took("3"), took("1")
	t.Logf("-j 3: %v, -j 1: %v", par, seq)
	if seq < 1200*time.Millisecond || par > seq*3/4 {
		t.Errorf("-j 3 took %v, -j 1 %v: not concurrent", par, seq)
	}
}

// TestFanOutUsageErrors: a bad -j and a node set naming an unknown node
// are usage errors (exit status 2) before anything runs.
func TestFanOutUsageErrors(t *testing.T) {
	fanEnv(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-j", "0", "run", fanRecipe, "1-3"}, "-j 0: want how many nodes run at a time"},
		{[]string{"run", fanRecipe, "--jobs=x", "1-3"}, "-j x: want"},
		{[]string{"run", fanRecipe, "1-3,9"}, `unknown instance "9"`},
		{[]string{"run", fanRecipe, "@nosuch"}, `no node is tagged "nosuch"`},
		{[]string{"-j"}, "option -j needs a number"},
	} {
		o, e, code := pifarm(t, tc.args...)
		if code != ExitUsage || !strings.Contains(e, tc.want) || strings.Contains(o, "hello") {
			t.Errorf("%v: exit %d, want 2 and %q:\n%s%s", tc.args, code, tc.want, o, e)
		}
	}
}

// TestFanOutMasksSecrets: a secret registered by one node's door is
// masked in its print() output and in its streamed command output.
func TestFanOutMasksSecrets(t *testing.T) {
	fanEnv(t)
	o, e, code := pifarm(t, "run", fanRecipe, "--secret", "hunter2", "1,2")
	if code != 0 || strings.Contains(o+e, "hunter2") || !strings.Contains(o, "<2> entwo | the secret is ****") || !strings.Contains(o, "<1> enone | streamed secret ****") {
		t.Errorf("exit %d\n%s%s", code, o, e)
	}
}

// TestFanOutOnATerminal runs a fan-out with standard output on a real
// pseudo-terminal and reads the screen: one status line per node,
// redrawn in place while the nodes run (each showing its current step),
// the failure printed in full above them when it happened, and at the
// end each node's outcome, one line each.
func TestFanOutOnATerminal(t *testing.T) {
	fanEnv(t)
	ptm, pts := openPTY(t, 30, 100)
	var raw bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			n, err := ptm.Read(buf)
			raw.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	var errb bytes.Buffer
	t.Setenv("TERM", "xterm")
	code := Main(Options{Args: []string{"-j", "3", "run", fanRecipe, "--sleep", "0.6", "--fail-on", "2", "1-3"}, Stdout: pts, Stderr: &errb, NotRoot: true, DefaultConfig: startest.DefaultConfig(t)})
	pts.Close()
	wg.Wait()
	if code != ExitFailed {
		t.Errorf("exit %d, want 1", code)
	}
	scr := &screen{}
	sawRunning := false
	for _, chunk := range bytes.SplitAfter(raw.Bytes(), []byte("\n")) {
		scr.write(string(chunk))
		s := scr.String()
		if strings.Contains(s, "<1> enone") && strings.Contains(s, "running   sleep 0.6") {
			sawRunning = true
		}
	}
	final := scr.String()
	t.Logf("the screen at the end:\n%s", final)
	if !sawRunning {
		t.Errorf("no status line showed a running node's step; the output:\n%q", raw.String())
	}
	want := []string{
		"✗ <2> entwo failed after",
		"  Error in fail: fail: asked to fail on <2> entwo",
	}
	for _, w := range want {
		if !strings.Contains(final, w) {
			t.Errorf("the screen lacks %q", w)
		}
	}
	lines := strings.Split(strings.TrimRight(final, "\n"), "\n")
	last := lines[len(lines)-3:]
	for i, w := range []string{"<1> enone       0.", "<2> entwo       0.", "<3> enthree     0."} {
		if !strings.HasPrefix(last[i], w) {
			t.Errorf("status line %d = %q, want it to begin %q", i+1, last[i], w)
		}
	}
	if !strings.Contains(last[0], "✓ ok      done with enone") || !strings.Contains(last[1], "✗ failed  asked to fail on <2> entwo") || !strings.Contains(last[2], "✓ ok") {
		t.Errorf("the last status lines:\n%s", strings.Join(last, "\n"))
	}
	if n := strings.Count(final, "<1> enone "); n != 1 {
		t.Errorf("node 1's status line is on the screen %d times (not redrawn in place)", n)
	}
	if !strings.Contains(errb.String(), "1 of 3 nodes failed") {
		t.Errorf("stderr: %s", errb.String())
	}
}

// openPTY opens a pseudo-terminal of rows x cols (/dev/ptmx): the
// controlling side and the terminal.
func openPTY(t *testing.T, rows, cols uint16) (ptm, pts *os.File) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	ptm = os.NewFile(uintptr(fd), "/dev/ptmx")
	pts, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open the terminal: %v", err)
	}
	if err := unix.IoctlSetWinsize(int(pts.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatalf("window size: %v", err)
	}
	t.Cleanup(func() { ptm.Close(); pts.Close() })
	return ptm, pts
}

// screen is the little of a terminal the status display uses: text,
// carriage return, line feed, cursor up (ESC [ n A) and erase below
// (ESC [ J).
type screen struct {
	lines    [][]rune
	row, col int
}

func (s *screen) write(p string) {
	r := []rune(p)
	for i := 0; i < len(r); i++ {
		c := r[i]
		switch {
		case c == '\x1b' && i+1 < len(r) && r[i+1] == '[':
			j := i + 2
			n := 0
			for j < len(r) && r[j] >= '0' && r[j] <= '9' {
				n = n*10 + int(r[j]-'0')
				j++
			}
			if j < len(r) {
				switch r[j] {
				case 'A':
					s.row = max(s.row-max(n, 1), 0)
				case 'J':
					s.grow()
					s.lines[s.row] = s.lines[s.row][:min(s.col, len(s.lines[s.row]))]
					s.lines = s.lines[:s.row+1]
				}
			}
			i = j
		case c == '\r':
			s.col = 0
		case c == '\n':
			s.row++
			s.col = 0 // the terminal's onlcr
		default:
			s.grow()
			for len(s.lines[s.row]) <= s.col {
				s.lines[s.row] = append(s.lines[s.row], ' ')
			}
			s.lines[s.row][s.col] = c
			s.col++
		}
	}
}

func (s *screen) grow() {
	for len(s.lines) <= s.row {
		s.lines = append(s.lines, nil)
	}
}

func (s *screen) String() string {
	var b strings.Builder
	for _, l := range s.lines {
		b.WriteString(strings.TrimRight(string(l), " ") + "\n")
	}
	return b.String()
}

// TestFanOutRecord: a live fan-out records each node's whole output
// (trace lines and failure included, secrets masked) in runs/DATE-RECIPE/
// N.log and the outcome in summary.json, 0600 files in 0700 folders;
// pifarm runs lists the runs, shows one, and prints a node's log.
func TestFanOutRecord(t *testing.T) {
	cache := fanEnv(t)
	_, _, code := pifarm(t, "run", fanRecipe, "--fail-on", "2", "--secret", "hunter2", "1-3")
	if code != ExitFailed {
		t.Fatalf("exit %d", code)
	}
	dirs, _ := filepath.Glob(filepath.Join(cache, "runs", "*-fan"))
	if len(dirs) != 1 {
		t.Fatalf("run folders %v", dirs)
	}
	run := filepath.Base(dirs[0])
	for _, p := range []string{filepath.Join(cache, "runs"), dirs[0]} {
		if fi, err := os.Lstat(p); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, %v", p, fi.Mode(), err)
		}
	}
	files, _ := os.ReadDir(dirs[0])
	var names []string
	for _, e := range files {
		names = append(names, e.Name())
		if fi, _ := e.Info(); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", e.Name(), fi.Mode())
		}
		if b, _ := os.ReadFile(filepath.Join(dirs[0], e.Name())); strings.Contains(string(b), "hunter2") {
			t.Errorf("%s holds the secret:\n%s", e.Name(), b)
		}
	}
	if strings.Join(names, " ") != "1.log 2.log 3.log summary.json" {
		t.Errorf("files %v", names)
	}
	log2, _ := os.ReadFile(filepath.Join(dirs[0], "2.log"))
	for _, want := range []string{"the secret is ****\n", "streamed secret ****\n", "sh -c 'echo streamed from 2; echo to stderr from 2 >&2'\n", "streamed from 2\n", "to stderr from 2\n", "Error in fail: fail: asked to fail on <2> entwo\n"} {
		if !strings.Contains(string(log2), want) {
			t.Errorf("2.log lacks %q:\n%s", want, log2)
		}
	}
	var sum farm.RunSummary
	data, _ := os.ReadFile(filepath.Join(dirs[0], "summary.json"))
	if err := json.Unmarshal(data, &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Recipe != "fan" || sum.Set != "1-3" || !sum.Finished || sum.Exit != 1 || len(sum.Nodes) != 3 ||
		sum.Nodes[1].Node != 2 || sum.Nodes[1].Exit != 1 || sum.Nodes[1].Error != "asked to fail on <2> entwo" ||
		sum.Nodes[0].Exit != 0 || sum.Nodes[0].Error != "" || sum.Nodes[2].Seconds <= 0 || strings.Join(sum.Args, " ") != "--fail-on 2 --secret **** 1-3" {
		t.Errorf("summary.json:\n%s", data)
	}

	o, e, code := pifarm(t, "runs")
	if code != 0 || !strings.Contains(o, run+"  fan     1-3    ") || !strings.Contains(o, "2 ok, 1 failed") {
		t.Errorf("runs: exit %d\n%s%s", code, o, e)
	}
	o, e, code = pifarm(t, "runs", "last")
	if code != 0 || !strings.Contains(o, "run "+run+": pifarm run fan --fail-on 2 --secret '****' 1-3\n") ||
		!strings.Contains(o, "<2> entwo    failed  ") || !strings.Contains(o, filepath.Join(dirs[0], "2.log")+"  asked to fail on <2> entwo\n") {
		t.Errorf("runs last: exit %d\n%s%s", code, o, e)
	}
	for _, node := range []string{"2", "entwo"} {
		o, e, code = pifarm(t, "runs", "last", node)
		if code != 0 || o != string(log2) {
			t.Errorf("runs last %s: exit %d\n%s%s", node, code, o, e)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"runs", "nosuch"}, `no run "nosuch"`},
		{[]string{"runs", "last", "4"}, `has no node "4" (its nodes: 1=enone, 2=entwo, 3=enthree)`},
		{[]string{"runs", "--frob"}, "unknown option --frob"},
		{[]string{"runs", "a", "b", "c"}, `unexpected argument "c"`},
	} {
		o, e, code := pifarm(t, tc.args...)
		if code != ExitUsage || !strings.Contains(e, tc.want) {
			t.Errorf("%v: exit %d, want 2 and %q\n%s%s", tc.args, code, tc.want, o, e)
		}
	}
	// a dry run records nothing
	pifarm(t, "-n", "run", fanRecipe, "1-3")
	if dirs, _ := filepath.Glob(filepath.Join(cache, "runs", "*")); len(dirs) != 1 {
		t.Errorf("after a dry run: %v", dirs)
	}
}

// TestFanOutRefusesLinkedRuns: a symbolic link at the cache's runs
// folder stops a live fan-out before any node runs, and nothing is
// written through it.
func TestFanOutRefusesLinkedRuns(t *testing.T) {
	cache := fanEnv(t)
	elsewhere := t.TempDir()
	os.Symlink(elsewhere, filepath.Join(cache, "runs"))
	o, e, code := pifarm(t, "run", fanRecipe, "1-2")
	if code != ExitFailed || strings.Contains(o, "hello") || !strings.Contains(e, "runs is not a folder") {
		t.Errorf("exit %d\n%s%s", code, o, e)
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("written through the link: %v", ents)
	}
}

// TestFanOutInterrupted: Ctrl-C stops the running nodes and starts no
// other; the record says which were interrupted and which never ran.
func TestFanOutInterrupted(t *testing.T) {
	fanEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var out, errb bytes.Buffer
	t0 := time.Now()
	code := Main(Options{Args: []string{"-j", "2", "run", fanRecipe, "--sleep", "5", "1-4"}, Stdout: &out, Stderr: &errb, Ctx: ctx, NotRoot: true, DefaultConfig: startest.DefaultConfig(t)})
	if code != ExitFailed || time.Since(t0) > 3*time.Second || !strings.Contains(errb.String(), "2 of 4 nodes failed, 2 did not run") {
		t.Fatalf("exit %d after %v\n%s%s", code, time.Since(t0), out.String(), errb.String())
	}
	o, _, _ := pifarm(t, "runs", "last")
	for _, want := range []string{"<1> enone    failed   ", "1.log  interrupted\n", "2.log  interrupted\n", "<4> enfour   not run  0.0      -  ", "  not run: interrupted\n"} {
		if !strings.Contains(o, want) {
			t.Errorf("runs last lacks %q:\n%s", want, o)
		}
	}
}
