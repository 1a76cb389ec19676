package net

import (
	"strings"
	"testing"

	"go.starlark.net/starlark"
	"pifarm/builtins/startest"
)

// TestStarlarkFunctions calls the module from Starlark, dry and as an
// unprivileged pifarm would (the lines carry sudo), in a namespace of the
// test's own: each function takes its declared arguments, netns=None is the
// default namespace, and wrong arguments are refused naming the parameter.
func TestStarlarkFunctions(t *testing.T) {
	fx := startest.New(t, startest.Options{Dry: true, Farm: testFarm(t)})
	m := newMod(fx.Door, fx.Farm)
	m.privileged = func() bool { return false }
	m.canEscalate = func() error { t.Fatal("dry-run escalated"); return nil }
	fx.Door.Priv = []string{"sudo"}
	ns := newNS(t)
	m.defaultNS = ns
	fx.Add(m.module()).Set("NS", starlark.String(ns))
	fx.Run("net.star", `
assert.true(net.bridge_add("q0br"))
assert.true(not net.bridge_add(name = "q0br", netns = NS))
assert.true(net.tap_add("q0tap1", user = "65534", group = "65534", netns = None))
assert.true(net.set_master("q0tap1", "q0br", netns = ""))
assert.true(net.up("q0br"))
assert.true(net.addr_replace("q0br", addr = "192.168.66.1/24"))
assert.eq([l.name for l in net.links("q0")], ["q0br", "q0tap1"])
assert.eq([l.name for l in net.links(["q0t", "q9"], NS)], ["q0tap1"])
assert.eq(net.link("q0tap1").master, "q0br")
assert.eq(net.link("q0nothere"), None)
assert.true(net.set_nomaster("q0tap1"))
assert.true(net.addr_flush("q0br"))
assert.true(net.down("q0br"))
assert.true(net.tap_delete("q0tap1"))
assert.true(net.bridge_delete("q0br"))
assert.true(not net.privileged())
`)
	n := "sudo ip -n " + ns + " "
	want := n + "link add name q0br type bridge\n" +
		"# bridge q0br exists\n" +
		n + "tuntap add dev q0tap1 mode tap user 65534 group 65534\n" +
		n + "link set q0tap1 master q0br\n" +
		n + "link set q0br up\n" +
		n + "addr replace 192.168.66.1/24 dev q0br\n" +
		n + "link set q0tap1 nomaster\n" +
		n + "addr flush dev q0br\n" +
		n + "link set q0br down\n" +
		n + "tuntap del dev q0tap1 mode tap\n" +
		n + "link delete dev q0br\n"
	if got := fx.Output(); got != want {
		t.Errorf("trace\n%s\nwant\n%s", got, want)
	}
	for _, tc := range []struct{ src, want string }{
		{`net.up(1)`, "net.up: for parameter name: got int, want string"},
		{`net.up("q0br", netns = 1)`, `net.up: for parameter "netns": want a string or None, got int`},
		{`net.set_master("q0tap1")`, "net.set_master: missing argument for master"},
		{`net.tap_add("q0tap1", user = 0)`, `net.tap_add: for parameter "user": want a string or None, got int`},
		{`net.links(prefix = 1)`, `net.links: for parameter "prefix": want a string or a list of strings, got int`},
		{`net.links([1])`, "net.links: for parameter prefix: element 0 is int, want a string"},
		{`net.privileged(1)`, "net.privileged: got 1 arguments, want 0"},
		{`net.addr_replace("q0br", "10.0.0.1")`, "10.0.0.1"},
	} {
		_, err := fx.Exec("bad.star", tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.src, err, tc.want)
		}
	}
}
