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

	"pifarm/builtins/disk/qcow2"
)

func TestClones(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	age(t, fx.path, time.Hour)
	m, out := testMod(t, dir, false)
	if _, err := m.Clone(1, true); err == nil || !strings.Contains(err.Error(), "no registered image") {
		t.Fatalf("clone without image: %v", err)
	}
	m.Register(fx.path)
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}

	// dry run: the exact commands, nothing created
	dry, dout := testMod(t, dir, true)
	if _, err := dry.Clone(1, false); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(m.f.InstanceDir(1), ".clone-1.qcow2.tmp")
	for _, want := range []string{
		"mkdir -p -m 700 " + m.f.InstanceDir(1),
		fmt.Sprintf("qemu-img convert -p -f raw -O qcow2 %s %s", fx.path, tmp),
		fmt.Sprintf("mv -f %s %s", tmp, m.f.Disk(1)),
		fmt.Sprintf("ln -f %s %s", m.f.Kernel(0), m.f.Kernel(1)),
	} {
		if !strings.Contains(dout.Output(), want+"\n") {
			t.Errorf("dry trace lacks %q:\n%s", want, dout.Output())
		}
	}
	if _, err := os.Stat(m.f.InstanceDir(1)); err == nil {
		t.Fatal("dry run created the instance folder")
	}

	// linked clone: fast, valid, boot files current without hashing
	t0 := time.Now()
	r, err := m.Clone(1, true)
	if err != nil {
		t.Fatal(err)
	}
	el := time.Since(t0)
	t.Logf("linked clone in %v", el)
	if !r.Linked || r.Base != fx.path {
		t.Fatalf("clone %+v", r)
	}
	st, err := m.CheckClone(1)
	if err != nil || !st.OK || !st.Linked || st.Base != fx.path {
		t.Fatalf("check_clone: %+v %v", st, err)
	}
	// the clone was written just before its record: racy, so re-hashed once
	if bs, _ := m.CheckBoot(1); bs.State != "ok" {
		t.Fatalf("boot files of the clone: %+v", bs)
	}
	age(t, m.f.Disk(1), time.Minute)
	if bs, _ := m.CheckBoot(1); bs.State != "ok" || !bs.Hashed {
		t.Fatalf("boot files of the aged clone: %+v", bs)
	}
	if bs, _ := m.CheckBoot(1); bs.State != "ok" || bs.Hashed {
		t.Fatalf("boot files of the clone, second look: %+v", bs)
	}
	// the clone reads like its base
	d, err := Open(m.f.Disk(1))
	if err != nil {
		t.Fatal(err)
	}
	fs, _ := d.Boot()
	if k, err := fs.ReadFile("kernel8.img"); err != nil || !bytes.Equal(k, fx.kernel) {
		t.Fatalf("kernel via qcow2: %v", err)
	}
	sum, _, _ := d.BootSignature()
	d.Close()
	if q, _ := m.ProvideQboot(1, ""); q == nil || q.Sum != sum {
		t.Fatalf("provide_qboot of a qcow2 clone")
	}
	// the base changes: the linked clone refuses
	age(t, fx.path, time.Minute)
	st, _ = m.CheckClone(1)
	if st.OK || !strings.Contains(st.Reason, "changed since the linked clone was made") {
		t.Fatalf("after base change: %+v", st)
	}
	// a full clone replaces it, the old one kept as NAME~
	if _, err := m.Clone(1, false); err != nil {
		t.Fatalf("%v\n%s", err, out.Output())
	}
	if st, _ = m.CheckClone(1); !st.OK || st.Linked {
		t.Fatalf("full clone: %+v", st)
	}
	if !qcow2.Is(m.f.Disk(1) + "~") {
		t.Error("old clone not kept")
	}
	if ids, _ := m.Clones(); len(ids) != 1 || ids[0] != 1 {
		t.Fatalf("clones %v", ids)
	}
	rm, err := m.RemoveClone(1)
	if err != nil || len(rm) < 4 {
		t.Fatalf("remove: %v %v", rm, err)
	}
	if ids, _ := m.Clones(); len(ids) != 0 {
		t.Fatalf("clones after remove %v", ids)
	}
	if st, _ = m.CheckClone(1); st.Exists || st.OK {
		t.Fatalf("removed clone: %+v", st)
	}
}

func TestStatus(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 200 << 20, bootMiB: 64, rootMiB: 100, clusterSectrs: 1})
	m, _ := testMod(t, dir, false)
	m.Register(fx.path)
	s, err := m.Status(0)
	if err != nil {
		t.Fatal(err)
	}
	if s.FileSize != 200<<20 || s.UsedByFS != int64(fx.rootStart+fx.rootN)*512 || s.Margin != 200<<20-s.UsedByFS ||
		s.Recommended != 12*(1<<20) || s.Ext4Size != 100<<20 || s.Boot.State != "missing" || len(s.Warnings) != 2 {
		t.Fatalf("status %+v", s)
	}
	txt := s.Text()
	for _, want := range []string{"file size:           200 MiB", "used by file system: 168 MiB (root file system: 100 MiB,", "unused margin:       32 MiB", "recommended margin:  12 MiB", "warning: instance 0: boot files missing"} {
		if !strings.Contains(txt, want) {
			t.Errorf("status text lacks %q:\n%s", want, txt)
		}
	}
}

