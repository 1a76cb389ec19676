package image

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"pifarm/builtins/disk/disktest"
	"pifarm/builtins/image/shacrypt"
)

func TestRegisterProvideCheck(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 200 << 20, bootMiB: 64, clusterSectrs: 1})
	age(t, fx.path, time.Hour)
	m, _ := testMod(t, dir, false)
	if _, err := m.CheckBoot(0); err == nil || !strings.Contains(err.Error(), "no registered image") {
		t.Fatalf("check without image: %v", err)
	}
	if _, err := m.Register(fx.path); err != nil {
		t.Fatal(err)
	}
	if got := m.Registered(); got != fx.path {
		t.Fatalf("registered %q", got)
	}
	st, err := m.CheckBoot(0)
	if err != nil || st.State != "missing" {
		t.Fatalf("check before provide: %+v %v", st, err)
	}
	q, err := m.ProvideQboot(0, "")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(q.Kernel); !bytes.Equal(b, fx.kernel) {
		t.Error(".ker differs from kernel8.img")
	}
	if b, _ := os.ReadFile(q.DTB); !bytes.Equal(b, fx.dtb) {
		t.Error(".dtb differs")
	}
	if want := mtoolsBootSum(t, fx.path, int64(fx.bootStart)*512); q.Sum != want {
		t.Errorf("sum %s, from mcopy %s", q.Sum, want)
	}
	if rec, _ := os.ReadFile(q.Sig); !strings.HasPrefix(string(rec), q.Sum+"\n"+sigComment+"\n"+
		fmt.Sprintf("boot-file kernel8.img %d\nboot-file bcm2710-rpi-3-b-plus.dtb %d\nfile %s size=", len(fx.kernel), len(fx.dtb), fx.path)) {
		t.Errorf(".sig record:\n%s", rec)
	}
	// unchanged: no hashing, fast
	t0 := time.Now()
	st, err = m.CheckBoot(0)
	if el := time.Since(t0); err != nil || st.State != "ok" || st.Hashed || el > 10*time.Millisecond {
		t.Fatalf("re-check: %+v %v in %v", st, err, el)
	}
	// touched but the same content: re-hashed, still ok, record refreshed
	age(t, fx.path, time.Minute)
	st, err = m.CheckBoot(0)
	if err != nil || st.State != "ok" || !st.Hashed {
		t.Fatalf("after touch: %+v %v", st, err)
	}
	if st, _ = m.CheckBoot(0); st.Hashed {
		t.Fatal("record not refreshed after a re-hash")
	}
	// a record written right after the image changed is racy: re-hashed
	now := time.Now()
	os.Chtimes(fx.path, now, now)
	m.CheckBoot(0) // refreshes the record, which is racy now
	if st, _ = m.CheckBoot(0); !st.Hashed || st.State != "ok" {
		t.Fatalf("racy record trusted: %+v", st)
	}
	// the boot partition changes (an OS upgrade): outdated
	src := filepath.Join(t.TempDir(), "kernel8.img")
	os.WriteFile(src, randBytes(9, 1000), 0o644)
	run(t, "", "mcopy", "-o", "-i", fmt.Sprintf("%s@@%d", fx.path, fx.bootStart*512), src, "::kernel8.img")
	st, err = m.CheckBoot(0)
	if err != nil || st.State != "outdated" || !strings.Contains(st.Message, "--provide-qboot 0") {
		t.Fatalf("after upgrade: %+v %v", st, err)
	}
	// providing again keeps the old ones as NAME~
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(m.f.Kernel(0) + "~"); !bytes.Equal(b, fx.kernel) {
		t.Error("old .ker not kept as .ker~")
	}
	if st, _ := m.CheckBoot(0); st.State != "ok" {
		t.Fatalf("after re-provide: %+v", st)
	}
	// the same boot files once more: neither is written again
	ker0, _ := os.Stat(m.f.Kernel(0))
	dtb0, _ := os.Stat(m.f.DTB(0))
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	ker1, _ := os.Stat(m.f.Kernel(0))
	dtb1, _ := os.Stat(m.f.DTB(0))
	if !os.SameFile(ker0, ker1) || !os.SameFile(dtb0, dtb1) {
		t.Error("unchanged boot files were written again")
	}
	if st, _ := m.CheckBoot(0); st.State != "ok" {
		t.Fatalf("after providing the same files: %+v", st)
	}
	// registering another image drops the stale boot files
	other := filepath.Join(dir, "other.img")
	run(t, "", "cp", "--sparse=always", fx.path, other)
	os.WriteFile(m.f.KnownHosts(0), []byte("[127.0.0.1]:5700 ssh-ed25519 AAAA\n"), 0o644)
	if _, err := m.Register(other); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.CheckBoot(0); st.State != "missing" {
		t.Fatalf("after re-register: %+v", st)
	}
	if _, err := os.Stat(m.f.KnownHosts(0)); err == nil {
		t.Error("the old image's known_hosts survived re-registering")
	}
	for _, p := range []string{m.f.Disk(0) + "~", m.f.Kernel(0) + "~", m.f.Sig(0) + "~", m.f.KnownHosts(0) + "~"} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("backup %s: %v", p, err)
		}
	}
	if l, _ := os.Readlink(m.f.Disk(0) + "~"); l != fx.path {
		t.Errorf("link backup points to %q", l)
	}
	// a non-RaspiOS file is refused and nothing changes
	bad := filepath.Join(dir, "bad.img")
	os.WriteFile(bad, make([]byte, 4096), 0o644)
	if _, err := m.Register(bad); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "all zeros") {
		t.Fatalf("register bad: %v", err)
	}
	if m.Registered() != other {
		t.Fatal("a refused image replaced the registration")
	}
	// registering through a link registers the file behind it
	if _, err := m.Register(m.f.Disk(0)); err != nil || m.Registered() != other {
		t.Fatalf("register the link itself: %v, now %q", err, m.Registered())
	}
}

