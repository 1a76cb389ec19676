package chroot

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.starlark.net/starlark"
	"pifarm/builtins/chroot/chroottest"
	"pifarm/builtins/farm"
	"pifarm/builtins/startest"
	"pifarm/builtins/trace"
)

func TestVfatMountPoint(t *testing.T) {
	for _, tc := range []struct{ name, fstab, want string }{
		{"bookworm", "proc /proc proc defaults 0 0\nPARTUUID=1-01 /boot/firmware vfat defaults 0 2\nPARTUUID=1-02 / ext4 defaults,noatime 0 1\n", "/boot/firmware"},
		{"bullseye", "/dev/mmcblk0p1  /boot  vfat  defaults  0  2\n", "/boot"},
		{"comment first", "# /dev/sda1 /efi vfat defaults 0 0\n/dev/mmcblk0p1 /boot vfat defaults 0 2\n", "/boot"},
		{"escaped blank", `/dev/x /boot\040fw vfat defaults 0 2` + "\n", "/boot fw"},
		{"none", "/dev/mmcblk0p2 / ext4 defaults 0 1\n", ""},
		{"root is not a boot dir", "/dev/x / vfat defaults 0 0\n", ""},
		{"relative refused", "/dev/x boot vfat defaults 0 0\n", ""},
		{"dots cleaned", "/dev/x /boot/../boot/./fw vfat defaults 0 0\n", "/boot/fw"},
		{"short line", "vfat\n/dev/x /b\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := VfatMountPoint([]byte(tc.fstab)); got != tc.want {
				t.Errorf("VfatMountPoint(%q) = %q, want %q", tc.fstab, got, tc.want)
			}
		})
	}
}

func FuzzVfatMountPoint(f *testing.F) {
	f.Add([]byte("/dev/mmcblk0p1 /boot/firmware vfat defaults 0 2\n"))
	f.Add([]byte(`/dev/x /a\040b\1 vfat d 0 0`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := VfatMountPoint(b)
		if got != "" && (!strings.HasPrefix(got, "/") || got == "/" || filepath.Clean(got) != got) {
			t.Fatalf("VfatMountPoint(%q) = %q: not a clean absolute folder", b, got)
		}
	})
}

