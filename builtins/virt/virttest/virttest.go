// Package virttest gives tests a running system libvirtd: the one already
// running, else one it starts as Debian's service would (root only), so
// tests that place guests on qemu:///system run on a host without a
// service manager, CI's included.
package virttest

import (
	"net"
	"os"
	"os/exec"
	"os/user"
	"testing"
	"time"

	"pifarm/builtins/virt"
)

// Daemon skips t unless a system libvirtd answers on its socket, starting
// one (virtlogd -d; libvirtd -d) when the test runs as root and libvirtd
// is installed (Debian: libvirt-daemon-system, which also makes the user
// libvirt-qemu and the group kvm it needs). A libvirtd it started keeps
// running for the next tests, as a service would.
func Daemon(t testing.TB) {
	t.Helper()
	if answers() {
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("no libvirtd runs, and only root may start one")
	}
	for _, bin := range []string{"libvirtd", "virtlogd"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed (Debian: apt-get install libvirt-daemon-system)", bin)
		}
	}
	if _, err := user.Lookup("libvirt-qemu"); err != nil {
		t.Fatalf("libvirtd is installed, but the user libvirt-qemu is missing: reinstall libvirt-daemon-system")
	}
	for _, d := range []string{"/var/log/libvirt", "/var/run/libvirt", "/var/lib/libvirt"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// virtlogd may run already (it outlives a libvirtd that died).
	if out, err := exec.Command("virtlogd", "-d").CombinedOutput(); err != nil {
		t.Logf("virtlogd -d: %v: %s", err, out)
	}
	if out, err := exec.Command("libvirtd", "-d").CombinedOutput(); err != nil {
		t.Fatalf("libvirtd -d: %v: %s", err, out)
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if answers() {
			return
		}
	}
	t.Fatalf("libvirtd was started but %s does not answer after 20 s", virt.Socket)
}

func answers() bool {
	c, err := net.DialTimeout("unix", virt.Socket, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
