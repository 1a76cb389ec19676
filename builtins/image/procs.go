package image

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"pifarm/builtins/farm"
)

// Running is one live QEMU instance found in the cache.
type Running struct {
	ID  int
	Pid int
}

var instanceDirRE = regexp.MustCompile(`^raspi-clone-(\d+)$`)

// running lists the instances whose QEMU runs: the pidfile (written by
// the qemu module's QEMU) names a live QEMU, or a live process holds the
// lock QEMU keeps on its pidfile while it runs (a pidfile whose content
// was overwritten). A pid that is gone, a zombie, or a process that is no
// QEMU (pid reuse) does not count.
func (m *mod) running() ([]Running, error) {
	dir := filepath.Join(m.f.Config.CacheDir(), "clones")
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var out []Running
	for _, e := range ents {
		sm := instanceDirRE.FindStringSubmatch(e.Name())
		if sm == nil {
			continue
		}
		id, _ := strconv.Atoi(sm[1])
		if pid := livePid(m.f.Pidfile(id)); pid > 0 {
			out = append(out, Running{ID: id, Pid: pid})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// livePid returns the pid of the live QEMU behind a pidfile, else 0: the
// pid the file names when that process is alive and looks like QEMU, or
// the holder of the file's lock. The file is read without following a
// symbolic link.
func livePid(pidfile string) int {
	if pid := namedPid(pidfile); pid > 0 && qemuLike(pid) {
		return pid
	}
	if locked, pid, err := farm.LockHolder(pidfile); err == nil && locked && pid > 0 && qemuLike(pid) {
		return pid
	}
	return 0
}

// namedPid is the process id a pidfile holds, 0 when none.
func namedPid(pidfile string) int {
	fd, err := unix.Open(pidfile, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return 0
	}
	f := os.NewFile(uintptr(fd), pidfile)
	defer f.Close()
	b := make([]byte, 64)
	n, _ := f.Read(b)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// qemuLike reports whether pid is alive (not a zombie) and its command
// line names QEMU.
func qemuLike(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// state is the field after the ")" that closes the command name
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
		return false
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err != nil || len(cmd) == 0 || bytes.Contains(cmd, []byte("qemu"))
}

// refuseOpen fails when a process other than this pifarm holds the disk
// at path open: for writing, when the operation only reads it (a clone
// copies it, a read-only mount), else in any way (a QEMU on a linked
// clone reads its base; writing the base under it corrupts that guest).
// Processes are found by the device and inode of their descriptors, not
// by the text of a path (see farm.Holders), so a QEMU whose pidfile was
// removed, or one started through another path to the cache, is found
// too. The error names the process, the disk and the fix; nothing was
// changed. It is a query: a dry run refuses as well.
func (m *mod) refuseOpen(op, path string, readOnly bool) error {
	hs, err := farm.Holders(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: which processes hold %s open: %w", op, path, err)
	}
	for _, h := range hs {
		if readOnly && !h.Write {
			continue
		}
		how := "open"
		if h.Write {
			how = "open for writing"
		}
		fix := "stop it first"
		if h.IsQEMU(m.f.Config.QEMU.Binary) {
			fix = "stop that QEMU first (pifarm run shutdown N, or pifarm run box --terminate N)"
			if run, _ := m.running(); len(run) > 0 {
				for _, r := range run {
					if r.Pid == h.PID {
						fix = fmt.Sprintf("it is the QEMU of instance %d: stop it first (pifarm run shutdown %d, or pifarm run box --terminate %d)", r.ID, r.ID, r.ID)
					}
				}
			}
		}
		return fmt.Errorf("%s: %s is %s in %s; nothing was changed; %s", op, path, how, h, fix)
	}
	return nil
}

// Mount is a mounted file system that belongs to pifarm's images.
type Mount struct {
	Source, Target, FSType, Options string
}

// mounts lists mounts on the cache's mount folders, and mounts of loop
// devices backed by any of the given image files. A mount on a mount
// folder is named by the folder's configured path (m.f.MountDir), also
// when the cache lies behind a symbolic link and the kernel lists the
// resolved path.
func (m *mod) mounts(images ...string) ([]Mount, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dirs := map[string]string{}
	for _, p := range []string{"boot", "root"} {
		dirs[m.f.MountDir(p)] = m.f.MountDir(p)
		if r, err := filepath.EvalSymlinks(m.f.MountDir(p)); err == nil {
			dirs[r] = m.f.MountDir(p)
		}
	}
	loops := loopDevices(images...)
	var out []Mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 4 {
			continue
		}
		src, tgt := unescapeMount(fl[0]), unescapeMount(fl[1])
		dir, hit := dirs[tgt]
		if hit {
			tgt = dir
		}
		for _, l := range loops {
			if src == l || strings.HasPrefix(src, l+"p") {
				hit = true
			}
		}
		if hit {
			out = append(out, Mount{Source: src, Target: tgt, FSType: fl[2], Options: fl[3]})
		}
	}
	return out, sc.Err()
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// loopDevices lists /dev/loopN devices whose backing file is one of images.
func loopDevices(images ...string) []string {
	want := map[string]bool{}
	for _, p := range images {
		if p == "" {
			continue
		}
		want[p] = true
		if r, err := filepath.EvalSymlinks(p); err == nil {
			want[r] = true
		}
	}
	if len(want) == 0 {
		return nil
	}
	ents, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(e)
		if err != nil {
			continue
		}
		bf := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if want[bf] {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(e))))
		}
	}
	sort.Strings(out)
	return out
}

