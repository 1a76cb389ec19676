package runtime

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	xssh "golang.org/x/crypto/ssh"
	"pifarm/builtins/console/fakeguest"
	"pifarm/builtins/startest"
)

// fleet is a farm of QEMU-less nodes whose SSH is served by in-process
// servers on loopback (fakeguest): what `pifarm run status` reads.
type fleet struct {
	cfg     string
	servers map[int]*fakeguest.SSHServer
	base    int // the SSH port base: node N answers on base+N
}

// Port bases of the fleet tests: clear of the other packages' tests and
// below the ephemeral port range (32768 and up), where a port may be
// taken by any connection.
const fleetSSHBase, fleetConsoleBase, fleetVNCBase = 27000, 28000, 29000

// newFleet makes n nodes (ids 1..n), a user key in a fresh HOME that every
// server authorises for root, and a cache of the test's own; the nodes in
// down have no server.
func newFleet(t testing.TB, n int, down ...int) *fleet {
	t.Helper()
	return newFleetAt(t, n, fleetSSHBase, 0, fleetKey(t), down...)
}

// fleetKey makes the user's key in a fresh HOME and returns its public
// half.
func fleetKey(t testing.TB) xssh.PublicKey {
	t.Helper()
	home := filepath.Join(t.TempDir(), "home")
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := xssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519"), pem.EncodeToMemory(block), 0o600)
	sshPub, _ := xssh.NewPublicKey(pub)
	os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519.pub"), xssh.MarshalAuthorizedKey(sshPub), 0o644)
	t.Setenv("HOME", home)
	t.Setenv("SUDO_USER", "")
	t.Setenv("XDG_CONFIG_HOME", "")
	t.Setenv("PIFARM_CONFIG", "")
	t.Setenv("PIFARM_CACHE", "")
	return sshPub
}

// newFleetAt is newFleet with node N's SSH on port sshBase+N, authorising
// key; with a delay, each connection's first byte (the banner) waits that
// long, as an emulated guest's does.
func newFleetAt(t testing.TB, n, sshBase int, delay time.Duration, key xssh.PublicKey, down ...int) *fleet {
	t.Helper()
	dir := t.TempDir()
	var nodes strings.Builder
	for id := 1; id <= n; id++ {
		fmt.Fprintf(&nodes, "    node(id = %d, alias = \"n%d\", lan = \"10.%d.%d.1\", wan = \"100.%d.%d.15\"),\n", id, id, id/250, id%250, id/250, id%250)
	}
	cfg := filepath.Join(dir, "config.star")
	os.WriteFile(cfg, []byte(fmt.Sprintf("cache = %q\nports = {\"ssh\": %d, \"console\": %d, \"vnc\": %d}\nnodes = [\n%s]\n",
		filepath.Join(dir, "cache"), sshBase, fleetConsoleBase, fleetVNCBase, nodes.String())), 0o644)
	f := &fleet{cfg: cfg, servers: map[int]*fakeguest.SSHServer{}, base: sshBase}
	for id := 1; id <= n; id++ {
		if slices.Contains(down, id) {
			continue
		}
		hostKey := fakeguest.NewHostKey(t, false)
		s := fakeguest.NewSSHServerWith(t, fmt.Sprintf("127.0.0.1:%d", sshBase+id), func(s *fakeguest.SSHServer) {
			if delay > 0 {
				s.Listener = slowListener{s.Listener, delay}
			}
			fakeIdentity(t, s, fmt.Sprintf("n%d", id), hostKey.PublicKey())
		}, hostKey)
		s.Authorize(key)
		f.servers[id] = s
	}
	return f
}

