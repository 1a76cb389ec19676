package image_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"

	"pifarm/builtins/chroot/chroottest"
	"pifarm/builtins/disk/disktest"
	"pifarm/builtins/image"
	"pifarm/builtins/runtime"
)

// identityOf reads the identity of a disk.
func identityOf(t *testing.T, disk string) *image.Identity {
	t.Helper()
	d, err := image.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	id, err := image.ReadIdentity(d)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// pifarmIn runs pifarm with the configuration cfg and returns its output
// and exit status.
func pifarmIn(cfg string, args ...string) (string, int) {
	var out bytes.Buffer
	code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: append([]string{"-c", cfg}, args...), Stdout: &out, Stderr: &out})
	return out.String(), code
}

// runningQEMU makes instance id of the cache run as far as pifarm can
// tell: a QEMU with the instance's pidfile, paused before its first
// instruction (-S), with no disk and nothing to boot; it is stopped with
// the test.
func runningQEMU(t *testing.T, cache string, id int) {
	t.Helper()
	disktest.QEMU(t, filepath.Join(cache, "clones", fmt.Sprintf("raspi-clone-%d", id), "qemu.pid"), "-M", "virt", "-m", "64M")
}

// TestRecipeCloneIdentity: a new clone gets the node's hostname, an empty
// machine-id and host keys pifarm made and recorded in its known_hosts
// (the keys on its disk, nothing to trust on first use); the table shows
// each disk's identity and which share one; a start whose disk has the
// identity of a running node is refused until --new-identity; without
// root and sudo the clone keeps instance 0's identity, as said.
func TestRecipeCloneIdentity(t *testing.T) {
	dir := t.TempDir()
	img := chroottest.Image(t)
	cfg := recipeConfig(t, dir, "")
	cache := filepath.Join(dir, "cache")
	disk := func(id int) string {
		return filepath.Join(cache, "clones", fmt.Sprintf("raspi-clone-%d", id), fmt.Sprintf("clone-%d.qcow2", id))
	}
	known := func(id int) string {
		b, _ := os.ReadFile(filepath.Join(cache, "clones", fmt.Sprintf("raspi-clone-%d", id), "known_hosts"))
		return string(b)
	}
	step := func(want string, code int, args ...string) string {
		t.Helper()
		out, c := pifarmIn(cfg, args...)
		if c != code || !strings.Contains(out, want) {
			t.Fatalf("pifarm %s: exit %d (want %d), output lacks %q:\n%s", strings.Join(args, " "), c, code, want, out)
		}
		return out
	}
	step("instance 0 is", 0, "run", "image", "-i", img, "--provide-qboot")
	// machine-ids as an image has them, a file and dbus's copy
	for _, c := range []string{"write /etc/hostname /etc/machine-id", "mkdir /var", "mkdir /var/lib", "mkdir /var/lib/dbus", "write /etc/hostname /var/lib/dbus/machine-id"} {
		cmd := exec.Command("debugfs", "-w", "-R", c, fmt.Sprintf("%s?offset=%d", img, chroottest.RootOffset))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("debugfs %s: %v %s", c, err, out)
		}
	}
	step("<1> enone: an identity of its own: hostname enone, an empty machine-id (made at its first boot), new host keys (SHA256:", 0, "run", "box", "--force-clone", "1")
	id1 := identityOf(t, disk(1))
	if id1.Hostname != "enone" || id1.MachineID != "" || len(id1.Fingerprints) != 3 || id1.Arch != map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[goruntime.GOARCH] {
		t.Fatalf("clone 1: %+v", id1)
	}
	for _, k := range id1.Keys {
		if f := strings.Fields(k); !strings.Contains(known(1), f[0]+" "+f[1]) {
			t.Fatalf("clone 1's key %s is not in its known_hosts:\n%s", k, known(1))
		}
	}
	if id0 := identityOf(t, img); id0.Hostname != "raspberrypi" || id0.MachineID == "" {
		t.Fatalf("instance 0 changed: %+v", id0)
	}
	step("<2> entwo: an identity of its own: hostname entwo", 0, "run", "box", "--force-clone", "--linked", "2")
	if id2 := identityOf(t, disk(2)); id2.Same(id1) != "" {
		t.Fatalf("clones 1 and 2 share %s", id2.Same(id1))
	}
	out := step("hostname", 0, "run", "box")
	for _, want := range []string{"enone        (empty)     " + id1.Fingerprints[0][:19] + "  -", "entwo        (empty)"} {
		if !strings.Contains(out, want) {
			t.Errorf("the table lacks %q:\n%s", want, out)
		}
	}

	// clone 2 with clone 1's disk: the same identity
	b, _ := os.ReadFile(disk(1))
	os.WriteFile(disk(2), b, 0o600)
	os.Remove(strings.TrimSuffix(disk(2), ".qcow2") + ".base")
	out = step("enone", 0, "run", "box")
	if !strings.Contains(out, "  2\n") && !strings.Contains(out, "  2  ") {
		t.Errorf("the table does not show clone 1 sharing with 2:\n%s", out)
	}
	// status reads the stopped nodes' identities from their disks
	out = step("same as", 0, "run", "status", "1,2")
	if ls := strings.Split(strings.TrimSpace(out), "\n"); len(ls) != 3 || !strings.HasSuffix(ls[1], "enone     (empty)     "+id1.Fingerprints[0][:19]+"  2") ||
		!strings.HasSuffix(ls[2], "enone     (empty)     "+id1.Fingerprints[0][:19]+"  1") {
		t.Errorf("status of two nodes with one disk:\n%s", out)
	}
	step("\n  identity hostname enone, machine-id (empty: made at the next boot), host key "+id1.Fingerprints[0]+" (read from its disk)\n"+
		"           WARNING: <1> enone's disk has the same hostname enone, host key "+id1.Fingerprints[0], 0, "run", "status", "2")
	runningQEMU(t, cache, 1)
	// dry runs: nothing starts, the checks are the same
	step("its disk has the identity of the running <1> enone (hostname enone, host key SHA256:", 1, "-n", "run", "box", "--run-ignore-qboot", "2")
	step("new identity of <1> enone: instance <1> enone is running", 1, "run", "box", "--new-identity", "1")
	step("<2> entwo: an identity of its own: hostname entwo", 0, "run", "box", "--new-identity", "2")
	step("qemu-system-aarch64", 0, "-n", "run", "box", "--run-ignore-qboot", "2")

	// neither root nor sudo: said, and the clone keeps instance 0's
	fake := t.TempDir()
	os.WriteFile(filepath.Join(fake, "id"), []byte("#!/bin/sh\necho 1000\n"), 0o755)
	os.WriteFile(filepath.Join(fake, "sudo"), []byte("#!/bin/sh\nexit 1\n"), 0o755)
	t.Setenv("PATH", fake+":"+os.Getenv("PATH"))
	step("<2> entwo: pifarm runs neither as root nor with sudo without a password, so the disk cannot be opened to give it an identity of its own: it keeps instance 0's hostname, machine-id and host keys", 0, "run", "box", "--force-clone", "2")
	if id2 := identityOf(t, disk(2)); id2.Hostname != "raspberrypi" {
		t.Fatalf("clone 2 without root: %+v", id2)
	}
	step("pifarm runs neither as root nor with sudo without a password, so pifarm cannot open its disk", 1, "run", "box", "--new-identity", "2")
}

