package image

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCheckSnapshotName(t *testing.T) {
	for _, tc := range []struct {
		name, want string
	}{
		{"before-upgrade", ""},
		{"v1.2 with spaces", ""},
		{"grüße", ""},
		{"2024-03-15", ""},
		{"", "needs a name"},
		{"a/b", "slash"},
		{"a\nb", "control character"},
		{"a\x7fb", "control character"},
		{" a", "blank"},
		{"a ", "blank"},
		{".hidden", "begins with ."},
		{"-c", "begins with -"},
		{"12", "all digits"},
		{"\xff", "UTF-8"},
		{strings.Repeat("x", 65), "65 bytes, at most 64"},
		{strings.Repeat("x", 64), ""},
	} {
		err := CheckSnapshotName(tc.name)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%q: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// guestBytes reads n guest bytes at off of a disk (raw or qcow2).
func guestBytes(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	d, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b := make([]byte, n)
	if _, err := d.ReaderAt().ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// registered is a module state whose instance 0 is a fixture image with
// its boot files provided, and the folder of both.
func registered(t *testing.T) (*mod, *fixture, string) {
	t.Helper()
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	age(t, fx.path, time.Hour)
	m, _ := testMod(t, dir, false)
	if _, err := m.Register(fx.path); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	return m, fx, dir
}

// fakeQemu makes instance id look running: its pidfile names a live
// process whose command line says qemu (no guest is booted).
func fakeQemu(t *testing.T, m *mod, id int) {
	t.Helper()
	cmd := exec.Command("bash", "-c", "exec -a qemu-system-aarch64 sleep 60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); os.Remove(m.f.Pidfile(id)) })
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid)); bytes.HasPrefix(b, []byte("qemu")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fake qemu did not start")
		}
	}
	if err := os.WriteFile(m.f.Pidfile(id), []byte(fmt.Sprint(cmd.Process.Pid)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotRollbackClone: a clone's snapshot is a qcow2 internal
// snapshot with the boot files and known_hosts kept next to it; a write
// and new boot files after it are undone by the rollback; names in use,
// a running instance and unknown names are refused; a dry run prints the
// qemu-img lines and changes nothing.
func TestSnapshotRollbackClone(t *testing.T) {
	m, fx, dir := registered(t)
	for _, linked := range []bool{false, true} {
		t.Run(fmt.Sprintf("linked=%v", linked), func(t *testing.T) {
			id := 1
			if linked {
				id = 2
			}
			if _, err := m.Clone(id, linked); err != nil {
				t.Fatal(err)
			}
			disk := m.f.Disk(id)
			os.WriteFile(m.f.KnownHosts(id), []byte("[localhost]:5701 ssh-ed25519 AAAAold\n"), 0o600)
			bootBefore, _ := os.ReadFile(m.f.Sig(id))
			off := int64(fx.rootStart)*512 + 10<<20
			before := guestBytes(t, disk, off, 65536)

			// dry: the lines, nothing made
			dry, dout := testMod(t, dir, true)
			if _, err := dry.TakeSnapshot(id, "before"); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{
				"qemu-img snapshot -c before " + disk + "\n",
				"ln -f " + m.f.Kernel(id) + " " + m.snapFile(id, "before", "ker") + "\n",
				"# record snapshot before of instance",
			} {
				if !strings.Contains(dout.Output(), want) {
					t.Errorf("dry trace lacks %q:\n%s", want, dout.Output())
				}
			}
			if ss, _ := m.Snapshots(id); len(ss) != 0 {
				t.Fatalf("a dry run took a snapshot: %+v", ss)
			}

			s, err := m.TakeSnapshot(id, "before")
			if err != nil {
				t.Fatal(err)
			}
			if s.Kind != "qcow2" || !s.Recorded || !s.KnownHosts || !strings.HasPrefix(s.Boot, "sha256:") || s.Size <= 0 || s.Own <= 0 {
				t.Fatalf("snapshot %+v", s)
			}
			if _, err := m.TakeSnapshot(id, "before"); err == nil || !strings.Contains(err.Error(), "has a snapshot 'before' already") && !strings.Contains(err.Error(), "has a snapshot before already") {
				t.Fatalf("a second snapshot of the name: %v", err)
			}

			// the guest writes, its boot files and known host keys change
			run(t, "", "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x5a %d 65536", off), disk)
			if bytes.Equal(guestBytes(t, disk, off, 65536), before) {
				t.Fatal("the write did not land")
			}
			os.Remove(m.f.Kernel(id))
			os.WriteFile(m.f.Kernel(id), []byte("a newer kernel"), 0o644)
			os.WriteFile(m.f.KnownHosts(id), []byte("[localhost]:5701 ssh-ed25519 AAAAnew\n"), 0o600)
			if ss, _ := m.Snapshots(id); len(ss) != 1 || ss[0].Own < 65536 {
				t.Fatalf("after the write, the snapshot holds its old cluster alone: %+v", ss)
			}

			fakeQemu(t, m, id)
			if _, err := m.Rollback(id, "before"); err == nil || !strings.Contains(err.Error(), "is running") || !strings.Contains(err.Error(), "usb-net") {
				t.Fatalf("rollback of a running instance: %v", err)
			}
			os.Remove(m.f.Pidfile(id))

			if _, err := m.Rollback(id, "nosuch"); err == nil || !strings.Contains(err.Error(), "no snapshot nosuch (it has before;") {
				t.Fatalf("rollback to an unknown snapshot: %v", err)
			}
			t0 := time.Now()
			r, err := m.Rollback(id, "before")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("rollback in %v", time.Since(t0))
			if !r.BootRestored || !r.KnownHostsRestored || r.Boot.State != "ok" || r.Boot.Hashed {
				t.Fatalf("rollback %+v", r)
			}
			if st, err := m.CheckBoot(id); err != nil || st.State != "ok" {
				t.Fatalf("the boot files after the rollback: %+v %v", st, err)
			}
			if !bytes.Equal(guestBytes(t, disk, off, 65536), before) {
				t.Fatal("the write survived the rollback")
			}
			if k, _ := os.ReadFile(m.f.Kernel(id)); !bytes.Equal(k, fx.kernel) {
				t.Fatal("the kernel was not restored")
			}
			if kh, _ := os.ReadFile(m.f.KnownHosts(id)); !strings.Contains(string(kh), "AAAAold") {
				t.Fatalf("known_hosts not restored: %s", kh)
			}
			if kh, _ := os.ReadFile(m.f.KnownHosts(id) + "~"); !strings.Contains(string(kh), "AAAAnew") {
				t.Fatalf("the replaced known_hosts not kept: %s", kh)
			}
			if sig, _ := os.ReadFile(m.f.Sig(id)); !strings.HasPrefix(string(sig), strings.SplitN(string(bootBefore), "\n", 2)[0]) {
				t.Fatalf("signature after the rollback: %s", sig)
			}
			if st, _ := m.CheckClone(id); !st.OK {
				t.Fatalf("the clone after the rollback: %+v", st)
			}

			// delete: gone from the disk and the folder
			rm, err := m.DeleteSnapshot(id, "before")
			if err != nil || len(rm) != 5 || !strings.HasSuffix(rm[0], "before.snap") {
				t.Fatalf("delete: %v %v", rm, err)
			}
			if ss, _ := m.Snapshots(id); len(ss) != 0 {
				t.Fatalf("after delete: %+v", ss)
			}
			if left, _ := os.ReadDir(m.snapDir(id)); len(left) != 0 {
				t.Fatalf("files left: %v", left)
			}
			if _, err := m.DeleteSnapshot(id, "before"); err == nil || !strings.Contains(err.Error(), "it has none") {
				t.Fatalf("delete twice: %v", err)
			}
		})
	}
}

// TestSnapshotByHand: a qcow2 snapshot made with qemu-img is listed (not
// recorded) and rolled back to; the boot files then come from the disk.
func TestSnapshotByHand(t *testing.T) {
	m, fx, _ := registered(t)
	if _, err := m.Clone(1, false); err != nil {
		t.Fatal(err)
	}
	run(t, "", "qemu-img", "snapshot", "-c", "by hand", m.f.Disk(1))
	ss, err := m.Snapshots(1)
	if err != nil || len(ss) != 1 || ss[0].Recorded || ss[0].Name != "by hand" || ss[0].Boot != "" {
		t.Fatalf("snapshots %+v %v", ss, err)
	}
	os.Remove(m.f.Kernel(1))
	r, err := m.Rollback(1, "by hand")
	if err != nil || r.BootRestored || r.Boot.State != "ok" {
		t.Fatalf("rollback %+v %v", r, err)
	}
	if k, _ := os.ReadFile(m.f.Kernel(1)); !bytes.Equal(k, fx.kernel) {
		t.Fatal("the kernel was not read from the disk")
	}
	// a record of a snapshot that is gone (a replaced clone) is stale
	if _, err := m.TakeSnapshot(1, "again"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Clone(1, false); err != nil {
		t.Fatal(err)
	}
	if ss, _ := m.Snapshots(1); len(ss) != 0 {
		t.Fatalf("a new clone's snapshots: %+v", ss)
	}
	if _, err := m.TakeSnapshot(1, "again"); err != nil {
		t.Fatalf("a name whose record is stale: %v", err)
	}
	rm, err := m.RemoveClone(1)
	if err != nil || !strings.Contains(strings.Join(rm, " "), "again.snap") {
		t.Fatalf("remove clone: %v %v", rm, err)
	}
}

// TestSnapshotRollbackInstance0: instance 0's snapshot is a sparse copy
// (this file system shares no extents) of its raw image; a rollback copies
// it back over the image, and is refused while a linked clone rests on the
// image; a copy that would not fit is refused before anything is copied.
func TestSnapshotRollbackInstance0(t *testing.T) {
	m, fx, dir := registered(t)
	before, content := imageSum(t, fx.path), sum(t, fx.path)
	dry, dout := testMod(t, dir, true)
	if _, err := dry.TakeSnapshot(0, "pristine"); err != nil {
		t.Fatal(err)
	}
	raw := m.snapFile(0, "pristine", "raw")
	if want := "cp --sparse=always " + fx.path + " " + tmpName(raw) + "\n"; !strings.Contains(dout.Output(), want) {
		t.Fatalf("dry trace lacks %q:\n%s", want, dout.Output())
	}
	s, err := m.TakeSnapshot(0, "pristine")
	if err != nil {
		t.Fatal(err)
	}
	if s.Kind != "copy" || s.Size <= 0 || s.Size > 20<<20 || sum(t, raw) != content || imageSum(t, fx.path) != before {
		t.Fatalf("snapshot %+v (a sparse copy of the image, which stays as it was)", s)
	}
	if fi, _ := os.Stat(raw); fi.Mode().Perm() != 0o600 {
		t.Fatalf("copy mode %v", fi.Mode())
	}
	mode := os.FileMode(0o640)
	os.Chmod(fx.path, mode)
	off := int64(fx.rootStart)*512 + 1<<20
	f, _ := os.OpenFile(fx.path, os.O_RDWR, 0)
	f.WriteAt(bytes.Repeat([]byte{0x5a}, 4096), off)
	f.Close()
	if _, err := m.Clone(1, true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Rollback(0, "pristine"); err == nil || !strings.Contains(err.Error(), "linked clones 1 rest on") {
		t.Fatalf("rollback under a linked clone: %v", err)
	}
	if _, err := m.RemoveClone(1); err != nil {
		t.Fatal(err)
	}
	r, err := m.Rollback(0, "pristine")
	if err != nil {
		t.Fatal(err)
	}
	if !r.BootRestored || r.Boot.State != "ok" || sum(t, fx.path) != content {
		t.Fatalf("rollback %+v; image restored: %v", r, sum(t, fx.path) == content)
	}
	if fi, _ := os.Stat(fx.path); fi.Mode().Perm() != mode {
		t.Fatalf("image mode after the rollback %v", fi.Mode())
	}
	if m.Registered() != fx.path {
		t.Fatalf("registered %s", m.Registered())
	}

	// too little room: refused, nothing left behind
	small := filepath.Join(dir, "cache", "clones", "raspi-clone-0", "snapshots")
	mountTmpfs(t, small, 32<<20)
	if _, err := m.TakeSnapshot(0, "too-big"); err == nil || !strings.Contains(err.Error(), "nothing was copied") {
		t.Fatalf("a copy that does not fit: %v", err)
	}
	if ents, _ := os.ReadDir(small); len(ents) != 0 {
		t.Fatalf("left in the snapshots folder: %v", ents)
	}
}
