package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

	// hosts are the libvirt connections of the nodes placed on a
	// libvirt host (see libvirt.go).
	hosts hostConns
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
	// StaleReason explains a pidfile that named no QEMU of this instance,
	// "" when there was none or it named the running QEMU (the pidfile is
	// removed when no QEMU can be behind it, unless a start holds the
	// instance lock or this is a dry run).
	StaleReason string
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
	// Host is the libvirt URI of a node placed on a libvirt host, Domain
	// its domain there; "" for a QEMU process of this machine.
	Host, Domain string

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
	// staleReason says why a pidfile names no QEMU of this instance.
	staleReason string
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
		return found{staleReason: err.Error(), dead: true}
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
		return found{staleReason: fmt.Sprintf("%s; %v, so it is left alone", why, err)}
	case !locked:
		return found{staleReason: why, dead: true}
	case holder > 0:
		if ok, _ := in.Ours(holder, id); ok {
			return found{pid: holder}
		}
		return found{staleReason: fmt.Sprintf("%s; pid %d holds a lock on it, so it is left alone", why, holder)}
	}
	return found{staleReason: why + "; a process not visible from here holds a lock on it, so it is left alone"}
}

// Status finds out whether instance n runs: pidfile, /proc and QMP. It never
// looks at other processes. A pidfile behind which no QEMU can be (see find)
// is removed (through the door); one that may still belong to a QEMU is
// only reported.
func (in *Instances) Status(n *farm.Node) Status {
	st := in.probe(n)
	if st.StaleReason != "" && st.dead {
		in.cleanStale(n, false)
	}
	return st
}

func (in *Instances) probe(n *farm.Node) Status {
	if h, ok := in.placed(n); ok {
		return in.probeOn(h, n)
	}
	id := n.ID
	st := Status{ID: id, Alias: n.Alias}
	q := in.find(id)
	if q.pid == 0 {
		st.StaleReason, st.dead = q.staleReason, q.dead
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
	if in.D.DryRun {
		// The checks below need the instance lock, which a dry run does
		// not take: it shows the removal a live run would make.
		in.D.Remove(pidfile, sock)
		return
	}
	if !locked {
		l, err := farm.TryLock(in.F.Lock(id))
		if err != nil || l == nil {
			return // a start is under way: leave its files alone
		}
		defer l.Close()
	}
	if q := in.find(id); q.pid != 0 || !q.dead {
		return
	}
	stale := []string{pidfile}
	if !listening(sock) {
		stale = append(stale, sock)
	}
	in.D.Remove(stale...) // a status reports; what it cannot remove stays
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