// lockInstances takes the instance locks (the qemu module holds one while
// it starts an instance) of every instance folder in the cache, so that no
// QEMU starts while an image is being changed. While another pifarm holds
// one (a start, a clone, a change of the image: parallel runs of
// `pifarm run box --run N` that make clones), it waits, at most m.lockWait,
// releasing what it holds between tries. Dry runs take no locks (a lock
// file is a change). release frees them.
func (m *mod) lockInstances(op string) (release func(), err error) {
	if m.d.DryRun {
		return func() {}, nil
	}
	wait := m.lockWait
	if wait <= 0 {
		wait = defaultLockWait
	}
	start := time.Now()
	ctx := m.d.Context()
	poll := 5 * time.Millisecond
	noted := false
	for {
		release, busy, path, err := m.tryLockInstances(op)
		if err != nil || busy < 0 {
			return release, err
		}
		if time.Since(start) >= wait {
			return nil, fmt.Errorf("%s: instance %d is being started or its image changed by another pifarm (%s is still locked after %s); try again when it is done", op, busy, path, time.Since(start).Round(time.Millisecond))
		}
		if !noted {
			m.d.Note("%s: waiting for %s, held by another pifarm (at most %s)", op, path, wait)
			noted = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: waiting for %s: %w", op, path, ctx.Err())
		case <-time.After(poll):
		}
		if poll < 200*time.Millisecond {
			poll *= 2
		}
	}
}

// lockStopped takes the instance locks (see lockInstances) and refuses,
// with the error busy makes of its pid, while instance id's QEMU runs.
func (m *mod) lockStopped(op string, id int, busy func(pid int) error) (release func(), err error) {
	release, err = m.lockInstances(op)
	if err != nil {
		return nil, err
	}
	run, err := m.running()
	if err != nil {
		release()
		return nil, err
	}
	for _, r := range run {
		if r.ID == id {
			release()
			return nil, busy(r.Pid)
		}
	}
	return release, nil
}

// tryLockInstances takes every instance lock without waiting. busy is the
// instance whose lock another process holds (nothing is held then), or -1.
func (m *mod) tryLockInstances(op string) (release func(), busy int, path string, err error) {
	var held []*os.File
	release = func() {
		for _, f := range held {
			f.Close()
		}
	}
	ents, err := os.ReadDir(filepath.Join(m.f.Config.CacheDir(), "clones"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return release, -1, "", nil
		}
		return nil, -1, "", err
	}
	for _, e := range ents {
		sm := instanceDirRE.FindStringSubmatch(e.Name())
		if sm == nil || !e.IsDir() {
			continue
		}
		id, _ := strconv.Atoi(sm[1])
		path := m.f.Lock(id)
		f, err := farm.TryLock(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // the folder was removed meanwhile (under its lock)
		}
		if err != nil {
			release()
			return nil, -1, "", fmt.Errorf("%s: %w", op, err)
		}
		if f == nil {
			release()
			return nil, id, path, nil
		}
		held = append(held, f)
	}
	return release, -1, "", nil
}
