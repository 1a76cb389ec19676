package net

import (
	"fmt"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/trace"
)

const nsDoc = "\n\nnetns: a network namespace (see the module text); None: $" + EnvNetns + ", else pifarm's own."

const moduleDoc = `Host networking over netlink: the LAN bridge, user-owned TAPs for QEMU guests, addresses, and a listing.

Every change first looks at the link and does nothing (returning False) when
it is already as asked: adding twice is fine, removing what is absent returns
False. Each change is traced as its iproute2 equivalent
(` + "`sudo ip link add name q0br type bridge`" + `); a dry run prints those lines and
touches nothing, while the listings (queries) still run.

Privilege: changes need CAP_NET_ADMIN. Without it, pifarm runs each change as
` + "`sudo /path/to/pifarm net STEP ...`" + ` (the configured privilege command; -v shows
that line too) and refuses, saying why, when that cannot work (no privilege
command installed, or sudo wants a password and stdin is not a terminal).

Namespaces: every function takes netns=NAME, a network namespace under
/run/netns (as ` + "`ip netns add NAME`" + ` makes it) or a path such as
/proc/PID/ns/net; the trace lines then read ` + "`ip -n NAME ...`" + `. $` + EnvNetns + `
sets the default.`

// module is the `net` Starlark module: one table entry per function, each
// unpacking its own arguments and calling one operation of mod.
func (m *mod) module() *trace.Module {
	return &trace.Module{
		Name: "net",
		Doc:  moduleDoc,
		Funcs: []trace.Func{
			{Name: "bridge_add", Args: "name, netns=None", Fn: m.bridgeAdd,
				Doc: "Create bridge name unless it exists; return whether it was (or in dry-run would be) created.\n\n" +
					"Dry-run prints `sudo ip link add name q0br type bridge`. A link of another kind with\nthat name is an error." + nsDoc},
			{Name: "bridge_delete", Args: "name, netns=None", Fn: m.bridgeDelete,
				Doc: "Delete bridge name; return False, changing nothing, when there is none.\n\n" +
					"Its ports (TAPs, an outbound NIC) stay, detached. Dry-run prints `sudo ip link delete dev q0br`." + nsDoc},
			{Name: "tap_add", Args: "name, user=None, group=None, netns=None", Fn: m.tapAdd,
				Doc: "Create a persistent TAP owned by user (default: the invoking user, SUDO_USER behind\nsudo) and group (default: the user's primary group), so QEMU opens it without root.\n\n" +
					"Return False when a TAP of that name and owner exists; an existing TAP with another\nowner gets the new one (unless a running QEMU holds it). Dry-run prints\n`sudo ip tuntap add dev q0tap1 mode tap user alice group alice`." + nsDoc},
			{Name: "tap_delete", Args: "name, netns=None", Fn: m.tapDelete,
				Doc: "Delete TAP name; return False, changing nothing, when there is none.\n\n" +
					"Dry-run prints `sudo ip tuntap del dev q0tap1 mode tap`." + nsDoc},
			{Name: "set_master", Args: "name, master, netns=None", Fn: m.setMaster,
				Doc: "Make link name a port of bridge master; return False when it already is.\n\n" +
					"Dry-run prints `sudo ip link set q0tap1 master q0br`." + nsDoc},
			{Name: "set_nomaster", Args: "name, netns=None", Fn: m.setNomaster,
				Doc: "Take link name off its bridge; return False when it is on none.\n\n" +
					"Dry-run prints `sudo ip link set q0tap1 nomaster`." + nsDoc},
			{Name: "up", Args: "name, netns=None", Fn: m.up,
				Doc: "Bring link name up; return False when it already is.\n\n" +
					"Dry-run prints `sudo ip link set q0br up`." + nsDoc},
			{Name: "down", Args: "name, netns=None", Fn: m.down,
				Doc: "Bring link name down; return False when it already is.\n\n" +
					"Dry-run prints `sudo ip link set q0br down`." + nsDoc},
			{Name: "addr_replace", Args: "name, addr, netns=None", Fn: m.addrReplace,
				Doc: "Give link name the address addr (\"192.168.66.1/24\"); return False when it holds it.\n\n" +
					"Dry-run prints `sudo ip addr replace 192.168.66.1/24 dev q0br`." + nsDoc},
			{Name: "addr_flush", Args: "name, netns=None", Fn: m.addrFlush,
				Doc: "Remove every address of link name; return False when it had none.\n\n" +
					"Dry-run prints `sudo ip addr flush dev q1tap2`." + nsDoc},
			{Name: "links", Args: "prefix=None, netns=None", Fn: m.links,
				Doc: "The network links whose names begin with prefix (a string or a list of them; None: all),\n" +
					"ordered by name with numbers in numeric order (q0tap2 before q0tap10).\n\n" +
					"Each is a struct: name, kind (\"bridge\", \"tuntap\", \"veth\", \"device\" for a physical NIC or\n" +
					"loopback, or another netlink type), up (administratively), oper (operational state),\n" +
					"master (the bridge it is a port of, or \"\"), addrs (list of \"ADDR/PREFIX\", IPv4 first),\n" +
					"mac, owner and group (of a TAP, else -1), virtual (kind != \"device\").\n\n" +
					"A query: it runs in dry-run too, where it also shows the links that the run's printed\nsteps would have made." + nsDoc},
			{Name: "link", Args: "name, netns=None", Fn: m.link,
				Doc: "The link called name as a struct (see net.links), or None when there is none.\n\nA query: it runs in dry-run too." + nsDoc},
			{Name: "vxlan_add", Args: "name, id, peers, port=4789, local=None, dev=None, netns=None", Fn: m.vxlanAdd,
				Doc: "Join this host's LAN bridge to other hosts': a VXLAN device name with network id id\n" +
					"(1..16777215) on UDP port port, flooding broadcasts and unknown MACs to each address of\n" +
					"peers (the other hosts; on each host the same call names the others), optionally sending\n" +
					"from local through dev. Make it a port of the bridge (net.set_master) and bring it up:\n" +
					"the guests of every host then share one Ethernet, as on one host. VXLAN adds 50 bytes\n" +
					"to each frame: the path between the hosts needs an MTU 50 above the guests'. Returns\n" +
					"False when the device existed with that id and port and flooded to every peer already.\n\n" +
					"Dry-run prints `sudo ip link add q0vx type vxlan id 66 dstport 4789` and one\n" +
					"`sudo bridge fdb append 00:00:00:00:00:00 dev q0vx dst PEER` per peer." + nsDoc},
			{Name: "privileged", Args: "", Fn: m.privilegedFn,
				Doc: "Whether pifarm holds CAP_NET_ADMIN and changes links itself (else each change runs\nthrough the privilege command)."},
		},
	}
}

