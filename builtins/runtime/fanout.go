package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"go.starlark.net/starlark"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// FanOptions configures the runs of a recipe over a node set: a recipe
// declared with one instance argument, given a node set (1-4, all, @TAG),
// runs once per node, concurrently.
type FanOptions struct {
	// Jobs bounds how many nodes run at once; 0 means DefaultJobs.
	Jobs int
	// FailFast stops the other nodes when one fails; without it every
	// node runs to its end whatever the others do.
	FailFast bool
	// Stderr receives the failures, the trace lines (-v) and the summary
	// in a pipe.
	Stderr io.Writer
	// Terminal: standard output is a terminal; without -v the runs show
	// as one status line per node, updated in place.
	Terminal bool
	// Size reports the terminal's columns and rows (nil: 80x24).
	Size func() (cols, rows int)
}

// jobs is the bound of parallel node runs: Fan.Jobs, else DefaultJobs.
func (rt *Runtime) jobs() int {
	if rt.Fan.Jobs > 0 {
		return rt.Fan.Jobs
	}
	return DefaultJobs(rt.Farm.Config)
}

// nodeResult is how one node's run of a fan-out ended.
type nodeResult struct {
	Node *farm.Node
	// Exit is the node's exit status: 0 success, 1 failure, 2 usage
	// error; -1 when it never ran (--fail-fast, Ctrl-C).
	Exit    int
	Seconds float64
	// Error is the failure in full (backtrace and cause), masked; Cause
	// its one-line summary. Both empty on success.
	Error, Cause string
}

// FanoutError is the error of a fan-out in which some nodes failed or
// did not run.
type FanoutError struct {
	Recipe, Set           string
	Failed, NotRun, Total int
	// Names labels the failed nodes and those that did not run.
	Names []string
}

func (e *FanoutError) Error() string {
	what := fmt.Sprintf("%d of %d nodes failed", e.Failed, e.Total)
	if e.NotRun > 0 {
		what += fmt.Sprintf(", %d did not run", e.NotRun)
	}
	return fmt.Sprintf("%s %s: %s: %s", e.Recipe, e.Set, what, strings.Join(e.Names, ", "))
}

// fanOut runs the recipe once per node of p.fanout, at most rt.jobs() at
// a time, each run on a runtime of its own (its own door, modules,
// Starlark thread and opts) whose output goes to its node's sink: the
// display and, live, the node's log. The modules' End of every node runs
// when all nodes are done (a package cache one node started serves the
// others until then).
func (rt *Runtime) fanOut(src source, name string, argv []string, p *parsed) error {
	nodes := p.fanout
	dry, verbose := rt.Door.DryRun, rt.Door.Verbose
	started := time.Now()
	var rec *record
	if !dry {
		var err error
		if rec, err = rt.newRecord(name, argv, p.fanoutText, nodes, started); err != nil {
			return err
		}
		defer rec.close()
	}
	disp := rt.newDisplay(nodes, dry, verbose)
	outs := make([]*nodeOut, len(nodes))
	for i, n := range nodes {
		outs[i] = &nodeOut{i: i, node: n, disp: disp, mask: func(s string) string { return s }}
	}
	ctx, cancel := context.WithCancel(rt.Door.Context())
	defer cancel()
	results := make([]*nodeResult, len(nodes))
	for i, n := range nodes {
		results[i] = &nodeResult{Node: n, Exit: -1, Cause: "not run"}
	}

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		ends     []func()
		stopped  bool // --fail-fast: a node failed
		slots    = make(chan struct{}, rt.jobs())
		failFast = rt.Fan.FailFast
	)
	for i, n := range nodes {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		mu.Lock()
		skip := stopped || ctx.Err() != nil
		mu.Unlock()
		if skip {
			if stopped {
				results[i].Cause = "not run: another node failed (--fail-fast)"
			} else {
				results[i].Cause = "not run: interrupted"
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			out := outs[i]
			if rec != nil {
				out.setLog(rec.log(n))
			}
			disp.begin(i)
			t0 := time.Now()
			end, err := rt.runNode(ctx, src, name, argv, p, n, out)
			r := results[i]
			r.Seconds = time.Since(t0).Seconds()
			mu.Lock()
			if end != nil {
				ends = append(ends, end)
			}
			interrupted := stopped && err != nil && ctx.Err() != nil
			if err != nil && failFast && !stopped {
				stopped = true
				cancel()
			}
			mu.Unlock()
			r.Exit, r.Error, r.Cause = 0, "", ""
			if err != nil {
				r.Exit = ExitFailed
				if trace.IsUsage(err) {
					r.Exit = ExitUsage
				}
				r.Error, r.Cause = out.mask(failureText(err)), out.mask(oneLine(err))
				switch {
				case interrupted:
					r.Cause = "stopped: another node failed (--fail-fast)"
				case rt.Door.Context().Err() != nil:
					r.Cause = "interrupted"
				}
				out.flush()
				for _, l := range strings.Split(r.Error, "\n") {
					out.line(kindFail, l)
				}
			}
			out.flush()
			disp.end(i, r)
		}()
	}
	wg.Wait()
	for _, end := range ends {
		end()
	}
	for _, o := range outs {
		o.flush()
	}
	if rec != nil {
		masks := make([]func(string) string, len(outs))
		for i, o := range outs {
			masks[i] = o.mask
		}
		rec.finish(results, time.Since(started), masks)
	}
	disp.close(results)
	fe := &FanoutError{Recipe: name, Set: p.fanoutText, Total: len(nodes)}
	for _, r := range results {
		switch r.Exit {
		case 0:
			continue
		case -1:
			fe.NotRun++
		default:
			fe.Failed++
		}
		fe.Names = append(fe.Names, r.Node.Label())
	}
	if fe.Failed+fe.NotRun > 0 {
		return fe
	}
	return nil
}

