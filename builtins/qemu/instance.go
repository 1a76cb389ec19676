package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
	// removed when no QEMU can be behind it, unless a start holds the
	// instance lock or this is a dry run).
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
	// VNCPasswordFile names the file (mode 0600) holding the VNC password
	// of a QEMU whose VNC listens beyond loopback; "" when it has none.
	VNCPasswordFile string

	// dead: a stale pidfile behind which no QEMU can be (see find).
	dead bool
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

// readPid reads a pidfile: 0 and no error when there is none. It is opened
// without following a symbolic link (and without blocking on a FIFO): a
// link is an error satisfying farm.IsSymlinkErr.
func readPid(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return 0, nil
	case errors.Is(err, unix.ELOOP):
		return 0, fmt.Errorf("pidfile %s is a symbolic link, which neither QEMU nor pifarm makes: %w", path, err)
	case err != nil:
		return 0, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("pidfile %s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		return 0, fmt.Errorf("pidfile %s: %w", path, err)
	}
	s := strings.TrimSpace(string(b))
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pidfile %s holds %q, not a process id", path, s)
	}
	return pid, nil
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
// qemu-system binary (or the configured one), and the file its -pidfile
// names is this instance's pidfile, or it holds that file open. Files are
// compared by device and inode (by resolved path when the pidfile is
// gone), never by the text of a path: a cache reached through a symbolic
// link is the same cache. why describes a foreign process.
func (in *Instances) Ours(pid, id int) (ok bool, why string) {
	args, alive := procArgs(pid)
	if !alive {
		return false, fmt.Sprintf("process %d is gone", pid)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	h := farm.Holder{PID: pid, Exe: strings.TrimSuffix(exe, " (deleted)"), Args: args}
	if err != nil {
		return false, fmt.Sprintf("process %s is not ours: %v", h, err)
	}
	if !h.IsQEMU(in.F.Config.QEMU.Binary) {
		return false, fmt.Sprintf("%s is %s, not QEMU", h, h.Exe)
	}
	pidfile := in.F.Pidfile(id)
	for i, a := range args {
		if (a == "-pidfile" || a == "--pidfile") && i+1 < len(args) && sameFile(pid, args[i+1], pidfile) {
			return true, ""
		}
	}
	if held, _ := farm.Holds(pid, pidfile); held {
		return true, ""
	}
	return false, fmt.Sprintf("process %d is a QEMU, but not the one of instance %d (its -pidfile is not %s, nor does it hold that file open)", pid, id, pidfile)
}

// sameFile reports whether path arg, as process pid sees it (a relative
// one from its working folder), is the file at ours: the same device and
// inode when both exist, else the same path once the symbolic links of
// its folder are resolved.
func sameFile(pid int, arg, ours string) bool {
	if !filepath.IsAbs(arg) {
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err != nil {
			return false
		}
		arg = filepath.Join(cwd, arg)
	}
	a, errA := os.Stat(arg)
	b, errB := os.Stat(ours)
	switch {
	case errA == nil && errB == nil:
		return os.SameFile(a, b)
	case errA == nil || errB == nil:
		return false
	}
	return resolved(arg) == resolved(ours)
}

// resolved is p with the symbolic links of its folder resolved.
func resolved(p string) string {
	dir, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return filepath.Clean(p)
	}
	return filepath.Join(dir, filepath.Base(p))
}

// found is what instance id's pidfile says about its QEMU.
type found struct {
	// pid is the instance's live QEMU, 0 when none was found.
	pid int
	// stale says why a pidfile names no QEMU of this instance.
	stale string
	// dead: no QEMU can be behind the pidfile (nobody holds the lock QEMU
	// keeps on it while it runs, or it is a symbolic link), so the
	// pidfile and the QMP socket may go.
	dead bool
}

