package farm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/trace"
)

const parallelDoc = `Run fn(node) for every node, concurrently, and return the results by node.

nodes is a node set ("1-3", "@rack1", "all") or a list of nodes (farm.node structs, ids or
aliases); each node is taken once. At most jobs calls run at a time (default: the run's
-j; see pifarm -hv). Each call runs on a Starlark thread of its own; fn and the values it
captures are frozen first (the threads share them), so fn cannot change a list of its
caller: it returns what it found instead.

Returns a dict from node id to struct(node, ok, value, error), in the order of nodes: ok
is True when fn returned (value is what it returned, error None), False when it failed
(value None, error the failure's message): one node's failure never stops the others.
Ctrl-C interrupts every call.

    def boot(n):
        qemu.start(n)
        return qemu.wait_ssh(n, timeout = 300).seen
    for id, r in farm.parallel(boot, "1-3").items():
        print(id, r.value if r.ok else "failed: " + r.error)`

// parallelNodes reads the nodes argument of farm.parallel: a node set, or
// an iterable of instance references.
func (f *Farm) parallelNodes(fn string, v starlark.Value) ([]*Node, error) {
	if s, ok := v.(starlark.String); ok {
		return f.Select(string(s))
	}
	it, ok := v.(starlark.Iterable)
	if !ok {
		return nil, fmt.Errorf("%s: for parameter nodes: want a node set (\"1-3\") or a list of nodes, got %s", fn, v.Type())
	}
	iter := it.Iterate()
	defer iter.Done()
	var nodes []*Node
	seen := map[int]bool{}
	var x starlark.Value
	for i := 0; iter.Next(&x); i++ {
		ref := InstanceRef{Farm: f}
		if err := ref.Unpack(x); err != nil {
			if trace.IsUsage(err) {
				return nil, err
			}
			return nil, fmt.Errorf("%s: for parameter nodes: element %d: %w", fn, i, err)
		}
		if !seen[ref.Node.ID] {
			seen[ref.Node.ID] = true
			nodes = append(nodes, ref.Node)
		}
	}
	return nodes, nil
}

func (m *module) parallel(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var fn starlark.Callable
	var nodesV starlark.Value
	var jobsV starlark.Value = starlark.None
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "fn", &fn, "nodes", &nodesV, "jobs?", &jobsV); err != nil {
		return nil, err
	}
	jobs := 0
	if jobsV != starlark.None {
		n, err := starlark.AsInt32(jobsV)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: for parameter jobs: want how many calls run at a time (a whole number, at least 1), got %s", b.Name(), jobsV)
		}
		jobs = n
	}
	nodes, err := m.f.parallelNodes(b.Name(), nodesV)
	if err != nil {
		return nil, err
	}
	if jobs == 0 {
		jobs = max(m.f.Jobs, 1)
	}
	fn.Freeze()
	results := m.f.Parallel(thread, nodes, jobs, func(th *starlark.Thread, n *Node) (starlark.Value, error) {
		return starlark.Call(th, fn, starlark.Tuple{m.f.NodeStruct(n)}, nil)
	})
	d := starlark.NewDict(len(nodes))
	for i, n := range nodes {
		r := results[i]
		fields := starlark.StringDict{"node": m.f.NodeStruct(n), "ok": starlark.Bool(r.Err == nil), "value": starlark.None, "error": starlark.None}
		if r.Err != nil {
			fields["error"] = starlark.String(ErrorMessage(r.Err))
		} else if r.Value != nil {
			fields["value"] = r.Value
		}
		d.SetKey(starlark.MakeInt(n.ID), starlarkstruct.FromStringDict(starlark.String("result"), fields))
	}
	return d, nil
}

// ParallelResult is one call of Farm.Parallel.
type ParallelResult struct {
	Value starlark.Value
	Err   error
}

// Parallel calls call(thread, node) for every node, at most jobs at a
// time, each on a Starlark thread of its own made like parent (its name
// with the node's, its load, its context, which cancels it); print from
// the threads is serialised. A panic in a call is that call's error. The
// results come in the order of nodes.
func (f *Farm) Parallel(parent *starlark.Thread, nodes []*Node, jobs int, call func(*starlark.Thread, *Node) (starlark.Value, error)) []ParallelResult {
	results := make([]ParallelResult, len(nodes))
	ctx, _ := parent.Local(trace.ContextKey).(context.Context)
	if ctx == nil {
		ctx = context.Background()
	}
	var printMu sync.Mutex
	parentPrint := parent.Print
	var wg sync.WaitGroup
	slots := make(chan struct{}, max(jobs, 1))
	for i, n := range nodes {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			results[i].Err = fmt.Errorf("%s: not run: %w", n.Label(), ctx.Err())
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			th := &starlark.Thread{Name: parent.Name + " " + n.Label(), Load: parent.Load}
			if parentPrint != nil {
				th.Print = func(t *starlark.Thread, msg string) {
					printMu.Lock()
					defer printMu.Unlock()
					parentPrint(t, msg)
				}
			}
			th.SetLocal(trace.ContextKey, ctx)
			stop := context.AfterFunc(ctx, func() { th.Cancel("interrupted") })
			defer stop()
			defer func() {
				if r := recover(); r != nil {
					results[i].Err = fmt.Errorf("%s: internal error (a bug in pifarm, please report it): %v", n.Label(), r)
				}
			}()
			results[i].Value, results[i].Err = call(th, n)
		}()
	}
	wg.Wait()
	return results
}

// ErrorMessage is what a failed call's error says: a Starlark error's
// message (fail()'s text, or the builtin that failed and why), without
// its backtrace.
func ErrorMessage(err error) string {
	msg := err.Error()
	var ee *starlark.EvalError
	if errors.As(err, &ee) {
		msg = ee.Msg
	}
	return strings.TrimPrefix(msg, "fail: ")
}