func TestResolveIn(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "etc", "run/x"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "usr/bin/dash"), nil, 0o755)
	os.WriteFile(filepath.Join(root, "run/x/resolv.conf"), nil, 0o644)
	links := map[string]string{
		"bin":              "usr/bin",
		"usr/bin/sh":       "dash",
		"etc/resolv.conf":  "../run/x/resolv.conf",
		"etc/abs":          "/run/x/resolv.conf",
		"etc/escape":       "../../../../etc/passwd",
		"etc/loop":         "loop",
		"etc/escape-abs":   "/../../etc/hostname",
		"usr/bin/relup":    "../../etc/abs",
		"usr/bin/dangling": "nothing",
	}
	for l, target := range links {
		if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ in, want, err string }{
		{"/bin/sh", "usr/bin/dash", ""},
		{"/etc/resolv.conf", "run/x/resolv.conf", ""},
		{"/etc/abs", "run/x/resolv.conf", ""},
		{"/usr/bin/relup", "run/x/resolv.conf", ""},
		{"/etc/escape", "", "no such file"}, // climbs to the guest's /etc/passwd, which is missing
		{"/etc/escape-abs", "", "no such file"},
		{"/etc/loop", "", "too many levels"},
		{"/usr/bin/dangling", "", "no such file"},
	} {
		got, err := resolveIn(root, tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("resolveIn(%s) = %q, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != filepath.Join(root, tc.want) {
			t.Errorf("resolveIn(%s) = %q, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestBinfmtReady(t *testing.T) {
	old := binfmtDir
	defer func() { binfmtDir = old }()
	binfmtDir = t.TempDir()
	write := func(s string) { os.WriteFile(filepath.Join(binfmtDir, "qemu-aarch64"), []byte(s), 0o644) }
	for _, tc := range []struct{ name, entry, err string }{
		{"missing", "", "has no qemu-aarch64 handler"},
		{"disabled", "disabled\ninterpreter /x\nflags: OCF\n", "disabled"},
		{"no F", "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: OC\n", "lacks the F flag"},
		{"ready", "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(filepath.Join(binfmtDir, "qemu-aarch64"))
			if tc.entry != "" {
				write(tc.entry)
			}
			err := binfmtReady("qemu-aarch64", "aarch64")
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "qemu-user-static") {
				t.Fatalf("got %v, want an error with %q naming the fix", err, tc.err)
			}
		})
	}
}

// TestDryOpenRunClose: a dry run prints every step as the command a user
// would type, with the privilege prefix, and changes nothing.
func TestDryOpenRunClose(t *testing.T) {
	fx := startest.New(t, startest.Options{Dry: true})
	disk := testImage(t, fx.Farm, 0, false)
	fx.Add(New(fx.Door, fx.Farm))
	fx.Run("dry.star", `
c = chroot.open(0, root = struct(offset = 46137344, bytes = 49283072), boot = struct(offset = 4194304, bytes = 41943040))
r = c.run("apt-get -q update", stream = True)
assert.eq(r.exit_code, 0)
assert.eq(c.apt_update(["-o", "Acquire::http::Proxy=http://127.0.0.1:5699"]).exit_code, 0)
c.close()
`)
	out := fx.Output()
	dir := fx.Farm.InstanceDir(0) + "/chroot"
	for _, want := range []string{
		"dev=$(sudo losetup --find --show --offset 46137344 --sizelimit 49283072 " + disk + ")\n",
		"sudo mount \"$dev\" " + dir + "/root\n",
		"sudo losetup -d \"$dev\"\n",
		"sudo mount -t tmpfs -o mode=755 tmpfs " + dir + "/root/boot\n",
		"sudo mcopy -s -p -m -n -i " + disk + "@@4194304 '::/*' " + dir + "/root/boot/\n",
		"sudo mount -t proc proc " + dir + "/root/proc\n",
		"sudo install -m 755 /dev/stdin " + dir + "/root/usr/sbin/policy-rc.d <<'EOF'\n",
		"sudo chroot " + dir + "/root /usr/bin/env -i PATH=" + guestPATH + " HOME=/root LC_ALL=C.UTF-8 TERM=dumb /bin/sh -c 'apt-get -q update'\n",
		"sudo unshare --mount --propagation private sh -c 'exec 2>&1'$'\\n''r=$1 loc=$2; shift 2'",
		"update' apt-update " + dir + "/root C.UTF-8 -o Acquire::http::Proxy=http://127.0.0.1:5699\n",
		"sudo rm -f " + dir + "/root/usr/sbin/policy-rc.d\n",
		"sudo umount " + dir + "/root\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry trace lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "umount "+dir+"/root/proc") > strings.Index(out, "umount "+dir+"/root\n") {
		t.Errorf("the root is unmounted before what is mounted in it:\n%s", out)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("a dry run made %s", dir)
	}
}

func TestOpenArgumentErrors(t *testing.T) {
	fx := startest.New(t, startest.Options{Dry: true})
	testImage(t, fx.Farm, 0, false)
	fx.Add(New(fx.Door, fx.Farm))
	for _, tc := range []struct{ src, want string }{
		{`chroot.open(0, root = 5)`, "want a partition"},
		{`chroot.open(0, root = struct(offset = 1))`, "it has no bytes"},
		{`chroot.open(0, root = struct(offset = 0, bytes = 5))`, "want a positive number"},
		{`chroot.open(0, root = struct(offset = 1, bytes = 5), boot_dir = 3)`, "boot_dir"},
		{`chroot.open(99, root = struct(offset = 1, bytes = 5))`, "99"},
		{`chroot.open(1, root = struct(offset = 1, bytes = 5))`, "pifarm run box --force-clone 1"},
	} {
		_, err := fx.Exec("err.star", tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error with %q", tc.src, err, tc.want)
		}
	}
}

// needRoot skips a test that mounts when not root (CI runs as root).
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test mounts loop devices")
		}
		t.Skip("mounting loop devices needs root")
	}
}

// testImage makes the chroottest image instance id's disk: instance 0's
// raw image (a link, as register makes it) or, with qcow2, a qcow2 clone on
// it. It returns the disk's path.
func testImage(t *testing.T, f *farm.Farm, id int, qcow2 bool) string {
	t.Helper()
	img := chroottest.Image(t)
	if err := os.MkdirAll(f.InstanceDir(id), 0o700); err != nil {
		t.Fatal(err)
	}
	if !qcow2 {
		if err := os.Symlink(img, f.Disk(id)); err != nil {
			t.Fatal(err)
		}
		return img
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", img, f.Disk(id)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	return f.Disk(id)
}

// unmountUnder unmounts (lazily, deepest first) whatever is still mounted
// under dir, so that a failing test leaves the host as it was.
func unmountUnder(t *testing.T, dir string) {
	ms := mountsUnder(dir)
	for i := len(ms) - 1; i >= 0; i-- {
		t.Errorf("left mounted: %s", ms[i])
		exec.Command("umount", "-l", ms[i]).Run()
	}
}

// mountsUnder lists the mount points under dir, in mount order.
func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir) {
			out = append(out, f[4])
		}
	}
	return out
}