// TestLockedInstanceRefuses: while another pifarm holds an instance lock
// (a QEMU start under way), changing the image waits, and is refused when
// the lock stays held longer than the wait bound.
func TestLockedInstanceRefuses(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	m, _ := testMod(t, dir, false)
	m.lockWait = 300 * time.Millisecond
	m.Register(fx.path)
	os.MkdirAll(m.f.InstanceDir(3), 0o755)
	holder := exec.Command("flock", m.f.Lock(3), "sleep", "60")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	waitLocked(t, m)
	if _, err := m.Expand(fx.path); err == nil || !strings.Contains(err.Error(), "instance 3 is being started") {
		t.Fatalf("expand under a held lock: %v", err)
	}
	if _, err := m.Seed(fx.path, SeedOptions{SSH: true}); err == nil || !strings.Contains(err.Error(), "instance 3 is being started") {
		t.Fatalf("seed under a held lock: %v", err)
	}
	// a dry run takes no lock and so is not refused
	dry, _ := testMod(t, dir, true)
	if _, err := dry.Expand(fx.path); err != nil {
		t.Fatalf("dry expand: %v", err)
	}
}

// TestLockedInstanceWaits: a lock held briefly by another pifarm (a start,
// or a clone made by a parallel `pifarm run box --run N`) is waited for,
// not an error.
func TestLockedInstanceWaits(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	m, _ := testMod(t, dir, false)
	m.Register(fx.path)
	os.MkdirAll(m.f.InstanceDir(3), 0o755)
	holder := exec.Command("flock", m.f.Lock(3), "sleep", "0.5")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Wait()
	waitLocked(t, m)
	t0 := time.Now()
	if _, err := m.Seed(fx.path, SeedOptions{SSH: true}); err != nil {
		t.Fatalf("seed while another pifarm briefly holds a lock: %v", err)
	}
	if time.Since(t0) < 100*time.Millisecond {
		t.Fatalf("seed did not wait for the held lock (%s)", time.Since(t0))
	}
}

// TestSeedUnderLinkedClones: seeding the base keeps the linked clones
// whose guests never wrote partition 1 valid (they read the seeded files)
// and invalidates those whose qcow2 holds clusters of it (written here
// with qemu-io, as a booted guest writes /boot). The boot files of all
// stay "ok".
func TestSeedUnderLinkedClones(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	age(t, fx.path, time.Hour)
	m, _ := testMod(t, dir, false)
	m.Register(fx.path)
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	for _, id := range []int{1, 2} {
		if _, err := m.Clone(id, true); err != nil {
			t.Fatal(err)
		}
	}
	// clone 2's guest wrote in partition 1 (its last sector, a free
	// cluster); clone 1 wrote only in partition 2
	last := int64(fx.bootStart+fx.bootN-1) * 512
	run(t, "", "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0 %d 512", last), m.f.Disk(2))
	run(t, "", "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 7 %d 4096", int64(fx.rootStart)*512+1<<20), m.f.Disk(1))
	q1, _ := qcow2.Open(m.f.Disk(1))
	if h, err := q1.HoldsData(int64(fx.bootStart)*512, int64(fx.bootN)*512); h || err != nil {
		t.Fatalf("clone 1 holds partition 1 data: %v %v", h, err)
	}
	if h, _ := q1.HoldsData(int64(fx.rootStart)*512, 2<<20); !h {
		t.Fatal("clone 1's write in partition 2 not seen")
	}
	q1.Close()

	// dry run: the plan, nothing written
	dry, dout := testMod(t, dir, true)
	res, err := dry.Seed(m.f.Disk(0), SeedOptions{User: "pi", Hash: "$6$s$h"})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.ClonesKept, res.ClonesInvalid) != "[1] [2]" {
		t.Fatalf("dry: kept %v invalid %v", res.ClonesKept, res.ClonesInvalid)
	}
	if want := "# linked clone 1 has written nothing in partition 1: it reads the seeded files from its base; record the base's new identity in " + m.baseFile(1) + "\n"; !strings.HasSuffix(dout.Output(), want) {
		t.Errorf("dry trace:\n%s\nwant the end\n%s", dout.Output(), want)
	}
	for _, id := range []int{1, 2} {
		if st, _ := m.CheckClone(id); !st.OK {
			t.Fatalf("dry run invalidated clone %d: %+v", id, st)
		}
	}

	res, err = m.Seed(m.f.Disk(0), SeedOptions{User: "pi", Hash: "$6$s$h"})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.ClonesKept, res.ClonesInvalid) != "[1] [2]" {
		t.Fatalf("kept %v invalid %v", res.ClonesKept, res.ClonesInvalid)
	}
	if st, _ := m.CheckClone(1); !st.OK {
		t.Errorf("clone 1 invalid after seeding: %+v", st)
	}
	if st, _ := m.CheckClone(2); st.OK || !strings.Contains(st.Reason, "changed since the linked clone was made") {
		t.Errorf("clone 2 valid after seeding: %+v", st)
	}
	for _, id := range []int{0, 1, 2} {
		if st, err := m.CheckBoot(id); err != nil || st.State != "ok" {
			t.Errorf("boot files of %d after seeding: %+v %v", id, st, err)
		}
	}
	// clone 1 sees the seeded file, as qemu-img reads it
	raw := filepath.Join(dir, "clone1.raw")
	run(t, "", "qemu-img", "convert", "-f", "qcow2", "-O", "raw", m.f.Disk(1), raw)
	if got := run(t, "", "mtype", "-i", fmt.Sprintf("%s@@%d", raw, fx.bootStart*512), "::userconf.txt"); got != "pi:$6$s$h\n" {
		t.Errorf("clone 1's userconf.txt: %q", got)
	}
	// an invalid clone stays invalid: seeding again does not revive it
	res, err = m.Seed(m.f.Disk(0), SeedOptions{SSH: true})
	if err != nil || fmt.Sprint(res.ClonesKept, res.ClonesInvalid) != "[1] []" {
		t.Fatalf("second seeding: %+v %v", res, err)
	}
	if st, _ := m.CheckClone(2); st.OK {
		t.Error("clone 2 revived")
	}
}
