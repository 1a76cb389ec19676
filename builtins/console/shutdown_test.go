package console_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	xssh "golang.org/x/crypto/ssh"
	"pifarm/builtins/console/fakeguest"
	"pifarm/builtins/farm"
)

// startQEMU starts a real QEMU (no guest: machine none, paused) as
// instance id's, with the instance's pidfile and QMP socket, so that
// qemu.status finds it running and QMP quit stops it. The guest's console
// and SSH are the fakes on the instance's ports. It returns the QEMU's pid;
// the test's end kills it if it still runs.
func startQEMU(t *testing.T, f *farm.Farm, id int) int {
	t.Helper()
	bin := f.Config.QEMU.Binary
	if _, err := exec.LookPath(bin); err != nil {
		t.Fatalf("%s is needed (apt-get install qemu-system-arm): %v", bin, err)
	}
	os.MkdirAll(filepath.Dir(f.Pidfile(id)), 0o700)
	out, err := exec.Command(bin, "-M", "none", "-nodefaults", "-display", "none", "-S",
		"-qmp", "unix:"+f.QMP(id)+",server=on,wait=off", "-pidfile", f.Pidfile(id), "-daemonize").CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", bin, err, out)
	}
	b, _ := os.ReadFile(f.Pidfile(id))
	var pid int
	fmt.Sscan(string(b), &pid)
	if pid <= 0 {
		t.Fatalf("pidfile %q", b)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// A guest whose SSH host key changed: shutdown refuses SSH (it may not be
// our guest) and falls back to the console with a warning naming the
// mismatch, so QEMU does not stay running. Without a way in on the console
// either, it says which command stops QEMU.
func TestShutdownWithAChangedHostKey(t *testing.T) {
	for i, tc := range []struct {
		name     string
		noPi     bool
		noSudo   bool // pi needs a password for sudo
		code     int
		says     []string
		qemuGone bool
	}{
		{"console fallback", false, false, 0, []string{
			"WARNING: no key log-in as root over SSH (host key mismatch for 127.0.0.1:2132",
			"shutting down through the serial console instead",
			"stopped (reboot: Power down), QEMU gone"}, true},
		{"no sudo for pi", false, true, 1, []string{
			"host key mismatch", "pi may not run sudo without a password on the console",
			"sudo: a password is required",
			"QEMU still runs; to stop it without a clean shutdown of the guest: pifarm run box --terminate 2"}, false},
		{"no way in", true, false, 1, []string{
			"host key mismatch", "refused user pi with every password",
			"QEMU still runs; to stop it without a clean shutdown of the guest: pifarm run box --terminate 2"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := 26 + i
			cfg := guestConfig(t)
			os.WriteFile(cfg, append(mustRead(t, cfg), []byte(fmt.Sprintf(`nodes = [node(id = %d, alias = "rekeyed", lan = "192.168.66.%d", wan = "100.65.%d.15")]`+"\n", id, id, id))...), 0o644)
			c, err := farm.Load(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			f := farm.New(c)
			g := newFakeGuest(t, fmt.Sprintf("127.0.0.1:%d", 21000+id), fmt.Sprintf("127.0.0.1:%d", 21300+id), tc.noPi,
				func(c *fakeguest.Console) { c.NoWatchdog = true })
			g.startSSH()
			if tc.noSudo {
				os.WriteFile(filepath.Join(g.root, "bin", "sudo"), []byte("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n"), 0o755)
			}
			// pifarm trusts a root key (its own) and recorded another host key
			pub := filepath.Join(filepath.Dir(cfg), "home", ".ssh", "id_ed25519")
			os.MkdirAll(filepath.Dir(pub), 0o700)
			if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", pub).CombinedOutput(); err != nil {
				t.Fatalf("ssh-keygen: %v\n%s", err, out)
			}
			os.MkdirAll(filepath.Join(g.root, "root", ".ssh"), 0o700)
			os.WriteFile(filepath.Join(g.root, "root", ".ssh", "authorized_keys"), mustRead(t, pub+".pub"), 0o600)
			other := fakeguest.NewHostKey(t, false)
			known := fmt.Sprintf("[127.0.0.1]:%d %s", 21300+id, xssh.MarshalAuthorizedKey(other.PublicKey()))
			os.MkdirAll(filepath.Dir(f.KnownHosts(id)), 0o700)
			os.WriteFile(f.KnownHosts(id), []byte(known), 0o600)
			pid := startQEMU(t, f, id)

			out, code := pifarmRun(t, cfg, "run", "shutdown", fmt.Sprint(id))
			t.Logf("exit %d:\n%s", code, out)
			if code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			for _, want := range tc.says {
				want = strings.ReplaceAll(want, "--terminate 2", fmt.Sprintf("--terminate %d", id))
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q", want)
				}
			}
			if tc.qemuGone {
				waitFor(t, 5*time.Second, "QEMU to exit", func() bool { return !alive(pid) })
			} else if !alive(pid) {
				t.Error("QEMU stopped without a clean shutdown of the guest")
			}
			if cmds := g.sshCommands(); len(cmds) != 0 {
				t.Errorf("commands sent over SSH despite the changed host key: %q", cmds)
			}
			if b := mustRead(t, f.KnownHosts(id)); string(b) != known {
				t.Errorf("known_hosts changed: %q", b)
			}
			if st, _ := g.con.State(); st == fakeguest.InShell {
				t.Error("the console was left logged in")
			}
		})
	}
}
