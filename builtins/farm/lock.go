package farm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"pifarm/builtins/trace"
)

// TryLock takes the exclusive flock on the lock file at path (an
// instance's lock) without waiting; it returns nil, nil while another
// process holds it. The file is created 0600 and opened without following
// a symbolic link: a link planted at path is an error, not followed. A
// lock taken on a file that is no longer the one at path (the instance
// folder was removed, or the file replaced, while this process opened it)
// is let go and taken again on the file that is there, so two processes
// never both hold "the" lock. A missing folder is an error satisfying
// errors.Is(err, os.ErrNotExist).
func TryLock(path string) (*os.File, error) {
	for range 100 {
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			if errors.Is(err, unix.ELOOP) {
				return nil, fmt.Errorf("lock %s: it is a symbolic link, not a lock file pifarm made; remove it", path)
			}
			return nil, fmt.Errorf("lock %s: %w", path, &os.PathError{Op: "open", Path: path, Err: err})
		}
		f := os.NewFile(uintptr(fd), path)
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, nil
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		var have, there unix.Stat_t
		if unix.Fstat(fd, &have) == nil && unix.Lstat(path, &there) == nil && have.Dev == there.Dev && have.Ino == there.Ino {
			if have.Mode&0o077 != 0 {
				unix.Fchmod(fd, 0o600) // a lock file of an older pifarm
			}
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("lock %s: the file keeps being replaced while it is locked; is another program removing it?", path)
}

// WaitLock is TryLock that waits, at most wait, while another holder
// (another pifarm, or another node's run in this one: the image module
// holds every instance lock while it makes a clone) keeps the lock,
// polling from 5 ms up to every 200 ms. noted is called once, when it
// starts waiting. It returns nil, nil when wait ran out; ctx ends the
// wait with its error.
func WaitLock(ctx context.Context, path string, wait time.Duration, noted func()) (*os.File, error) {
	deadline := time.Now().Add(wait)
	poll := 5 * time.Millisecond
	for first := true; ; first = false {
		f, err := TryLock(path)
		if f != nil || err != nil || !time.Now().Before(deadline) {
			return f, err
		}
		if first && noted != nil {
			noted()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the lock %s: %w", path, ctx.Err())
		case <-time.After(min(poll, time.Until(deadline))):
		}
		poll = min(2*poll, 200*time.Millisecond)
	}
}

// InstanceDirMode is the mode of an instance folder: its disk, the guest's
// host keys in it and QEMU's sockets are the user's alone.
const InstanceDirMode = 0o700

// MakeInstanceDir creates instance id's folder with mode 0700 ("mkdir -p -m
// 700 DIR" in the trace), or narrows an existing one that others may enter
// to 0700 ("chmod 700 DIR"). Nothing happens when it is right already.
func (f *Farm) MakeInstanceDir(d *trace.Door, id int) error {
	dir := f.InstanceDir(id)
	fi, err := os.Lstat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return d.Do("mkdir -p -m 700 "+trace.Quote(dir), func() error {
			if err := os.MkdirAll(dir, InstanceDirMode); err != nil {
				return fmt.Errorf("instance %d: %w", id, err)
			}
			return os.Chmod(dir, InstanceDirMode)
		})
	case err != nil:
		return fmt.Errorf("instance %d: %w", id, err)
	case !fi.IsDir():
		return fmt.Errorf("instance %d: %s is not a folder (%s); move it away", id, dir, fi.Mode().Type())
	case fi.Mode().Perm()&0o077 != 0:
		return d.Do("chmod 700 "+trace.Quote(dir), func() error { return os.Chmod(dir, InstanceDirMode) })
	}
	return nil
}