// runNode runs the recipe for one node on a runtime of its own whose door
// writes to out. It returns the runtime's End (nil when none was made).
// Live, the door is verbose whatever -v says, so that the node's log holds
// every action; the recipe's farm.verbose is the user's -v.
func (rt *Runtime) runNode(ctx context.Context, src source, name string, argv []string, p *parsed, n *farm.Node, out *nodeOut) (end func(), err error) {
	defer recoverPanic(src.display(), &err)
	dry, verbose := rt.Door.DryRun, rt.Door.Verbose
	stdout := out.writer(kindOut, false)
	d := trace.New(ctx, dry, verbose || !dry, out.writer(kindTrace, false))
	if dry {
		d.Out = stdout
	}
	d.Root = rt.Door.Root
	out.mask = d.Mask
	d.Stdout, d.Stderr = out.writer(kindOut, true), out.writer(kindErrOut, true)
	nrt := New(d, rt.Farm.Config, stdout)
	nrt.Fan = rt.Fan
	nrt.Fan.Terminal = false
	nrt.Fan.Jobs = rt.jobs()
	nrt.Farm.Jobs = nrt.Fan.Jobs
	s, g, err := nrt.loadSpec(src, name)
	if err != nil {
		return nrt.End, err
	}
	np, err := s.parse(argv, nrt.Farm, func(n *farm.Node) starlark.Value { return nrt.Farm.NodeStruct(n) })
	if err != nil {
		return nrt.End, err
	}
	np.values[p.fanoutField] = nrt.Farm.NodeStruct(n)
	nrt.setFlags(dry, verbose)
	mainFn, ok := g["main"].(starlark.Callable)
	if !ok {
		return nrt.End, fmt.Errorf("recipe %s defines no main(opts) function", src.display())
	}
	th, stop := nrt.newThread(name, src)
	defer stop()
	_, err = starlark.Call(th, mainFn, starlark.Tuple{np.opts()}, nil)
	return nrt.End, err
}

// failureText is a failed run's error as pifarm prints it: the Starlark
// backtrace and, when it adds to it, the Go error beneath.
func failureText(err error) string {
	msg := errorText(err)
	if cause := rootCause(err); cause != "" && !strings.Contains(msg, cause) {
		msg += "\ncause: " + cause
	}
	return msg
}

// oneLine is a failure's cause in one line, for the summary: the message
// of the innermost Starlark error (the builtin that failed and why, or
// fail()'s text), else the error itself; blanks and line breaks folded,
// at most 160 characters.
func oneLine(err error) string {
	s := err.Error()
	for e := err; e != nil; e = errors.Unwrap(e) {
		if x, ok := e.(*starlark.EvalError); ok {
			s = x.Msg
		}
	}
	s = strings.Join(strings.Fields(strings.TrimPrefix(s, "fail: ")), " ")
	const max = 160
	if r := []rune(s); len(r) > max {
		s = string(r[:max-1]) + "…"
	}
	return s
}