// fakeIdentity gives a fake guest an identity of its own: its commands read
// the host name, machine-id and SSH host keys from files in its folder
// (hostname, machine-id, ssh_host_ed25519_key.pub) instead of the host's.
func fakeIdentity(t testing.TB, s *fakeguest.SSHServer, hostname string, key xssh.PublicKey) {
	t.Helper()
	mid := make([]byte, 16)
	rand.Read(mid)
	for name, content := range map[string]string{
		"hostname":                 hostname + "\n",
		"machine-id":               fmt.Sprintf("%x\n", mid),
		"ssh_host_ed25519_key.pub": string(xssh.MarshalAuthorizedKey(key)),
	} {
		if err := os.WriteFile(filepath.Join(s.Dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dir := s.Dir
	s.Command = func(user, cmd string) *exec.Cmd {
		cmd = strings.NewReplacer("/proc/sys/kernel/hostname", dir+"/hostname", "/etc/machine-id", dir+"/machine-id",
			"/etc/ssh/ssh_host_", dir+"/ssh_host_").Replace(cmd)
		c := exec.Command("sh", "-c", cmd)
		c.Dir = dir
		return c
	}
}

// run runs pifarm with the fleet's configuration.
func (f *fleet) run(t testing.TB, ctx context.Context, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	if ctx == nil {
		ctx = context.Background()
	}
	code := Main(Options{Args: append([]string{"-c", f.cfg}, args...), Stdout: &out, Stderr: &errb, Ctx: ctx, NotRoot: true, DefaultConfig: startest.DefaultConfig(t)})
	return out.String(), errb.String(), code
}

// TestFleetStatus: with no instance, status is one table of every node:
// SSH answering and root logging in by key, the uptime, load, root file
// system use and kernel read from the node, the last recorded run, its
// identity (hostname, machine-id, host key, the nodes sharing any); a
// node nobody serves shows as such; --json has the documented shape.
func TestFleetStatus(t *testing.T) {
	f := newFleet(t, 4, 3)
	o, e, code := f.run(t, nil, "run", "status")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, o, e)
	}
	t.Logf("\n%s", o)
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	lines := strings.Split(strings.TrimSpace(o), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "id  alias  kind  qemu     console  ssh  uptime") {
		t.Fatalf("the table:\n%s", o)
	}
	machineID := func(id int) string {
		b, _ := os.ReadFile(filepath.Join(f.servers[id].Dir, "machine-id"))
		return strings.TrimSpace(string(b))
	}
	keyOf := func(id int) string {
		b, _ := os.ReadFile(filepath.Join(f.servers[id].Dir, "ssh_host_ed25519_key.pub"))
		k, _, _, _, err := xssh.ParseAuthorizedKey(b)
		if err != nil {
			t.Fatal(err)
		}
		return xssh.FingerprintSHA256(k)
	}
	for _, i := range []int{1, 2, 4} {
		cells := strings.Fields(lines[i])
		if cells[2] != "qemu" || cells[3] != "stopped" || cells[4] != "no" || cells[5] != "key" || !strings.Contains(lines[i], strings.TrimSpace(string(kernel))) || !strings.Contains(lines[i], "%") {
			t.Errorf("node %d: %q", i, lines[i])
		}
		id := []int{0, 1, 2, 0, 4}[i]
		if want := []string{fmt.Sprintf("n%d", id), machineID(id)[:8], keyOf(id)[:19], "-"}; !reflect.DeepEqual(cells[len(cells)-4:], want) {
			t.Errorf("node %d's identity: %q, want %q", id, cells[len(cells)-4:], want)
		}
	}
	if c := strings.Fields(lines[3]); c[5] != "no" || c[6] != "-" || c[len(c)-1] != "-" {
		t.Errorf("node 3 (no server): %q", lines[3])
	}

	// the last run shows
	f.run(t, nil, "run", fanRecipe, "--fail-on", "2", "1,2")
	o, _, _ = f.run(t, nil, "run", "status", "1-2")
	if !strings.Contains(o, " fan ok      n1 ") || !strings.Contains(o, " fan failed  n2 ") {
		t.Errorf("last runs:\n%s", o)
	}

	var rows []map[string]any
	o, e, code = f.run(t, nil, "run", "status", "--json", "all")
	if code != 0 || json.Unmarshal([]byte(o), &rows) != nil || len(rows) != 4 {
		t.Fatalf("--json: exit %d\n%s%s", code, o, e)
	}
	want := []string{"alias", "console", "error", "id", "identity", "kernel", "kind", "last_run", "load", "pid", "power", "qemu", "root_login", "root_use_percent", "ssh", "uptime_seconds"}
	if got := keysOf(t, rows[0]); !reflect.DeepEqual(got, want) {
		t.Errorf("keys %v, want %v", got, want)
	}
	r := rows[1]
	if r["id"] != 2.0 || r["ssh"] != true || r["root_login"] != true || r["kernel"] != strings.TrimSpace(string(kernel)) || r["uptime_seconds"].(float64) <= 0 || r["qemu"] != "stopped" {
		t.Errorf("node 2: %v", r)
	}
	if l := r["last_run"].(map[string]any); l["recipe"] != "fan" || l["exit"] != 1.0 || l["error"] != "asked to fail on <2> n2" || !reflect.DeepEqual(keysOf(t, l), []string{"error", "exit", "recipe", "run", "started"}) {
		t.Errorf("node 2's last run: %v", l)
	}
	if rows[2]["ssh"] != false || rows[2]["root_login"] != nil || rows[2]["last_run"] != nil || rows[2]["identity"] != nil {
		t.Errorf("node 3: %v", rows[2])
	}
	id := r["identity"].(map[string]any)
	if !reflect.DeepEqual(keysOf(t, id), []string{"host_key", "host_key_check", "host_keys", "hostname", "machine_id", "same_as", "source"}) ||
		id["hostname"] != "n2" || id["machine_id"] != machineID(2) || id["host_key"] != keyOf(2) || id["host_key_check"] != "verified" ||
		!reflect.DeepEqual(id["host_keys"], []any{keyOf(2)}) || id["source"] != "ssh" || !reflect.DeepEqual(id["same_as"], []any{}) {
		t.Errorf("node 2's identity: %v", id)
	}

	// a node with another's machine-id: both say so
	os.WriteFile(filepath.Join(f.servers[2].Dir, "machine-id"), []byte(machineID(1)+"\n"), 0o644)
	o, e, code = f.run(t, nil, "run", "status", "--json", "1,2,4")
	if code != 0 || json.Unmarshal([]byte(o), &rows) != nil {
		t.Fatalf("--json: exit %d\n%s%s", code, o, e)
	}
	for i, want := range [][]any{{2.0}, {1.0}, {}} {
		if got := rows[i]["identity"].(map[string]any)["same_as"]; !reflect.DeepEqual(got, want) {
			t.Errorf("node %v: same_as %v, want %v", rows[i]["id"], got, want)
		}
	}
	o, _, _ = f.run(t, nil, "run", "status", "1,2")
	if ls := strings.Split(strings.TrimSpace(o), "\n"); len(ls) != 3 || !strings.HasSuffix(ls[0], "host key             same as") ||
		!strings.HasSuffix(ls[1], " 2") || !strings.HasSuffix(ls[2], " 1") {
		t.Errorf("two nodes with one machine-id:\n%s", o)
	}

	// a changed host key is the node's error, the others are read
	other := fakeguest.NewHostKey(t, false)
	kh := filepath.Join(filepath.Dir(f.cfg), "cache", "clones", "raspi-clone-4", "known_hosts")
	os.WriteFile(kh, []byte(fmt.Sprintf("[127.0.0.1]:%d %s", f.base+4, xssh.MarshalAuthorizedKey(other.PublicKey()))), 0o600)
	o, e, code = f.run(t, nil, "run", "status")
	if lines := strings.Split(strings.TrimSpace(o), "\n"); code != 0 || len(lines) != 6 || !strings.HasPrefix(lines[5], "<4> n4: ssh.connect: ") ||
		!strings.Contains(lines[5], "host key mismatch") || !strings.HasPrefix(lines[4], "4   n4     qemu  -        -        -    -") || !strings.Contains(lines[1], " key ") {
		t.Errorf("a node with a changed host key: exit %d\n%s%s", code, o, e)
	}

	// one node: the detailed view, as before
	o, _, _ = f.run(t, nil, "run", "status", "n1")
	if !strings.Contains(o, "<1> n1: QEMU is not running") || !strings.Contains(o, "key log-in as root works") ||
		!strings.Contains(o, fmt.Sprintf("\n  identity hostname n1, machine-id %s, host key %s; SSH presented %s, verified against the recorded one\n", machineID(1)[:8], keyOf(1), keyOf(1))) {
		t.Errorf("status n1:\n%s", o)
	}
}

// TestFleetStatusDeadNode: a node whose SSH port accepts and never
// answers costs the status its banner deadline (2 s), not more, and shows
// as not answering.
func TestFleetStatusDeadNode(t *testing.T) {
	f := newFleet(t, 3, 2)
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", fleetSSHBase+2))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // silent: a hung guest
		}
	}()
	t0 := time.Now()
	o, e, code := f.run(t, nil, "run", "status")
	took := time.Since(t0)
	t.Logf("%v\n%s", took, o)
	if code != 0 || took > 4*time.Second {
		t.Fatalf("exit %d after %v\n%s%s", code, took, o, e)
	}
	lines := strings.Split(strings.TrimSpace(o), "\n")
	if c := strings.Fields(lines[2]); c[5] != "no" {
		t.Errorf("the hung node: %q", lines[2])
	}
	if c := strings.Fields(lines[3]); c[5] != "key" {
		t.Errorf("node 3: %q", lines[3])
	}
}