// TestRecipePromoteIdentity: a promoted clone's image becomes instance 0
// with an identity of instance 0's own, not the clone's twice.
func TestRecipePromoteIdentity(t *testing.T) {
	dir := t.TempDir()
	img := chroottest.Image(t)
	cfg := recipeConfig(t, dir, "")
	for _, st := range []struct{ want, args string }{
		{"instance 0 is", "run image -i " + img + " --provide-qboot"},
		{"hostname enone", "run box --force-clone 1"},
		{"<0> loner: an identity of its own: hostname loner", "run image --promote 1"},
	} {
		if out, code := pifarmIn(cfg, strings.Fields(st.args)...); code != 0 || !strings.Contains(out, st.want) {
			t.Fatalf("pifarm %s: exit %d, output lacks %q:\n%s", st.args, code, st.want, out)
		}
	}
	id0, id1 := identityOf(t, img), identityOf(t, filepath.Join(dir, "cache/clones/raspi-clone-1/clone-1.qcow2"))
	if id0.Hostname != "loner" || len(id0.Fingerprints) != 3 || id0.Same(id1) != "" {
		t.Fatalf("instance 0 %+v shares %q with clone 1", id0, id0.Same(id1))
	}
	b, _ := os.ReadFile(filepath.Join(dir, "cache/clones/raspi-clone-0/known_hosts"))
	if f := strings.Fields(id0.Keys[0]); !strings.Contains(string(b), f[0]+" "+f[1]) {
		t.Fatalf("instance 0's known_hosts lacks its key:\n%s", b)
	}
}
