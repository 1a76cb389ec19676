package guest_test

// The provisioning tests' guest: a busybox chroot behind an in-process
// x/crypto/ssh server, and the rig that runs pifarm against it.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	xssh "golang.org/x/crypto/ssh"
	"pifarm/builtins/farm"
	"pifarm/builtins/runtime"
	"pifarm/builtins/startest"
)

// chrootGuest is the guest's root folder.
type chrootGuest struct {
	t    *testing.T
	root string
}

// copyWithLibs copies a host program and the shared libraries ldd names.
func (g *chrootGuest) copyWithLibs(prog, dest string) {
	g.t.Helper()
	g.copyFile(prog, dest, 0o755)
	out, err := exec.Command("ldd", prog).Output()
	if err != nil {
		return // static
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				g.copyFile(f, f, 0o755)
			}
		}
	}
}

func (g *chrootGuest) copyFile(src, dest string, mode os.FileMode) {
	g.t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		g.t.Fatal(err)
	}
	g.write(dest, string(b), mode)
}

func (g *chrootGuest) write(rel, data string, mode os.FileMode) {
	g.t.Helper()
	p := filepath.Join(g.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		g.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		g.t.Fatal(err)
	}
	os.Chmod(p, mode)
}

func (g *chrootGuest) read(rel string) string {
	b, _ := os.ReadFile(filepath.Join(g.root, rel))
	return string(b)
}

func (g *chrootGuest) mode(rel string) string {
	fi, err := os.Stat(filepath.Join(g.root, rel))
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%04o", fi.Mode().Perm())
}

func newChrootGuest(t *testing.T, root string) *chrootGuest {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the provisioning test runs its guest in a chroot: run it as root (CI does)")
	}
	for _, p := range []string{"busybox", "ssh-keygen", "ldd"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is needed: %v", p, err)
		}
	}
	if root == "" {
		root = t.TempDir()
	}
	g := &chrootGuest{t: t, root: root}
	os.Chmod(g.root, 0o755)
	bb, _ := exec.LookPath("busybox")
	g.copyWithLibs(bb, "/bin/busybox")
	out, _ := exec.Command(bb, "--list").Output()
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			os.Symlink("busybox", filepath.Join(g.root, "bin", a))
		}
	}
	kg, _ := exec.LookPath("ssh-keygen")
	g.copyWithLibs(kg, "/usr/bin/ssh-keygen")
	if bash, err := exec.LookPath("bash"); err == nil {
		g.copyWithLibs(bash, "/bin/bash") // root's login shell under a real sshd
	}
	g.write("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\npi:x:1000:1000:,,,:/home/pi:/bin/sh\n", 0o644)
	g.write("/etc/group", "root:x:0:\nsudo:x:27:pi\npi:x:1000:\n", 0o644)
	g.write("/etc/shadow", "root:*:19500:0:99999:7:::\npi:$6$x$y:19500:0:99999:7:::\n", 0o640)
	g.write("/etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n", 0o644)
	g.write("/etc/rc.local", "#!/bin/sh\n# the stock one\nexit 0\n", 0o755)
	g.write("/boot/kernel8.img", "kernel v1\n", 0o755)
	g.write("/boot/bcm2710-rpi-3-b-plus.dtb", "dtb v1\n", 0o755)
	for _, d := range []string{"tmp", "root", "home/pi", "var/log", "dev"} {
		os.MkdirAll(filepath.Join(g.root, d), 0o755)
	}
	os.Chmod(filepath.Join(g.root, "tmp"), 0o1777)
	// ssh-keygen and mktemp want randomness
	for _, dev := range []string{"null", "urandom"} {
		var st syscall.Stat_t
		if err := syscall.Stat("/dev/"+dev, &st); err == nil {
			syscall.Mknod(filepath.Join(g.root, "dev", dev), syscall.S_IFCHR|0o666, int(st.Rdev))
		}
	}
	return g
}

// sshServer serves SSH on a loopback port; every exec runs in the chroot.
type sshServer struct {
	t     *testing.T
	g     *chrootGuest
	ln    net.Listener
	mu    sync.Mutex
	cmds  []string
	conns int
}

func newSSHServer(t *testing.T, g *chrootGuest, port int) *sshServer {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	hk, err := xssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &xssh.ServerConfig{
		PublicKeyCallback: func(c xssh.ConnMetadata, k xssh.PublicKey) (*xssh.Permissions, error) {
			if c.User() == "root" {
				return nil, nil
			}
			return nil, fmt.Errorf("only root")
		},
	}
	cfg.AddHostKey(hk)
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	s := &sshServer{t: t, g: g, ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go s.handle(nc, cfg)
		}
	}()
	return s
}

func (s *sshServer) commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.cmds...)
}