func TestProvideQbootDryRun(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 200 << 20, bootMiB: 64, clusterSectrs: 1})
	live, _ := testMod(t, dir, false)
	live.Register(fx.path)
	dry, out := testMod(t, dir, true)
	q, err := dry.ProvideQboot(0, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(q.Kernel); err == nil {
		t.Fatal("dry run wrote the kernel")
	}
	off := fx.bootStart * 512
	sumSh := fmt.Sprintf(`{ printf 'kernel8.img\n%d\n'; mcopy -n -i %s@@%d ::kernel8.img -; printf 'bcm2710-rpi-3-b-plus.dtb\n%d\n'; mcopy -n -i %s@@%d ::bcm2710-rpi-3-b-plus.dtb -; } | sha256sum`,
		len(fx.kernel), fx.path, off, len(fx.dtb), fx.path, off)
	want := fmt.Sprintf("mcopy -n -o -i %s@@%d ::kernel8.img %s\nmcopy -n -o -i %s@@%d ::bcm2710-rpi-3-b-plus.dtb %s\n# record the boot files' signature %s (as %s) in %s\n",
		fx.path, off, q.Kernel, fx.path, off, q.DTB, q.Sum, sumSh, q.Sig)
	if out.Output() != want {
		t.Fatalf("trace\n%s\nwant\n%s", out.Output(), want)
	}
	// the printed computation gives the printed signature
	if got := "sha256:" + strings.Fields(run(t, "", "sh", "-c", sumSh))[0]; got != q.Sum {
		t.Fatalf("%s gives %s, the trace says %s", sumSh, got, q.Sum)
	}
}

