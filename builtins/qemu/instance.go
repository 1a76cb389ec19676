package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// Instances starts, finds and stops the QEMU guests of a farm. Every action
// passes the door; queries (pidfile, /proc, QMP status) always run.
type Instances struct {
	D *trace.Door
	F *farm.Farm
	// Poll is the interval of the few waits that have no event to wait on
	// (a lock held by another pifarm, a QMP socket that is not there yet).
	Poll time.Duration
	// LockWait bounds the wait of Start for the instance lock held by
	// another pifarm (a start, or the image module cloning or changing an
	// image, which can take minutes); 0 means 10 minutes.
	LockWait time.Duration
}

// Status is what is known about one instance's QEMU.
type Status struct {
	ID    int
	Alias string
	// Running: the pidfile names a live process that is this instance's QEMU.
	Running bool
	PID     int
	// State is QEMU's run state from QMP ("running", "paused", ...), or
	// "unreachable" when the process lives but QMP does not answer.
	State string
	// Stale explains a pidfile that named no QEMU of this instance (it is
	// removed, unless a start holds the instance lock or this is a dry run).
	Stale string
	// Err is the QMP error when State is "unreachable".
	Err string
	// Already is set by Start when the instance was running before.
	Already bool
	// LAN and WLAN report the TAP NICs of a QEMU started now.
	LAN, WLAN bool
	// Warnings are what Start left out and why.
	Warnings []string
	// Line is the command line of a QEMU started now.
	Line string
}

func (in *Instances) poll() time.Duration {
	if in.Poll > 0 {
		return in.Poll
	}
	return 5 * time.Millisecond
}

func (in *Instances) timeout() time.Duration {
	if t := in.F.Config.QEMU.Timeout; t > 0 {
		return time.Duration(t) * time.Second
	}
	return 10 * time.Second
}

// readPid reads a pidfile: 0 and no error when there is none.
func readPid(path string) (int, string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", err
	}
	s := strings.TrimSpace(string(b))
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 {
		return 0, string(b), fmt.Errorf("pidfile %s holds %q, not a process id", path, s)
	}
	return pid, string(b), nil
}

// procArgs returns the argument vector of a live, non-zombie process.
func procArgs(pid int) ([]string, bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, false
	}
	if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
		return nil, false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, false
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), true
}