// TestFleetStatusWatch: --watch draws the table again every --interval
// seconds until Ctrl-C; in a pipe each drawing follows the last, on a
// terminal (farm.terminal) it is redrawn in place.
func TestFleetStatusWatch(t *testing.T) {
	f := newFleet(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	o, e, code := f.run(t, ctx, "run", "status", "--watch", "--interval", "1")
	if n := strings.Count(o, "id  alias  kind"); code != ExitFailed || n < 2 || n > 3 || !strings.Contains(o, "every 1s, ") || strings.Contains(o, "\x1b[") {
		t.Errorf("exit %d, %d tables\n%s%s", code, n, o, e)
	}

	ptm, pts := openPTY(t, 30, 120)
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := ptm.Read(buf); err != nil {
				return
			}
		}
	}()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel2()
	var errb bytes.Buffer
	t.Setenv("TERM", "xterm")
	code = Main(Options{Args: []string{"-c", f.cfg, "run", "status", "--watch", "--interval", "1", "--json"}, Stdout: pts, Stderr: &errb, Ctx: ctx2, NotRoot: true, DefaultConfig: startest.DefaultConfig(t)})
	if code != ExitFailed || !strings.Contains(errb.String(), "interrupted") {
		t.Errorf("--watch --json on a terminal: exit %d\n%s", code, errb.String())
	}
}