func TestSeed(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 200 << 20, bootMiB: 64, clusterSectrs: 1})
	m, _ := testMod(t, dir, false)
	m.Register(fx.path)
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	// dry run: masked lines, nothing written
	dry, out := testMod(t, dir, true)
	before := fileState(t, fx.path)
	if _, err := dry.Seed(m.f.Disk(0), SeedOptions{SSH: true, User: "pi", Password: "s3cret!", Salt: "abcdefgh"}); err != nil {
		t.Fatal(err)
	}
	if fileState(t, fx.path) != before {
		t.Fatal("dry run changed the image")
	}
	off := fx.bootStart * 512
	want := fmt.Sprintf(": | mcopy -n -o -i %s@@%d - ::ssh\nprintf '%%s\\n' 'pi:****' | mcopy -n -o -i %s@@%d - ::userconf.txt\n", fx.path, off, fx.path, off)
	if !strings.HasPrefix(out.Output(), want) || strings.Contains(out.Output(), "s3cret") || strings.Contains(out.Output(), "$6$") {
		t.Fatalf("dry trace\n%s\nwant prefix\n%s", out.Output(), want)
	}
	if strings.Contains(out.Output(), "signature") {
		t.Errorf("seeding touches the boot signature:\n%s", out.Output())
	}
	long := strings.Repeat("x", 300) + "\n"
	age(t, fx.path, time.Hour)
	sigBefore, _ := os.ReadFile(m.f.Sig(0))
	if _, err := m.Seed(m.f.Disk(0), SeedOptions{SSH: true, User: "pi", Password: "s3cret!", Salt: "abcdefgh",
		Files: map[string]string{"pifarm authorized_keys.txt": long}}); err != nil {
		t.Fatal(err)
	}
	// the boot files did not change: the record stands, the check reads
	// them once (the image changed) and finds them equal
	if sig, _ := os.ReadFile(m.f.Sig(0)); !bytes.Equal(sig, sigBefore) {
		t.Errorf("seeding rewrote the .sig record:\n%s", sig)
	}
	if st, _ := m.CheckBoot(0); st.State != "ok" || !st.Hashed {
		t.Errorf("boot state after seeding: %+v", st)
	}
	img := fmt.Sprintf("%s@@%d", fx.path, off)
	hash := strings.TrimSpace(run(t, "", "openssl", "passwd", "-6", "-salt", "abcdefgh", "s3cret!"))
	for name, want := range map[string]string{"ssh": "", "userconf.txt": "pi:" + hash + "\n", "pifarm authorized_keys.txt": long, "kernel8.img": string(fx.kernel)} {
		got := run(t, "", "mtype", "-i", img, "::"+name)
		if got != want {
			t.Errorf("%s: mtype gives %d bytes %.40q, want %.40q", name, len(got), got, want)
		}
	}
	// names as mtools lists them: lower case, long name
	dirList := run(t, "", "mdir", "-i", img, "::")
	for _, n := range []string{"ssh", "userconf txt", "pifarm authorized_keys.txt"} {
		if !strings.Contains(dirList, n) {
			t.Errorf("mdir lacks %q:\n%s", n, dirList)
		}
	}
	disktest.FsckClean(t, fx.path, fx.bootStart, fx.bootN)
	// replacing keeps fsck clean too
	if _, err := m.Seed(m.f.Disk(0), SeedOptions{User: "admin", Hash: "$6$x$y"}); err != nil {
		t.Fatal(err)
	}
	if got := run(t, "", "mtype", "-i", img, "::userconf.txt"); got != "admin:$6$x$y\n" {
		t.Errorf("replaced userconf.txt: %q", got)
	}
	disktest.FsckClean(t, fx.path, fx.bootStart, fx.bootN)
	if _, err := m.Seed(m.f.Disk(0), SeedOptions{User: "pi"}); err == nil {
		t.Error("user without password accepted")
	}
}

