package ssh

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.starlark.net/starlark"
	"pifarm/builtins/console/fakeguest"
	"pifarm/builtins/farm"
	"pifarm/builtins/startest"
)

// The Starlark face of the module: ssh.* and a connection's methods.

// fixture is a startest fixture with the ssh module on a test farm, its
// keys in test folders (never the user's home).
func fixture(t *testing.T, o startest.Options, f *farm.Farm, keys Keys) *startest.Fixture {
	t.Helper()
	o.Farm = f
	fx := startest.New(t, o)
	fx.Add(newWithKeys(fx.Door, fx.Farm, keys))
	return fx
}

func TestStarlarkConnectionReuseAndResults(t *testing.T) {
	f := testFarm(t)
	srv := fakeguest.NewSSHServer(t, addr(11))
	fixture(t, startest.Options{}, f, Keys{Home: t.TempDir(), ConfDir: t.TempDir()}).Run("reuse.star", `
c = ssh.connect("n11", user = "pi", password = "raspberry", timeout = 5)
assert.eq(c.port, 21111)
assert.true(ssh.connect(11, user = "pi", password = "raspberry") == c)
r = c.run("echo hi; echo there >&2; exit 2", check = False)
assert.eq((r.stdout, r.stderr, r.exit_code), ("hi\n", "there\n", 2))
assert.fails(lambda: c.run("echo nope >&2; exit 1"), "exit status 1:\nnope")
assert.eq(c.run("cat", stdin = b"\x00\x01").stdout, "\x00\x01")
c.put("hello\n", "f.txt", mode = 0o640)
assert.eq(c.run("stat -c %a f.txt; cat f.txt").stdout, "640\nhello\n")
assert.true(ssh.probe(11).startswith("SSH-2.0-"))
assert.eq(ssh.probe(39, timeout = 0.2), None)
assert.eq(ssh.command(11), "ssh -p 21111 root@localhost")
assert.eq(ssh.command("n11", "id -u", user = "pi"), "ssh -p 21111 pi@localhost 'id -u'")
c.close()
`)
	if n := srv.Connections(); n != 2 { // one login, one probe
		t.Fatalf("%d connections, want 2 (reuse)", n)
	}
}

// TestProbeConnectionCarriesTheLogIn: a log-in right after a probe of the
// same address goes on over the probe's connection (the banner replayed);
// a probe followed by no log-in is closed by the next probe or log-in.
func TestProbeConnectionCarriesTheLogIn(t *testing.T) {
	f := testFarm(t)
	srv := fakeguest.NewSSHServer(t, addr(12))
	fixture(t, startest.Options{}, f, Keys{Home: t.TempDir(), ConfDir: t.TempDir()}).Run("probed.star", `
assert.true(ssh.probe(12).startswith("SSH-2.0-"))
c = ssh.connect(12, user = "pi", password = "raspberry", timeout = 5)
assert.eq(c.run("echo ok").stdout, "ok\n")
ssh.probe(12)
assert.true(ssh.connect(12, user = "pi", password = "raspberry") == c)
ssh.probe(12)
ssh.probe(12)
assert.true("authentication failed" in ssh.login_error(12, user = "root", password = "wrong", timeout = 5))
assert.eq(c.run("echo still").stdout, "still\n")
`)
	if n := srv.Connections(); n != 4 { // the first and the last probe carried a log-in
		t.Fatalf("%d connections, want 4", n)
	}
}

func TestDryRunPrintsSSHLinesAndConnectsNowhere(t *testing.T) {
	f := testFarm(t)
	srv := fakeguest.NewSSHServer(t, addr(12))
	conf := filepath.Join(t.TempDir(), "conf")
	local := t.TempDir()
	fx := fixture(t, startest.Options{Dry: true}, f, Keys{Home: t.TempDir(), ConfDir: conf})
	fx.Run("dry.star", fmt.Sprintf(`
keyfile = ssh.public_key_file()
assert.eq(ssh.public_key(), "ssh-ed25519 AAAA-created-by-a-live-run pifarm")  # the key creation shows once
c = ssh.connect(12, user = "pi", password = "raspberry")
r = c.run("id -u")
assert.eq((r.stdout, r.stderr, r.exit_code), ("", "", 0))
c.run("k=$(cat); echo \"$k\" >> ~/.ssh/authorized_keys", stdin_file = keyfile)
c.run("sudo -n tee /etc/x >/dev/null", stdin = "a 'quoted' line\n")
c.put("no newline", "/etc/hostname", mode = "644", owner = "root:root")
c.upload(%q, "/")
root = ssh.connect(12)
root.run("resize2fs /dev/mmcblk0p2", pty = True)
`, local))
	want := fmt.Sprintf(`mkdir -p -m 700 %[1]s && ssh-keygen -q -t ed25519 -N '' -C pifarm -f %[1]s/id_ed25519
# ssh: log in as pi on 127.0.0.1:21112 with password ****
ssh -p 21112 pi@localhost 'id -u'
ssh -p 21112 pi@localhost 'k=$(cat); echo "$k" >> ~/.ssh/authorized_keys' < %[1]s/id_ed25519.pub
ssh -p 21112 pi@localhost 'sudo -n tee /etc/x >/dev/null' <<'EOF'
a 'quoted' line
EOF
printf %%s 'no newline' | ssh -p 21112 pi@localhost 'cat > /etc/hostname && chmod 644 /etc/hostname && chown root:root /etc/hostname'
tar -C %[2]s --owner=0 --group=0 -cf - . | ssh -p 21112 pi@localhost 'mkdir -p / && tar -x --no-same-owner --no-overwrite-dir -C / -f -'
ssh -t -p 21112 root@localhost 'resize2fs /dev/mmcblk0p2'
`, conf, local)
	if fx.Output() != want {
		t.Fatalf("dry-run trace:\n%s\nwant:\n%s", fx.Output(), want)
	}
	if srv.Connections() != 0 {
		t.Fatal("dry run connected")
	}
	if _, err := os.Stat(conf); err == nil {
		t.Fatal("dry run created the key")
	}
}