// slowListener's connections send their first byte after a delay.
type slowListener struct {
	net.Listener
	delay time.Duration
}

func (l slowListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &slowConn{Conn: c, delay: l.delay}, nil
}

type slowConn struct {
	net.Conn
	delay time.Duration
	once  sync.Once
}

func (c *slowConn) Write(p []byte) (int, error) {
	c.once.Do(func() { time.Sleep(c.delay) })
	return c.Conn.Write(p)
}

// BenchmarkFleetStatus times `pifarm run status` (the whole command,
// in-process) over one node and over 100 nodes whose SSH servers run in
// this process on loopback, and reports both and their ratio (the goal:
// 100 nodes in at most 3 times one node's time). The servers answer at
// once: their side of every key exchange and the sh and df each command
// starts run on the same CPUs as pifarm.
func BenchmarkFleetStatus(b *testing.B) { benchFleet(b, 0) }

// BenchmarkFleetStatusSlowGuests is BenchmarkFleetStatus with guests that
// send their SSH banner after 0.5 s, as OpenSSH under full-system
// emulation does (0.4-2 s): the waits, not the CPU, dominate.
func BenchmarkFleetStatusSlowGuests(b *testing.B) { benchFleet(b, 500*time.Millisecond) }

func benchFleet(b *testing.B, delay time.Duration) {
	key := fleetKey(b)
	one, hundred := newFleetAt(b, 1, fleetSSHBase, delay, key), newFleetAt(b, 100, fleetSSHBase+200, delay, key)
	for _, f := range []*fleet{one, hundred} {
		// the first run records the host keys
		if o, e, code := f.run(b, nil, "run", "status"); code != 0 || strings.Count(o, "  key  ") != len(f.servers) {
			b.Fatalf("exit %d\n%s%s", code, o, e)
		}
	}
	var t1, t100 time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		one.run(b, nil, "run", "status")
		t1 += time.Since(t0)
		t0 = time.Now()
		hundred.run(b, nil, "run", "status")
		t100 += time.Since(t0)
	}
	b.ReportMetric(float64(t1.Milliseconds())/float64(b.N), "ms/1-node")
	b.ReportMetric(float64(t100.Milliseconds())/float64(b.N), "ms/100-nodes")
	b.ReportMetric(float64(t100)/float64(t1), "ratio")
}
