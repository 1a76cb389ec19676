package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestOpenNamesFileAndCheckesSectorSize(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.img")
	// a valid table but no FAT boot sector at partition 1: a 4K-sector image
	run(t, "", "truncate", "-s", fmt.Sprint(12288*512), p)
	run(t, "label: dos\nstart=8192, size=2048, type=c\nstart=10240, size=2048, type=83\n", "sfdisk", "-q", p)
	_, err := Open(p)
	if err == nil || !strings.HasPrefix(err.Error(), p+": ") || !strings.Contains(err.Error(), "512-byte") {
		t.Fatalf("error %v", err)
	}
	if _, err := Open(filepath.Join(dir, "missing.img")); err == nil || !strings.Contains(err.Error(), "missing.img") {
		t.Fatalf("missing file: %v", err)
	}
}

func sha256File(t testing.TB, p string, off, n int64) string {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, off, n)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// mtoolsBootSum is the boot files' signature computed independently of
// the module: each boot file as `mcopy -n -i IMG@@OFFSET ::NAME -` writes
// it to stdout, hashed as "NAME\nLENGTH\n" + content, in order.
func mtoolsBootSum(t testing.TB, img string, off int64) string {
	t.Helper()
	h := sha256.New()
	for _, name := range []string{"kernel8.img", "bcm2710-rpi-3-b-plus.dtb"} {
		b := run(t, "", "mcopy", "-n", "-i", fmt.Sprintf("%s@@%d", img, off), "::"+name, "-")
		fmt.Fprintf(h, "%s\n%d\n%s", name, len(b), b)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func TestFixtureReadAndSignature(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 200 << 20, bootMiB: 64, clusterSectrs: 1})
	d, err := Open(fx.path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// the layout is what sfdisk -d reports
	dump := run(t, "", "sfdisk", "-d", fx.path)
	for _, want := range []string{
		fmt.Sprintf("label-id: 0x%08x", fx.diskID),
		fmt.Sprintf("start=%12d, size=%12d, type=c", d.Layout.Boot().Start, d.Layout.Boot().Sectors),
		fmt.Sprintf("start=%12d, size=%12d, type=83", d.Layout.Root().Start, d.Layout.Root().Sectors),
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("sfdisk -d lacks %q:\n%s", want, dump)
		}
	}
	fs, err := d.Boot()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	img := fmt.Sprintf("%s@@%d", fx.path, fx.bootStart*512)
	for _, name := range []string{"kernel8.img", "bcm2710-rpi-3-b-plus.dtb", "cmdline.txt", fx.longRoot, fx.extraName, "KERNEL8.IMG"} {
		got, err := fs.ReadFile(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		dst := filepath.Join(out, strings.ReplaceAll(name, "/", "_"))
		run(t, "", "mcopy", "-n", "-i", img, "::"+name, dst)
		want, _ := os.ReadFile(dst)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes differ from mcopy's %d", name, len(got), len(want))
		}
	}
	if _, err := fs.ReadFile("nope.txt"); err == nil || !strings.Contains(err.Error(), "nope.txt") {
		t.Errorf("missing file: %v", err)
	}
	es, err := fs.ReadDir("")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name)
	}
	if !strings.Contains(strings.Join(names, "|"), fx.longRoot) {
		t.Errorf("root folder %q lacks the long name", names)
	}
	// the boot files' signature: what mcopy reads, hashed the same way;
	// and the shell line the trace prints computes it too
	sig, sizes, err := d.BootSignature()
	if err != nil {
		t.Fatal(err)
	}
	if want := mtoolsBootSum(t, fx.path, int64(fx.bootStart)*512); sig != want {
		t.Errorf("signature %s, from mcopy %s", sig, want)
	}
	if len(sizes) != 2 || sizes[0] != int64(len(fx.kernel)) || sizes[1] != int64(len(fx.dtb)) {
		t.Errorf("sizes %v", sizes)
	}
	sh := run(t, "", "sh", "-c", sumLine(d, sizes))
	if got := "sha256:" + strings.Fields(sh)[0]; got != sig {
		t.Errorf("`%s` gives %s, want %s", sumLine(d, sizes), got, sig)
	}
	e, err := d.Root()
	if err != nil {
		t.Fatal(err)
	}
	if e.Size() != int64(fx.rootN)*512 || e.Used() <= 0 || e.Used() >= e.Size() || e.Label != "rootfs" {
		t.Errorf("ext4 %+v", e)
	}
}

func fileState(t testing.TB, p string) string {
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d %d %s", fi.Size(), fi.ModTime().UnixNano(), sha256File(t, p, 0, 8<<20))
}

