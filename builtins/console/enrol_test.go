package console_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	xssh "golang.org/x/crypto/ssh"
	"pifarm/builtins/console/fakeguest"
	"pifarm/builtins/runtime"
	"pifarm/builtins/trace"
)

// fakeGuest is a guest made of the fake console and the fake SSH server,
// sharing one file system: every command runs with sh in a private mount
// namespace where the guest's own folders are bound over /root and /home,
// with shims for sudo, systemctl and resize2fs on PATH. The SSH server
// starts when the console enables it (systemctl enable --now ssh); key
// log-in reads the guest's authorized_keys files.
type fakeGuest struct {
	t       *testing.T
	root    string // guest folders: root/ (/root), home/ (/home), etc-ssh/ (/etc/ssh), state/, bin/
	con     *fakeguest.Console
	sshAddr string
	hostKey xssh.Signer // its SSH server's, in etc-ssh/ as the .pub a console reads

	mu  sync.Mutex
	ssh *fakeguest.SSHServer
}

const shims = `
-- sudo
#!/bin/sh
[ "$1" = -n ] && shift
exec "$@"
-- systemctl
#!/bin/sh
case "$*" in
"enable --now ssh"|"enable ssh") touch "$FAKEGUEST/ssh-enabled" ;;
"is-enabled ssh") if [ -e "$FAKEGUEST/ssh-enabled" ]; then echo enabled; else echo disabled; exit 1; fi ;;
*) echo "systemctl $*: not in the fake" >&2; exit 1 ;;
esac
-- resize2fs
#!/bin/sh
echo "resize2fs 1.47.0 (5-Feb-2023)" >&2
echo "The filesystem is already 1234567 (4k) blocks long.  Nothing to do!"
echo "$*" >> "$FAKEGUEST/resize2fs"
`

func newFakeGuest(t *testing.T, consoleAddr, sshAddr string, noPi bool, configure ...func(*fakeguest.Console)) *fakeGuest {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the fake guest binds its folders over /root and /home in a private mount namespace: run as root (as CI does)")
	}
	g := &fakeGuest{t: t, root: t.TempDir(), sshAddr: sshAddr}
	for _, d := range []string{"root", "home/pi", "state", "bin", "etc-ssh"} {
		os.MkdirAll(filepath.Join(g.root, d), 0o755)
	}
	g.hostKey = fakeguest.NewHostKey(t, false)
	os.WriteFile(filepath.Join(g.root, "etc-ssh", "ssh_host_ed25519_key.pub"), xssh.MarshalAuthorizedKey(g.hostKey.PublicKey()), 0o644)
	os.Chmod(filepath.Join(g.root, "root"), 0o700)
	for _, part := range strings.Split(shims, "-- ")[1:] {
		name, body, _ := strings.Cut(part, "\n")
		os.WriteFile(filepath.Join(g.root, "bin", name), []byte(body), 0o755)
	}
	g.con = fakeguest.NewConsole(t, consoleAddr, func(c *fakeguest.Console) {
		c.FailDelay = 100 * time.Millisecond
		c.Noise = true
		c.Command = g.command
		c.AfterCommand = func(string) {
			if _, err := os.Stat(filepath.Join(g.root, "state", "ssh-enabled")); err == nil {
				g.startSSH()
			}
		}
		if noPi {
			delete(c.Users, "pi")
		}
		for _, f := range configure {
			f(c)
		}
	})
	return g
}

// command runs line as user in the guest's namespace.
func (g *fakeGuest) command(user, line string) *exec.Cmd {
	home := "/home/" + user
	if user == "root" {
		home = "/root"
	}
	script := fmt.Sprintf("mount --bind %s /root && mount --bind %s /home && mkdir -p /etc/ssh && mount --bind %s /etc/ssh && cd %s && exec sh -c \"$1\"",
		trace.Quote(filepath.Join(g.root, "root")), trace.Quote(filepath.Join(g.root, "home")), trace.Quote(filepath.Join(g.root, "etc-ssh")), home)
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", line)
	cmd.Env = append(os.Environ(), "HOME="+home, "PATH="+filepath.Join(g.root, "bin")+":"+os.Getenv("PATH"),
		"FAKEGUEST="+filepath.Join(g.root, "state"))
	return cmd
}

