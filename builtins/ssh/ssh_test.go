package ssh

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	xssh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"pifarm/builtins/console/fakeguest"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// Ports: the in-process server tests use 21100-21199 (ssh base 21100 + node
// id), the real sshd tests 21200-21209.
const sshBase = 21100

func addr(id int) string { return fmt.Sprintf("127.0.0.1:%d", sshBase+id) }

func testFarm(t *testing.T) *farm.Farm { return testFarmB(t) }

func testFarmB(t testing.TB) *farm.Farm {
	t.Helper()
	src := fmt.Sprintf(`
cache = %q
ports = {"ssh": %d, "console": 21000, "vnc": 21900}
nodes = [node(id = i, alias = "n%%d" %% i, lan = "192.168.66.%%d" %% (10 + i), wan = "100.65.%%d.15" %% i) for i in range(1, 40)]
`, filepath.Join(t.TempDir(), "cache"), sshBase)
	c, err := farm.Load("test-config.star", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return farm.New(c)
}

func target(f *farm.Farm, id int) Target {
	return Target{Host: "127.0.0.1", Port: sshBase + id, KnownHosts: f.KnownHosts(id)}
}

// noKeys is a key set with no keys at all (an empty home).
func noKeys(t *testing.T) Keys {
	return Keys{Home: t.TempDir(), ConfDir: t.TempDir()}
}

func live() *trace.Door { return trace.New(context.Background(), false, false, nil) }

// serve accepts connections on addr until the test ends, handing each to
// handle and closing it when handle returns or the test ends.
func serve(t *testing.T, addr string, handle func(c net.Conn)) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() { handle(c); c.Close() }()
		}
	}()
}

func TestRunWithPasswordAndTrustOnFirstUse(t *testing.T) {
	f := testFarm(t)
	fakeguest.NewSSHServer(t, addr(1))
	c, err := Dial(live(), target(f, 1), Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kh, err := os.ReadFile(f.KnownHosts(1))
	if err != nil || !strings.HasPrefix(string(kh), "[127.0.0.1]:21101 ssh-ed25519 ") {
		t.Fatalf("known_hosts %q %v", kh, err)
	}
	for _, tc := range []struct {
		name           string
		cmd            string
		o              RunOpts
		stdout, stderr string
		code           int
		errHas         string
	}{
		{"plain", "echo out; echo err >&2", RunOpts{Check: true}, "out\n", "err\n", 0, ""},
		{"exit code", "echo out; echo oops >&2; exit 3", RunOpts{}, "out\n", "oops\n", 3, ""},
		{"check quotes stderr", "echo out; echo bad thing >&2; exit 3", RunOpts{Check: true}, "out\n", "bad thing\n", 3, "exit status 3:\nbad thing"},
		{"stdin text", "tr a-z A-Z", RunOpts{Stdin: []byte("hello\n"), Check: true}, "HELLO\n", "", 0, ""},
		{"stdin binary", "wc -c", RunOpts{Stdin: []byte{0, 1, 2, 3}, Check: true}, "4\n", "", 0, ""},
		{"pty", "echo tty", RunOpts{Pty: true, Check: true}, "tty\n", "", 0, ""},
		{"timeout quotes output", "echo begun; sleep 10", RunOpts{Timeout: 300 * time.Millisecond, Check: true}, "begun\n", "", -1, "timeout after 300ms; last output:\nbegun"},
	} {
		r, err := c.Run(tc.cmd, tc.o)
		if tc.errHas != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("%s: error %v, want %q", tc.name, err, tc.errHas)
			}
		} else if err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if string(r.Stdout) != tc.stdout || string(r.Stderr) != tc.stderr || r.ExitCode != tc.code {
			t.Errorf("%s: got %q %q %d, want %q %q %d", tc.name, r.Stdout, r.Stderr, r.ExitCode, tc.stdout, tc.stderr, tc.code)
		}
	}
	// The second connection finds the recorded key and is pinned to it.
	c2, err := Dial(live(), target(f, 1), Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	if kh2, _ := os.ReadFile(f.KnownHosts(1)); !bytes.Equal(kh, kh2) {
		t.Fatalf("known_hosts changed: %q", kh2)
	}
}