func TestPasswordListAndFailFalse(t *testing.T) {
	f := testFarm(t)
	fakeguest.NewSSHServer(t, addr(13))
	fixture(t, startest.Options{}, f, Keys{Home: t.TempDir(), ConfDir: t.TempDir()}).Run("pwlist.star", `
assert.eq(ssh.connect(13, user = "pi", password = ["nope", "wrong"], fail = False), None)
assert.eq(ssh.connect(38, user = "pi", password = "x", timeout = 0.3, fail = False), None)
assert.fails(lambda: ssh.connect(13, user = "pi", password = ["nope", "wrong"]), "authentication failed \\(tried: 2 passwords\\)")
c = ssh.connect(13, user = "pi", password = ["raspberrypi", "raspberry"])
assert.eq(c.run("echo ok").stdout, "ok\n")
`)
}

func TestLoginError(t *testing.T) {
	f := testFarm(t)
	fakeguest.NewSSHServer(t, addr(14))
	fixture(t, startest.Options{}, f, Keys{Home: t.TempDir(), ConfDir: t.TempDir()}).Run("loginerror.star", `
assert.eq(ssh.login_error(14, user = "pi", password = "raspberry"), None)
assert.true("authentication failed" in ssh.login_error(14, password = "wrong"))
assert.true("connection refused" in ssh.login_error(37, password = "x", timeout = 0.2))
assert.fails(lambda: ssh.login_error("nosuchnode"), "unknown instance")
`)
}

func TestTargets(t *testing.T) {
	src := fmt.Sprintf(`
cache = %q
ports = {"ssh": 5700, "console": 5800, "vnc": 5900}
nodes = [
    node(id = 1, alias = "enone", lan = "192.168.66.7", wan = "100.65.4.15"),
    node(id = 5, alias = "enfive", lan = "192.168.66.12", wan = "100.65.10.15", lan_mac = "b8:27:eb:00:00:05"),
]
`, t.TempDir())
	c, err := farm.Load("t.star", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	f := farm.New(c)
	m := &module{d: live(), f: f}
	conf := filepath.Join(f.ConfDir(), "known_hosts")
	for _, tc := range []struct {
		in   starlark.Value
		port int
		want Target
		err  string
	}{
		{starlark.MakeInt(1), 0, Target{Host: "127.0.0.1", Port: 5701, KnownHosts: f.KnownHosts(1)}, ""},
		{starlark.String("enone"), 0, Target{Host: "127.0.0.1", Port: 5701, KnownHosts: f.KnownHosts(1)}, ""},
		{f.NodeStruct(f.Nodes()[0]), 2222, Target{Host: "127.0.0.1", Port: 2222, KnownHosts: f.KnownHosts(1)}, ""},
		{starlark.String("enfive"), 0, Target{Host: "192.168.66.12", Port: 22, KnownHosts: f.KnownHosts(5)}, ""},
		{starlark.String("10.1.2.3"), 0, Target{Host: "10.1.2.3", Port: 22, KnownHosts: conf, Shared: true}, ""},
		{starlark.String("localhost:2022"), 0, Target{Host: "127.0.0.1", Port: 2022, KnownHosts: conf, Shared: true}, ""},
		{starlark.String("nosuch"), 0, Target{}, "unknown instance"},
		{starlark.MakeInt(9), 0, Target{}, "unknown instance"},
		{starlark.String("host:port"), 0, Target{}, "bad port"},
	} {
		ref := m.instanceRef()
		err := ref.Unpack(tc.in)
		var got Target
		if err == nil {
			got, err = m.target(&ref, tc.port)
		}
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %+v %v, want %+v", tc.in, got, err, tc.want)
		}
	}
}

// TestArgs runs testdata/args.star: the arguments of every function and
// method, and the errors of wrong ones (### markers).
func TestArgs(t *testing.T) {
	if err := connMethods.Validate(); err != nil {
		t.Fatal(err)
	}
	fx := fixture(t, startest.Options{Dry: true}, testFarm(t), noKeys(t))
	fx.RunChunks("testdata/args.star")
}

// TestProbeWaitsForASlowBanner: OpenSSH under emulation sends its banner
// seconds after the connection; the default probe waits for it, and a port
// whose peer closes at once (QEMU's forward to a guest without sshd) costs
// no wait.
func TestProbeWaitsForASlowBanner(t *testing.T) {
	f := testFarm(t)
	serve(t, addr(13), func(c net.Conn) {
		time.Sleep(2500 * time.Millisecond)
		c.Write([]byte("SSH-2.0-OpenSSH_9.2p1 slow\r\n"))
		time.Sleep(time.Second)
	})
	serve(t, addr(14), func(c net.Conn) {}) // closes at once
	fx := fixture(t, startest.Options{}, f, noKeys(t))
	start := time.Now()
	fx.Run("slow.star", `assert.eq(ssh.probe(13), "SSH-2.0-OpenSSH_9.2p1 slow")`)
	if d := time.Since(start); d < 2500*time.Millisecond {
		t.Fatalf("the banner came after %s, before the server sent it", d)
	}
	start = time.Now()
	fx.Run("closed.star", `assert.eq(ssh.probe(14), None)`)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a port closed at once took %s to probe", d)
	}
}