// liveFixture is a live fixture whose chroot module closes every root
// before the test's folders are removed (a failed test must not leave a
// mount for t.TempDir's clean-up to walk into).
func liveFixture(t *testing.T) *startest.Fixture {
	fx := startest.New(t, startest.Options{Root: true, Verbose: os.Getenv("CHROOT_TEST_VERBOSE") != ""})
	t.Cleanup(func() { unmountUnder(t, fx.Farm.Config.CacheDir()) })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("output:\n%s", fx.Output())
		}
	})
	mod := New(fx.Door, fx.Farm)
	t.Cleanup(mod.End)
	fx.Add(mod)
	return fx
}

const openScript = `
c = chroot.open(%d, root = struct(offset = 46137344, bytes = 49283072), boot = struct(offset = 4194304, bytes = 41943040), grow = True)
`

// TestOpenRunClose opens a raw image and a qcow2 clone for real: the boot
// partition where fstab says, commands in the guest's root with their
// output and exit codes, the host's resolver, the policy-rc.d only while
// open, the change kept on the disk (in the qcow2: its raw base is not
// written), nothing left mounted after close.
func TestOpenRunClose(t *testing.T) {
	needRoot(t)
	host, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		t.Skipf("the host has no /etc/resolv.conf: %v", err)
	}
	for _, qcow2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "raw", true: "qcow2"}[qcow2], func(t *testing.T) {
			fx := liveFixture(t)
			id := 0
			if qcow2 {
				id = 1
			}
			disk := testImage(t, fx.Farm, id, qcow2)
			base := sum(t, disk)
			if qcow2 {
				base = sum(t, backing(t, disk))
			}
			dir := fx.Farm.InstanceDir(id) + "/chroot"
			fx.Set("host_resolv", starlark.String(host))
			fx.Run("live.star", fmt.Sprintf(openScript, id)+`
assert.eq(c.boot_dir, "/boot/firmware")
assert.eq(c.disk, `+fmt.Sprintf("%q", disk)+`)
assert.eq(c.arch, "x86_64")
r = c.run("echo changed > /root/mark; cat /root/mark; ls /usr/sbin")
assert.eq(r.stdout, "changed\npolicy-rc.d\n")
assert.eq(c.run("cat /etc/resolv.conf").stdout, host_resolv)
assert.eq(c.run("ls /boot/firmware /boot/firmware/overlays").stdout, "/boot/firmware:\nbcm2710-rpi-3-b-plus.dtb\nkernel8.img\noverlays\n\n/boot/firmware/overlays:\nold.dtbo\n")
c.run("cd /boot/firmware; echo new kernel > kernel8.img; rm overlays/old.dtbo; rmdir overlays; mkdir -p dtbs/x; echo dtb > dtbs/x/new.dtb")
r = c.run("exit 3", check = False)
assert.eq(r.exit_code, 3)
assert.fails(lambda: c.run("echo oops >&2; exit 4"), "exit status 4: oops")
assert.fails(lambda: c.run("sleep 5", timeout = 0.3), "timeout of 300ms")
assert.eq(c.run("cat", stdin = "through stdin\n").stdout, "through stdin\n")
c.close()
assert.fails(lambda: c.run("true"), "closed")
c.close()
`)
			if m := mountsUnder(dir); len(m) > 0 {
				t.Fatalf("still mounted after close: %v", m)
			}
			if loops := farm.LoopsOf(disk); len(loops) > 0 {
				t.Fatalf("loop devices left on %s: %v", disk, loops)
			}
			fx.Run("again.star", fmt.Sprintf(openScript, id)+`
assert.eq(c.run("cat /root/mark; ls /usr/sbin; cat /etc/resolv.conf").stdout, "changed\npolicy-rc.d\n" + host_resolv)
assert.eq(c.run("cd /boot/firmware; ls; cat kernel8.img dtbs/x/new.dtb").stdout, "bcm2710-rpi-3-b-plus.dtb\ndtbs\nkernel8.img\nnew kernel\ndtb\n")
c.close()
`)
			if m := mountsUnder(dir); len(m) > 0 {
				t.Fatalf("still mounted after close: %v", m)
			}
			if !qcow2 {
				// the guest's own files, read from the disk itself
				spec := disk + "?offset=46137344"
				for cmd, want := range map[string]string{
					"cat /etc/resolv.conf": "nameserver 192.0.2.1\n",
					"cat /root/mark":       "changed\n",
				} {
					out, err := exec.Command("debugfs", "-R", cmd, spec).Output()
					if err != nil || string(out) != want {
						t.Errorf("debugfs -R %q %s = %q, %v; want %q", cmd, spec, out, err, want)
					}
				}
				if out, _ := exec.Command("debugfs", "-R", "ls /usr/sbin", spec).Output(); strings.Contains(string(out), "policy-rc.d") {
					t.Errorf("policy-rc.d left in the guest: %s", out)
				}
				// grow=True: the 40 MiB file system fills its 47 MiB partition
				out, _ := exec.Command("dumpe2fs", "-h", spec).Output()
				if !strings.Contains(string(out), "Block count:              48128\n") {
					t.Errorf("the root file system was not grown to its partition (48128 1k blocks):\n%s", out)
				}
			}
			if qcow2 {
				if got := sum(t, backing(t, disk)); got != base {
					t.Fatalf("the qcow2 clone's base image was written")
				}
			} else if got := sum(t, disk); got == base {
				t.Fatalf("the raw image did not change")
			}
		})
	}
}

