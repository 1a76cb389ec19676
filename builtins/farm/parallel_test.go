package farm

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"go.starlark.net/starlark"
	"pifarm/builtins/trace"
)

// runParallel executes src with farm (setFarm's) and a builtin wait(s)
// that sleeps and counts how many waits overlap; it returns the globals
// and the most overlapping waits seen.
func runParallel(t *testing.T, ctx context.Context, jobs int, src string) (starlark.StringDict, int, string, error) {
	t.Helper()
	f := setFarm(t)
	f.Jobs = jobs
	var mu sync.Mutex
	cur, most := 0, 0
	wait := starlark.NewBuiltin("wait", func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
		var s float64
		if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &s); err != nil {
			return nil, err
		}
		mu.Lock()
		cur++
		most = max(most, cur)
		mu.Unlock()
		time.Sleep(time.Duration(s * float64(time.Second)))
		mu.Lock()
		cur--
		mu.Unlock()
		return starlark.None, nil
	})
	var out strings.Builder
	th := &starlark.Thread{Name: "test", Print: func(_ *starlark.Thread, msg string) { out.WriteString(msg + "\n") }}
	th.SetLocal(trace.ContextKey, ctx)
	stop := context.AfterFunc(ctx, func() { th.Cancel("interrupted") })
	defer stop()
	g, err := starlark.ExecFileOptions(trace.FileOptions(), th, "test.star", src, starlark.StringDict{
		"farm": f.Module(trace.New(ctx, false, false, nil)).Struct(),
		"wait": wait,
	})
	return g, most, out.String(), err
}

func TestParallel(t *testing.T) {
	g, most, printed, err := runParallel(t, context.Background(), 2, `
def f(n):
    wait(0.1)
    print("on", n.alias)
    if n.id == 2:
        fail("no luck on %s" % n.alias)
    return n.id * 10

r = farm.parallel(f, "1-4")
ids = list(r.keys())
oks = [r[i].ok for i in ids]
values = [r[i].value for i in ids]
errors = [r[i].error for i in ids]
aliases = [r[i].node.alias for i in ids]
r3 = farm.parallel(f, [4, "enone", farm.node(3), 4], jobs = 3)
`)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"ids":     "[1, 2, 3, 4]",
		"oks":     "[True, False, True, True]",
		"values":  "[10, None, 30, 40]",
		"errors":  `[None, "no luck on entwo", None, None]`,
		"aliases": `["enone", "entwo", "en-three", "enfour"]`,
	} {
		if got := g[name].String(); got != want {
			t.Errorf("%s = %s, want %s", name, got, want)
		}
	}
	if keys := g["r3"].(*starlark.Dict).Keys(); len(keys) != 3 || keys[0].String() != "4" || keys[1].String() != "1" {
		t.Errorf("r3's keys %v: the nodes in the order given, each once", keys)
	}
	if most != 3 {
		t.Errorf("at most %d calls at once, want 3 (jobs = 3; the first call's -j of 2 also held)", most)
	}
	if strings.Count(printed, "on ") != 7 {
		t.Errorf("printed:\n%s", printed)
	}
}

func TestParallelBoundedByJobs(t *testing.T) {
	t0 := time.Now()
	_, most, _, err := runParallel(t, context.Background(), 2, "farm.parallel(lambda n: wait(0.15), \"all\")\n")
	if err != nil {
		t.Fatal(err)
	}
	if most != 2 || time.Since(t0) < 4*150*time.Millisecond {
		t.Errorf("at most %d at once in %v, want 2 (the run's -j) over 7 nodes", most, time.Since(t0))
	}
}

func TestParallelErrors(t *testing.T) {
	for _, tc := range []struct {
		src, want string
		usage     bool
	}{
		{`farm.parallel(lambda n: n, "@nosuch")`, `no node is tagged "nosuch"`, true},
		{`farm.parallel(lambda n: n, [1, "nosuch"])`, `unknown instance "nosuch"`, true},
		{`farm.parallel(lambda n: n, 3)`, "want a node set", false},
		{`farm.parallel(lambda n: n, "1", jobs = 0)`, "for parameter jobs", false},
		{`farm.parallel(lambda n: n, [struct_without_id])`, "element 0", false},
	} {
		_, _, _, err := runParallel(t, context.Background(), 1, "struct_without_id = 1.5\n"+tc.src+"\n")
		if err == nil || !strings.Contains(err.Error(), tc.want) || trace.IsUsage(err) != tc.usage {
			t.Errorf("%s: %v, want %q (usage error: %v)", tc.src, err, tc.want, tc.usage)
		}
	}
	// fn cannot change what its caller holds: the list is frozen
	g, _, _, err := runParallel(t, context.Background(), 2, `
def outer():
    seen = []
    def f(n):
        seen.append(n.id)
    r = farm.parallel(f, "1-2")
    return [r[i].error for i in r]
errs = outer()
`)
	if err != nil || !strings.Contains(g["errs"].String(), "frozen list") {
		t.Errorf("appending to the caller's list: %v %v", g["errs"], err)
	}
}

// TestParallelInterrupted: cancelling the run's context interrupts every
// call; the calls not yet started do not run.
func TestParallelInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(150*time.Millisecond, cancel)
	t0 := time.Now()
	g, _, _, err := runParallel(t, ctx, 2, `
def f(n):
    wait(0.05)
    while True:
        pass
r = farm.parallel(f, "all")
errs = [r[i].error for i in r]
`)
	// the caller's thread is interrupted too, at its next step
	if err == nil || !strings.Contains(err.Error(), "interrupted") || g["errs"] != nil {
		t.Errorf("after the interruption: %v, errs %v", err, g["errs"])
	}
	if time.Since(t0) > 3*time.Second {
		t.Errorf("took %v", time.Since(t0))
	}
}
