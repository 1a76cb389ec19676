package trace

import (
	"context"
	"time"
)

// Finally performs a clean-up action at the end of a run (log out a console
// session the run left logged in) like Do, but also when the run was
// cancelled: what a run leaves behind must be undone however it ends. The
// caller bounds the action with its own short deadline, since the run's
// context may be done already.
func (d *Door) Finally(line string, fn func() error) error {
	if d.DryRun || d.Verbose {
		d.Print(line)
	}
	if d.DryRun {
		return nil
	}
	return fn()
}

// ExecFinally runs a clean-up command at the end of a run (unmount what a
// run mounted, stop a helper daemon) like Exec, but also when the run was
// cancelled, bounded by timeout instead of the run's context.
func (d *Door) ExecFinally(c Cmd, timeout time.Duration) (Result, error) {
	if d.DryRun || d.Verbose {
		d.Print(d.Line(c))
	}
	if d.DryRun {
		return Result{}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.runIn(ctx, c)
}
