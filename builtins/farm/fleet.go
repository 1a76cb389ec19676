package farm

import (
	"context"
	"fmt"
	"time"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/trace"
)

const lastRunsDoc = `The newest recorded run of every node that took part in one, as a dict from node id.

Each value is struct(run, recipe, started, finished, exit, seconds, error): the run's folder
name in the cache's runs folder, its recipe, when it began (RFC 3339), whether it finished,
and the node's exit status (0, 1, 2; -1 not run or unfinished), seconds and one-line error
("" on success). A query (reads the records; runs in dry-run too).`

func (m *module) lastRuns(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 0); err != nil {
		return nil, err
	}
	last, err := m.f.LastRuns()
	if err != nil {
		return nil, err
	}
	d := starlark.NewDict(len(last))
	for _, n := range m.f.Nodes() {
		l, ok := last[n.ID]
		if !ok {
			continue
		}
		d.SetKey(starlark.MakeInt(n.ID), starlarkstruct.FromStringDict(starlark.String("last_run"), starlark.StringDict{
			"run":      starlark.String(l.Run.Run),
			"recipe":   starlark.String(l.Run.Recipe),
			"started":  starlark.String(l.Run.Started.Format(time.RFC3339)),
			"finished": starlark.Bool(l.Run.Finished),
			"exit":     starlark.MakeInt(l.Node.Exit),
			"seconds":  starlark.Float(l.Node.Seconds),
			"error":    starlark.String(l.Node.Error),
		}))
	}
	return d, nil
}

const sleepDoc = `Wait secs seconds (a number); Ctrl-C ends the wait (and the run).`

func sleep(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var secs trace.Seconds
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &secs); err != nil {
		return nil, err
	}
	ctx, _ := thread.Local(trace.ContextKey).(context.Context)
	if ctx == nil {
		ctx = context.Background()
	}
	t := time.NewTimer(secs.D)
	defer t.Stop()
	select {
	case <-t.C:
		return starlark.None, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("interrupted: %w", ctx.Err())
	}
}
