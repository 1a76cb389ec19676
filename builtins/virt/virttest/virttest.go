// Package virttest gives tests a running system libvirtd: the one already
// running, else one it starts as Debian's service would (root only), so
// tests that place guests on qemu:///system run on a host without a
// service manager, CI's included.
package virttest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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
			// a service runs at the default priority, whatever the
			// niceness of the test that started it (nice go test ...)
			if b, err := os.ReadFile("/run/libvirtd.pid"); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					unix.Setpriority(unix.PRIO_PROCESS, pid, 0)
				}
			}
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

// SSHD starts a real OpenSSH server (Debian's openssh-server) on
// 127.0.0.1:port that logs in root by a fresh key, with its own host key,
// authorized_keys and configuration in a temporary folder (nothing of the
// machine's own SSH set-up is touched), and returns the libvirt URI of this
// machine through it (qemu+ssh://root@127.0.0.1:PORT/system) and an Auth
// whose known_hosts holds the server's key and whose ConfDir holds the
// authorised key as pifarm's own. Root only (libvirtd's socket is root's).
func SSHD(t testing.TB, port int) (uri string, a virt.Auth) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the system libvirtd over SSH needs root")
	}
	bin := "/usr/sbin/sshd"
	if _, err := os.Stat(bin); err != nil {
		t.Skip("no /usr/sbin/sshd: apt-get install openssh-server")
	}
	dir := t.TempDir()
	a = virt.Auth{Home: filepath.Join(dir, "home"), ConfDir: filepath.Join(dir, "conf")}
	for _, d := range []string{filepath.Join(a.Home, ".ssh"), a.ConfDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	key := filepath.Join(a.ConfDir, "id_ed25519")
	for _, k := range []string{filepath.Join(dir, "host_ed25519"), key} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pifarm-test", "-f", k).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	hostPub, err := os.ReadFile(filepath.Join(dir, "host_ed25519.pub"))
	if err != nil {
		t.Fatal(err)
	}
	known := fmt.Sprintf("[127.0.0.1]:%d %s", port, hostPub)
	if err := os.WriteFile(filepath.Join(a.Home, ".ssh", "known_hosts"), []byte(known), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %[2]s/host_ed25519
AuthorizedKeysFile %[2]s/authorized_keys
PidFile %[2]s/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowStreamLocalForwarding yes
AllowTcpForwarding yes
LogLevel ERROR
`, port, dir)
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll("/run/sshd", 0o755) // privilege separation folder
	cmd := exec.Command(bin, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd did not answer on %s: %s", addr, stderr.String())
		}
	}
	return fmt.Sprintf("qemu+ssh://root@127.0.0.1:%d/system", port), a
}