// sum is the SHA-256 of a file.
func sum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// backing is a qcow2 file's backing file.
func backing(t *testing.T, qcow2 string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "--output=json", qcow2).Output()
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.Backing == "" {
		t.Fatalf("qemu-img info %s: no backing file (%v)", qcow2, err)
	}
	return info.Backing
}

// TestOpenRefusesABusyDisk: a process holding the disk open (a QEMU) or a
// loop device on it (a mount) is named, and nothing is mounted.
func TestOpenRefusesABusyDisk(t *testing.T) {
	needRoot(t)
	fx := liveFixture(t)
	disk := testImage(t, fx.Farm, 0, false)
	holder := exec.Command("sleep", "60")
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	holder.ExtraFiles = []*os.File{f}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = fx.Exec("busy.star", fmt.Sprintf(openScript, 0))
	holder.Process.Kill()
	holder.Wait()
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", holder.Process.Pid)) || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("got %v, want a refusal naming pid %d", err, holder.Process.Pid)
	}
	out, err := exec.Command("losetup", "--find", "--show", "--read-only", disk).Output()
	if err != nil {
		t.Skipf("losetup: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", loop).Run()
	_, err = fx.Exec("mounted.star", fmt.Sprintf(openScript, 0))
	if err == nil || !strings.Contains(err.Error(), loop) {
		t.Fatalf("got %v, want a refusal naming %s", err, loop)
	}
	if m := mountsUnder(fx.Farm.InstanceDir(0)); len(m) > 0 {
		t.Fatalf("mounted although refused: %v", m)
	}
}

// TestEndClosesAndLeftoversAreUndone: a run that ends without close()
// leaves nothing mounted (the module's end hook), and what a killed
// pifarm left (mounts, the qcow2 export; its lock died with it) is undone
// by the next open.
func TestEndClosesAndLeftoversAreUndone(t *testing.T) {
	needRoot(t)
	fx := liveFixture(t)
	testImage(t, fx.Farm, 1, true)
	dir := fx.Farm.InstanceDir(1) + "/chroot"
	m := &module{d: fx.Door, f: fx.Farm, open: map[*Root]bool{}}
	mod := &trace.Module{Name: "chroot", Funcs: []trace.Func{{Name: "open", Fn: m.openFn}}, End: m.end}
	t.Cleanup(m.end)
	fx.Add(mod)
	fx.Run("noclose.star", fmt.Sprintf(openScript, 1))
	if len(mountsUnder(dir)) == 0 {
		t.Fatal("nothing mounted while open")
	}
	mod.End()
	if ms := mountsUnder(dir); len(ms) > 0 {
		t.Fatalf("the end hook left mounts: %v", ms)
	}

	// a killed pifarm: open, then drop the lock without closing
	fx.Run("killed.star", fmt.Sprintf(openScript, 1))
	var r *Root
	for x := range m.open {
		r = x
	}
	m.open = map[*Root]bool{}
	r.release()
	if len(mountsUnder(dir)) == 0 {
		t.Fatal("nothing mounted while open")
	}
	fx.Reset()
	fx.Door.Verbose = true
	fx.Run("next.star", fmt.Sprintf(openScript, 1)+`
assert.eq(c.run("echo ok").stdout, "ok\n")
c.close()
`)
	if ms := mountsUnder(dir); len(ms) > 0 {
		t.Fatalf("left mounted: %v", ms)
	}
	if !strings.Contains(fx.Output(), "still mounted by a pifarm that ended without closing it") {
		t.Errorf("the leftovers were not reported:\n%s", fx.Output())
	}
}