func (g *fakeGuest) startSSH() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ssh != nil {
		return
	}
	g.ssh = fakeguest.NewSSHServerWith(g.t, g.sshAddr, func(s *fakeguest.SSHServer) {
		s.Command = g.command
		s.AuthorizedKeys = func(user string) []byte {
			p := filepath.Join(g.root, "home", user, ".ssh", "authorized_keys")
			if user == "root" {
				p = filepath.Join(g.root, "root", ".ssh", "authorized_keys")
			}
			b, _ := os.ReadFile(p)
			return b
		}
	}, g.hostKey)
}

func (g *fakeGuest) sshCommands() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ssh == nil {
		return nil
	}
	return g.ssh.Commands()
}

// defaultConfig is what main.go embeds: the repository's config.star.
var defaultConfig = func() []byte {
	b, err := os.ReadFile("../../config.star")
	if err != nil {
		panic(err)
	}
	return b
}()

// pifarmRun runs pifarm in-process with a config of the test's own.
func pifarmRun(t *testing.T, cfg string, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: append([]string{"-c", cfg}, args...), Stdout: &out, Stderr: &out})
	return out.String(), code
}

// Ports: node 20 -> console 21020, ssh 21320; node 21 -> 21021, 21321.
func guestConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.star")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
cache = %q
pi_passwords = ["raspberrypi", "raspberry"]
ports = {"ssh": 21300, "console": 21000, "vnc": 21900}
nodes = [
    node(id = 20, alias = "twenty", lan = "192.168.66.20", wan = "100.65.20.15"),
    node(id = 21, alias = "twentyone", lan = "192.168.66.21", wan = "100.65.21.15"),
]
`, filepath.Join(dir, "cache"))), 0o644)
	t.Setenv("HOME", filepath.Join(dir, "home")) // no user key: pifarm makes its own
	return cfg
}

func TestEnrolRecipeAgainstAFakeGuest(t *testing.T) {
	cfg := guestConfig(t)
	g := newFakeGuest(t, "127.0.0.1:21020", "127.0.0.1:21320", false)
	// pi has a key already, in a file without a final newline and with loose modes.
	os.MkdirAll(filepath.Join(g.root, "home/pi/.ssh"), 0o755)
	os.WriteFile(filepath.Join(g.root, "home/pi/.ssh/authorized_keys"), []byte("ssh-rsa AAAAother other@host"), 0o644)
	out, code := pifarmRun(t, cfg, "run", "guest", "--expand-filesys", "twenty")
	if code != 1 || !strings.Contains(out, "SSH does not answer on port 21320; enable it: pifarm run guest --enrol 20") {
		t.Fatalf("expand-filesys before enrolment: exit %d\n%s", code, out)
	}
	start := time.Now()
	out, code = pifarmRun(t, cfg, "run", "enrol", "twenty")
	t.Logf("enrol took %s:\n%s", time.Since(start), out)
	if code != 0 {
		t.Fatalf("enrol exit %d:\n%s", code, out)
	}
	// the host key was read over the console (kernel noise and all) and
	// recorded before the first SSH log-in, not trusted on first use
	if fp := xssh.FingerprintSHA256(g.hostKey.PublicKey()); !strings.Contains(out, "SSH host keys read over the console and recorded: "+fp+"\n") {
		t.Errorf("enrol did not record the host key %s read over the console:\n%s", fp, out)
	}
	pub, err := os.ReadFile(filepath.Join(filepath.Dir(cfg), "cache", "conf", "id_ed25519.pub"))
	if err != nil {
		t.Fatal(err)
	}
	check := func(dir string) {
		t.Helper()
		ak, err := os.ReadFile(filepath.Join(dir, ".ssh", "authorized_keys"))
		if err != nil || strings.Count(string(ak), strings.TrimSpace(string(pub))) != 1 {
			t.Errorf("%s/.ssh/authorized_keys = %q (%v), want the key once", dir, ak, err)
		}
		if fi, _ := os.Stat(filepath.Join(dir, ".ssh")); fi == nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s/.ssh mode: %v", dir, fi)
		}
		if fi, _ := os.Stat(filepath.Join(dir, ".ssh", "authorized_keys")); fi == nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s/.ssh/authorized_keys mode: %v", dir, fi)
		}
	}
	check(filepath.Join(g.root, "home", "pi"))
	check(filepath.Join(g.root, "root"))
	if b, _ := os.ReadFile(filepath.Join(g.root, "home/pi/.ssh/authorized_keys")); !strings.HasPrefix(string(b), "ssh-rsa AAAAother other@host\nssh-ed25519 ") {
		t.Errorf("pi's other key not kept on its own line: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(g.root, "state", "resize2fs")); string(b) != "/dev/mmcblk0p2\n" {
		t.Errorf("resize2fs ran with %q", b)
	}
	for _, want := range []string{"SSH enabled and started", "key log-in as root works", "enrolled: root key log-in verified after", "Nothing to do!"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out, "raspberry") {
		t.Errorf("a password in the output:\n%s", out)
	}
	// Again: nothing is added twice, and the console left logged out is
	// logged into again.
	out, code = pifarmRun(t, cfg, "run", "guest", "--enrol", "20")
	if code != 0 {
		t.Fatalf("second enrol exit %d:\n%s", code, out)
	}
	check(filepath.Join(g.root, "home", "pi"))
	check(filepath.Join(g.root, "root"))

	out, code = pifarmRun(t, cfg, "run", "status", "20")
	if code != 0 || !strings.Contains(out, "key log-in as root works: ssh -p 21320 root@localhost") ||
		!strings.Contains(out, "console  answers on port 21020") || !strings.Contains(out, "QEMU is not running") {
		t.Fatalf("status exit %d:\n%s", code, out)
	}
}

func TestEnrolWithoutAPiUserPointsToSeeding(t *testing.T) {
	cfg := guestConfig(t)
	g := newFakeGuest(t, "127.0.0.1:21021", "127.0.0.1:21321", true)
	out, code := pifarmRun(t, cfg, "run", "guest", "--ssh-authkeys", "21")
	if code != 1 || !strings.Contains(out, "refused user pi with every password") ||
		!strings.Contains(out, "pifarm run image --seed-ssh --seed-user pi") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if strings.Contains(out, "raspberry") {
		t.Errorf("a password in the output:\n%s", out)
	}
	if len(g.sshCommands()) != 0 {
		t.Fatal("ran commands over SSH")
	}
}

func TestEnrolASeededGuestOverSSH(t *testing.T) {
	cfg := guestConfig(t)
	g := newFakeGuest(t, "127.0.0.1:21022", "127.0.0.1:21322", true) // the console refuses pi
	// SSH runs from the start (a seeded `ssh` file)
	g.startSSH()
	os.WriteFile(cfg, append(mustRead(t, cfg), []byte(`nodes = [node(id = 22, alias = "seeded", lan = "192.168.66.22", wan = "100.65.22.15")]`+"\n")...), 0o644)
	out, code := pifarmRun(t, cfg, "run", "guest", "--expand-filesys", "seeded")
	if code != 1 || !strings.Contains(out, "no key log-in as root: root@127.0.0.1:21322: no key and no password") ||
		!strings.Contains(out, "Authorise your key first: pifarm run guest --ssh-authkeys 22") {
		t.Fatalf("expand-filesys without a key: exit %d\n%s", code, out)
	}
	// A shell left logged in on the console (a killed pifarm, a user's nc)
	// is logged out; nothing else is typed there.
	g.con.SetState(fakeguest.InShell, "pi")
	out, code = pifarmRun(t, cfg, "run", "enrol", "seeded")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if st, _ := g.con.State(); st != fakeguest.AtLogin || !regexp.MustCompile(`the console \(port 21022\) was left logged in \(pi@.*\$\): logged out`).MatchString(out) {
		t.Errorf("console state %d after an enrol over SSH:\n%s", st, out)
	}
	if l := g.con.Lines(); len(l) != 2 || l[0] != "" || l[1] != "exit" {
		t.Errorf("typed on the console although SSH answers: %q", l)
	}
	if _, err := os.Stat(filepath.Join(g.root, "state", "ssh-enabled")); err != nil {
		t.Error("SSH not enabled for the next boots")
	}
	for _, p := range []string{"home/pi/.ssh/authorized_keys", "root/.ssh/authorized_keys"} {
		if b, err := os.ReadFile(filepath.Join(g.root, p)); err != nil || !strings.Contains(string(b), "ssh-ed25519 ") {
			t.Errorf("%s: %q %v", p, b, err)
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