// find looks for instance id's QEMU: the process its pidfile names, or,
// when that is garbage or another process, the one holding the pidfile's
// lock (QEMU locks its pidfile for as long as it runs). Only a pidfile
// that nobody locks is dead.
func (in *Instances) find(id int) found {
	pidfile := in.F.Pidfile(id)
	pid, err := readPid(pidfile)
	var why string
	switch {
	case farm.IsSymlinkErr(err):
		return found{stale: err.Error(), dead: true}
	case err != nil:
		why = err.Error()
	case pid == 0:
		return found{}
	default:
		ok, w := in.Ours(pid, id)
		if ok {
			return found{pid: pid}
		}
		why = w
	}
	locked, holder, err := farm.LockHolder(pidfile)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return found{} // QEMU exited and removed it just now
	case err != nil:
		return found{stale: fmt.Sprintf("%s; %v, so it is left alone", why, err)}
	case !locked:
		return found{stale: why, dead: true}
	case holder > 0:
		if ok, _ := in.Ours(holder, id); ok {
			return found{pid: holder}
		}
		return found{stale: fmt.Sprintf("%s; pid %d holds a lock on it, so it is left alone", why, holder)}
	}
	return found{stale: why + "; a process not visible from here holds a lock on it, so it is left alone"}
}

// Status finds out whether instance n runs: pidfile, /proc and QMP. It never
// looks at other processes. A pidfile behind which no QEMU can be (see find)
// is removed (through the door); one that may still belong to a QEMU is
// only reported.
func (in *Instances) Status(n *farm.Node) Status {
	st := in.probe(n)
	if st.Stale != "" && st.dead {
		in.cleanStale(n, false)
	}
	return st
}

func (in *Instances) probe(n *farm.Node) Status {
	id := n.ID
	st := Status{ID: id, Alias: n.Alias}
	q := in.find(id)
	if q.pid == 0 {
		st.Stale, st.dead = q.stale, q.dead
		return st
	}
	st.Running, st.PID = true, q.pid
	if _, err := os.Lstat(in.vncPasswordFile(id)); err == nil {
		st.VNCPasswordFile = in.vncPasswordFile(id)
	}
	ctx := in.D.Context()
	qm, err := DialQMP(ctx, in.F.QMP(id), 2*time.Second)
	if err == nil {
		var rs RunStatus
		rs, err = qm.QueryStatus(ctx, 2*time.Second)
		qm.Close()
		st.State = rs.Status
	}
	if err != nil {
		st.State, st.Err = "unreachable", err.Error()
	}
	return st
}

// cleanStale removes the pidfile and QMP socket of an instance whose QEMU is
// gone. Unless locked (the caller holds the instance lock) it only does so
// when no start holds the lock. It removes the pidfile only when no QEMU
// can be behind it (see find), and the socket only when nothing listens on
// it.
func (in *Instances) cleanStale(n *farm.Node, locked bool) {
	id := n.ID
	pidfile, sock := in.F.Pidfile(id), in.F.QMP(id)
	line := "rm -f " + trace.Quote(pidfile) + " " + trace.Quote(sock)
	in.D.Do(line, func() error {
		if !locked {
			l, err := farm.TryLock(in.F.Lock(id))
			if err != nil || l == nil {
				return nil // a start is under way: leave its files alone
			}
			defer l.Close()
		}
		if q := in.find(id); q.pid != 0 || !q.dead {
			return nil
		}
		os.Remove(pidfile)
		if _, err := os.Lstat(pidfile); err == nil {
			return nil
		}
		if !listening(sock) {
			os.Remove(sock)
		}
		return nil
	})
}

// listening reports whether a process accepts connections on the unix
// socket at path (a QEMU's QMP socket). A refused connection or a missing
// socket is not listening.
func listening(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return true
	}
	return !errors.Is(err, unix.ECONNREFUSED) && !errors.Is(err, unix.ENOENT)
}

// lock takes the instance lock, waiting for another pifarm's start (or
// image change) to end, at most until deadline. A removed instance folder
// is an error satisfying errors.Is(err, os.ErrNotExist).
func (in *Instances) lock(id int, deadline time.Time) (*os.File, error) {
	ls, err := in.lockAll([]int{id}, deadline)
	if err != nil {
		return nil, err
	}
	return ls[0], nil
}