func TestWrongPasswordFails(t *testing.T) {
	f := testFarm(t)
	fakeguest.NewSSHServer(t, addr(2))
	start := time.Now()
	_, err := Dial(live(), target(f, 2), Auth{User: "pi", Passwords: []string{"wrong"}}, noKeys(t), 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "authentication failed") || !strings.Contains(err.Error(), "pi@127.0.0.1:21102") {
		t.Fatalf("error: %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("an authentication failure was retried: %s", time.Since(start))
	}
}

func TestUnreachablePortGivesUpAtTheDeadline(t *testing.T) {
	f := testFarm(t)
	start := time.Now()
	_, err := Dial(live(), target(f, 3), Auth{User: "root", Passwords: []string{"x"}}, noKeys(t), 500*time.Millisecond)
	el := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "gave up after 500ms") {
		t.Fatalf("error: %v", err)
	}
	if el < 300*time.Millisecond || el > 2*time.Second {
		t.Fatalf("gave up after %s", el)
	}
}

func TestServerStartingLateIsWaitedFor(t *testing.T) {
	f := testFarm(t)
	go func() {
		time.Sleep(300 * time.Millisecond)
		fakeguest.NewSSHServer(t, addr(4))
	}()
	c, err := Dial(live(), target(f, 4), Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestSilentServerHitsTheHandshakeDeadline(t *testing.T) {
	f := testFarm(t)
	serve(t, addr(5), func(c net.Conn) { io.Copy(io.Discard, c) }) // accept, say nothing
	start := time.Now()
	_, err := Dial(live(), target(f, 5), Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 400*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "handshake timed out") || time.Since(start) > 2*time.Second {
		t.Fatalf("error after %s: %v", time.Since(start), err)
	}
}

func TestHostKeyMismatchSaysHowToReset(t *testing.T) {
	f := testFarm(t)
	srv := fakeguest.NewSSHServer(t, addr(6))
	c, err := Dial(live(), target(f, 6), Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	srv.Listener.Close()
	fakeguest.NewSSHServer(t, addr(6)) // re-imaged guest: new host key
	_, err = Dial(live(), target(f, 6), Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 5*time.Second)
	var mm *HostKeyMismatch
	if !errors.As(err, &mm) {
		t.Fatalf("error: %v", err)
	}
	for _, want := range []string{"host key mismatch for 127.0.0.1:21106", "rm " + f.KnownHosts(6), f.KnownHosts(6) + ":1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestHostKeyAlgorithmIsPinned(t *testing.T) {
	f := testFarm(t)
	rsaKey, edKey := fakeguest.NewHostKey(t, true), fakeguest.NewHostKey(t, false)
	for i, known := range []xssh.Signer{rsaKey, edKey} {
		id := 7 + i
		fakeguest.NewSSHServer(t, addr(id), rsaKey, edKey)
		os.MkdirAll(filepath.Dir(f.KnownHosts(id)), 0o755)
		line := fmt.Sprintf("[127.0.0.1]:%d %s", sshBase+id, xssh.MarshalAuthorizedKey(known.PublicKey()))
		os.WriteFile(f.KnownHosts(id), []byte(line), 0o644)
		c, err := Dial(live(), target(f, id), Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 5*time.Second)
		if err != nil {
			t.Fatalf("known %s: %v", known.PublicKey().Type(), err)
		}
		c.Close()
	}
}

func TestKeys(t *testing.T) {
	home, conf := t.TempDir(), t.TempDir()
	k := Keys{Home: home, ConfDir: conf}
	d := live()
	// No user key: pifarm's own key is created once, in OpenSSH format.
	pub, err := k.Ensure(d)
	if err != nil || pub != filepath.Join(conf, "id_ed25519.pub") {
		t.Fatalf("ensure: %s %v", pub, err)
	}
	first, _ := os.ReadFile(pub)
	if _, err := k.Ensure(d); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(pub); !bytes.Equal(first, again) {
		t.Fatal("pifarm key created twice")
	}
	priv, _ := os.ReadFile(filepath.Join(conf, "id_ed25519"))
	if !bytes.HasPrefix(priv, []byte("-----BEGIN OPENSSH PRIVATE KEY-----")) {
		t.Fatalf("private key format: %.40q", priv)
	}
	if fi, _ := os.Stat(filepath.Join(conf, "id_ed25519")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode %v", fi.Mode())
	}
	// A .pub without its private key does not count; the first with one does.
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh", "id_dsa.pub"), first, 0o644)
	if err := GenerateKey(filepath.Join(home, ".ssh", "id_rsa"), "user"); err != nil {
		t.Fatal(err)
	}
	if p, own := k.Key(); own || p != filepath.Join(home, ".ssh", "id_rsa") {
		t.Fatalf("user key: %s %v", p, own)
	}
	// A key with a passphrase counts only when an agent may hold it.
	pass := filepath.Join(home, ".ssh", "id_ecdsa")
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := xssh.MarshalPrivateKeyWithPassphrase(edPriv, "pass", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(pass, pem.EncodeToMemory(block), 0o600)
	os.WriteFile(pass+".pub", first, 0o644)
	t.Setenv("SSH_AUTH_SOCK", "")
	if p, _ := k.Key(); p != filepath.Join(home, ".ssh", "id_rsa") {
		t.Fatalf("passphrase key without agent: %s", p)
	}
	t.Setenv("SSH_AUTH_SOCK", "/nonexistent/agent.sock")
	if p, _ := k.Key(); p != pass {
		t.Fatalf("passphrase key with agent: %s", p)
	}
	// Dry, creating a key is only printed.
	var out bytes.Buffer
	dry := trace.New(context.Background(), true, false, &out)
	k2 := Keys{Home: t.TempDir(), ConfDir: filepath.Join(t.TempDir(), "conf")}
	if _, err := k2.Ensure(dry); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(k2.ConfDir); err == nil {
		t.Fatal("dry run created the key folder")
	}
	if want := "mkdir -p -m 700 " + k2.ConfDir + " && ssh-keygen -q -t ed25519 -N '' -C pifarm -f " + k2.PifarmKey() + "\n"; out.String() != want {
		t.Fatalf("dry trace %q, want %q", out.String(), want)
	}
}

func TestKeyLoginPutAndUpload(t *testing.T) {
	f := testFarm(t)
	srv := fakeguest.NewSSHServer(t, addr(10))
	k := Keys{Home: t.TempDir(), ConfDir: t.TempDir()}
	pub, err := k.Ensure(live())
	if err != nil {
		t.Fatal(err)
	}
	line, _ := publicLine(pub)
	pk, _, _, _, _ := xssh.ParseAuthorizedKey([]byte(line))
	srv.Authorize(pk)
	c, err := Dial(live(), target(f, 10), Auth{User: "root"}, k, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Put([]byte("secret\n"), "put.txt", "600", ""); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(srv.Dir, "put.txt")); err != nil || string(b) != "secret\n" {
		t.Fatalf("put: %q %v", b, err)
	}
	if fi, _ := os.Stat(filepath.Join(srv.Dir, "put.txt")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("put mode %v", fi.Mode())
	}
	err = c.Put([]byte("x"), "/nonexistent-dir/f", "", "")
	if err == nil || !strings.Contains(err.Error(), "nonexistent-dir") {
		t.Fatalf("put into a missing folder: %v", err)
	}
	local := t.TempDir()
	os.MkdirAll(filepath.Join(local, "etc", "boot.d"), 0o755)
	os.WriteFile(filepath.Join(local, "etc", "boot.d", "10-x.sh"), []byte("#!/bin/sh\necho x\n"), 0o755)
	os.WriteFile(filepath.Join(local, "etc", "hosts"), []byte("127.0.0.1 localhost\n"), 0o644)
	os.Symlink("hosts", filepath.Join(local, "etc", "hosts.link"))
	remote := filepath.Join(srv.Dir, "root")
	os.MkdirAll(filepath.Join(remote, "etc"), 0o711) // an existing folder keeps its mode
	r, err := c.Upload(local, remote)
	if err != nil {
		t.Fatal(err)
	}
	if r.Files != 2 || r.Bytes != int64(len("#!/bin/sh\necho x\n")+len("127.0.0.1 localhost\n")) {
		t.Fatalf("upload counted %+v", r)
	}
	if fi, err := os.Stat(filepath.Join(remote, "etc", "boot.d", "10-x.sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("uploaded script: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(remote, "etc", "hosts.link")); err != nil || l != "hosts" {
		t.Fatalf("symlink: %q %v", l, err)
	}
	if fi, _ := os.Stat(filepath.Join(remote, "etc")); fi.Mode().Perm() != 0o711 {
		t.Fatalf("existing folder's mode changed to %v", fi.Mode().Perm())
	}
}

// BenchmarkConnect times a connection with password log-in to the
// in-process server (pifarm's side of a handshake).
func BenchmarkConnect(b *testing.B) {
	f := testFarmB(b)
	fakeguest.NewSSHServer(b, addr(15))
	for i := 0; i < b.N; i++ {
		c, err := Dial(live(), target(f, 15), Auth{User: "pi", Passwords: []string{"raspberry"}}, Keys{Home: b.TempDir(), ConfDir: b.TempDir()}, 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkRun times one command on an open connection.
func BenchmarkRun(b *testing.B) {
	f := testFarmB(b)
	fakeguest.NewSSHServer(b, addr(16))
	c, err := Dial(live(), target(f, 16), Auth{User: "pi", Passwords: []string{"raspberry"}}, Keys{Home: b.TempDir(), ConfDir: b.TempDir()}, 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Run("true", RunOpts{Check: true}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestStreamCopiesOutputToTheTerminal(t *testing.T) {
	f := testFarm(t)
	fakeguest.NewSSHServer(t, addr(17))
	c, err := Dial(live(), target(f, 17), Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, w, _ := os.Pipe()
	old := os.Stdout
	os.Stdout = w
	res, err := c.Run("echo streamed; echo to-stderr >&2", RunOpts{Stream: true, Check: true})
	os.Stdout = old
	w.Close()
	got, _ := io.ReadAll(r)
	if err != nil || string(got) != "streamed\n" || string(res.Stdout) != "streamed\n" || string(res.Stderr) != "to-stderr\n" {
		t.Fatalf("terminal %q, result %q %q, %v", got, res.Stdout, res.Stderr, err)
	}
}

// A password registered at log-in stays masked in every error of a command
// that holds it: a timeout, a non-zero exit.
func TestErrorsMaskThePassword(t *testing.T) {
	f := testFarm(t)
	fakeguest.NewSSHServer(t, "127.0.0.1:26020")
	tg := Target{Host: "127.0.0.1", Port: 26020, KnownHosts: f.KnownHosts(1)}
	c, err := Dial(live(), tg, Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		cmd string
		o   RunOpts
	}{
		{"echo pi:raspberry; sleep 10", RunOpts{Timeout: 300 * time.Millisecond, Check: true}},
		{"echo pi:raspberry; sleep 10", RunOpts{Timeout: 300 * time.Millisecond}},
		{"echo pi:raspberry >&2; exit 1", RunOpts{Check: true}},
	} {
		r, err := c.Run(tc.cmd, tc.o)
		if err == nil && r.ExitCode == 0 {
			t.Errorf("%q: no failure", tc.cmd)
		}
		// without check, the reason of a timeout ends stderr
		if !tc.o.Check && strings.Contains(string(r.Stderr), "raspberry") {
			t.Errorf("%q: the password shows in the reason: %s", tc.cmd, r.Stderr)
		}
		if err != nil && strings.Contains(err.Error(), "raspberry") {
			t.Errorf("%q: the password shows in the error: %v", tc.cmd, err)
		}
	}
}

// The connection to an ssh-agent is closed once the log-in is over: one
// per ssh.connect would pile up in a long run.
func TestAgentConnectionIsClosedAfterLogIn(t *testing.T) {
	f := testFarm(t)
	fakeguest.NewSSHServer(t, "127.0.0.1:26021")
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ring := agent.NewKeyring()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	if err := ring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{}, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { agent.ServeAgent(ring, c); c.Close(); ended <- struct{}{} }()
		}
	}()
	t.Setenv("SSH_AUTH_SOCK", sock)
	tg := Target{Host: "127.0.0.1", Port: 26021, KnownHosts: f.KnownHosts(1)}
	c, err := Dial(live(), tg, Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-ended:
	case <-time.After(2 * time.Second):
		t.Fatal("the connection to the agent is still open after the log-in")
	}
}

// A re-keyed guest that no longer offers a key of the recorded type is a
// host key mismatch with the reset command, not a bare handshake error.
func TestRecordedKeyTypeGoneIsAMismatch(t *testing.T) {
	f := testFarm(t)
	rsaKey, edKey := fakeguest.NewHostKey(t, true), fakeguest.NewHostKey(t, false)
	fakeguest.NewSSHServer(t, "127.0.0.1:26022", rsaKey)
	tg := Target{Host: "127.0.0.1", Port: 26022, KnownHosts: f.KnownHosts(1)}
	os.MkdirAll(filepath.Dir(tg.KnownHosts), 0o755)
	line := fmt.Sprintf("[127.0.0.1]:26022 %s", xssh.MarshalAuthorizedKey(edKey.PublicKey()))
	os.WriteFile(tg.KnownHosts, []byte(line), 0o644)
	_, err := Dial(live(), tg, Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 5*time.Second)
	var mm *HostKeyMismatch
	if !errors.As(err, &mm) {
		t.Fatalf("error: %v", err)
	}
	for _, want := range []string{"host key mismatch for 127.0.0.1:26022", "ssh-ed25519", "rm " + tg.KnownHosts} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

// An error that is not retried does not claim that pifarm waited.
func TestImmediateFailureDoesNotClaimAWait(t *testing.T) {
	f := testFarm(t)
	serve(t, "127.0.0.1:26023", func(c net.Conn) {
		// a banner, then a packet whose padding exceeds its length
		c.Write([]byte("SSH-2.0-broken\r\n\x00\x00\x00\x0c\xff\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
		time.Sleep(3 * time.Second)
	})
	tg := Target{Host: "127.0.0.1", Port: 26023, KnownHosts: f.KnownHosts(1)}
	start := time.Now()
	_, err := Dial(live(), tg, Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 10*time.Second)
	if err == nil || strings.Contains(err.Error(), "gave up after") || time.Since(start) > 5*time.Second {
		t.Fatalf("after %s: %v", time.Since(start), err)
	}
}

// TestRetryable: what Dial retries, by the errors x/crypto/ssh and the
// dialer wrap (never by their text).
func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, true},
		{fmt.Errorf("ssh: handshake failed: %w", &net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}), true},
		{fmt.Errorf("ssh: handshake failed: %w", io.EOF), true},
		{fmt.Errorf("ssh: handshake failed: %w", &xssh.AlgorithmNegotiationError{What: "host key"}), false},
		{errors.New("ssh: unable to authenticate, attempted methods [none password], no supported methods remain"), false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
