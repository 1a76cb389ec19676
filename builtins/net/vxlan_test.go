package net

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"pifarm/builtins/trace"
)

// TestVXLANJoinsTwoHosts: two network namespaces stand for two hosts
// linked by a veth pair (their own network, 10.99.0.0/24). On each, the
// LAN bridge gets a VXLAN port flooding to the other host; an address on
// each bridge (a guest's stand-in) then reaches the other across it. A
// second call changes nothing; the steps' lines are ip and bridge commands.
func TestVXLANJoinsTwoHosts(t *testing.T) {
	m, a, out := testMod(t, false)
	m.d.Verbose = true
	b := newNS(t)
	// The wire between the hosts.
	err := inNS(a, func(h *netlink.Handle) error {
		return h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth7"}, PeerName: "eth1"})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := moveLink(a, "eth1", b); err != nil {
		t.Fatal(err)
	}
	hosts := []struct{ ns, wire, under, lan, peer string }{
		{a, "eth7", "10.99.0.1/24", "192.168.66.201/24", "10.99.0.2"},
		{b, "eth1", "10.99.0.2/24", "192.168.66.202/24", "10.99.0.1"},
	}
	for _, h := range hosts {
		for _, step := range []func() (bool, error){
			func() (bool, error) { return m.AddrReplace(h.ns, h.wire, h.under) },
			func() (bool, error) { return m.SetUp(h.ns, h.wire, true) },
			func() (bool, error) { return m.SetUp(h.ns, "lo", true) },
			func() (bool, error) { return m.BridgeAdd(h.ns, "q0br") },
			func() (bool, error) {
				return m.VXLANAdd(h.ns, "q0vx", VXLAN{ID: 66, Port: 4789, Local: strings.Split(h.under, "/")[0]}, []string{h.peer})
			},
			func() (bool, error) { return m.SetMaster(h.ns, "q0vx", "q0br") },
			func() (bool, error) { return m.SetUp(h.ns, "q0vx", true) },
			func() (bool, error) { return m.AddrReplace(h.ns, "q0br", h.lan) },
			func() (bool, error) { return m.SetUp(h.ns, "q0br", true) },
		} {
			if _, err := step(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, want := range []string{"ip -n " + a + " link add q0vx type vxlan id 66 dstport 4789 local 10.99.0.1",
		"bridge -n " + b + " fdb append 00:00:00:00:00:00 dev q0vx dst 10.99.0.1"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("trace lacks %q:\n%s", want, out)
		}
	}
	ping := exec.Command("ip", "netns", "exec", a, "ping", "-c", "2", "-W", "2", "192.168.66.202")
	if o, err := ping.CombinedOutput(); err != nil {
		t.Fatalf("ping across the VXLAN: %v\n%s", err, o)
	}
	// Again: nothing to do.
	mustChange(t, false)(m.VXLANAdd(a, "q0vx", VXLAN{ID: 66, Port: 4789}, []string{"10.99.0.2"}))
	// Another VNI on the same name is refused; so is a bridge's name.
	if _, err := m.VXLANAdd(a, "q0vx", VXLAN{ID: 67, Port: 4789}, nil); err == nil {
		// The device exists: the module leaves it, a step would refuse.
		if err := (Step{Verb: "vxlan-add", Link: "q0vx", Arg: "id=67,port=4789", Netns: a}).Apply(); err == nil {
			t.Error("a VXLAN of another VNI was taken for this one")
		}
	}
	if _, err := m.VXLANAdd(a, "q0br", VXLAN{ID: 66, Port: 4789}, nil); err == nil || !strings.Contains(err.Error(), "not a VXLAN") {
		t.Errorf("a bridge's name: %v", err)
	}
	if _, err := m.VXLANAdd(a, "q0vy", VXLAN{ID: 66, Port: 4789}, []string{"farm2"}); err == nil {
		t.Error("a peer that is no address was taken")
	}
}

func moveLink(from, name, to string) error {
	target, err := netns.GetFromPath(nsPath(to))
	if err != nil {
		return err
	}
	defer target.Close()
	return inNS(from, func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		return h.LinkSetNsFd(l, int(target))
	})
}

func TestParseVXLAN(t *testing.T) {
	for _, c := range []struct {
		in   string
		want VXLAN
		bad  bool
	}{
		{in: "id=66,port=4789", want: VXLAN{ID: 66, Port: 4789}},
		{in: "id=66", want: VXLAN{ID: 66, Port: 4789}},
		{in: "id=1,port=8472,local=10.0.0.1,dev=eth0", want: VXLAN{ID: 1, Port: 8472, Local: "10.0.0.1", Dev: "eth0"}},
		{in: "port=4789", bad: true}, {in: "id=0", bad: true}, {in: "id=16777216", bad: true},
		{in: "id=1,port=0", bad: true}, {in: "id=1,local=x", bad: true}, {in: "id=1,id=2", bad: true},
		{in: "id=1,dev=a/b", bad: true}, {in: "id=1,what=2", bad: true}, {in: "", bad: true},
	} {
		got, err := ParseVXLAN(c.in)
		if c.bad != (err != nil) || (!c.bad && got != c.want) {
			t.Errorf("ParseVXLAN(%q) = %+v, %v", c.in, got, err)
		}
		if !c.bad {
			back, err := ParseVXLAN(got.String())
			if err != nil || back != got {
				t.Errorf("%q round trip: %+v %v", c.in, back, err)
			}
		}
	}
	s := Step{Verb: "vxlan-peer", Link: "q0vx", Arg: "10.99.0.2", Netns: "lab"}
	if got := trace.Join(s.IP()); got != "bridge -n lab fdb append 00:00:00:00:00:00 dev q0vx dst 10.99.0.2" {
		t.Error(got)
	}
	if back, err := ParseStep(s.CLI()); err != nil || back != s {
		t.Errorf("%v: %+v %v", s.CLI(), back, err)
	}
}

func FuzzParseVXLAN(f *testing.F) {
	for _, s := range []string{"id=66,port=4789", "id=1,local=::1,dev=eth0", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseVXLAN(s)
		if err != nil {
			return
		}
		back, err := ParseVXLAN(v.String())
		if err != nil || back != v {
			t.Fatalf("%q: %+v round trip %+v %v", s, v, back, err)
		}
	})
}
