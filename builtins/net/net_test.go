package net

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// helperEnv makes the test binary act as a small helper instead of running
// tests: "TUNDEV:NAME" opens the tun device node TUNDEV and attaches to TAP
// NAME (run as an unprivileged uid, it proves that QEMU needs no root).
const helperEnv = "PIFARM_NET_TEST_TUNOPEN"

func TestMain(m *testing.M) {
	if v := os.Getenv(helperEnv); v != "" {
		os.Exit(tunOpenHelper(v))
	}
	if len(os.Args) > 1 && os.Args[1] == "net" {
		// The escalation test re-invokes this binary as pifarm.
		os.Exit(Main(os.Args[2:]))
	}
	if !HasNetAdmin() {
		fmt.Fprintln(os.Stderr, "net tests need CAP_NET_ADMIN (they create their own network namespaces)")
		os.Exit(1)
	}
	// The names the tests create (in their own namespaces): none of them
	// may appear in the host's, nor may a host link of those names change.
	mine := []string{"q0", "q1", "eth1", "eth7", "pifarmtest"}
	before, err := Links("", mine...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "list host links:", err)
		os.Exit(1)
	}
	code := m.Run()
	after, err := Links("", mine...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "list host links:", err)
		os.Exit(1)
	}
	if a, b := linkNames(before), linkNames(after); !reflect.DeepEqual(a, b) {
		fmt.Fprintf(os.Stderr, "host namespace changed: links before %v, after %v\n", a, b)
		code = 1
	}
	if ents, _ := filepath.Glob(fmt.Sprintf("/run/netns/pifarm-t%d-*", os.Getpid())); len(ents) > 0 {
		fmt.Fprintf(os.Stderr, "namespaces left behind: %v\n", ents)
		code = 1
	}
	os.Exit(code)
}

func linkNames(ls []*Link) []string {
	var out []string
	for _, l := range ls {
		out = append(out, fmt.Sprintf("%s/%s/up=%v/master=%s/%v", l.Name, l.Kind, l.Up, l.Master, l.Addrs))
	}
	return out
}

func tunOpenHelper(arg string) int {
	dev, name, _ := strings.Cut(arg, ":")
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "open %s: %v\n", dev, err)
		return 1
	}
	defer unix.Close(fd)
	var req [unix.IFNAMSIZ + 64]byte
	copy(req[:unix.IFNAMSIZ-1], name)
	*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = unix.IFF_TAP | unix.IFF_NO_PI
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); errno != 0 {
		fmt.Fprintf(os.Stderr, "TUNSETIFF %s as uid %d: %v\n", name, os.Getuid(), errno)
		return 3
	}
	fmt.Printf("attached to %s as uid %d\n", name, os.Getuid())
	return 0
}

var nsCount atomic.Int32

// newNS creates a named network namespace for one test (under /run/netns,
// as `ip netns add` would) without moving any thread of the test into it,
// and deletes it when the test ends.
func newNS(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("pifarm-t%d-%d", os.Getpid(), nsCount.Add(1))
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create network namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	return name
}

// inTestNS runs fn on a thread inside ns (e.g. to fork a helper there).
func inTestNS(t *testing.T, ns string, fn func() error) error {
	t.Helper()
	return inNS(ns, func(*netlink.Handle) error { return fn() })
}

func testFarm(t *testing.T) *farm.Farm {
	t.Helper()
	c, err := farm.Load("config.star", []byte(`
cache = "`+t.TempDir()+`"
nodes = [
    node(id = 0, alias = "loner", lan = "192.168.66.63", wan = "100.65.63.15"),
    node(id = 1, alias = "enone", lan = "192.168.66.7", wan = "100.65.4.15"),
    node(id = 2, alias = "entwo", lan = "192.168.66.8", wan = "100.65.5.15"),
]
`))
	if err != nil {
		t.Fatal(err)
	}
	return farm.New(c)
}

// testMod is a live module acting inside its own namespace.
func testMod(t *testing.T, dry bool) (*mod, string, *bytes.Buffer) {
	t.Helper()
	var out bytes.Buffer
	d := trace.New(context.Background(), dry, false, &out)
	d.Root = true
	m := newMod(d, testFarm(t))
	m.defaultNS = newNS(t)
	return m, m.defaultNS, &out
}