// lockAll takes the locks of the instances ids, waiting (at most until
// deadline) while another pifarm holds one of them. It never waits while
// holding some: when one is busy it lets all go and tries again, so two
// pifarms taking overlapping sets never deadlock.
func (in *Instances) lockAll(ids []int, deadline time.Time) ([]*os.File, error) {
	start := time.Now()
	for {
		held := make([]*os.File, 0, len(ids))
		release := func() {
			for _, l := range held {
				l.Close()
			}
		}
		busy := -1
		for _, id := range ids {
			l, err := farm.TryLock(in.F.Lock(id))
			if err != nil {
				release()
				return nil, fmt.Errorf("instance %d: %w", id, err)
			}
			if l == nil {
				busy = id
				break
			}
			held = append(held, l)
		}
		if busy < 0 {
			return held, nil
		}
		release()
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("instance %d: the lock %s is still held by another pifarm after %s", busy, in.F.Lock(busy), time.Since(start).Round(time.Millisecond))
		}
		select {
		case <-in.D.Context().Done():
			return nil, in.D.Context().Err()
		case <-time.After(in.poll()):
		}
	}
}

// lockWait is how long a start or a removal waits for an instance lock.
func (in *Instances) lockWait() time.Duration {
	if in.LockWait > 0 {
		return in.LockWait
	}
	return 10 * time.Minute
}