func TestExpandJustUnder4GiB(t *testing.T) {
	dir := t.TempDir()
	size := int64(4<<30) - 8<<20
	fx := makeFixture(t, dir, fixtureOpts{size: size, bootMiB: 256, rootMiB: 3000, ext4MiB: 2900, clusterSectrs: 4})
	bootSum := sha256File(t, fx.path, int64(fx.bootStart)*512, int64(fx.bootN)*512)

	// dry run: the exact lines, and the file stays byte for byte
	dry, out := testMod(t, dir, true)
	before := fileState(t, fx.path)
	pl, err := dry.Expand(fx.path)
	if err != nil {
		t.Fatal(err)
	}
	if after := fileState(t, fx.path); after != before {
		t.Fatalf("dry run changed the image: %s -> %s", before, after)
	}
	wantEnd := uint64((4<<30 - (4<<30)*6/100) / (1 << 20) * 2048)
	wantRoot := wantEnd - fx.rootStart
	script := fmt.Sprintf("label: dos\nlabel-id: 0x%08x\nunit: sectors\nsector-size: 512\n\nstart=%d, size=%d, type=c\nstart=%d, size=%d, type=83\n",
		fx.diskID, fx.bootStart, fx.bootN, fx.rootStart, wantRoot)
	want := fmt.Sprintf("truncate -s 4G %s\nsfdisk --no-reread -q %s <<'EOF'\n%sEOF\n", fx.path, fx.path, script)
	if out.Output() != want {
		t.Fatalf("dry-run trace\n%s\nwant\n%s", out.Output(), want)
	}
	if pl.Size != 4<<30 || pl.Root != wantRoot || pl.NoNeed {
		t.Fatalf("plan %+v", pl)
	}

	// the same script through the real sfdisk gives the same MBR
	ref := filepath.Join(dir, "ref.img")
	run(t, "", "cp", "--sparse=always", fx.path, ref)
	run(t, "", "truncate", "-s", "4G", ref)
	run(t, script, "sfdisk", "--no-reread", "-q", ref)

	live, _ := testMod(t, dir, false)
	pl, err = live.Expand(fx.path)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(fx.path)
	if fi.Size() != 4<<30 {
		t.Fatalf("size %d", fi.Size())
	}
	mine, theirs := make([]byte, 512), make([]byte, 512)
	f1, _ := os.Open(fx.path)
	f1.ReadAt(mine, 0)
	f1.Close()
	f2, _ := os.Open(ref)
	f2.ReadAt(theirs, 0)
	f2.Close()
	if !bytes.Equal(mine, theirs) {
		t.Errorf("MBR differs from sfdisk's:\nmine   %s\nsfdisk %s", hex.EncodeToString(mine[440:]), hex.EncodeToString(theirs[440:]))
	}
	dump := run(t, "", "sfdisk", "-d", fx.path)
	if !strings.Contains(dump, fmt.Sprintf("start=%12d, size=%12d, type=83", fx.rootStart, wantRoot)) ||
		!strings.Contains(dump, fmt.Sprintf("label-id: 0x%08x", fx.diskID)) {
		t.Errorf("sfdisk -d after expand:\n%s", dump)
	}
	if got := sha256File(t, fx.path, int64(fx.bootStart)*512, int64(fx.bootN)*512); got != bootSum {
		t.Error("expand changed the boot partition")
	}
	run(t, "", "e2fsck", "-n", "-f", fmt.Sprintf("%s?offset=%d", fx.path, fx.rootStart*512))

	// again: no need
	pl, err = live.Expand(fx.path)
	if err != nil || !pl.NoNeed {
		t.Fatalf("second expand: %+v %v", pl, err)
	}
}