// Ours reports whether pid is the QEMU of instance id: its executable is a
// qemu-system binary (or the configured one) and its command line carries
// this instance's pidfile and QMP socket. why describes a foreign process.
func (in *Instances) Ours(pid, id int) (ok bool, why string) {
	args, alive := procArgs(pid)
	if !alive {
		return false, fmt.Sprintf("process %d is gone", pid)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	exe = strings.TrimSuffix(exe, " (deleted)")
	base := filepath.Base(exe)
	desc := strings.Join(args, " ")
	if len(desc) > 80 {
		desc = desc[:77] + "..."
	}
	if err != nil {
		return false, fmt.Sprintf("process %d (%s) is not ours: %v", pid, desc, err)
	}
	if !strings.HasPrefix(base, "qemu-system") && base != filepath.Base(in.F.Config.QEMU.Binary) {
		return false, fmt.Sprintf("process %d is %s (%s), not QEMU", pid, exe, desc)
	}
	pidOK, qmpOK := false, false
	for i, a := range args {
		if a == "-pidfile" && i+1 < len(args) && args[i+1] == in.F.Pidfile(id) {
			pidOK = true
		}
		if a == "-qmp" && i+1 < len(args) && args[i+1] == qmpArg(in.F, id) {
			qmpOK = true
		}
	}
	if !pidOK || !qmpOK {
		return false, fmt.Sprintf("process %d is a QEMU, but not the one of instance %d (its command line lacks -pidfile %s -qmp unix:%s)", pid, id, in.F.Pidfile(id), in.F.QMP(id))
	}
	return true, ""
}

// Status finds out whether instance n runs: pidfile, /proc and QMP. It never
// looks at other processes. A stale pidfile is removed (through the door).
func (in *Instances) Status(n *farm.Node) Status {
	st := in.probe(n)
	if st.Stale != "" {
		in.cleanStale(n, false)
	}
	return st
}

func (in *Instances) probe(n *farm.Node) Status {
	id := n.ID
	st := Status{ID: id, Alias: n.Alias}
	pid, _, err := readPid(in.F.Pidfile(id))
	if err != nil {
		st.Stale = err.Error()
		return st
	}
	if pid == 0 {
		return st
	}
	if ok, why := in.Ours(pid, id); !ok {
		st.Stale = why
		return st
	}
	st.Running, st.PID = true, pid
	ctx := in.D.Context()
	q, err := DialQMP(ctx, in.F.QMP(id), 2*time.Second)
	if err == nil {
		var rs RunStatus
		rs, err = q.QueryStatus(ctx, 2*time.Second)
		q.Close()
		st.State = rs.Status
	}
	if err != nil {
		st.State, st.Err = "unreachable", err.Error()
	}
	return st
}

// cleanStale removes the pidfile and QMP socket of an instance whose QEMU is
// gone. Unless locked (the caller holds the instance lock) it only does so
// when no start holds the lock, and only when the pidfile still says what
// made it stale.
func (in *Instances) cleanStale(n *farm.Node, locked bool) {
	id := n.ID
	pidfile, sock := in.F.Pidfile(id), in.F.QMP(id)
	line := "rm -f " + trace.Quote(pidfile) + " " + trace.Quote(sock)
	in.D.Do(line, func() error {
		if !locked {
			l, err := tryLock(in.F.Lock(id))
			if err != nil || l == nil {
				return nil // a start is under way: leave its files alone
			}
			defer l.Close()
		}
		if st := in.probe(n); st.Stale == "" && st.PID != 0 {
			return nil
		}
		os.Remove(pidfile)
		if _, err := os.Stat(pidfile); err == nil {
			return nil
		}
		os.Remove(sock)
		return nil
	})
}

// tryLock takes the instance lock without waiting: nil when it is held.
func tryLock(path string) (*os.File, error) {
	fd, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(fd.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		fd.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return fd, nil
}

// lock takes the instance lock, waiting for another pifarm's start to end,
// at most until deadline.
func (in *Instances) lock(id int, deadline time.Time) (*os.File, error) {
	path := in.F.Lock(id)
	start := time.Now()
	for {
		l, err := tryLock(path)
		if err != nil || l != nil {
			return l, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("instance %d: the lock %s is still held by another pifarm after %s", id, path, time.Since(start).Round(time.Millisecond))
		}
		select {
		case <-in.D.Context().Done():
			return nil, in.D.Context().Err()
		case <-time.After(in.poll()):
		}
	}
}

// Start starts instance n's QEMU unless it runs already, and returns once
// QEMU answers on its QMP socket. In the background (the default) QEMU
// daemonizes itself after it has opened its sockets and written its pidfile,
// so no guessing is needed; with Console it runs in the foreground with the
// serial console on this terminal and Start returns when it exits.
// Concurrent starts of one instance (in this or other processes) serialise on
// the instance lock: exactly one QEMU results.
func (in *Instances) Start(n *farm.Node, o Options) (Status, error) {
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
	warn := func() {
		for _, w := range plan.Warnings {
			in.D.Print("# warning: " + w)
		}
	}
	if in.D.DryRun {
		warn()
		st := Status{ID: id, Alias: n.Alias, Running: true, State: "running", LAN: plan.LAN, WLAN: plan.WLAN, Warnings: plan.Warnings, Line: in.D.Line(cmd)}
		if o.Paused {
			st.State = "prelaunch"
		}
		_, err := in.D.Exec(cmd)
		return st, err
	}
	for _, p := range []struct{ what, path string }{{"kernel", in.F.Kernel(id)}, {"device tree", in.F.DTB(id)}, {"disk", in.F.Disk(id)}} {
		if _, err := os.Stat(p.path); err != nil {
			return Status{}, fmt.Errorf("instance %d: %s %s is missing (%v)", id, p.what, p.path, errors.Unwrap(err))
		}
	}
	if err := os.MkdirAll(in.F.InstanceDir(id), 0o755); err != nil {
		return Status{}, fmt.Errorf("instance %d: %w", id, err)
	}
	lockWait := in.LockWait
	if lockWait <= 0 {
		lockWait = 10 * time.Minute
	}
	l, err := in.lock(id, time.Now().Add(lockWait))
	if err != nil {
		return Status{}, err
	}
	defer l.Close()
	deadline := time.Now().Add(in.timeout())
	if st := in.probe(n); st.Running {
		st.Already = true
		return st, nil
	} else if st.Stale != "" {
		in.cleanStale(n, true)
	}
	// A socket or pidfile without a QEMU behind it would only confuse the
	// wait below.
	os.Remove(in.F.QMP(id))
	warn()
	if o.Console {
		return in.startForeground(n, cmd, plan, l, deadline)
	}
	if _, err := in.D.Exec(cmd); err != nil {
		return Status{}, fmt.Errorf("instance %d: %w", id, err)
	}
	st, err := in.awaitQMP(n, deadline, nil)
	if err != nil {
		return st, err
	}
	st.LAN, st.WLAN, st.Warnings, st.Line = plan.LAN, plan.WLAN, plan.Warnings, in.D.Line(cmd)
	return st, nil
}

// startForeground runs QEMU with the serial console on this terminal. The
// lock is released once QMP answers; Start returns when QEMU exits.
func (in *Instances) startForeground(n *farm.Node, cmd trace.Cmd, plan *Plan, l *os.File, deadline time.Time) (Status, error) {
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
				pid, _, _ := readPid(in.F.Pidfile(id))
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

// Quit stops instance n's QEMU with the QMP command quit, after making sure
// the pidfile names this instance's QEMU, and waits until the process is
// gone. It reports whether a QEMU was running. A pidfile naming another
// process is refused with an error (nothing is signalled).
func (in *Instances) Quit(n *farm.Node, timeout time.Duration) (bool, error) {
	id := n.ID
	pid, _, err := readPid(in.F.Pidfile(id))
	if err != nil {
		return false, fmt.Errorf("instance %d: refusing to terminate: %w", id, err)
	}
	if pid == 0 {
		return false, nil
	}
	if !in.D.DryRun {
		// No start of this instance may interleave with its termination.
		l, err := in.lock(id, time.Now().Add(timeout))
		if err != nil {
			return false, err
		}
		defer l.Close()
		if pid, _, err = readPid(in.F.Pidfile(id)); err != nil || pid == 0 {
			return false, err
		}
	}
	if ok, why := in.Ours(pid, id); !ok {
		if _, alive := procArgs(pid); !alive {
			in.cleanStale(n, !in.D.DryRun)
			return false, nil
		}
		return false, fmt.Errorf("instance %d: refusing to terminate pid %d from %s: %s", id, pid, in.F.Pidfile(id), why)
	}
	sock := in.F.QMP(id)
	line := "printf '%s\\n' '{\"execute\":\"qmp_capabilities\"}' '{\"execute\":\"quit\"}' | socat - UNIX-CONNECT:" + trace.Quote(sock)
	var qerr error
	err = in.D.Do(line, func() error {
		q, err := DialQMP(in.D.Context(), sock, 3*time.Second)
		if err == nil {
			_, err = q.Execute(in.D.Context(), 3*time.Second, "quit", nil)
			q.Close()
		}
		qerr = err
		return nil
	})
	if err != nil {
		return true, err
	}
	if qerr != nil {
		// QMP is wedged: fall back to SIGTERM, visibly, on the process
		// just verified to be ours.
		in.D.Print(fmt.Sprintf("# warning: instance %d: QMP quit failed (%v); sending SIGTERM to pid %d", id, qerr, pid))
		if err := in.D.Do(fmt.Sprintf("kill -TERM %d", pid), func() error {
			return syscall.Kill(pid, syscall.SIGTERM)
		}); err != nil {
			return true, fmt.Errorf("instance %d: kill %d: %w", id, pid, err)
		}
	}
	if in.D.DryRun {
		in.D.Note("wait until pid %d has exited (at most %s)", pid, timeout)
		return true, nil
	}
	if err := in.WaitPid(pid, timeout); err != nil {
		return true, fmt.Errorf("instance %d: %w", id, err)
	}
	os.Remove(in.F.Pidfile(id))
	os.Remove(sock)
	return true, nil
}

// WaitExit waits until instance n's QEMU has exited, at most timeout. It
// returns at once when none runs.
func (in *Instances) WaitExit(n *farm.Node, timeout time.Duration) error {
	pid, _, _ := readPid(in.F.Pidfile(n.ID))
	if pid == 0 {
		return nil
	}
	if ok, _ := in.Ours(pid, n.ID); !ok {
		return nil
	}
	if in.D.DryRun {
		in.D.Note("wait until pid %d (QEMU of instance %d) has exited (at most %s)", pid, n.ID, timeout)
		return nil
	}
	if err := in.WaitPid(pid, timeout); err != nil {
		return fmt.Errorf("instance %d: %w", n.ID, err)
	}
	return nil
}

// WaitPid waits until process pid has exited (or is a zombie), at most
// timeout. It uses a pidfd, which becomes readable when the process exits,
// and falls back to watching /proc when pidfds are not available.
func (in *Instances) WaitPid(pid int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(in.D.Context(), timeout)
	defer cancel()
	fd, err := unix.PidfdOpen(pid, 0)
	if err == nil {
		defer unix.Close(fd)
		for {
			if _, alive := procArgs(pid); !alive {
				return nil
			}
			ms := 100
			if dl, ok := ctx.Deadline(); ok {
				if left := time.Until(dl); left < 100*time.Millisecond {
					ms = int(left / time.Millisecond)
				}
			}
			if ms <= 0 || ctx.Err() != nil {
				break
			}
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if n, err := unix.Poll(fds, ms); err == nil && n > 0 {
				return nil
			} else if err != nil && err != unix.EINTR {
				break
			}
		}
	} else if errors.Is(err, unix.ESRCH) {
		return nil
	}
	for {
		if _, alive := procArgs(pid); !alive {
			return nil
		}
		select {
		case <-ctx.Done():
			if in.D.Context().Err() != nil {
				return in.D.Context().Err()
			}
			return fmt.Errorf("pid %d is still there after %s", pid, timeout)
		case <-time.After(in.poll()):
		}
	}
}

// RemoveFiles deletes everything of instance id in its cache folder (disk,
// boot files, backups, runtime files, keys) and the folder itself. Instance
// 0's folder holds the link to the user's image and is refused; so is a
// running instance.
func (in *Instances) RemoveFiles(n *farm.Node) error {
	id := n.ID
	if id == 0 {
		return fmt.Errorf("instance 0: refusing to remove the primary instance's files (its disk is your registered image)")
	}
	if st := in.Status(n); st.Running {
		return fmt.Errorf("instance %d: refusing to remove its files while QEMU runs (pid %d); terminate it first", id, st.PID)
	}
	dir := in.F.InstanceDir(id)
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		in.D.Note("%s does not exist: nothing to remove", dir)
		return nil
	}
	return in.D.Do("rm -rf "+trace.Quote(dir), func() error {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("instance %d: %w", id, err)
		}
		return nil
	})
}
