package card

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"pifarm/builtins/trace"
)

// run runs a command, failing the test with its output when it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
}

// makeImage builds a RaspiOS-like image of size MiB with real tools: an MBR
// with a FAT32 partition 1 (4 MiB in, 40 MiB) and an ext4 partition 2 up
// to 94 % of the image, holding dataMiB of random files; the rest sparse.
func makeImage(t testing.TB, dir string, sizeMiB, dataMiB int) string {
	return makeImageWith(t, dir, sizeMiB, dataMiB, nil)
}

// makeImageWith is makeImage with extra files in the root file system
// (path: content).
func makeImageWith(t testing.TB, dir string, sizeMiB, dataMiB int, files map[string]string) string {
	t.Helper()
	need(t, "sfdisk", "mkfs.vfat", "mkfs.ext4")
	p := filepath.Join(dir, "image.raw")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, int64(sizeMiB)<<20); err != nil {
		t.Fatal(err)
	}
	rootStart := int64(44 << 20 / 512)
	rootSectors := int64(sizeMiB)<<20/512*94/100 - rootStart
	script := fmt.Sprintf("label: dos\nstart=8192, size=81920, type=c\nstart=%d, size=%d, type=83\n", rootStart, rootSectors)
	cmd := exec.Command("sfdisk", "-q", p)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	run(t, "mkfs.vfat", "-F", "32", "-s", "1", "--offset", "8192", "-n", "BOOTFS", p, "40960")
	root := filepath.Join(dir, "rootfs")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte("loner\n"), 0o644)
	for name, content := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(root, name)), 0o755)
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; dataMiB > 0; i++ {
		n := min(dataMiB, 64)
		b := make([]byte, n<<20)
		rand.Read(b)
		os.WriteFile(filepath.Join(root, fmt.Sprintf("blob%d", i)), b, 0o644)
		dataMiB -= n
	}
	run(t, "mkfs.ext4", "-q", "-F", "-L", "rootfs", "-E", fmt.Sprintf("offset=%d", rootStart*512), "-d", root, p, fmt.Sprint(rootSectors/2)+"k")
	os.RemoveAll(root)
	return p
}

// flash writes img to the targets through a live door, as card.flash does.
// passingLosetup reports whether a refusal names a losetup process as the
// device's holder (see flash).
func passingLosetup(rs []Refusal) bool {
	for _, r := range rs {
		if strings.Contains(r.Why, "(losetup ") {
			return true
		}
	}
	return false
}

