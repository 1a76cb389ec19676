package ssh

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sshd is a real OpenSSH server (Debian's openssh-server) on loopback with
// its own host key and authorized_keys in a temp folder. It logs in the
// user running the test (root in CI) by key only.
type sshd struct {
	addr, dir, user string
	clientKey       string // private key authorised for the user
}

func startSSHD(t *testing.T, port int) *sshd {
	t.Helper()
	bin := "/usr/sbin/sshd"
	if _, err := os.Stat(bin); err != nil {
		t.Skip("no /usr/sbin/sshd: apt-get install openssh-server")
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &sshd{addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir, user: u.Username, clientKey: filepath.Join(dir, "client")}
	if err := GenerateKey(filepath.Join(dir, "host_ed25519"), "host"); err != nil {
		t.Fatal(err)
	}
	if err := GenerateKey(s.clientKey, "client"); err != nil {
		t.Fatal(err)
	}
	pub, _ := os.ReadFile(s.clientKey + ".pub")
	os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600)
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
LogLevel ERROR
`, port, dir)
	os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o644)
	if os.Geteuid() == 0 {
		os.MkdirAll("/run/sshd", 0o755) // privilege separation folder
	}
	cmd := exec.Command(bin, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	exited := make(chan struct{})
	go func() { cmd.Process.Wait(); close(exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for Banner(s.addr, 200*time.Millisecond) == "" {
		select {
		case <-exited:
			t.Fatalf("sshd exited: %s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd did not answer on %s: %s", s.addr, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

func TestRealSSHD(t *testing.T) {
	s := startSSHD(t, 21200)
	tgt := Target{Host: "127.0.0.1", Port: 21200, KnownHosts: filepath.Join(t.TempDir(), "known_hosts")}
	keys := Keys{Home: t.TempDir(), ConfDir: t.TempDir()}

	if _, err := Dial(live(), tgt, Auth{User: s.user}, keys, 5*time.Second); err == nil || !strings.Contains(err.Error(), "no key and no password") {
		t.Fatalf("no credentials: %v", err)
	}
	other := filepath.Join(t.TempDir(), "other")
	GenerateKey(other, "other")
	if _, err := Dial(live(), tgt, Auth{User: s.user, KeyFile: other}, keys, 5*time.Second); err == nil || !strings.Contains(err.Error(), "authentication failed (tried: key "+other+")") {
		t.Fatalf("unauthorised key: %v", err)
	}
	c, err := Dial(live(), tgt, Auth{User: s.user, KeyFile: s.clientKey}, keys, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := c.Run("id -un; echo to-stderr >&2; exit 5", RunOpts{})
	if err != nil || string(r.Stdout) != s.user+"\n" || string(r.Stderr) != "to-stderr\n" || r.ExitCode != 5 {
		t.Fatalf("run: %q %q %d %v", r.Stdout, r.Stderr, r.ExitCode, err)
	}
	if _, err := c.Run("ls /nonexistent-pifarm", RunOpts{Check: true}); err == nil || !strings.Contains(err.Error(), "No such file") {
		t.Fatalf("failing command: %v", err)
	}
	r, err = c.Run("tty", RunOpts{Pty: true})
	if err != nil || !strings.HasPrefix(string(r.Stdout), "/dev/pts/") {
		t.Fatalf("pty: %q %v", r.Stdout, err)
	}
	remote := filepath.Join(t.TempDir(), "remote")
	if err := c.Put([]byte("k1\n"), remote+".txt", "600", ""); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(remote + ".txt"); string(b) != "k1\n" {
		t.Fatalf("put: %q", b)
	}
	local := t.TempDir()
	os.MkdirAll(filepath.Join(local, "a", "b"), 0o755)
	os.WriteFile(filepath.Join(local, "a", "b", "f"), []byte("data"), 0o640)
	if _, err := c.Upload(local, remote); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(remote, "a", "b", "f"))
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("uploaded file: %v %v", fi, err)
	}
	// A re-keyed server is refused with the reset hint.
	kh, _ := os.ReadFile(tgt.KnownHosts)
	fake := filepath.Join(t.TempDir(), "fake")
	GenerateKey(fake, "fake")
	fpub, _ := os.ReadFile(fake + ".pub")
	os.WriteFile(tgt.KnownHosts, []byte("[127.0.0.1]:21200 "+string(fpub)), 0o644)
	_, err = Dial(live(), tgt, Auth{User: s.user, KeyFile: s.clientKey}, keys, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "host key mismatch") || !strings.Contains(err.Error(), "rm "+tgt.KnownHosts) {
		t.Fatalf("mismatch: %v", err)
	}
	os.WriteFile(tgt.KnownHosts, kh, 0o644)
}
