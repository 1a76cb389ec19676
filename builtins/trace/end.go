package trace

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