func flash(t testing.TB, ctx context.Context, img string, force bool, targets ...string) ([]Result, string) {
	t.Helper()
	var log bytes.Buffer
	d := trace.New(ctx, false, true, &log)
	src, err := OpenSource(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var ts []*Target
	var ms []*meter
	for _, p := range targets {
		var tg *Target
		// Another test package's losetup --find opens free-looking loop
		// devices for a moment while it looks for one (go test runs
		// packages at once): such a passing holder is waited out.
		for try := 0; ; try++ {
			tg, err = Host.Inspect(p, src)
			if err != nil {
				t.Fatal(err)
			}
			if try == 20 || !passingLosetup(tg.Refusals) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, r := range tg.Refusals {
			if !(force && r.Forceable) {
				t.Fatalf("%s refused: %s", p, r.Why)
			}
		}
		ts = append(ts, tg)
		ms = append(ms, newMeter(p))
	}
	return Write(ctx, d, src, ts, Options{Verify: true}, ms), log.String()
}

// sameBytes compares the first n bytes of two files.
func sameBytes(t testing.TB, a, b string, n int64) {
	t.Helper()
	run(t, "cmp", "-n", fmt.Sprint(n), a, b)
}

// TestFlashFiles writes a raw image and a qcow2 clone's guest view to
// image files, several at once: each equals the guest view byte for byte,
// only data was written, an old file is kept as NAME~, no .partial stays.
func TestFlashFiles(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "cmp")
	dir := t.TempDir()
	img := makeImage(t, dir, 96, 12)
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	os.WriteFile(b, []byte("an old card"), 0o600)
	res, _ := flash(t, context.Background(), img, false, a, b)
	for _, r := range res {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		sameBytes(t, img, r.Target, 96<<20)
		if r.Written > 20<<20 || r.Written < 12<<20 || r.Verified != r.Written {
			t.Errorf("%s: written %d, verified %d: want the data (12 MiB and the file systems' metadata) only, all verified", r.Target, r.Written, r.Verified)
		}
		if _, err := os.Stat(partialName(r.Target)); err == nil {
			t.Errorf("%s left behind", partialName(r.Target))
		}
	}
	if old, _ := os.ReadFile(b + "~"); string(old) != "an old card" {
		t.Errorf("the old target was not kept as b.img~: %q", old)
	}
	if fi, _ := os.Stat(b); fi.Mode().Perm() != 0o600 {
		t.Errorf("b.img has mode %v, want the old file's 0600", fi.Mode().Perm())
	}

	// a linked qcow2 clone with its own writes, a zeroed range over data
	q := filepath.Join(dir, "clone.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", img, "-F", "raw", q)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 30M 3M", "-c", "write -z 21M 1M", "-c", "write -P 0x11 0 512", q)
	want := filepath.Join(dir, "want.raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", q, want)
	c := filepath.Join(dir, "c.img")
	res, _ = flash(t, context.Background(), q, false, c)
	if res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
	sameBytes(t, want, c, 96<<20)
}

// loop attaches file to a new loop device, detached at the end of the test.
func loop(t testing.TB, file string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	need(t, "losetup")
	dev := strings.TrimSpace(run(t, "losetup", "-f", "--show", file))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// fill makes a file of n bytes of random data (an old card's content).
func fill(t testing.TB, p string, n int64) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, n); err != nil {
		t.Fatal(err)
	}
}

// TestFlashLoopDevice writes an image to a loop device full of old data:
// the card then reads as the image (holes zeroed), all of it verified.
func TestFlashLoopDevice(t *testing.T) {
	need(t, "cmp")
	dir := t.TempDir()
	img := makeImage(t, dir, 96, 8)
	back := filepath.Join(dir, "card")
	fill(t, back, 112<<20)
	dev := loop(t, back)
	src, _ := OpenSource(img)
	tg, err := Host.Inspect(dev, src)
	src.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(tg.Refusals) != 1 || !tg.Refusals[0].Forceable || !strings.Contains(tg.Refusals[0].Why, "not removable (a loop device of") {
		t.Fatalf("a loop device: refusals %+v, want one: not removable, forceable", tg.Refusals)
	}
	res, log := flash(t, context.Background(), img, true, dev)
	if res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
	sameBytes(t, img, dev, 96<<20)
	if res[0].Zeroed < 40<<20 {
		t.Errorf("zeroed %d bytes, want the image's holes", res[0].Zeroed)
	}
	for _, want := range []string{"dd if=/dev/zero of=" + dev + " bs=512 count=1", "blkdiscard --zeroout --offset", "cmp --ignore-initial=", "blockdev --rereadpt " + dev} {
		if !strings.Contains(log, want) {
			t.Errorf("trace lacks %q:\n%s", want, log)
		}
	}
	// the MBR is the last write: after it only its own check and the re-read
	lines := strings.Split(strings.TrimSpace(log), "\n")
	if n := len(lines); n < 4 || !strings.Contains(lines[n-4], "count=512") || !strings.HasPrefix(lines[n-1], "blockdev --rereadpt") {
		t.Errorf("the trace does not end with the MBR, its check and the re-read:\n%s", strings.Join(lines[max(0, len(lines)-5):], "\n"))
	}
}