func TestExpandRefusals(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 200 << 20, bootMiB: 64, clusterSectrs: 1})
	m, _ := testMod(t, dir, false)

	// a live QEMU-named process in instance 2's pidfile
	sleeper := exec.Command("bash", "-c", "exec -a qemu-system-aarch64 sleep 60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	os.MkdirAll(m.f.InstanceDir(2), 0o755)
	os.WriteFile(m.f.Pidfile(2), []byte(fmt.Sprintln(sleeper.Process.Pid)), 0o644)
	deadline := time.Now().Add(5 * time.Second)
	for livePid(m.f.Pidfile(2)) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // until exec -a renamed the process
	}
	_, err := m.Expand(fx.path)
	if err == nil || !strings.Contains(err.Error(), "instance 2 is running") {
		t.Fatalf("expand while running: %v", err)
	}
	// registering another image under a running instance 0 is refused, and
	// the registration stays as it was
	os.MkdirAll(m.f.InstanceDir(0), 0o755)
	os.WriteFile(m.f.Pidfile(0), []byte(fmt.Sprintln(sleeper.Process.Pid)), 0o644)
	before, _ := os.Readlink(m.f.Disk(0))
	other := filepath.Join(dir, "other.img")
	run(t, "", "cp", "--sparse=always", fx.path, other)
	if _, err := m.Register(other); err == nil || !strings.Contains(err.Error(), "instance 0 is running") {
		t.Fatalf("register while instance 0 runs: %v", err)
	}
	if after, _ := os.Readlink(m.f.Disk(0)); after != before {
		t.Fatalf("registration changed from %q to %q", before, after)
	}
	os.Remove(m.f.Pidfile(0))
	// a pidfile naming a process that is no QEMU does not count
	os.WriteFile(m.f.Pidfile(2), []byte(fmt.Sprintln(os.Getpid())), 0o644)
	if run, _ := m.running(); len(run) != 0 {
		t.Fatalf("running: %v", run)
	}
	os.Remove(m.f.Pidfile(2))

	// too big
	big := filepath.Join(dir, "big.img")
	run(t, "", "cp", "--sparse=always", fx.path, big)
	run(t, "", "truncate", "-s", "17G", big)
	if _, err := m.Expand(big); err == nil || !strings.Contains(err.Error(), "largest configured image size 16 GiB") {
		t.Fatalf("expand 17G: %v", err)
	}
	// a partition after partition 2
	p3 := filepath.Join(dir, "p3.img")
	run(t, "", "cp", "--sparse=always", fx.path, p3)
	run(t, fmt.Sprintf("label: dos\nstart=%d, size=%d, type=c\nstart=%d, size=%d, type=83\nstart=%d, size=2048, type=83\n",
		fx.bootStart, fx.bootN, fx.rootStart, fx.rootN-2048, fx.rootStart+fx.rootN-2048), "sfdisk", "-q", "--no-reread", p3)
	if _, err := m.Expand(p3); err == nil || !strings.Contains(err.Error(), "partition 3 (type 0x83) follows the root partition") {
		t.Fatal("expand with a partition 3 passed")
	}
}

func TestExpandRefusesMountedRoot(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 200 << 20, bootMiB: 64, clusterSectrs: 1})
	m, out := testMod(t, dir, false)
	m.d.Verbose = true
	if _, err := m.Register(fx.path); err != nil {
		t.Fatal(err)
	}
	r, err := m.Mount("root", 0, true)
	if err != nil {
		t.Fatalf("mount root: %v\n%s", err, out.Output())
	}
	defer m.Umount("root")
	if !strings.Contains(out.Output(), fmt.Sprintf("mount -o loop,offset=%d,sizelimit=%d %s %s", fx.rootStart*512, fx.rootN*512, fx.path, m.f.MountDir("root"))) {
		t.Errorf("trace:\n%s", out.Output())
	}
	if _, err := os.Stat(filepath.Join(r.Target, "lost+found")); err != nil {
		t.Errorf("root file system not visible: %v", err)
	}
	if _, err := m.Expand(fx.path); err == nil || !strings.Contains(err.Error(), "mounted") {
		t.Fatalf("expand while mounted: %v", err)
	}
	if _, err := m.Seed(m.f.Disk(0), SeedOptions{SSH: true}); err == nil || !strings.Contains(err.Error(), "mounted") {
		t.Fatalf("seed while mounted: %v", err)
	}
	if ok, err := m.Umount("root"); !ok || err != nil {
		t.Fatalf("umount: %v %v", ok, err)
	}
	if ms, _ := m.mounts(fx.path); len(ms) != 0 {
		t.Fatalf("still mounted: %v", ms)
	}
	if ok, _ := m.Umount("root"); ok {
		t.Fatal("second umount found a mount")
	}
}

// TestExpandPicksTheNextSizeForTheMargin: a file system that would reach
// into 4 GiB's margin makes the image 8 GiB; a full 4 GiB image whose ext4
// fits the margin gets its partition shrunk to the margin, never the
// file system.
func TestExpandPicksTheNextSizeForTheMargin(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 4000 << 20, bootMiB: 64, clusterSectrs: 1})
	m, _ := testMod(t, dir, true)
	pl, err := m.PlanExpand(fx.path)
	if err != nil {
		t.Fatal(err)
	}
	if pl.Size != 8<<30 || pl.Root != rootEnd(8<<30, 6)-fx.rootStart {
		t.Fatalf("plan %+v", pl)
	}
	dir2 := t.TempDir()
	fx2 := makeFixture(t, dir2, fixtureOpts{size: 4 << 30, bootMiB: 64, ext4MiB: 3000, clusterSectrs: 1})
	pl, err = m.PlanExpand(fx2.path)
	if err != nil {
		t.Fatal(err)
	}
	if pl.Size != 4<<30 || pl.Root >= pl.RootBefore || pl.NoNeed {
		t.Fatalf("plan %+v", pl)
	}
}
