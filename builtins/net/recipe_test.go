package net_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	pnet "pifarm/builtins/net"
	"pifarm/builtins/runtime"
	"pifarm/builtins/startest"
)

// pifarmRun runs `pifarm -c CONFIG ARGS...` in-process, privileged (the
// tests run with CAP_NET_ADMIN), and returns stdout+stderr and the status.
func pifarmRun(t *testing.T, config string, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code := runtime.Main(runtime.Options{Args: append([]string{"-c", config}, args...), Stdout: &out, Stderr: &out, DefaultConfig: startest.DefaultConfig(t)})
	return out.String(), code
}

func recipeConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "config.star")
	err := os.WriteFile(p, []byte(`
cache = "`+dir+`/cache"
nodes = [
    node(id = 0, alias = "loner", lan = "192.168.66.63", wan = "100.65.63.15"),
    node(id = 1, alias = "enone", lan = "192.168.66.7", wan = "100.65.4.15"),
    node(id = 2, alias = "entwo", lan = "192.168.66.8", wan = "100.65.5.15"),
    node(id = 5, alias = "enfive", lan = "192.168.66.12", wan = "100.65.10.15", lan_mac = "b8:27:eb:00:00:05"),
]
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func state(t *testing.T, ns string) map[string]*pnet.Link {
	t.Helper()
	ls, err := pnet.Links(ns)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]*pnet.Link{}
	for _, l := range ls {
		m[l.Name] = l
	}
	return m
}

// TestBridgeRecipeLive runs the bridge recipe for real inside a namespace:
// TAPs, bridge with router address and an outbound NIC (a veth end), the
// WLAN host end, the listing, idempotent re-runs, and teardown.
func TestBridgeRecipeLive(t *testing.T) {
	ns := pnet.NewTestNS(t)
	cfg := recipeConfig(t)
	// The outbound NIC: one end of a veth pair inside the namespace.
	err := pnet.InNS(ns, func(h *netlink.Handle) error {
		return h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth1"}, PeerName: "eth1wire"})
	})
	if err != nil {
		t.Fatal(err)
	}

	out, code := pifarmRun(t, cfg, "run", "bridge", "--netns", ns, "--taps", "--user", "65534",
		"--add-bridge", "--router-interface", "--outbound-interface", "eth1", "--wlan-activate", "entwo")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	s := state(t, ns)
	for _, id := range []string{"0", "1", "2", "5"} {
		for _, tap := range []string{"q0tap" + id, "q1tap" + id} {
			l := s[tap]
			if l == nil || l.Kind != "tuntap" || l.Owner != 65534 || !l.Up {
				t.Fatalf("%s: %+v", tap, l)
			}
		}
		if s["q0tap"+id].Master != "q0br" {
			t.Errorf("q0tap%s not on the bridge: %+v", id, s["q0tap"+id])
		}
		if s["q1tap"+id].Master != "" {
			t.Errorf("q1tap%s on a bridge: %+v", id, s["q1tap"+id])
		}
	}
	if br := s["q0br"]; br == nil || br.Kind != "bridge" || !br.Up || !br.HasAddr("192.168.66.1/24") {
		t.Fatalf("q0br: %+v", br)
	}
	if e := s["eth1"]; e.Master != "q0br" || !e.Up {
		t.Fatalf("eth1: %+v", e)
	}
	if !s["q1tap2"].HasAddr("172.19.111.2/24") || len(s["q1tap1"].Addrs) != 0 {
		t.Fatalf("WLAN host end: q1tap2 %v, q1tap1 %v", s["q1tap2"].Addrs, s["q1tap1"].Addrs)
	}

	// Again, verbosely: nothing left to do, so no command is printed.
	out, code = pifarmRun(t, cfg, "-v", "run", "bridge", "--netns", ns, "--taps", "--user", "65534",
		"--add-bridge", "--router-interface", "--outbound-interface", "eth1", "--wlan-activate", "2")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(line, "#") {
			t.Errorf("second run did something: %q\n%s", line, out)
		}
	}

	// Move the WLAN host end to instance 1.
	out, code = pifarmRun(t, cfg, "-v", "run", "bridge", "--netns", ns, "-w", "1")
	if want := "ip -n " + ns + " addr flush dev q1tap2\nip -n " + ns + " addr replace 172.19.111.2/24 dev q1tap1\n"; code != 0 || out != want {
		t.Fatalf("wlan-activate 1: exit %d\n%s\nwant\n%s", code, out, want)
	}

	out, code = pifarmRun(t, cfg, "run", "bridge", "--netns", ns)
	want := `id  name      lan ip           interface  wlan  virtual  bridged  up
0   loner     192.168.66.63    q0tap0     no    yes      yes      yes
1   enone     192.168.66.7     q0tap1     yes   yes      yes      yes
2   entwo     192.168.66.8     q0tap2     no    yes      yes      yes
5   enfive    192.168.66.12    q0tap5     no    yes      yes      yes
-   bridge    192.168.66.1/24  q0br       -     yes      -        yes
-   outbound  -                eth1       -     yes      yes      yes
`
	if code != 0 || out != want {
		t.Fatalf("listing: exit %d\n%s\nwant\n%s", code, out, want)
	}

	out, code = pifarmRun(t, cfg, "run", "bridge", "--netns", ns, "--wlan-remove", "--remove-bridge", "--remove-taps", "0", "1")
	if code != 0 || out != "" {
		t.Fatalf("removal: exit %d\n%s", code, out)
	}
	s = state(t, ns)
	for _, gone := range []string{"q0br", "q0tap0", "q1tap0", "q0tap1", "q1tap1"} {
		if s[gone] != nil {
			t.Errorf("%s still there", gone)
		}
	}
	if s["eth1"].Master != "" || len(s["q1tap2"].Addrs) != 0 {
		t.Errorf("after removal: eth1 %+v, q1tap2 %+v", s["eth1"], s["q1tap2"])
	}
	out, code = pifarmRun(t, cfg, "run", "bridge", "--netns", ns, "--remove-bridge", "--remove-taps")
	if code != 0 || out != "bridge: no bridge q0br: nothing to remove\n" {
		t.Fatalf("second removal: exit %d\n%s", code, out)
	}
	out, code = pifarmRun(t, cfg, "run", "bridge", "--netns", ns, "--remove-taps")
	if code != 0 || !strings.Contains(out, "no q0tapN or q1tapN TAPs: nothing to remove") {
		t.Fatalf("third removal: exit %d\n%s", code, out)
	}
}

func TestBridgeRecipeMistakes(t *testing.T) {
	ns := pnet.NewTestNS(t)
	cfg := recipeConfig(t)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--add-bridge", "--remove-bridge"}, 1, "contradict"},
		{[]string{"--wlan-activate", "9"}, 2, "unknown instance"},
		{[]string{"--wlan-activate", "1"}, 1, "q1tap1: no such TAP"},
		{[]string{"1"}, 1, "instances are arguments of --taps"},
		{[]string{"--outbound-interface", "eth9"}, 1, "eth9: no such link in network namespace " + ns},
		{[]string{"--taps", "1", "--user", "no-such-user-x"}, 2, "no-such-user-x"},
	} {
		out, code := pifarmRun(t, cfg, append([]string{"run", "bridge", "--netns", ns}, tc.args...)...)
		if code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d, want %d and %q:\n%s", tc.args, code, tc.code, tc.want, out)
		}
	}
}
