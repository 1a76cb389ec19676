package qemu

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"

	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// Start starts instance n's QEMU unless it runs already, and returns once
// QEMU answers on its QMP socket. In the background (the default) QEMU
// daemonizes itself after it has opened its sockets and written its pidfile,
// so no guessing is needed; with Console it runs in the foreground with the
// serial console on this terminal and Start returns when it exits.
// Concurrent starts of one instance (in this or other processes) serialise on
// the instance lock: exactly one QEMU results. Under the lock, the disk must
// not be open for writing in another process (an orphaned QEMU, a writer of
// the image module). A VNC display beyond loopback gets a fresh password
// (see setVNCPassword).
func (in *Instances) Start(n *farm.Node, o Options) (Status, error) {
	if h, ok := in.placed(n); ok {
		return in.startOn(h, n, o)
	}
	id := n.ID
	plan, err := Command(in.F, n, o)
	if err != nil {
		return Status{}, err
	}
	cmd := trace.Cmd{Argv: plan.Argv}
	if st := in.Status(n); st.Running {
		st.Already = true
		return st, nil
	}
	var password string
	if plan.VNCPassword {
		password = newVNCPassword()
		in.D.Secret(password)
	}
	warn := func() {
		for _, w := range plan.Warnings {
			in.D.Print("# warning: " + w)
		}
	}
	if in.D.DryRun {
		warn()
		if err := in.refuseDiskInUse(n, "start", false); err != nil {
			return Status{}, err
		}
		if _, err := os.Lstat(in.F.InstanceDir(id)); err == nil {
			if err := in.F.MakeInstanceDir(in.D, id); err != nil {
				return Status{}, err
			}
		}
		st := Status{ID: id, Alias: n.Alias, Running: true, State: "running", LAN: plan.LAN, WLAN: plan.WLAN, Warnings: plan.Warnings, Line: in.D.Line(cmd)}
		if o.Paused {
			st.State = "prelaunch"
		}
		if err := in.vncPasswordFileFor(id, password); err != nil {
			return st, err
		}
		if _, err := in.D.Exec(cmd); err != nil {
			return st, err
		}
		if password != "" {
			st.VNCPasswordFile = in.vncPasswordFile(id)
			if err := in.setVNCPassword(id, password); err != nil {
				return st, err
			}
		}
		return st, nil
	}
	missing := func() error {
		for _, p := range []struct{ what, path string }{{"kernel", in.F.Kernel(id)}, {"device tree", in.F.DTB(id)}, {"disk", in.F.Disk(id)}} {
			if _, err := os.Stat(p.path); err != nil {
				return fmt.Errorf("instance %d: %s %s is missing (%v)", id, p.what, p.path, errors.Unwrap(err))
			}
		}
		return nil
	}
	if err := missing(); err != nil {
		return Status{}, err
	}
	l, err := in.lock(id, time.Now().Add(in.lockWait()))
	if errors.Is(err, os.ErrNotExist) {
		return Status{}, fmt.Errorf("instance %d: its folder %s was removed (by another pifarm: --flush-clone or --remove-all-clones) while this start waited for the instance lock; nothing was started", id, in.F.InstanceDir(id))
	}
	if err != nil {
		return Status{}, err
	}
	defer l.Close()
	if err := missing(); err != nil {
		return Status{}, fmt.Errorf("%w; it was removed (by another pifarm) while this start waited for the instance lock; nothing was started", err)
	}
	deadline := time.Now().Add(in.timeout())
	if st := in.probe(n); st.Running {
		st.Already = true
		return st, nil
	} else if st.StaleReason != "" {
		if !st.dead {
			return Status{}, fmt.Errorf("instance %d: not started: %s", id, st.StaleReason)
		}
		in.cleanStale(n, true)
	}
	if err := in.refuseDiskInUse(n, "start", false); err != nil {
		return Status{}, err
	}
	if err := in.F.MakeInstanceDir(in.D, id); err != nil {
		return Status{}, err
	}
	// A socket without a QEMU behind it would only confuse the wait
	// below; one that answers belongs to a QEMU without a pidfile.
	sock := in.F.QMP(id)
	if listening(sock) {
		return Status{}, fmt.Errorf("instance %d: not started: its QMP socket %s answers, but no QEMU of this instance has a pidfile (one started by hand?); quit that QEMU first", id, sock)
	}
	os.Remove(sock)
	if err := in.vncPasswordFileFor(id, password); err != nil {
		return Status{}, err
	}
	warn()
	if o.Console {
		return in.startForeground(n, cmd, plan, password, l, deadline)
	}
	if _, err := in.D.Exec(cmd); err != nil {
		return Status{}, fmt.Errorf("instance %d: %w", id, err)
	}
	st, err := in.awaitQMP(n, deadline, nil)
	if err != nil {
		return st, err
	}
	st.LAN, st.WLAN, st.Warnings, st.Line = plan.LAN, plan.WLAN, plan.Warnings, in.D.Line(cmd)
	if password != "" {
		st.VNCPasswordFile = in.vncPasswordFile(id)
		if err := in.setVNCPassword(id, password); err != nil {
			st.Warnings = append(st.Warnings, err.Error())
			in.D.Print("# warning: " + err.Error())
		}
	}
	return st, nil
}

