package runtime

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"pifarm/builtins/chroot/chroottest"
)

// TestGuestOffline provisions a stopped clone from the host, for real:
// `guest --base-system --useradd --offline 2` makes the clone, opens its
// qcow2 disk on the host and runs the base system's installer and the user's
// creation in its root; the second run finds everything in place (the
// changes were kept on the disk) and nothing is left mounted; instance 0
// with a linked clone on it, --offline alone and --offline with enrolment
// are refused.
func TestGuestOffline(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test mounts loop devices")
		}
		t.Skip("mounting loop devices needs root")
	}
	goldenEnv(t)
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	cfg := filepath.Join(dir, "config.star")
	os.WriteFile(cfg, []byte(fmt.Sprintf("cache = %q\n", cache)), 0o644)
	img := chroottest.Image(t)
	run := func(args ...string) string {
		t.Helper()
		o, e, code := pifarm(t, append([]string{"-c", cfg, "run"}, args...)...)
		if code != ExitOK {
			t.Fatalf("pifarm run %s: exit %d\n%s%s", strings.Join(args, " "), code, o, e)
		}
		return o
	}
	t.Cleanup(func() {
		b, _ := os.ReadFile("/proc/self/mountinfo")
		if strings.Contains(string(b), cache) {
			t.Errorf("left mounted under %s:\n%s", cache, b)
		}
	})
	run("image", "--disk-image="+img, "--provide-qboot")
	out := run("guest", "--base-system", "--useradd=bob", "--sudo-user-ok", "--offline", "2")
	for _, want := range []string{
		"<2> entwo: offline: creating its clone of instance 0",
		"<2> entwo:   installed /etc/hosts",
		"<2> entwo: created user bob (no password: key log-in only)",
		"<2> entwo: installed /etc/sudoers.d/bob",
		"<2> entwo: offline: the disk is closed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("first run lacks %q:\n%s", want, out)
		}
	}
	out = run("guest", "--base-system", "--useradd=bob", "--sudo-user-ok", "--offline", "2")
	for _, want := range []string{"base system: up to date", "user bob: up to date"} {
		if !strings.Contains(out, want) {
			t.Errorf("second run lacks %q (the first run's changes are not on the disk?):\n%s", want, out)
		}
	}
	if strings.Contains(out, "creating its clone") {
		t.Errorf("the second run made the clone again:\n%s", out)
	}

	// instance 0 with a linked clone on it is refused
	o, e, code := pifarm(t, "-c", cfg, "run", "box", "--force-clone", "-l", "3")
	if code != ExitOK {
		t.Fatalf("linked clone: %d %s%s", code, o, e)
	}
	o, e, code = pifarm(t, "-c", cfg, "run", "guest", "--base-system", "--offline", "0")
	if code != ExitFailed || !strings.Contains(e, "linked clones 3 are built on instance 0's image") {
		t.Errorf("offline on instance 0 with a linked clone: exit %d\n%s%s", code, o, e)
	}
	o, e, code = pifarm(t, "-c", cfg, "run", "guest", "--offline", "2")
	if code != ExitFailed || !strings.Contains(e, "--offline needs a provisioning option") {
		t.Errorf("--offline alone: exit %d\n%s%s", code, o, e)
	}
	o, e, code = pifarm(t, "-c", cfg, "run", "guest", "--enrol", "--base-system", "--offline", "2")
	if code != ExitFailed || !strings.Contains(e, "enrolment and shutdown need the running guest") {
		t.Errorf("--offline with --enrol: exit %d\n%s%s", code, o, e)
	}
}

// TestDiskKeysFollowTheDisk: registering an image records the host keys
// its root file system holds (read from the disk, not trusted on first
// use), a fresh clone gets keys of its own, and a fresh image at the same path
// (no keys: its first boot makes new ones) makes pifarm forget the keys
// recorded before.
func TestDiskKeysFollowTheDisk(t *testing.T) {
	goldenEnv(t)
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	cfg := filepath.Join(dir, "config.star")
	os.WriteFile(cfg, []byte(fmt.Sprintf("cache = %q\n", cache)), 0o644)
	withKeys := chroottest.Image(t)
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl root@raspberrypi"
	pub := filepath.Join(dir, "ssh_host_ed25519_key.pub")
	os.WriteFile(pub, []byte(key+"\n"), 0o644)
	spec := fmt.Sprintf("%s?offset=%d", withKeys, chroottest.RootOffset)
	if out, err := exec.Command("debugfs", "-w", "-R", "write "+pub+" /etc/ssh/ssh_host_ed25519_key.pub", spec).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v %s", err, out)
	}
	fresh := chroottest.Image(t)
	known := func(id int) string {
		b, _ := os.ReadFile(filepath.Join(cache, "clones", fmt.Sprintf("raspi-clone-%d", id), "known_hosts"))
		return string(b)
	}
	for _, args := range [][]string{
		{"image", "--disk-image=" + withKeys, "--provide-qboot"},
		{"box", "--force-clone", "4"},
	} {
		if o, e, code := pifarm(t, append([]string{"-c", cfg, "run"}, args...)...); code != ExitOK {
			t.Fatalf("%v: exit %d %s%s", args, code, o, e)
		}
	}
	if k := known(0); k != "[127.0.0.1]:5700 "+strings.TrimSuffix(key, " root@raspberrypi")+"\n" {
		t.Fatalf("instance 0's known_hosts after registering an image with keys: %q", k)
	}
	if k := known(4); !strings.HasPrefix(k, "[127.0.0.1]:5704 ssh-ed25519 AAAAC3") {
		t.Fatalf("clone 4's known_hosts: %q", k)
	}
	// a fresh image downloaded to the same path: register finds it
	// registered already, and only its disk tells that the keys changed
	b, err := os.ReadFile(fresh)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(withKeys, b, 0o644); err != nil {
		t.Fatal(err)
	}
	o, e, code := pifarm(t, "-c", cfg, "-v", "run", "image", "--disk-image="+withKeys)
	if code != ExitOK || !strings.Contains(o+e, "forget the host keys recorded for 127.0.0.1:5700 (its disk is new and holds no host keys yet") {
		t.Fatalf("register a fresh image: exit %d\n%s%s", code, o, e)
	}
	if k := known(0); k != "" {
		t.Fatalf("instance 0's known_hosts after a fresh image: %q", k)
	}
}
