package chroot

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"pifarm/builtins/trace"
)

// RunOpts are the options of Root.Run.
type RunOpts struct {
	// Stdin feeds the command; Text says it is text (shown as a
	// here-document in the trace), else bytes (a tar stream: its size is
	// noted).
	Stdin []byte
	Text  bool
	// Stream copies the output to the terminal as it arrives.
	Stream bool
	// Check makes a non-zero exit an error.
	Check bool
	// Timeout ends the command (0: no limit).
	Timeout time.Duration
}

// Result is what a command in the guest left behind.
type Result struct {
	Stdout, Stderr string
	ExitCode       int
}

// guestPATH is the search path of commands in the guest (Debian's root).
const guestPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Argv is the command line that runs the shell command cmd as root in the
// guest: chroot with a clean environment, optionally under timeout(1).
func (r *Root) Argv(cmd string, timeout time.Duration) []string {
	var argv []string
	if timeout > 0 {
		secs := strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64)
		argv = append(argv, "timeout", "-k", "10", secs)
	}
	return append(argv, "chroot", r.Path, "/usr/bin/env", "-i", "PATH="+guestPATH, "HOME=/root",
		"LC_ALL="+r.locale(), "TERM=dumb", "/bin/sh", "-c", cmd)
}

// locale is C.UTF-8 when the guest has it (glibc 2.35 and later build it
// in; Debian ships it), else C.
func (r *Root) locale() string {
	if r.d.DryRun {
		return "C.UTF-8"
	}
	for _, p := range []string{"usr/lib/locale/C.utf8", "usr/lib/locale/C.UTF-8"} {
		if _, err := os.Stat(filepath.Join(r.Path, p)); err == nil {
			return "C.UTF-8"
		}
	}
	return "C"
}

// Run runs the shell command cmd as root in the guest.
func (r *Root) Run(cmd string, o RunOpts) (Result, error) {
	if r.closed {
		return Result{}, fmt.Errorf("the root of instance %d is closed", r.ID)
	}
	c := trace.Cmd{Argv: r.Argv(cmd, o.Timeout), Sudo: true}
	switch {
	case o.Text && len(o.Stdin) > 0:
		c.Heredoc = string(o.Stdin)
	case len(o.Stdin) > 0:
		r.d.Note("stdin of the next command: %d bytes", len(o.Stdin))
		c.Stdin = bytes.NewReader(o.Stdin)
	}
	if o.Stream {
		c.Stdout, c.Stderr = r.d.StreamOut(), r.d.StreamErr()
	}
	res, err := r.d.Exec(c)
	out := Result{Stdout: string(res.Stdout), Stderr: string(res.Stderr), ExitCode: res.ExitCode}
	if err != nil {
		if o.Timeout > 0 && res.ExitCode == 124 {
			err = fmt.Errorf("%w (ended after the timeout of %s)", err, o.Timeout)
		}
		if o.Check || res.ExitCode < 0 || r.d.Context().Err() != nil {
			return out, fmt.Errorf("in the guest of instance %d: %w", r.ID, err)
		}
	}
	return out, nil
}
