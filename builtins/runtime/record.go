package runtime

import (
	"fmt"
	"io"
	"sync"
	"time"

	"pifarm/builtins/farm"
)

// record is the run record of a live fan-out (farm.RunRecord): the nodes'
// logs and summary.json in the cache's runs folder.
type record struct {
	rt   *Runtime
	rec  *farm.RunRecord
	sum  *farm.RunSummary
	argv []string

	mu   sync.Mutex
	logs []io.Closer
}

// newRecord makes the run's folder and writes a first summary.json (every
// node unfinished), so that a run that is killed still says what it was.
// The arguments are written when the run finished, masked by the nodes'
// doors (a password given to a builtin is a secret only from then on).
func (rt *Runtime) newRecord(recipe string, argv []string, set string, nodes []*farm.Node, started time.Time) (*record, error) {
	rec, err := rt.Farm.NewRunRecord(recipe, started)
	if err != nil {
		return nil, err
	}
	sum := &farm.RunSummary{Run: rec.Name, Recipe: recipe, Args: []string{}, Set: set,
		Started: started.Truncate(time.Second), Exit: -1}
	for _, n := range nodes {
		sum.Nodes = append(sum.Nodes, farm.NodeSummary{Node: n.ID, Alias: n.Alias, Exit: -1, Error: "unfinished", Log: fmt.Sprintf("%d.log", n.ID)})
	}
	r := &record{rt: rt, rec: rec, sum: sum, argv: argv}
	if err := rec.WriteSummary(sum); err != nil {
		rec.Close()
		return nil, err
	}
	return r, nil
}

// log opens node n's log; when it cannot be made the node runs without
// one, and its output says why.
func (r *record) log(n *farm.Node) io.Writer {
	w, err := r.rec.Log(n.ID)
	if err != nil {
		fmt.Fprintf(r.rt.Fan.stderr(), "pifarm: %v (the node runs without a log)\n", err)
		return nil
	}
	r.mu.Lock()
	r.logs = append(r.logs, w)
	r.mu.Unlock()
	return w
}

// finish writes the final summary.json; masks are the nodes' doors' Mask.
func (r *record) finish(results []*nodeResult, took time.Duration, masks []func(string) string) {
	r.sum.Finished, r.sum.Seconds, r.sum.Exit = true, roundSeconds(took.Seconds()), ExitOK
	for _, a := range r.argv {
		for _, m := range masks {
			a = m(a)
		}
		r.sum.Args = append(r.sum.Args, a)
	}
	for i, res := range results {
		ns := &r.sum.Nodes[i]
		ns.Exit, ns.Seconds, ns.Error = res.Exit, roundSeconds(res.Seconds), res.Cause
		if res.Exit == -1 {
			ns.Seconds = 0
		}
		if res.Exit != 0 {
			r.sum.Exit = ExitFailed
		}
	}
	if err := r.rec.WriteSummary(r.sum); err != nil {
		fmt.Fprintf(r.rt.Fan.stderr(), "pifarm: %v\n", err)
	}
}

// close closes the logs and the run's folder.
func (r *record) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.logs {
		l.Close()
	}
	r.rec.Close()
}

// roundSeconds keeps two decimals.
func roundSeconds(s float64) float64 { return float64(int64(s*100+0.5)) / 100 }