func (s *sshServer) handle(nc net.Conn, cfg *xssh.ServerConfig) {
	sc, chans, reqs, err := xssh.NewServerConn(nc, cfg)
	if err != nil {
		nc.Close()
		return
	}
	defer sc.Close()
	s.mu.Lock()
	s.conns++
	s.mu.Unlock()
	go xssh.DiscardRequests(reqs)
	for nch := range chans {
		if nch.ChannelType() != "session" {
			nch.Reject(xssh.UnknownChannelType, "session only")
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		go s.session(ch, creqs)
	}
}

func (s *sshServer) session(ch xssh.Channel, reqs <-chan *xssh.Request) {
	defer ch.Close()
	for req := range reqs {
		switch req.Type {
		case "exec":
			if len(req.Payload) < 4 {
				req.Reply(false, nil)
				continue
			}
			n := binary.BigEndian.Uint32(req.Payload)
			cmdline := string(req.Payload[4 : 4+n])
			req.Reply(true, nil)
			s.mu.Lock()
			s.cmds = append(s.cmds, cmdline)
			s.mu.Unlock()
			cmd := exec.Command("/bin/sh", "-c", cmdline)
			cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: s.g.root}
			cmd.Dir = "/"
			cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "USER=root"}
			stdin, _ := cmd.StdinPipe()
			cmd.Stdout, cmd.Stderr = ch, ch.Stderr()
			code := 0
			if err := cmd.Start(); err != nil {
				fmt.Fprintf(ch.Stderr(), "start: %v\n", err)
				code = 127
			} else {
				go func() { io.Copy(stdin, ch); stdin.Close() }()
				if err := cmd.Wait(); err != nil {
					code = 1
					if ee, ok := err.(*exec.ExitError); ok {
						code = ee.ExitCode()
					}
				}
			}
			ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, uint32(code)))
			return
		default:
			req.Reply(req.Type == "pty-req" || req.Type == "env", nil)
		}
	}
}

const provisionRecipe = `load("@pifarm//lib/provision.star", "PROVISION_OPTIONS", "provision")
SUMMARY = "provisioning test"
OPTIONS = PROVISION_OPTIONS
ARGS = [args.instance()]
def main(opts):
    if not provision(opts, opts.instance):
        fail("no option")
`

type rig struct {
	t       *testing.T
	g       *chrootGuest
	srv     *sshServer
	cfg     string
	recipe  string
	farm    *farm.Farm
	userDir string
}

func newRig(t *testing.T, sshBase int) *rig {
	t.Helper()
	dir := t.TempDir()
	r := &rig{t: t, g: newChrootGuest(t, ""), userDir: filepath.Join(dir, "guest-software")}
	r.srv = newSSHServer(t, r.g, sshBase+1)
	r.setup(dir, sshBase)
	return r
}

// newSshdRig is newRig with a real OpenSSH sshd on loopback whose sessions
// run chrooted in the guest's root (ChrootDirectory wants root-owned path
// components nobody else may write, so the root lives under /run).
func newSshdRig(t *testing.T, sshBase int) *rig {
	t.Helper()
	sshd := "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		t.Fatalf("OpenSSH's sshd is needed (apt-get install openssh-server): %v", err)
	}
	dir := t.TempDir()
	root, err := os.MkdirTemp("/run", "pifarm-guest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)
	r := &rig{t: t, g: newChrootGuest(t, root), userDir: filepath.Join(dir, "guest-software")}
	r.setup(dir, sshBase)
	os.MkdirAll("/run/sshd", 0o755)
	hostKey := filepath.Join(dir, "host_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, _ := os.ReadFile(filepath.Join(os.Getenv("HOME"), ".ssh/id_ed25519.pub"))
	ak := filepath.Join(dir, "authorized_keys")
	os.WriteFile(ak, pub, 0o600)
	cfg := filepath.Join(dir, "sshd_config")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile none
AuthorizedKeysFile %s
PermitRootLogin yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
ChrootDirectory %s
`, sshBase+1, hostKey, ak, root)), 0o644)
	// sshd's per-connection children outlive it while pifarm's connection is
	// open: its log goes to a file, not a pipe Wait would wait for
	logPath := filepath.Join(dir, "sshd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	log := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", log())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", sshBase+1))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd did not listen within 10 s:\n%s", log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

func (r *rig) setup(dir string, sshBase int) {
	t := r.t
	home := filepath.Join(dir, "home")
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tester@host", "-f", filepath.Join(home, ".ssh/id_ed25519")).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	os.MkdirAll(r.userDir, 0o755)
	t.Setenv("HOME", home)
	t.Setenv("PIFARM_CONFIG", "")
	t.Setenv("PIFARM_CACHE", "")
	t.Setenv("PIFARM_GUEST_SOFTWARE", "")
	cfg := fmt.Sprintf(`cache = %q
guest_software = %q
ports = {"ssh": %d, "console": %d, "vnc": %d}
nodes = [
    node(id = 0, alias = "loner", lan = "192.168.66.63", wan = "100.65.63.15", wifi_channel = 1, ssid = "loner"),
    node(id = 1, alias = "enone", lan = "192.168.66.7", wan = "100.65.4.15", wifi_channel = 6, ssid = "enone"),
]
`, filepath.Join(dir, "cache"), r.userDir, sshBase, sshBase+100, sshBase+200)
	r.cfg = filepath.Join(dir, "config.star")
	os.WriteFile(r.cfg, []byte(cfg), 0o644)
	r.recipe = filepath.Join(dir, "prov.star")
	os.WriteFile(r.recipe, []byte(provisionRecipe), 0o644)
	c, err := farm.Load(r.cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.farm = farm.New(c)
}

func (r *rig) pifarm(args ...string) (string, string, int) {
	r.t.Helper()
	var out, errb bytes.Buffer
	code := runtime.Main(runtime.Options{Args: append([]string{"-c", r.cfg, "run", r.recipe}, args...), Stdout: &out, Stderr: &errb, DefaultConfig: startest.DefaultConfig(r.t)})
	return out.String(), errb.String(), code
}

func (r *rig) mustRun(args ...string) string {
	r.t.Helper()
	out, errs, code := r.pifarm(args...)
	if code != 0 {
		r.t.Fatalf("pifarm %v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out, errs)
	}
	return out
}

func mtimes(t *testing.T, root string) map[string]time.Time {
	m := map[string]time.Time{}
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			m[p] = fi.ModTime()
		}
		return nil
	})
	return m
}