// TestRefusals: a mounted card, one too small, the disk of /, a symbolic
// link, a partition of a card, the image itself; each refused before
// anything is written, with the reason.
func TestRefusals(t *testing.T) {
	need(t, "mkfs.ext4", "mount", "umount")
	dir := t.TempDir()
	img := makeImage(t, dir, 64, 1)
	src, err := OpenSource(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	small := filepath.Join(dir, "small")
	fill(t, small, 32<<20)
	smallDev := loop(t, small)

	fsFile := filepath.Join(dir, "mounted")
	fill(t, fsFile, 80<<20)
	mountedDev := loop(t, fsFile)
	run(t, "mkfs.ext4", "-q", "-F", mountedDev)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	run(t, "mount", mountedDev, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	before, _ := os.ReadFile(fsFile)

	held := filepath.Join(dir, "held.img")
	os.WriteFile(held, nil, 0o600)
	holder := exec.Command("sh", "-c", "exec 3<>\"$0\"; sleep 60", held)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	for i := 0; i < 100; i++ { // until the shell holds it
		if out, _ := exec.Command("sh", "-c", "ls -l /proc/"+fmt.Sprint(holder.Process.Pid)+"/fd").Output(); strings.Contains(string(out), "held.img") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	link := filepath.Join(dir, "link.img")
	os.Symlink(filepath.Join(dir, "x.img"), link)

	for _, tc := range []struct{ path, want string }{
		{smallDev, "it is too small: 32.0 MiB, the image needs"},
		{mountedDev, "is mounted on " + mnt},
		{img, "it is the image itself"},
		{held, fmt.Sprintf("it is open for writing by pid %d (sh -c", holder.Process.Pid)},
	} {
		tg, err := Host.Inspect(tc.path, src)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		if !hasRefusal(tg, tc.want, false) {
			t.Errorf("%s: refusals %+v, want one saying %q that --force does not lift", tc.path, tg.Refusals, tc.want)
		}
	}
	if _, err := Host.Inspect(link, src); err == nil || !strings.Contains(err.Error(), "is a symbolic link") {
		t.Errorf("a symbolic link: %v", err)
	}
	// through the module: nothing written, --force lifts nothing of this
	m := &module{d: trace.New(context.Background(), false, false, io.Discard), sys: Host}
	if _, err := m.inspectAll(src, []string{mountedDev}, []string{mountedDev}); err == nil || !strings.Contains(err.Error(), "refusing to write, nothing written") {
		t.Errorf("a mounted device with --force: %v", err)
	}
	if after, _ := os.ReadFile(fsFile); !bytes.Equal(before, after) {
		t.Error("the mounted device changed")
	}

	// the disk that holds / (when / is a block device here)
	root := rootDisk(t)
	if root == "" {
		t.Log("/ is not on a block device here: the fixture test covers it")
		return
	}
	tg, err := Host.Inspect(root, src)
	if err != nil {
		t.Fatal(err)
	}
	if !hasRefusal(tg, "it holds the running system", false) {
		t.Errorf("%s holds /: refusals %+v", root, tg.Refusals)
	}
}

func hasRefusal(t *Target, want string, forceable bool) bool {
	for _, r := range t.Refusals {
		if strings.Contains(r.Why, want) && r.Forceable == forceable {
			return true
		}
	}
	return false
}

// rootDisk is the /dev path of the whole disk that holds /, or "".
func rootDisk(t testing.TB) string {
	f, err := os.Open(Host.Mountinfo)
	if err != nil {
		return ""
	}
	defer f.Close()
	ms, err := ParseMountinfo(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Point != "/" {
			continue
		}
		name, err := Host.DiskOf(m.Dev)
		if p, ok := err.(*errPartition); ok {
			name, err = p.disk, nil
		}
		if err != nil {
			return ""
		}
		if _, err := os.Stat("/dev/" + name); err == nil {
			return "/dev/" + name
		}
	}
	return ""
}

// TestKilledFlashLeavesNoMBR: a pifarm killed with SIGKILL while it writes
// a card leaves the card without a partition table (its old one was wiped
// first), so it never boots half-written.
func TestKilledFlashLeavesNoMBR(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 200 MiB")
	}
	dir := t.TempDir()
	img := makeImage(t, dir, 256, 160)
	back := filepath.Join(dir, "card")
	fill(t, back, 256<<20)
	dev := loop(t, back)
	// first a good card: its MBR is valid
	if res, _ := flash(t, context.Background(), img, true, dev); res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
	if !validMBR(t, dev) {
		t.Fatal("no valid MBR after a whole flash")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperFlash$")
	cmd.Env = append(os.Environ(), "PIFARM_CARD_HELPER="+img+"\n"+dev)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for validMBR(t, dev) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the first sector was never wiped:\n%s", out.String())
		}
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // well into the data
	cmd.Process.Kill()
	err := cmd.Wait()
	if strings.Contains(out.String(), "HELPER DONE") {
		t.Fatalf("the flash ended before the kill (make the image larger):\n%s", out.String())
	}
	if err == nil {
		t.Fatal("the helper was not killed")
	}
	if validMBR(t, dev) {
		t.Fatal("a card killed mid-flash has a valid MBR")
	}
}

// validMBR reports whether the first sector of p ends in 55 AA.
func validMBR(t testing.TB, p string) bool {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 512)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b[510] == 0x55 && b[511] == 0xaa
}

// TestHelperFlash is the process TestKilledFlashLeavesNoMBR kills.
func TestHelperFlash(t *testing.T) {
	arg := os.Getenv("PIFARM_CARD_HELPER")
	if arg == "" {
		t.Skip("run by TestKilledFlashLeavesNoMBR")
	}
	img, dev, _ := strings.Cut(arg, "\n")
	res, _ := flash(t, context.Background(), img, true, dev)
	fmt.Println("HELPER DONE", res[0].Err)
}

// TestInterruptedFlash: Ctrl-C (a cancelled context) stops a card with
// its first sector wiped and says so; an image file target stays as it
// was and no .partial is left.
func TestInterruptedFlash(t *testing.T) {
	dir := t.TempDir()
	img := makeImage(t, dir, 160, 80)
	f := filepath.Join(dir, "old.img")
	os.WriteFile(f, []byte("old"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	src, _ := OpenSource(img)
	defer src.Close()
	tg, _ := Host.Inspect(f, src)
	d := trace.New(ctx, false, false, io.Discard)
	m := newMeter(f)
	go func() {
		for m.done.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	res := Write(ctx, d, src, []*Target{tg}, Options{Verify: true}, []*meter{m})
	if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "interrupted") || !strings.Contains(res[0].Err.Error(), "left as it was") {
		t.Fatalf("err %v, want interrupted, left as it was", res[0].Err)
	}
	if b, _ := os.ReadFile(f); string(b) != "old" {
		t.Errorf("the target changed: %q", b)
	}
	if _, err := os.Stat(partialName(f)); err == nil {
		t.Error("the .partial stayed")
	}
}

// TestVerifyCatchesABadCard: a target that does not keep a written byte
// (changed behind pifarm's back right after the write) fails the check,
// naming the range, and an image file target then stays as it was.
func TestVerifyCatchesABadCard(t *testing.T) {
	dir := t.TempDir()
	img := makeImage(t, dir, 96, 12)
	f := filepath.Join(dir, "bad.img")
	done := false
	testHookWritten = func(path string, off, n int64) {
		if done || n < 1<<20 {
			return
		}
		done = true
		g, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Error(err)
			return
		}
		b := make([]byte, 1)
		g.ReadAt(b, off+n/2)
		b[0] ^= 0xff
		g.WriteAt(b, off+n/2)
		g.Close()
	}
	t.Cleanup(func() { testHookWritten = nil })
	res, _ := flash(t, context.Background(), img, false, f)
	if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "differ from the image") || !strings.Contains(res[0].Err.Error(), "is not made") {
		t.Fatalf("err %v, want a verification failure, the file not made", res[0].Err)
	}
	if _, err := os.Stat(f); err == nil {
		t.Error("the bad image file was made")
	}
}