// TestBootSignatureCoversOnlyBootFiles: what a guest or RaspiOS does to
// the rest of partition 1 (a FAT left dirty, the seeded files deleted,
// files written, free-space hints changed) keeps the boot files "ok"; a
// new kernel8.img (same or other size) or dtb makes them "outdated"; a
// deleted kernel8.img is an error naming it.
func TestBootSignatureCoversOnlyBootFiles(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	m, _ := testMod(t, dir, false)
	m.Register(fx.path)
	if _, err := m.Seed(fx.path, SeedOptions{SSH: true, User: "pi", Hash: "$6$salt$hash"}); err != nil {
		t.Fatal(err)
	}
	age(t, fx.path, time.Hour)
	q, err := m.ProvideQboot(0, "")
	if err != nil {
		t.Fatal(err)
	}
	off := int64(fx.bootStart) * 512
	img := fmt.Sprintf("%s@@%d", fx.path, off)
	src := t.TempDir()
	// check ages the image (a change long before the record is written
	// again) and expects CheckBoot to re-read and find state
	n := 0
	check := func(what, state string) BootState {
		t.Helper()
		n++
		age(t, fx.path, time.Hour-time.Duration(n)*time.Minute)
		st, err := m.CheckBoot(0)
		if err != nil || st.State != state || !st.Hashed {
			t.Fatalf("%s: %+v %v, want %s", what, st, err, state)
		}
		return st
	}
	// a dirty FAT, as a killed guest leaves it: FAT[1]'s clean-shutdown
	// bit cleared and its I/O-error bit set in both FATs, the dirty flag
	// in the boot sector's state byte, and other free-space hints
	f, err := os.OpenFile(fx.path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	bs := make([]byte, 512)
	f.ReadAt(bs, off)
	reserved, fatSectors := int64(binary.LittleEndian.Uint16(bs[14:])), int64(binary.LittleEndian.Uint32(bs[36:]))
	for k := int64(0); k < int64(bs[16]); k++ {
		at := off + (reserved+k*fatSectors)*512 + 4
		e := make([]byte, 4)
		f.ReadAt(e, at)
		binary.LittleEndian.PutUint32(e, binary.LittleEndian.Uint32(e)&^0x0c000000)
		f.WriteAt(e, at)
	}
	f.WriteAt([]byte{bs[65] | 1}, off+65)
	fsInfo := off + int64(binary.LittleEndian.Uint16(bs[48:]))*512
	f.WriteAt([]byte{0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0}, fsInfo+488)
	f.Close()
	check("dirty FAT", "ok")
	// RaspiOS's first boot: ssh and userconf.txt deleted, files written
	run(t, "", "mdel", "-i", img, "::ssh", "::userconf.txt", "::config.txt")
	check("seeded files deleted", "ok")
	os.WriteFile(filepath.Join(src, "firstrun.log"), randBytes(7, 70_000), 0o644)
	run(t, "", "mcopy", "-i", img, filepath.Join(src, "firstrun.log"), "::")
	run(t, "", "mcopy", "-i", img, filepath.Join(src, "firstrun.log"), "::overlays/")
	check("files written", "ok")
	if got := mtoolsBootSum(t, fx.path, off); got != q.Sum {
		t.Fatalf("mcopy's boot files changed: %s, recorded %s", got, q.Sum)
	}
	// an upgrade: kernel8.img replaced by one of the same size, then by a
	// longer one; the dtb replaced
	os.WriteFile(filepath.Join(src, "kernel8.img"), randBytes(8, len(fx.kernel)), 0o644)
	run(t, "", "mcopy", "-o", "-i", img, filepath.Join(src, "kernel8.img"), "::kernel8.img")
	st := check("kernel8.img replaced", "outdated")
	if !strings.Contains(st.Message, "run: pifarm run image --provide-qboot 0") || !strings.Contains(st.Message, "an OS upgrade?") {
		t.Errorf("message %q", st.Message)
	}
	os.WriteFile(filepath.Join(src, "kernel8.img"), randBytes(9, len(fx.kernel)+1000), 0o644)
	run(t, "", "mcopy", "-o", "-i", img, filepath.Join(src, "kernel8.img"), "::kernel8.img")
	st = check("longer kernel8.img", "outdated")
	if want := fmt.Sprintf("kernel8.img %d -> %d bytes", len(fx.kernel), len(fx.kernel)+1000); !strings.Contains(st.Message, want) {
		t.Errorf("message %q lacks %q", st.Message, want)
	}
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	check("provided again", "ok")
	dtb := append([]byte{}, fx.dtb...)
	dtb[100] ^= 1
	os.WriteFile(filepath.Join(src, "bcm2710-rpi-3-b-plus.dtb"), dtb, 0o644)
	run(t, "", "mcopy", "-o", "-i", img, filepath.Join(src, "bcm2710-rpi-3-b-plus.dtb"), "::")
	check("one bit of the dtb", "outdated")
	// no kernel8.img at all: an error naming it
	run(t, "", "mdel", "-i", img, "::kernel8.img")
	age(t, fx.path, time.Second)
	if _, err := m.CheckBoot(0); err == nil || !strings.Contains(err.Error(), `"kernel8.img"`) || !strings.HasPrefix(err.Error(), "boot files of instance 0: "+m.f.Disk(0)+" partition 1: ") {
		t.Fatalf("kernel8.img missing: %v", err)
	}
}

// TestOldSigRecords: records of earlier kinds (a SHA-256 of the boot
// partition's bytes, pibox's md5, anything else) read as "outdated" with
// the hint to provide the boot files again, even when the cheap
// unchanged-check would pass.
func TestOldSigRecords(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	age(t, fx.path, time.Hour)
	m, _ := testMod(t, dir, false)
	m.Register(fx.path)
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	cur, _ := os.ReadFile(m.f.Sig(0))
	var files string
	for _, l := range strings.SplitAfter(string(cur), "\n") {
		if strings.HasPrefix(l, "file ") {
			files += l
		}
	}
	for _, c := range []struct{ name, rec, says string }{
		{"partition bytes", "sha256:" + sha256File(t, fx.path, int64(fx.bootStart)*512, 1<<20) + "\n# sha256 of 512-byte sectors 8192..10239: partition 1 up to its last used cluster\n" + files, "boot partition's bytes"},
		{"pibox md5sum", "0123456789abcdef0123456789abcdef  -\n", "md5"},
		{"pibox md5", "0123456789abcdef0123456789abcdef\n", "md5"},
		{"other boot files", strings.Replace(string(cur), "boot-file bcm2710-rpi-3-b-plus.dtb", "boot-file bcm2711-rpi-4-b.dtb", 1), "other boot files"},
		{"empty", "", "no signature"},
		{"binary", string(randBytes(3, 100_000)), "no signature"},
	} {
		os.WriteFile(m.f.Sig(0), []byte(c.rec), 0o644)
		age(t, m.f.Sig(0), 0)
		st, err := m.CheckBoot(0)
		if err != nil || st.State != "outdated" || !strings.Contains(st.Message, "run: pifarm run image --provide-qboot 0") || !strings.Contains(st.Message, c.says) {
			t.Errorf("%s: %+v %v", c.name, st, err)
		}
	}
	os.WriteFile(m.f.Sig(0), cur, 0o644)
	age(t, m.f.Sig(0), 0)
	if st, err := m.CheckBoot(0); err != nil || st.State != "ok" || st.Hashed {
		t.Fatalf("the current record again: %+v %v", st, err)
	}
}

// TestMountPaths: guestmount when present (dry run with a stand-in on
// PATH), and refusal while the instance runs.
func TestMountPaths(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	bin := t.TempDir()
	os.WriteFile(filepath.Join(bin, "guestmount"), []byte("#!/bin/sh\nexit 1\n"), 0o755)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	live, _ := testMod(t, dir, false)
	live.Register(fx.path)
	dry, out := testMod(t, dir, true)
	dry.f.Config.Tools["guestmount"] = true
	if _, err := dry.Mount("boot", 0, false); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("mkdir -p %s\nguestmount --format=raw -a %s -m /dev/sda1 --ro %s\n", dry.f.MountDir("boot"), fx.path, dry.f.MountDir("boot"))
	if out.Output() != want {
		t.Fatalf("trace\n%s\nwant\n%s", out.Output(), want)
	}
	out.Reset()
	if _, err := dry.Mount("root", 0, true); err != nil {
		t.Fatal(err)
	}
	want = fmt.Sprintf("mkdir -p %s\nmount -o loop,offset=%d,sizelimit=%d %s %s\n", dry.f.MountDir("root"), fx.rootStart*512, fx.rootN*512, fx.path, dry.f.MountDir("root"))
	if out.Output() != want {
		t.Fatalf("trace\n%s\nwant\n%s", out.Output(), want)
	}
	if _, err := dry.Mount("swap", 0, false); err == nil {
		t.Fatal("unknown partition accepted")
	}
	sleeper := exec.Command("bash", "-c", "exec -a qemu-system-aarch64 sleep 60")
	sleeper.Start()
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	os.WriteFile(live.f.Pidfile(0), []byte(fmt.Sprint(sleeper.Process.Pid)), 0o644)
	deadline := time.Now().Add(5 * time.Second)
	for livePid(live.f.Pidfile(0)) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // until exec -a renamed the process
	}
	if _, err := live.Mount("root", 0, true); err == nil || !strings.Contains(err.Error(), "instance 0 is running") {
		t.Fatalf("mount while running: %v", err)
	}
	if _, err := live.Seed(live.f.Disk(0), SeedOptions{SSH: true}); err == nil || !strings.Contains(err.Error(), "running") {
		t.Fatalf("seed while running: %v", err)
	}
	if _, err := live.ProvideQboot(0, ""); err == nil || !strings.Contains(err.Error(), "shut it down first") {
		t.Fatalf("provide while running: %v", err)
	}
}

