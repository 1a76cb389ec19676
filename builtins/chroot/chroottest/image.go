// Package chroottest builds, for tests, a small disk image laid out like a
// RaspiOS card whose root file system runs on this host without emulation:
// the host's dash as /bin/sh, busybox for the other commands, ssh-keygen,
// each with the libraries ldd names. Tests of the chroot module and of the
// recipes that provision a disk offline use it.
package chroottest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The image's layout: partition 1 (FAT32) and partition 2 (ext4), in bytes.
const (
	BootOffset = 8192 * 512
	BootBytes  = 81920 * 512
	RootOffset = 90112 * 512
	RootBytes  = 96256 * 512
)

// Image builds the image in a test folder and returns its path. Partition 1
// holds kernel8.img, bcm2710-rpi-3-b-plus.dtb and overlays/old.dtbo;
// partition 2 a 40 MiB ext4 file system (the partition holds 47) with
// /etc/fstab mounting the vfat file system on
// /boot/firmware, /etc/resolv.conf "nameserver 192.0.2.1", /etc/passwd with
// root and pi. It skips the test when a host tool is missing.
func Image(t testing.TB) string {
	t.Helper()
	return ImageWith(t, nil, nil)
}

// ImageWith is Image with more: files (path in the root: content) and the
// host programs progs (each with its libraries, in /usr/bin).
func ImageWith(t testing.TB, more map[string]string, progs []string) string {
	t.Helper()
	work := t.TempDir()
	tree := filepath.Join(work, "tree")
	for _, d := range []string{"proc", "sys", "dev", "run", "boot/firmware", "usr/sbin", "usr/bin", "etc/ssh", "var/cache/apt/archives", "root", "tmp", "home/pi"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}
	os.Chmod(filepath.Join(tree, "tmp"), 0o1777)
	os.Symlink("usr/bin", filepath.Join(tree, "bin"))
	os.Symlink("usr/sbin", filepath.Join(tree, "sbin"))
	files := map[string]string{
		"etc/fstab":       "proc /proc proc defaults 0 0\n/dev/mmcblk0p1 /boot/firmware vfat defaults 0 2\n/dev/mmcblk0p2 / ext4 defaults 0 1\n",
		"etc/resolv.conf": "nameserver 192.0.2.1\n",
		"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\npi:x:1000:1000::/home/pi:/bin/sh\n",
		"etc/group":       "root:x:0:\nsudo:x:27:pi\npi:x:1000:\n",
		"etc/shadow":      "root:*:19000:0:99999:7:::\npi:*:19000:0:99999:7:::\n",
		"etc/hostname":    "raspberrypi\n",
	}
	for name, content := range more {
		files[name] = content
		os.MkdirAll(filepath.Join(tree, filepath.Dir(name)), 0o755)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(tree, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, prog := range append([]string{"dash", "busybox", "ssh-keygen"}, progs...) {
		copyWithLibs(t, tree, prog)
	}
	os.Symlink("dash", filepath.Join(tree, "usr/bin/sh"))
	out, err := exec.Command("busybox", "--list").Output()
	if err != nil {
		t.Skipf("busybox --list: %v", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "sh" || applet == "busybox" || applet == "useradd" || applet == "adduser" {
			continue // the provisioning falls back to editing /etc/passwd itself
		}
		os.Symlink("busybox", filepath.Join(tree, "usr/bin", applet))
	}
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	img := filepath.Join(work, "disk.img")
	boot := filepath.Join(work, "boot.vfat")
	root := filepath.Join(work, "root.ext4")
	run("truncate", "-s", "40M", boot)
	run("mkfs.vfat", "-F", "32", "-s", "1", boot)
	for _, f := range []string{"kernel8.img", "bcm2710-rpi-3-b-plus.dtb"} {
		run("mcopy", "-i", boot, "/etc/hostname", "::"+f)
	}
	run("mmd", "-i", boot, "::overlays")
	run("mcopy", "-i", boot, "/etc/hostname", "::overlays/old.dtbo")
	run("mkfs.ext4", "-q", "-d", tree, root, "40M") // partition 2 holds 47 MiB: room to grow
	run("truncate", "-s", "91M", img)
	sf := exec.Command("sfdisk", "-q", img)
	sf.Stdin = strings.NewReader("label: dos\nstart=8192, size=81920, type=c\nstart=90112, size=96256, type=83\n")
	if out, err := sf.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	run("dd", "if="+boot, "of="+img, "bs=512", "seek=8192", "conv=notrunc,fsync", "status=none")
	run("dd", "if="+root, "of="+img, "bs=512", "seek=90112", "conv=notrunc,fsync", "status=none")
	return img
}

// copyWithLibs copies the host program prog and the libraries ldd names
// into tree (the program to /usr/bin, libraries at their host paths).
func copyWithLibs(t testing.TB, tree, prog string) {
	t.Helper()
	path, err := exec.LookPath(prog)
	if err != nil {
		t.Skipf("%s: %v", prog, err)
	}
	path, _ = filepath.EvalSymlinks(path)
	files := []string{path}
	if out, err := exec.Command("ldd", path).Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			for _, w := range strings.Fields(l) {
				if strings.HasPrefix(w, "/") {
					files = append(files, w)
				}
			}
		}
	}
	for _, f := range files {
		dst := filepath.Join(tree, f)
		if f == path {
			dst = filepath.Join(tree, "usr/bin", filepath.Base(f))
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}