// startForeground runs QEMU with the serial console on this terminal. The
// lock is released once QMP answers; Start returns when QEMU exits.
func (in *Instances) startForeground(n *farm.Node, cmd trace.Cmd, plan *Plan, password string, l *os.File, deadline time.Time) (Status, error) {
	var st Status
	err := in.D.Do(in.D.Line(cmd), func() error {
		c := exec.Command(cmd.Argv[0], cmd.Argv[1:]...)
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := c.Start(); err != nil {
			return fmt.Errorf("instance %d: start %s: %w", n.ID, cmd.Argv[0], err)
		}
		exited := make(chan error, 1)
		go func() { exited <- c.Wait() }()
		var err error
		st, err = in.awaitQMP(n, deadline, exited)
		if err == nil && password != "" {
			err = in.setVNCPassword(n.ID, password)
		}
		l.Close()
		if err != nil {
			c.Process.Kill()
			<-exited
			return err
		}
		if err := <-exited; err != nil {
			return fmt.Errorf("instance %d: %s: %w", n.ID, cmd.Argv[0], err)
		}
		st.Running, st.State = false, "exited"
		return nil
	})
	st.LAN, st.WLAN, st.Warnings = plan.LAN, plan.WLAN, plan.Warnings
	if password != "" {
		st.VNCPasswordFile = in.vncPasswordFile(n.ID)
	}
	return st, err
}

// awaitQMP waits until QEMU's QMP socket answers query-status (or QEMU
// exits, or the deadline passes) and returns the instance's status.
func (in *Instances) awaitQMP(n *farm.Node, deadline time.Time, exited <-chan error) (Status, error) {
	id := n.ID
	ctx := in.D.Context()
	var last error
	for {
		q, err := DialQMP(ctx, in.F.QMP(id), time.Until(deadline))
		if err == nil {
			rs, err2 := q.QueryStatus(ctx, time.Until(deadline))
			q.Close()
			if err2 == nil {
				pid, _ := readPid(in.F.Pidfile(id))
				return Status{ID: id, Alias: n.Alias, Running: true, PID: pid, State: rs.Status}, nil
			}
			err = err2
		}
		last = err
		if ctx.Err() != nil {
			return Status{}, ctx.Err()
		}
		if time.Now().After(deadline) {
			return Status{}, fmt.Errorf("instance %d: QEMU's QMP socket %s did not answer within %s: %v", id, in.F.QMP(id), in.timeout(), last)
		}
		select {
		case err := <-exited:
			return Status{}, fmt.Errorf("instance %d: QEMU exited before its QMP socket answered: %v", id, err)
		case <-ctx.Done():
			return Status{}, ctx.Err()
		case <-time.After(in.poll()):
		}
	}
}