func mustChange(t *testing.T, want bool) func(bool, error) {
	return func(changed bool, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if changed != want {
			t.Fatalf("changed = %v, want %v", changed, want)
		}
	}
}

func link(t *testing.T, ns, name string) *Link {
	t.Helper()
	l, err := LinkByName(ns, name)
	if err != nil {
		t.Fatal(err)
	}
	if l == nil {
		t.Fatalf("%s: no such link in %s", name, ns)
	}
	return l
}

func TestBridgeTapsAddressesListingTeardown(t *testing.T) {
	m, ns, _ := testMod(t, false)
	yes, no := mustChange(t, true), mustChange(t, false)

	yes(m.BridgeAdd(ns, "q0br"))
	no(m.BridgeAdd(ns, "q0br"))
	for _, tap := range []string{"q0tap1", "q0tap2", "q0tap10", "q1tap1"} {
		yes(m.TapAdd(ns, tap, "65534", "65534"))
		no(m.TapAdd(ns, tap, "65534", "65534"))
	}
	yes(m.SetMaster(ns, "q0tap1", "q0br"))
	no(m.SetMaster(ns, "q0tap1", "q0br"))
	yes(m.SetMaster(ns, "q0tap10", "q0br"))
	yes(m.SetUp(ns, "q0br", true))
	no(m.SetUp(ns, "q0br", true))
	yes(m.SetUp(ns, "q0tap1", true))
	yes(m.AddrReplace(ns, "q0br", "192.168.66.1/24"))
	no(m.AddrReplace(ns, "q0br", "192.168.66.1/24"))

	ls, err := Links(ns, "q0")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range ls {
		got = append(got, fmt.Sprintf("%s %s up=%v master=%q addrs=%v owner=%d group=%d",
			l.Name, l.Kind, l.Up, l.Master, l.Addrs, l.Owner, l.Group))
	}
	want := []string{
		`q0br bridge up=true master="" addrs=[192.168.66.1/24] owner=-1 group=-1`,
		`q0tap1 tuntap up=true master="q0br" addrs=[] owner=65534 group=65534`,
		`q0tap2 tuntap up=false master="" addrs=[] owner=65534 group=65534`,
		`q0tap10 tuntap up=false master="q0br" addrs=[] owner=65534 group=65534`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("listing\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	yes(m.SetMaster(ns, "q0tap10", ""))
	no(m.SetMaster(ns, "q0tap10", ""))
	yes(m.AddrFlush(ns, "q0br"))
	no(m.AddrFlush(ns, "q0br"))
	yes(m.SetUp(ns, "q0br", false))

	// Deleting the bridge leaves its ports, detached.
	yes(m.Delete(ns, "q0br", "bridge"))
	no(m.Delete(ns, "q0br", "bridge"))
	if l := link(t, ns, "q0tap1"); l.Master != "" {
		t.Fatalf("q0tap1 still has master %q after the bridge went", l.Master)
	}
	for _, tap := range []string{"q0tap1", "q0tap2", "q0tap10", "q1tap1"} {
		yes(m.Delete(ns, tap, "tuntap"))
		no(m.Delete(ns, tap, "tuntap"))
	}
	if ls, _ := Links(ns, "q"); len(ls) != 0 {
		t.Fatalf("links left: %v", linkNames(ls))
	}
}

func TestWrongKindsAndMissingLinks(t *testing.T) {
	m, ns, _ := testMod(t, false)
	if _, err := m.TapAdd(ns, "q0tap1", "65534", ""); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() (bool, error){
		"bridge over a TAP": func() (bool, error) { return m.BridgeAdd(ns, "q0tap1") },
		"delete TAP as bridge": func() (bool, error) {
			return m.Delete(ns, "q0tap1", "bridge")
		},
		"master not a bridge":  func() (bool, error) { return m.SetMaster(ns, "q0tap1", "q0tap1") },
		"master missing":       func() (bool, error) { return m.SetMaster(ns, "q0tap1", "q0br") },
		"up missing":           func() (bool, error) { return m.SetUp(ns, "q9tap9", true) },
		"address missing link": func() (bool, error) { return m.AddrReplace(ns, "q9tap9", "10.0.0.1/24") },
		"bad address":          func() (bool, error) { return m.AddrReplace(ns, "q0tap1", "10.0.0.1") },
		"unknown user":         func() (bool, error) { return m.TapAdd(ns, "q0tap2", "no-such-user-x", "") },
		"name too long":        func() (bool, error) { return m.BridgeAdd(ns, "q0br-much-too-long") },
		"unknown netns":        func() (bool, error) { return m.BridgeAdd("pifarm-no-such-ns", "q0br") },
	} {
		if _, err := call(); err == nil {
			t.Errorf("%s: no error", name)
		} else if !strings.Contains(err.Error(), "q0") && !strings.Contains(err.Error(), "q9") &&
			!strings.Contains(err.Error(), "no-such") {
			t.Errorf("%s: error does not name its input: %v", name, err)
		}
	}
	if ls, _ := Links(ns, "q"); len(ls) != 1 {
		t.Fatalf("failed calls changed the namespace: %v", linkNames(ls))
	}
}

func TestOutboundVethEnslaved(t *testing.T) {
	m, ns, _ := testMod(t, false)
	err := inNS(ns, func(h *netlink.Handle) error {
		return h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth7"}, PeerName: "eth7peer"})
	})
	if err != nil {
		t.Fatal(err)
	}
	mustChange(t, true)(m.BridgeAdd(ns, "q0br"))
	mustChange(t, true)(m.SetMaster(ns, "eth7", "q0br"))
	mustChange(t, true)(m.SetUp(ns, "eth7", true))
	l := link(t, ns, "eth7")
	if l.Kind != "veth" || l.Master != "q0br" || !l.Up || !l.Virtual() {
		t.Fatalf("eth7: %+v", l)
	}
	if lo := link(t, ns, "lo"); lo.Kind != "device" || lo.Virtual() || !lo.Loopback || l.Loopback {
		t.Fatalf("lo: %+v", lo)
	}
	// lo is refused before netlink is asked (which would say only "invalid argument")
	if _, err := m.SetMaster(ns, "lo", "q0br"); err == nil || !strings.Contains(err.Error(), "lo cannot be a port of q0br") {
		t.Fatalf("lo as a port: %v", err)
	}
}

func TestWLANHostAddress(t *testing.T) {
	m, ns, _ := testMod(t, false)
	for _, tap := range []string{"q1tap1", "q1tap2", "q1tap3"} {
		mustChange(t, true)(m.TapAdd(ns, tap, "65534", ""))
	}
	host := "172.19.111.2/24"
	mustChange(t, true)(m.AddrReplace(ns, "q1tap1", host))
	// Activate instance 2: flush every q1tapM, give q1tap2 the host end.
	ls, err := Links(ns, "q1tap")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if _, err := m.AddrFlush(ns, l.Name); err != nil {
			t.Fatal(err)
		}
	}
	mustChange(t, true)(m.AddrReplace(ns, "q1tap2", host))
	for tap, want := range map[string]bool{"q1tap1": false, "q1tap2": true, "q1tap3": false} {
		if got := link(t, ns, tap).HasAddr(host); got != want {
			t.Errorf("%s holds %s: %v, want %v", tap, host, got, want)
		}
	}
}

// TestTapOwnerOpensWithoutRoot proves the point of user-owned TAPs: a
// process running as the owner (uid 65534) attaches to the TAP as QEMU
// does, and a process of another uid is refused.
func TestTapOwnerOpensWithoutRoot(t *testing.T) {
	m, ns, _ := testMod(t, false)
	mustChange(t, true)(m.TapAdd(ns, "q0tap1", "65534", "65534"))
	mustChange(t, true)(m.TapAdd(ns, "q0tap2", "12345", "12345"))

	// The helper is this test binary, copied where uid 65534 can run it,
	// with a tun device node it may open (the host's /dev/net/tun may be
	// 0600 in a container; the TAP's owner check is the kernel's either way).
	dir, err := os.MkdirTemp("", "pifarm-net-helper")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helper := filepath.Join(dir, "helper")
	copyFile(t, self, helper, 0o755)
	tun := filepath.Join(dir, "tun")
	if err := unix.Mknod(tun, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 200))); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tun, 0o666); err != nil {
		t.Fatal(err)
	}
	open := func(tap string, uid uint32) (string, error) {
		var out []byte
		err := inTestNS(t, ns, func() error {
			cmd := exec.Command(helper)
			cmd.Env = []string{helperEnv + "=" + tun + ":" + tap}
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
			var err error
			out, err = cmd.CombinedOutput()
			return err
		})
		return string(out), err
	}
	if out, err := open("q0tap1", 65534); err != nil {
		t.Fatalf("uid 65534 could not attach to its own TAP: %v: %s", err, out)
	} else if !strings.Contains(out, "attached to q0tap1 as uid 65534") {
		t.Fatalf("helper said %q", out)
	}
	out, err := open("q0tap2", 65534)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(out, "operation not permitted") {
		t.Fatalf("uid 65534 attached to a TAP owned by 12345: %v: %s", err, out)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestDryRunPrintsAndTouchesNothing runs a whole bridge set-up dry, as an
// unprivileged pifarm would show it, and checks both the lines and that the
// namespace did not change.
func TestDryRunPrintsAndTouchesNothing(t *testing.T) {
	m, ns, out := testMod(t, true)
	m.privileged = func() bool { return false }
	m.d.Priv = []string{"sudo"}
	m.canEscalate = func() error { t.Fatal("dry-run escalated"); return nil }
	before, _ := Links(ns)
	yes := mustChange(t, true)
	yes(m.BridgeAdd(ns, "q0br"))
	mustChange(t, false)(m.BridgeAdd(ns, "q0br"))
	yes(m.TapAdd(ns, "q0tap1", "65534", "65534"))
	yes(m.SetMaster(ns, "q0tap1", "q0br"))
	yes(m.SetUp(ns, "q0br", true))
	yes(m.AddrReplace(ns, "q0br", "192.168.66.1/24"))
	yes(m.TapAdd(ns, "q1tap2", "65534", "65534"))
	yes(m.AddrReplace(ns, "q1tap2", "172.19.111.2/24"))
	yes(m.AddrFlush(ns, "q1tap2"))
	ls, err := m.list(ns, "q0")
	if err != nil || len(ls) != 2 || ls[1].Master != "q0br" {
		t.Fatalf("dry-run listing does not show the planned links: %v %v", linkNames(ls), err)
	}
	yes(m.Delete(ns, "q0br", "bridge"))
	mustChange(t, false)(m.Delete(ns, "q0br", "bridge"))
	if _, err := m.SetUp(ns, "q0tap9", true); err == nil {
		t.Fatal("dry-run accepted a link that neither exists nor would")
	}
	n := "ip -n " + ns + " "
	want := "sudo " + n + "link add name q0br type bridge\n" +
		"# bridge q0br exists\n" +
		"sudo " + n + "tuntap add dev q0tap1 mode tap user 65534 group 65534\n" +
		"sudo " + n + "link set q0tap1 master q0br\n" +
		"sudo " + n + "link set q0br up\n" +
		"sudo " + n + "addr replace 192.168.66.1/24 dev q0br\n" +
		"sudo " + n + "tuntap add dev q1tap2 mode tap user 65534 group 65534\n" +
		"sudo " + n + "addr replace 172.19.111.2/24 dev q1tap2\n" +
		"sudo " + n + "addr flush dev q1tap2\n" +
		"sudo " + n + "link delete dev q0br\n"
	if out.String() != want {
		t.Fatalf("trace\n%s\nwant\n%s", out.String(), want)
	}
	after, _ := Links(ns)
	if !reflect.DeepEqual(linkNames(before), linkNames(after)) {
		t.Fatalf("dry-run changed the namespace: %v -> %v", linkNames(before), linkNames(after))
	}
}

func TestPrivilegedLinesHaveNoPrefix(t *testing.T) {
	var out bytes.Buffer
	d := trace.New(context.Background(), true, false, &out)
	d.Root = true
	m := newMod(d, testFarm(t))
	mustChange(t, true)(m.BridgeAdd("", "pifarmtest0"))
	if got := out.String(); got != "ip link add name pifarmtest0 type bridge\n" {
		t.Fatalf("trace %q", got)
	}
}

// TestEscalationReinvokesPifarm runs steps the way an unprivileged pifarm
// does: through the privilege command ("env" here, which escalates
// nothing; the test runs as root) and the hidden `net` subcommand of the
// binary (this test binary, whose TestMain serves it).
func TestEscalationReinvokesPifarm(t *testing.T) {
	m, ns, out := testMod(t, false)
	m.d.Verbose = true
	m.d.Priv = []string{"env"}
	m.privileged = func() bool { return false }
	self, _ := os.Executable()
	yes := mustChange(t, true)
	yes(m.BridgeAdd(ns, "q0br"))
	yes(m.TapAdd(ns, "q0tap3", "65534", "65534"))
	yes(m.SetMaster(ns, "q0tap3", "q0br"))
	yes(m.AddrReplace(ns, "q0br", "192.168.66.1/24"))
	mustChange(t, false)(m.TapAdd(ns, "q0tap3", "65534", "65534"))
	l := link(t, ns, "q0tap3")
	if l.Master != "q0br" || l.Owner != 65534 {
		t.Fatalf("q0tap3 after escalated steps: %+v", l)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) < 2 || lines[0] != "env ip -n "+ns+" link add name q0br type bridge" ||
		lines[1] != "# as: env "+self+" net bridge-add q0br --netns "+ns {
		t.Fatalf("verbose trace:\n%s", out.String())
	}
	// A failing step reports the command and the child's message.
	_, err := m.SetMaster(ns, "q0tap3", "q0br")
	if err != nil {
		t.Fatal(err)
	}
	err = m.escalate(Step{Verb: "master", Link: "q0tap3", Arg: "nosuchbr", Netns: ns})
	if err == nil || !strings.Contains(err.Error(), "nosuchbr: no such link") || !strings.Contains(err.Error(), "net master q0tap3 nosuchbr") {
		t.Fatalf("failing escalated step: %v", err)
	}
}

func TestRefusesWithoutAWayToEscalate(t *testing.T) {
	dir := t.TempDir()
	fakeSudo := filepath.Join(dir, "sudo")
	if err := os.WriteFile(fakeSudo, []byte("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CI", "true")
	for _, tc := range []struct {
		priv []string
		want string
	}{
		{nil, "sets no privilege command"},
		{[]string{filepath.Join(dir, "no-such-sudo")}, "is not installed"},
		{[]string{fakeSudo}, "asks for a password but stdin is not a terminal"},
	} {
		d := trace.New(context.Background(), false, false, io.Discard)
		d.Priv = tc.priv
		m := newMod(d, testFarm(t))
		m.privileged = func() bool { return false }
		m.defaultNS = "pifarm-never-used"
		_, err := m.BridgeAdd("", "pifarmtest1")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
			t.Errorf("priv %v: %v, want %q", tc.priv, err, tc.want)
		}
	}
}

func TestStepCLIRoundTripAndIPLines(t *testing.T) {
	for _, tc := range []struct {
		s  Step
		ip string
	}{
		{Step{Verb: "bridge-add", Link: "q0br"}, "ip link add name q0br type bridge"},
		{Step{Verb: "bridge-del", Link: "q0br", Netns: "lab"}, "ip -n lab link delete dev q0br"},
		{Step{Verb: "tap-add", Link: "q0tap1", User: "alice", Group: "alice"}, "ip tuntap add dev q0tap1 mode tap user alice group alice"},
		{Step{Verb: "tap-del", Link: "q0tap1"}, "ip tuntap del dev q0tap1 mode tap"},
		{Step{Verb: "master", Link: "q0tap1", Arg: "q0br"}, "ip link set q0tap1 master q0br"},
		{Step{Verb: "nomaster", Link: "q0tap1"}, "ip link set q0tap1 nomaster"},
		{Step{Verb: "up", Link: "q0br"}, "ip link set q0br up"},
		{Step{Verb: "down", Link: "q0br", Netns: "/proc/1/ns/net"}, "nsenter --net=/proc/1/ns/net ip link set q0br down"},
		{Step{Verb: "addr-replace", Link: "q0br", Arg: "192.168.66.1/24"}, "ip addr replace 192.168.66.1/24 dev q0br"},
		{Step{Verb: "addr-flush", Link: "q1tap2"}, "ip addr flush dev q1tap2"},
	} {
		if got := trace.Join(tc.s.IP()); got != tc.ip {
			t.Errorf("%+v: %s, want %s", tc.s, got, tc.ip)
		}
		back, err := ParseStep(tc.s.CLI())
		if err != nil || back != tc.s {
			t.Errorf("%v parsed back as %+v, %v", tc.s.CLI(), back, err)
		}
	}
	for _, bad := range [][]string{{}, {"bogus", "x"}, {"up"}, {"up", "a", "b"}, {"master", "a"},
		{"addr-replace", "q0br", "1.2.3.4"}, {"tap-add", "q0tap1"}, {"up", "x", "--what", "y"}, {"up", "a/b"}} {
		if _, err := ParseStep(bad); err == nil {
			t.Errorf("ParseStep(%q) accepted", bad)
		}
	}
	if s, err := ParseStep([]string{"tap-add", "--user=bob", "q0tap1", "--netns", "x"}); err != nil || s.User != "bob" || s.Netns != "x" {
		t.Errorf("--user=bob: %+v %v", s, err)
	}
}

func TestMainUsageAndFailure(t *testing.T) {
	var e bytes.Buffer
	if code := run([]string{"bogus"}, &e); code != 2 || !strings.Contains(e.String(), "tap-add LINK --user U") {
		t.Fatalf("usage: %d %q", code, e.String())
	}
	ns := newNS(t)
	e.Reset()
	if code := run([]string{"up", "q0nothere", "--netns", ns}, &e); code != 1 || !strings.Contains(e.String(), "q0nothere: no such link") {
		t.Fatalf("failure: %d %q", code, e.String())
	}
	if code := run([]string{"bridge-add", "q0br", "--netns", ns}, &e); code != 0 {
		t.Fatalf("bridge-add: %d %q", code, e.String())
	}
	if l := link(t, ns, "q0br"); l.Kind != "bridge" {
		t.Fatalf("q0br: %+v", l)
	}
}

func TestCapEff(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   bool
	}{
		{"Name:\tx\nCapPrm:\t0000000000001000\nCapEff:\t000001ffffffffff\n", true},
		{"CapEff:\t0000000000001000\n", true},
		{"CapEff:\t0000000000000fff\n", false},
		{"CapEff:\t0000000000000000\n", false},
		{"CapPrm:\t0000000000001000\n", false},
		{"CapEff:\tgarbage\n", false},
	} {
		if got := capEffHas(bufio.NewScanner(strings.NewReader(tc.status)), capNetAdmin); got != tc.want {
			t.Errorf("%q: %v, want %v", tc.status, got, tc.want)
		}
	}
}

func TestNameOrder(t *testing.T) {
	names := []string{"q0tap10", "q0br", "q0tap2", "q0tap", "eth0", "q0tap1"}
	ls := make([]*Link, len(names))
	for i, n := range names {
		ls[i] = &Link{Name: n}
	}
	sortLinks(ls)
	var got []string
	for _, l := range ls {
		got = append(got, l.Name)
	}
	if want := "eth0 q0br q0tap q0tap1 q0tap2 q0tap10"; strings.Join(got, " ") != want {
		t.Fatalf("%v, want %s", got, want)
	}
	if Suffix("q0tap12", "q0tap") != 12 || Suffix("q0tapx", "q0tap") != -1 || Suffix("q1tap1", "q0tap") != -1 {
		t.Fatal("Suffix")
	}
}
