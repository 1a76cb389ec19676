package runtime

import (
	"fmt"
	"os"
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
