package image

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Running is one live QEMU instance found in the cache.
type Running struct {
	ID  int
	Pid int
}

var instanceDirRE = regexp.MustCompile(`^raspi-clone-(\d+)$`)

// running lists the instances whose pidfile (written by the qemu module)
// names a live process. A pid that is gone, a zombie, or a process that
// is no QEMU (pid reuse) does not count.
func (m *mod) running() ([]Running, error) {
	dir := filepath.Join(m.f.Config.CacheDir(), "clones")
	ents, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
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

// livePid reads a pidfile and returns the pid when that process is alive
// and looks like QEMU; else 0.
func livePid(pidfile string) int {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// state is the field after the ")" that closes the command name
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
		return 0
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err == nil && len(cmd) > 0 && !bytes.Contains(cmd, []byte("qemu")) {
		return 0
	}
	return pid
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
		if os.IsNotExist(err) {
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
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			release()
			return nil, -1, "", fmt.Errorf("%s: lock %s: %w", op, path, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			release()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, id, path, nil
			}
			return nil, -1, "", fmt.Errorf("%s: lock %s: %w", op, path, err)
		}
		held = append(held, f)
	}
	return release, -1, "", nil
}