func TestSeedCloudInit(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	m, _ := testMod(t, dir, false)
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey pifarm@host"
	// no user-data: keys cannot be seeded
	if _, err := m.Seed(fx.path, SeedOptions{User: "pi", Password: "pw", Keys: []string{key}}); err == nil || !strings.Contains(err.Error(), "no cloud-init user-data") {
		t.Fatalf("keys without cloud-init: %v", err)
	}
	img := fmt.Sprintf("%s@@%d", fx.path, fx.bootStart*512)
	src := filepath.Join(t.TempDir(), "user-data")
	os.WriteFile(src, []byte("#cloud-config\n# the image's own\n"), 0o644)
	run(t, "", "mcopy", "-i", img, src, "::user-data")
	if _, err := m.Seed(fx.path, SeedOptions{SSH: true, User: "pi", Password: "pw", Salt: "saltsalt", Keys: []string{key}}); err != nil {
		t.Fatal(err)
	}
	hash, _ := shacrypt.SHA512("pw", "saltsalt", 0)
	got := run(t, "", "mtype", "-i", img, "::user-data")
	for _, want := range []string{"#cloud-config\n", "  - name: \"pi\"\n", "    passwd: \"" + hash + "\"\n", "      - \"" + key + "\"\n", "ssh_pwauth: true\n", "  - [systemctl, enable, --now, ssh]\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("user-data lacks %q:\n%s", want, got)
		}
	}
	if got := run(t, "", "mtype", "-i", img, "::userconf.txt"); got != "pi:"+hash+"\n" {
		t.Errorf("userconf.txt %q", got)
	}
	disktest.FsckClean(t, fx.path, fx.bootStart, fx.bootN)
	if _, err := m.Seed(fx.path, SeedOptions{User: "pi", Password: "pw", Keys: []string{"not a key\nx"}}); err == nil {
		t.Error("a bad key was accepted")
	}
}
