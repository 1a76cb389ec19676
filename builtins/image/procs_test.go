package image

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"pifarm/builtins/disk/disktest"
)

// qemuOn starts a real QEMU (raspi3b, paused, daemonized) on disk, with
// its pidfile outside the cache: as far as the pidfiles of the cache go,
// no instance runs (a QEMU whose pidfile was removed, or one started by
// hand). It returns the QEMU's pid; the QEMU is stopped with the test.
func qemuOn(t *testing.T, disk, format string) int {
	t.Helper()
	dir := t.TempDir()
	kernel := filepath.Join(dir, "kernel")
	os.WriteFile(kernel, make([]byte, 4096), 0o600)
	return disktest.QEMU(t, filepath.Join(dir, "qemu.pid"), "-M", "raspi3b", "-m", "1G", "-kernel", kernel,
		"-drive", "media=disk,if=sd,format="+format+",file="+disk)
}

func sum(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// TestWritersRefuseADiskInUse: every writer of a disk (seed, expand,
// mount, clone, remove clone) refuses, under the instance locks and also
// in a dry run, while a QEMU that no pidfile of the cache names holds the
// disk open (found by /proc/PID/fd, device and inode); the error names
// the pid, the disk and the fix, and the disk is unchanged.
func TestWritersRefuseADiskInUse(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 128 << 20, bootMiB: 40, clusterSectrs: 1})
	age(t, fx.path, time.Hour)
	m, _ := testMod(t, dir, false)
	t.Cleanup(func() { // should a mount get through (as root, no sudo is asked)
		for _, p := range []string{"boot", "root"} {
			exec.Command("umount", m.f.MountDir(p)).Run()
		}
	})
	if _, err := m.Register(fx.path); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Clone(1, true); err != nil {
		t.Fatal(err)
	}
	// Through a symbolic link to the folder of the image: the same file.
	link := filepath.Join(dir, "link")
	os.Symlink(dir, link)
	viaLink := filepath.Join(link, filepath.Base(fx.path))
	pid := qemuOn(t, viaLink, "raw")
	held := fmt.Sprintf("is open for writing in pid %d (qemu-system-aarch64 ", pid)
	before := sum(t, fx.path)
	for _, dry := range []bool{true, false} {
		x, out := testMod(t, dir, dry)
		for _, tc := range []struct {
			name string
			do   func() error
			want string
		}{
			{"seed", func() error { _, err := x.Seed(x.f.Disk(0), SeedOptions{SSH: true}); return err }, "seed " + fx.path + ": " + fx.path + " " + held},
			{"expand", func() error { _, err := x.Expand(x.f.Disk(0)); return err }, "expand " + fx.path + ": " + fx.path + " " + held},
			{"mount boot read-only", func() error { _, err := x.Mount("boot", 0, true); return err }, held},
			{"mount root", func() error { _, err := x.Mount("root", 0, true); return err }, held},
			{"full clone", func() error { _, err := x.Clone(2, false); return err }, "clone 2: " + fx.path + " " + held},
		} {
			t.Run(fmt.Sprintf("%s dry=%v", tc.name, dry), func(t *testing.T) {
				err := tc.do()
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "nothing was changed; stop that QEMU first") {
					t.Fatalf("error %v\nwant %q", err, tc.want)
				}
				if sum(t, fx.path) != before {
					t.Fatal("the disk changed")
				}
				if _, err := os.Stat(x.f.InstanceDir(2)); err == nil {
					t.Fatal("clone 2's folder was made")
				}
			})
		}
		if dry && strings.Contains(out.Output(), "mcopy") {
			t.Errorf("dry run printed a write:\n%s", out.Output())
		}
	}

	// A QEMU on linked clone 1 writes the clone and reads its base: the
	// clone may not be removed, the base not written, but a clone of the
	// base (a reader) may be made.
	if p, err := os.FindProcess(pid); err == nil {
		p.Kill()
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			break
		}
	}
	cpid := qemuOn(t, m.f.Disk(1), "qcow2")
	if _, err := m.RemoveClone(1); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("remove clone 1: %s is open for writing in pid %d", m.f.Disk(1), cpid)) {
		t.Fatalf("remove clone under its QEMU: %v", err)
	}
	if _, err := os.Stat(m.f.Disk(1)); err != nil {
		t.Fatal("the clone was removed")
	}
	if _, err := m.Seed(m.f.Disk(0), SeedOptions{SSH: true}); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%s is open in pid %d", fx.path, cpid)) {
		t.Fatalf("seed of the base under a linked clone's QEMU: %v", err)
	}
	if sum(t, fx.path) != before {
		t.Fatal("the base changed")
	}
	if _, err := m.Clone(2, false); err != nil {
		t.Fatalf("a clone of a base that a QEMU only reads: %v", err)
	}
}

// TestCloneKeepsOneMadeMeanwhile: a clone that exists once the instance
// locks are held (made by a parallel pifarm while this one waited) is
// kept and reported when replace is not asked for; the clone files are
// the user's alone (folder 0700, disk and records 0600).
func TestCloneKeepsOneMadeMeanwhile(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	age(t, fx.path, time.Hour)
	m, _ := testMod(t, dir, false)
	m.Register(fx.path)
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	// Another pifarm holds instance 0's lock while it makes clone 3.
	os.MkdirAll(m.f.InstanceDir(0), 0o700)
	holder := exec.Command("flock", "-o", m.f.Lock(0), "sh", "-c", `sleep 0.3; qemu-img create -q -f qcow2 -b "$1" -F raw "$2"`, "sh", fx.path, m.f.Disk(3))
	os.MkdirAll(m.f.InstanceDir(3), 0o700)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Wait()
	waitLocked(t, m)
	r, err := m.clone(3, false, false)
	if err != nil || r.Made || r.Path != m.f.Disk(3) || !r.Linked || r.Base != fx.path {
		t.Fatalf("clone made meanwhile: %+v %v", r, err)
	}
	if _, err := os.Stat(m.f.Disk(3) + "~"); err == nil {
		t.Fatal("the clone made meanwhile was replaced")
	}
	// Made now: modes.
	r, err = m.clone(1, false, false)
	if err != nil || !r.Made {
		t.Fatalf("clone 1: %+v %v", r, err)
	}
	if _, err := m.Clone(2, true); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{
		m.f.InstanceDir(1): 0o700, m.f.Disk(1): 0o600, m.f.Sig(1): 0o600,
		m.f.InstanceDir(2): 0o700, m.f.Disk(2): 0o600, m.baseFile(2): 0o600,
	} {
		if fi, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		} else if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
}

// waitLocked returns once another process (flock, started by the test)
// holds one of the instance locks.
func waitLocked(t *testing.T, m *mod) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		rel, busy, _, err := m.tryLockInstances("probe")
		if err != nil {
			t.Fatal(err)
		}
		if busy >= 0 {
			return
		}
		rel()
		if time.Now().After(deadline) {
			t.Fatal("flock never took the lock")
		}
	}
}