// namespace is the netns argument: None or "" is the default
// ($PIFARM_NETNS, else pifarm's own namespace).
func (m *mod) namespace(netns trace.OptString) string {
	if netns.S == "" {
		return m.defaultNS
	}
	return netns.S
}

// unpackLink unpacks (name, netns=None), the arguments of most functions,
// plus the string operands named in more ("master", "addr"), which come
// between name and netns.
func (m *mod) unpackLink(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple, more ...any) (ns, name string, err error) {
	var netns trace.OptString
	pairs := append(append([]any{"name", &name}, more...), "netns?", &netns)
	if err := trace.UnpackArgs(b.Name(), args, kwargs, pairs...); err != nil {
		return "", "", err
	}
	return m.namespace(netns), name, nil
}

// changed is the result of a change: whether it changed anything.
func changed(did bool, err error) (starlark.Value, error) {
	if err != nil {
		return nil, err
	}
	return starlark.Bool(did), nil
}

func (m *mod) bridgeAdd(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ns, name, err := m.unpackLink(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	return changed(m.BridgeAdd(ns, name))
}

func (m *mod) bridgeDelete(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ns, name, err := m.unpackLink(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	return changed(m.Delete(ns, name, "bridge"))
}

func (m *mod) tapAdd(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var usr, group trace.OptString
	ns, name, err := m.unpackLink(b, args, kwargs, "user?", &usr, "group?", &group)
	if err != nil {
		return nil, err
	}
	return changed(m.TapAdd(ns, name, usr.S, group.S))
}

func (m *mod) tapDelete(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ns, name, err := m.unpackLink(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	return changed(m.Delete(ns, name, "tuntap"))
}

func (m *mod) setMaster(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var master string
	ns, name, err := m.unpackLink(b, args, kwargs, "master", &master)
	if err != nil {
		return nil, err
	}
	return changed(m.SetMaster(ns, name, master))
}

func (m *mod) setNomaster(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ns, name, err := m.unpackLink(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	return changed(m.SetMaster(ns, name, ""))
}

func (m *mod) up(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ns, name, err := m.unpackLink(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	return changed(m.SetUp(ns, name, true))
}

func (m *mod) down(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ns, name, err := m.unpackLink(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	return changed(m.SetUp(ns, name, false))
}

func (m *mod) addrReplace(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var addr string
	ns, name, err := m.unpackLink(b, args, kwargs, "addr", &addr)
	if err != nil {
		return nil, err
	}
	return changed(m.AddrReplace(ns, name, addr))
}

func (m *mod) addrFlush(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ns, name, err := m.unpackLink(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	return changed(m.AddrFlush(ns, name))
}

func (m *mod) links(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	prefix := trace.StringList{OneString: true}
	var netns trace.OptString
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "prefix?", &prefix, "netns?", &netns); err != nil {
		return nil, err
	}
	ls, err := m.list(m.namespace(netns), prefix.Strings...)
	if err != nil {
		return nil, err
	}
	out := make([]starlark.Value, len(ls))
	for i, l := range ls {
		out[i] = linkStruct(l)
	}
	return starlark.NewList(out), nil
}

func (m *mod) link(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ns, name, err := m.unpackLink(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	l, err := m.current(ns, name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return linkStruct(l), nil
}

func (m *mod) privilegedFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 0); err != nil {
		return nil, err
	}
	return starlark.Bool(m.privileged()), nil
}

// linkStruct is the Starlark view of a link (None for nil).
func linkStruct(l *Link) starlark.Value {
	if l == nil {
		return starlark.None
	}
	return starlarkstruct.FromStringDict(starlark.String("link"), starlark.StringDict{
		"name":    starlark.String(l.Name),
		"kind":    starlark.String(l.Kind),
		"up":      starlark.Bool(l.Up),
		"oper":    starlark.String(l.Oper),
		"master":  starlark.String(l.Master),
		"addrs":   trace.Strings(l.Addrs),
		"mac":     starlark.String(l.MAC),
		"owner":   starlark.MakeInt(l.Owner),
		"group":   starlark.MakeInt(l.Group),
		"virtual": starlark.Bool(l.Virtual()),
	})
}

func (m *mod) vxlanAdd(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var id int
	port := 4789
	var peers *starlark.List
	var local, dev trace.OptString
	ns, name, err := m.unpackLink(b, args, kwargs, "id", &id, "peers", &peers, "port?", &port, "local?", &local, "dev?", &dev)
	if err != nil {
		return nil, err
	}
	var ps []string
	for i := 0; i < peers.Len(); i++ {
		s, ok := starlark.AsString(peers.Index(i))
		if !ok {
			return nil, fmt.Errorf("%s: peers[%d] is a %s, want an address string", b.Name(), i, peers.Index(i).Type())
		}
		ps = append(ps, s)
	}
	return changed(m.VXLANAdd(ns, name, VXLAN{ID: id, Port: port, Local: local.S, Dev: dev.S}, ps))
}
