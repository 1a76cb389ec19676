package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"pifarm/builtins/farm"
)

// Quit stops instance n's QEMU with the QMP command quit, after making sure
// the process is this instance's QEMU, and waits until it is gone. It
// reports whether a QEMU was running. The QEMU is the one the pidfile names
// or, when that is garbage or another process, the one holding the
// pidfile's lock; with no pidfile, a QEMU of this instance (by its
// -pidfile) that holds the disk open (one whose pidfile was removed). A
// pidfile naming another live process, or garbage, with no QEMU behind it
// is refused with an error (nothing is signalled).
func (in *Instances) Quit(n *farm.Node, timeout time.Duration) (bool, error) {
	if h, ok := in.placed(n); ok {
		return in.quitOn(h, n, timeout)
	}
	id := n.ID
	q := in.find(id)
	if q.pid == 0 && q.staleReason == "" {
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
		if q = in.find(id); q.pid == 0 && q.staleReason == "" {
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
			return false, fmt.Errorf("instance %d: refusing to terminate pid %d from %s: %s", id, named, in.F.Pidfile(id), q.staleReason)
		}
		return false, fmt.Errorf("instance %d: refusing to terminate: %s", id, q.staleReason)
	}
	pid := q.pid
	sock := in.F.QMP(id)
	var qerr error
	err := in.D.QMP(sock, "quit", nil, func() error {
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
	if h, ok := in.placed(n); ok {
		return in.waitExitOn(h, n, timeout)
	}
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
			} else if err != nil && !errors.Is(err, unix.EINTR) {
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
				return fmt.Errorf("instance %d: refusing to remove its files while QEMU runs (%s); terminate it first: pifarm run box --terminate %d", n.ID, st.Where(in.F), n.ID)
			}
			return fmt.Errorf("instance %d: refusing to remove its files: another pifarm started its QEMU (%s) while this one waited for the instance lock; terminate it first: pifarm run box --terminate %d", n.ID, st.Where(in.F), n.ID)
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
		if h, ok := in.F.Remote(n); ok {
			if err := in.removeVolumes(h, n); err != nil {
				return removed, fmt.Errorf("instance %d: %w", n.ID, err)
			}
		}
		if err := in.removeDir(in.F.InstanceDir(n.ID)); err != nil {
			return removed, fmt.Errorf("instance %d: %w", n.ID, err)
		}
		removed = append(removed, n.ID)
	}
	return removed, nil
}

// removeDir removes an instance folder in two steps: it is first renamed
// to a hidden name next to it, atomically, so that a start waiting for its
// lock meanwhile finds the folder gone (and says so) instead of making a
// new lock file in it, which would make the removal fail half-way. What a
// removal killed half-way left under the hidden name goes first.
func (in *Instances) removeDir(dir string) error {
	gone := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".removing")
	if _, err := os.Lstat(gone); err == nil {
		if err := in.D.RemoveAll(gone); err != nil {
			return err
		}
	}
	if err := in.D.Rename(dir, gone); err != nil {
		return err
	}
	return in.D.RemoveAll(gone)
}
