package qemu

import (
	"errors"
	"fmt"
	"os"
	"time"

	"pifarm/builtins/farm"
)

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