// refuseDiskInUse fails when another process holds instance n's disk open
// for writing: a second QEMU on it would corrupt it. (A QEMU of a linked
// clone reads instance 0's image, which does not count.) It is a query and
// runs in a dry run too. When all is set, any holder counts (its files are
// about to be removed).
func (in *Instances) refuseDiskInUse(n *farm.Node, op string, all bool) error {
	disk := in.F.Disk(n.ID)
	hs, err := farm.Holders(disk)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("instance %d: %s: which processes hold %s open: %w", n.ID, op, disk, err)
	}
	for _, h := range hs {
		if !h.Write && !all {
			continue
		}
		fix := "stop it first"
		if ok, _ := in.Ours(h.PID, n.ID); ok && in.find(n.ID).pid != h.PID {
			fix = fmt.Sprintf("it is this instance's QEMU, whose pidfile %s is gone or names another process; stop it: pifarm run box --terminate %d", in.F.Pidfile(n.ID), n.ID)
		} else if h.IsQEMU(in.F.Config.QEMU.Binary) {
			fix = "it is a QEMU; stop it (pifarm run box --terminate N, or quit it where it was started)"
		}
		return fmt.Errorf("instance %d: %s: its disk %s is open in %s; %s", n.ID, op, disk, h, fix)
	}
	return nil
}

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
	} else if st.Stale != "" {
		if !st.dead {
			return Status{}, fmt.Errorf("instance %d: not started: %s", id, st.Stale)
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

// Quit stops instance n's QEMU with the QMP command quit, after making sure
// the process is this instance's QEMU, and waits until it is gone. It
// reports whether a QEMU was running. The QEMU is the one the pidfile names
// or, when that is garbage or another process, the one holding the
// pidfile's lock; with no pidfile, a QEMU of this instance (by its
// -pidfile) that holds the disk open (one whose pidfile was removed). A
// pidfile naming another live process, or garbage, with no QEMU behind it
// is refused with an error (nothing is signalled).
func (in *Instances) Quit(n *farm.Node, timeout time.Duration) (bool, error) {
	id := n.ID
	q := in.find(id)
	if q.pid == 0 && q.stale == "" {
		if q.pid = in.orphan(n); q.pid == 0 {
			return false, nil
		}
	}
	if !in.D.DryRun {
		// No start of this instance may interleave with its termination.
		l, err := in.lock(id, time.Now().Add(timeout))
		if errors.Is(err, os.ErrNotExist) {
			return false, nil // its folder is gone
		}
		if err != nil {
			return false, err
		}
		defer l.Close()
		if q = in.find(id); q.pid == 0 && q.stale == "" {
			if q.pid = in.orphan(n); q.pid == 0 {
				return false, nil
			}
		}
	}
	if q.pid == 0 {
		if named, err := readPid(in.F.Pidfile(id)); err == nil && named > 0 {
			if _, alive := procArgs(named); !alive && q.dead {
				in.cleanStale(n, !in.D.DryRun)
				return false, nil
			}
			return false, fmt.Errorf("instance %d: refusing to terminate pid %d from %s: %s", id, named, in.F.Pidfile(id), q.stale)
		}
		return false, fmt.Errorf("instance %d: refusing to terminate: %s", id, q.stale)
	}
	pid := q.pid
	sock := in.F.QMP(id)
	line := "printf '%s\\n' '{\"execute\":\"qmp_capabilities\"}' '{\"execute\":\"quit\"}' | socat - UNIX-CONNECT:" + trace.Quote(sock)
	var qerr error
	err := in.D.Do(line, func() error {
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
		// QMP is wedged (or its socket is gone): fall back to SIGTERM,
		// visibly, on the process just verified to be ours.
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
	// QEMU removes its pidfile as it exits; what it left is dead now.
	if q := in.find(id); q.pid == 0 && q.dead {
		os.Remove(in.F.Pidfile(id))
	}
	if !listening(sock) {
		os.Remove(sock)
	}
	return true, nil
}

// orphan finds a QEMU of instance n (by its -pidfile, see Ours) among the
// processes that hold its disk open: one whose pidfile was removed.
func (in *Instances) orphan(n *farm.Node) int {
	hs, _ := farm.Holders(in.F.Disk(n.ID))
	for _, h := range hs {
		if ok, _ := in.Ours(h.PID, n.ID); ok {
			return h.PID
		}
	}
	return 0
}

// WaitExit waits until instance n's QEMU has exited, at most timeout. It
// returns at once when none runs.
func (in *Instances) WaitExit(n *farm.Node, timeout time.Duration) error {
	pid := in.find(n.ID).pid
	if pid == 0 {
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

// RemoveFiles deletes the cache folders of the instances nodes (disk, boot
// files, backups, runtime files, keys): all of them or none. Instance 0's
// folder holds the link to the user's image and is refused. The locks of
// all are taken first (waiting, at most LockWait, while another pifarm
// starts one or changes an image); under them no instance may run and no
// process may hold a disk open. A folder that is not there is skipped. It
// returns the ids whose folder was removed.
func (in *Instances) RemoveFiles(nodes ...*farm.Node) ([]int, error) {
	var todo []*farm.Node
	for _, n := range nodes {
		if n.ID == 0 {
			return nil, fmt.Errorf("instance 0: refusing to remove the primary instance's files (its disk is your registered image)")
		}
		if _, err := os.Lstat(in.F.InstanceDir(n.ID)); errors.Is(err, os.ErrNotExist) {
			in.D.Note("%s does not exist: nothing to remove", in.F.InstanceDir(n.ID))
			continue
		}
		todo = append(todo, n)
	}
	// check refuses what may not go; before is whether it ran before the
	// locks were taken, to tell a start that came meanwhile.
	check := func(n *farm.Node, before bool) error {
		if st := in.probe(n); st.Running {
			if before {
				return fmt.Errorf("instance %d: refusing to remove its files while QEMU runs (pid %d); terminate it first: pifarm run box --terminate %d", n.ID, st.PID, n.ID)
			}
			return fmt.Errorf("instance %d: refusing to remove its files: another pifarm started its QEMU (pid %d) while this one waited for the instance lock; terminate it first: pifarm run box --terminate %d", n.ID, st.PID, n.ID)
		}
		return in.refuseDiskInUse(n, "refusing to remove its files", true)
	}
	for _, n := range todo {
		if err := check(n, true); err != nil {
			return nil, err
		}
	}
	if len(todo) == 0 {
		return nil, nil
	}
	if !in.D.DryRun {
		var ids []int
		for _, n := range todo {
			ids = append(ids, n.ID)
		}
		ls, err := in.lockAll(ids, time.Now().Add(in.lockWait()))
		if errors.Is(err, os.ErrNotExist) {
			// Another pifarm removed a folder meanwhile: look again.
			return in.RemoveFiles(nodes...)
		}
		if err != nil {
			return nil, err
		}
		defer func() {
			for _, l := range ls {
				l.Close()
			}
		}()
		for _, n := range todo {
			if err := check(n, false); err != nil {
				return nil, err
			}
		}
	}
	var removed []int
	for _, n := range todo {
		dir := in.F.InstanceDir(n.ID)
		if err := in.D.Do("rm -rf "+trace.Quote(dir), func() error {
			if err := os.RemoveAll(dir); err != nil {
				return fmt.Errorf("instance %d: %w", n.ID, err)
			}
			return nil
		}); err != nil {
			return removed, err
		}
		removed = append(removed, n.ID)
	}
	return removed, nil
}
