package net

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"golang.org/x/term"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// mod is the state of one `net` module: the door, and in dry-run the
// simulated effect of the steps printed so far, so that later queries and
// decisions of the same run see the bridge a printed step would have made.
type mod struct {
	d *trace.Door
	f *farm.Farm
	// defaultNS is the namespace used when a call gives none ($PIFARM_NETNS).
	defaultNS string
	// privileged reports whether steps run in-process.
	privileged func() bool
	// self is the pifarm binary re-invoked through the privilege command.
	self func() (string, error)
	// canEscalate checks once that the privilege command can run.
	canEscalate func() error

	mu  sync.Mutex
	sim map[string]*Link // dry-run: ns+"\x00"+name -> state; nil = deleted
}

// New returns the `net` Starlark module.
func New(d *trace.Door, f *farm.Farm) *trace.Module {
	m := newMod(d, f)
	return m.module()
}

func newMod(d *trace.Door, f *farm.Farm) *mod {
	m := &mod{d: d, f: f, defaultNS: os.Getenv(EnvNetns), sim: map[string]*Link{}}
	m.privileged = func() bool { return Privileged(d) }
	m.self = os.Executable
	var once sync.Once
	var escErr error
	m.canEscalate = func() error {
		once.Do(func() { escErr = checkEscalation(d) })
		return escErr
	}
	return m
}

// Privileged reports whether pifarm performs net steps in-process: it holds
// CAP_NET_ADMIN, and the door does not ask for a privilege prefix (a door
// with Root unset on a root process, as the golden tests use, is treated
// as unprivileged; a non-root binary with the file capability is
// privileged).
func Privileged(d *trace.Door) bool {
	return HasNetAdmin() && (d.Root || os.Geteuid() != 0)
}

// checkEscalation refuses early, with a reason, when the privilege command
// cannot run a step.
func checkEscalation(d *trace.Door) error {
	if os.Geteuid() == 0 && !HasNetAdmin() {
		return errors.New("pifarm runs as root but without CAP_NET_ADMIN (a container without that capability?): network steps are impossible")
	}
	if len(d.Priv) == 0 {
		return errors.New("needs CAP_NET_ADMIN: pifarm is not privileged and config.star sets no privilege command (privilege = [\"sudo\"])")
	}
	if _, err := exec.LookPath(d.Priv[0]); err != nil {
		return fmt.Errorf("needs CAP_NET_ADMIN: pifarm is not privileged and the privilege command %s is not installed", d.Priv[0])
	}
	if filepath.Base(d.Priv[0]) == "sudo" {
		probe := exec.CommandContext(d.Context(), d.Priv[0], "-n", "true")
		if probe.Run() != nil {
			if os.Getenv("CI") == "true" || !term.IsTerminal(int(os.Stdin.Fd())) {
				return fmt.Errorf("needs CAP_NET_ADMIN: %s asks for a password but stdin is not a terminal (CI=%s); run pifarm as root or allow `%s -n`", trace.Join(d.Priv), os.Getenv("CI"), trace.Join(d.Priv))
			}
		}
	}
	return nil
}

func simKey(ns, name string) string { return ns + "\x00" + name }

// current is the link's state as this run sees it: the real one, or in
// dry-run the state printed steps would have left; nil when absent.
func (m *mod) current(ns, name string) (*Link, error) {
	if m.d.DryRun {
		m.mu.Lock()
		l, ok := m.sim[simKey(ns, name)]
		m.mu.Unlock()
		if ok {
			if l == nil {
				return nil, nil
			}
			c := *l
			c.Addrs = append([]string(nil), l.Addrs...)
			return &c, nil
		}
	}
	return LinkByName(ns, name)
}

// list is Links with the dry-run overlay.
func (m *mod) list(ns string, prefixes ...string) ([]*Link, error) {
	ls, err := Links(ns, prefixes...)
	if err != nil || !m.d.DryRun {
		return ls, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[string]bool{}
	var out []*Link
	for _, l := range ls {
		seen[l.Name] = true
		if s, ok := m.sim[simKey(ns, l.Name)]; ok {
			if s != nil {
				out = append(out, s)
			}
			continue
		}
		out = append(out, l)
	}
	for k, s := range m.sim {
		if s == nil || seen[s.Name] || k != simKey(ns, s.Name) || !hasPrefix(s.Name, prefixes) {
			continue
		}
		out = append(out, s)
	}
	sortLinks(out)
	return out, nil
}

// simulate records in dry-run what a printed step would have done.
func (m *mod) simulate(s Step, before *Link) {
	if !m.d.DryRun {
		return
	}
	var l *Link
	if before != nil {
		c := *before
		c.Addrs = append([]string(nil), before.Addrs...)
		l = &c
	}
	switch s.Verb {
	case "bridge-add":
		l = &Link{Name: s.Link, Kind: "bridge", Oper: "down", Owner: -1, Group: -1}
	case "tap-add":
		uid, gid, _ := lookupOwner(s.User, s.Group)
		l = &Link{Name: s.Link, Kind: "tuntap", Oper: "down", Owner: uid, Group: gid}
	case "bridge-del", "tap-del":
		l = nil
	case "master":
		l.Master = s.Arg
	case "nomaster":
		l.Master = ""
	case "up":
		l.Up = true
	case "down":
		l.Up = false
	case "addr-replace":
		if !l.HasAddr(s.Arg) {
			l.Addrs = append(l.Addrs, s.Arg)
		}
	case "addr-flush":
		l.Addrs = nil
	}
	m.mu.Lock()
	m.sim[simKey(s.Netns, s.Link)] = l
	m.mu.Unlock()
}

// Line is the trace line of a step: its iproute2 equivalent, with the
// privilege prefix when pifarm is not privileged.
func (m *mod) line(s Step) string {
	argv := s.IP()
	if !m.privileged() {
		argv = append(append([]string{}, m.d.Priv...), argv...)
	}
	return trace.Join(argv)
}

// run performs one step through the door: in-process with CAP_NET_ADMIN,
// else by re-invoking pifarm's hidden `net` subcommand through the
// privilege command.
func (m *mod) run(s Step, before *Link) error {
	if err := s.check(); err != nil {
		return trace.Usagef("%s", err)
	}
	err := m.d.Do(m.line(s), func() error {
		if m.privileged() {
			if err := s.Apply(); err != nil {
				return fmt.Errorf("%s: %w", trace.Join(s.IP()), err)
			}
			return nil
		}
		return m.escalate(s)
	})
	if err != nil {
		return err
	}
	m.simulate(s, before)
	return nil
}

// escalate runs `PRIV pifarm net STEP...`.
func (m *mod) escalate(s Step) error {
	if err := m.canEscalate(); err != nil {
		return err
	}
	self, err := m.self()
	if err != nil {
		return fmt.Errorf("find the pifarm binary to run through %s: %w", trace.Join(m.d.Priv), err)
	}
	argv := append(append(append([]string{}, m.d.Priv...), self, "net"), s.CLI()...)
	if m.d.Verbose {
		m.d.Print("# as: " + trace.Join(argv))
	}
	cmd := exec.CommandContext(m.d.Context(), argv[0], argv[1:]...)
	var errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stderr, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			return fmt.Errorf("%s: %v", trace.Join(argv), err)
		}
		return fmt.Errorf("%s: %v: %s", trace.Join(argv), err, msg)
	}
	return nil
}

// ---- the operations behind the Starlark functions ----

// BridgeAdd creates bridge name unless it exists; it reports whether it
// (would have) created it. A link of another kind with that name is an
// error.
func (m *mod) BridgeAdd(ns, name string) (bool, error) {
	l, err := m.current(ns, name)
	if err != nil {
		return false, err
	}
	if l != nil {
		if l.Kind != "bridge" {
			return false, fmt.Errorf("%s exists and is a %s, not a bridge", name, l.Kind)
		}
		m.d.Note("bridge %s exists", name)
		return false, nil
	}
	return true, m.run(Step{Verb: "bridge-add", Link: name, Netns: ns}, nil)
}

// Delete removes link name of the given kind ("bridge", "tuntap"); it
// reports false, changing nothing, when there is no such link.
func (m *mod) Delete(ns, name, kind string) (bool, error) {
	l, err := m.current(ns, name)
	if err != nil || l == nil {
		return false, err
	}
	verb := map[string]string{"bridge": "bridge-del", "tuntap": "tap-del"}[kind]
	if l.Kind != kind {
		return false, fmt.Errorf("%s is a %s, not a %s", name, l.Kind, kind)
	}
	return true, m.run(Step{Verb: verb, Link: name, Netns: ns}, l)
}

// TapAdd creates a persistent TAP owned by usr (and group, default: the
// user's primary group) unless one with that owner exists; it reports
// whether it changed anything.
func (m *mod) TapAdd(ns, name, usr, group string) (bool, error) {
	if usr == "" {
		usr = farm.InvokingUser()
	}
	uid, gid, err := lookupOwner(usr, group)
	if err != nil {
		return false, trace.Usagef("%v", err)
	}
	if group == "" {
		group = strconv.Itoa(gid)
		if g, err := user.LookupGroupId(group); err == nil {
			group = g.Name
		}
	}
	l, err := m.current(ns, name)
	if err != nil {
		return false, err
	}
	if l != nil {
		if l.Kind != "tuntap" {
			return false, fmt.Errorf("%s exists and is a %s, not a TAP", name, l.Kind)
		}
		if l.Owner == uid && l.Group == gid {
			m.d.Note("TAP %s exists, owned by %s", name, usr)
			return false, nil
		}
	}
	return true, m.run(Step{Verb: "tap-add", Link: name, User: usr, Group: group, Netns: ns}, l)
}

// must returns the link or a "no such link" error.
func (m *mod) must(ns, name string) (*Link, error) {
	l, err := m.current(ns, name)
	if err != nil {
		return nil, err
	}
	if l == nil {
		where := ""
		if ns != "" {
			where = " in network namespace " + ns
		}
		return nil, fmt.Errorf("%s: no such link%s", name, where)
	}
	return l, nil
}

// SetMaster makes name a port of bridge master ("" takes it off its
// bridge); it reports whether anything changed.
func (m *mod) SetMaster(ns, name, master string) (bool, error) {
	l, err := m.must(ns, name)
	if err != nil {
		return false, err
	}
	if master == "" {
		if l.Master == "" {
			return false, nil
		}
		return true, m.run(Step{Verb: "nomaster", Link: name, Netns: ns}, l)
	}
	b, err := m.must(ns, master)
	if err != nil {
		return false, err
	}
	if b.Kind != "bridge" {
		return false, fmt.Errorf("%s is a %s, not a bridge", master, b.Kind)
	}
	if l.Loopback || l.Name == master {
		return false, fmt.Errorf("%s cannot be a port of %s", name, master)
	}
	if l.Master == master {
		m.d.Note("%s is already a port of %s", name, master)
		return false, nil
	}
	return true, m.run(Step{Verb: "master", Link: name, Arg: master, Netns: ns}, l)
}

// SetUp brings a link up (or down); it reports whether anything changed.
func (m *mod) SetUp(ns, name string, up bool) (bool, error) {
	l, err := m.must(ns, name)
	if err != nil {
		return false, err
	}
	if l.Up == up {
		return false, nil
	}
	verb := "down"
	if up {
		verb = "up"
	}
	return true, m.run(Step{Verb: verb, Link: name, Netns: ns}, l)
}

// AddrReplace gives a link the address addr (ADDR/PREFIX); it reports
// false when the link already holds it.
func (m *mod) AddrReplace(ns, name, addr string) (bool, error) {
	s := Step{Verb: "addr-replace", Link: name, Arg: addr, Netns: ns}
	if err := s.check(); err != nil {
		return false, trace.Usagef("%v", err)
	}
	l, err := m.must(ns, name)
	if err != nil {
		return false, err
	}
	if l.HasAddr(addr) {
		m.d.Note("%s already holds %s", name, addr)
		return false, nil
	}
	return true, m.run(s, l)
}

// AddrFlush removes every address of a link; it reports false when there
// was none.
func (m *mod) AddrFlush(ns, name string) (bool, error) {
	l, err := m.must(ns, name)
	if err != nil {
		return false, err
	}
	if len(l.Addrs) == 0 {
		return false, nil
	}
	return true, m.run(Step{Verb: "addr-flush", Link: name, Netns: ns}, l)
}

// ---- Starlark ----

func linkStruct(l *Link) starlark.Value {
	if l == nil {
		return starlark.None
	}
	addrs := make([]starlark.Value, len(l.Addrs))
	for i, a := range l.Addrs {
		addrs[i] = starlark.String(a)
	}
	return starlarkstruct.FromStringDict(starlark.String("link"), starlark.StringDict{
		"name":    starlark.String(l.Name),
		"kind":    starlark.String(l.Kind),
		"up":      starlark.Bool(l.Up),
		"oper":    starlark.String(l.Oper),
		"master":  starlark.String(l.Master),
		"addrs":   starlark.NewList(addrs),
		"mac":     starlark.String(l.MAC),
		"owner":   starlark.MakeInt(l.Owner),
		"group":   starlark.MakeInt(l.Group),
		"virtual": starlark.Bool(l.Virtual()),
	})
}

// ns reads the netns keyword: None or "" means the default
// ($PIFARM_NETNS, else pifarm's own namespace).
func (m *mod) ns(a starlark.Value) (string, error) {
	switch x := a.(type) {
	case nil, starlark.NoneType:
		return m.defaultNS, nil
	case starlark.String:
		if x == "" {
			return m.defaultNS, nil
		}
		return string(x), nil
	}
	return "", fmt.Errorf("netns: want a namespace name or None, got %s", a.Type())
}

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

func (m *mod) module() *trace.Module {
	type action func(ns string, a []string) (bool, error)
	boolFn := func(name, params, doc string, nargs int, opt []string, act action) trace.Func {
		return trace.Func{Name: name, Args: params, Doc: doc,
			Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
				raw := make([]starlark.Value, nargs+len(opt))
				var nsv starlark.Value
				pairs := []any{}
				for i, p := range strings.Split(params, ", ") {
					p = strings.SplitN(p, "=", 2)[0]
					if p == "netns" {
						pairs = append(pairs, "netns?", &nsv)
						continue
					}
					if i >= nargs {
						p += "?"
					}
					pairs = append(pairs, p, &raw[i])
				}
				if err := starlark.UnpackArgs(b.Name(), args, kwargs, pairs...); err != nil {
					return nil, err
				}
				// Required operands are strings; optional ones may be None.
				vals := make([]string, len(raw))
				for i, v := range raw {
					if v == nil || (v == starlark.None && i >= nargs) {
						continue
					}
					s, ok := starlark.AsString(v)
					if !ok {
						return nil, fmt.Errorf("%s: want a string, got %s", strings.Split(params, ", ")[i], v.Type())
					}
					vals[i] = s
				}
				ns, err := m.ns(nsv)
				if err != nil {
					return nil, err
				}
				changed, err := act(ns, vals)
				if err != nil {
					return nil, err
				}
				return starlark.Bool(changed), nil
			}}
	}
	return &trace.Module{
		Name: "net",
		Doc:  moduleDoc,
		Funcs: []trace.Func{
			boolFn("bridge_add", "name, netns=None",
				"Create bridge name unless it exists; return whether it was (or in dry-run would be) created.\n\n"+
					"Dry-run prints `sudo ip link add name q0br type bridge`. A link of another kind with\nthat name is an error."+nsDoc,
				1, nil, func(ns string, a []string) (bool, error) { return m.BridgeAdd(ns, a[0]) }),
			boolFn("bridge_delete", "name, netns=None",
				"Delete bridge name; return False, changing nothing, when there is none.\n\n"+
					"Its ports (TAPs, an outbound NIC) stay, detached. Dry-run prints `sudo ip link delete dev q0br`."+nsDoc,
				1, nil, func(ns string, a []string) (bool, error) { return m.Delete(ns, a[0], "bridge") }),
			boolFn("tap_add", "name, user=None, group=None, netns=None",
				"Create a persistent TAP owned by user (default: the invoking user, SUDO_USER behind\nsudo) and group (default: the user's primary group), so QEMU opens it without root.\n\n"+
					"Return False when a TAP of that name and owner exists; an existing TAP with another\nowner gets the new one (unless a running QEMU holds it). Dry-run prints\n`sudo ip tuntap add dev q0tap1 mode tap user alice group alice`."+nsDoc,
				1, []string{"user", "group"}, func(ns string, a []string) (bool, error) { return m.TapAdd(ns, a[0], a[1], a[2]) }),
			boolFn("tap_delete", "name, netns=None",
				"Delete TAP name; return False, changing nothing, when there is none.\n\n"+
					"Dry-run prints `sudo ip tuntap del dev q0tap1 mode tap`."+nsDoc,
				1, nil, func(ns string, a []string) (bool, error) { return m.Delete(ns, a[0], "tuntap") }),
			boolFn("set_master", "name, master, netns=None",
				"Make link name a port of bridge master; return False when it already is.\n\n"+
					"Dry-run prints `sudo ip link set q0tap1 master q0br`."+nsDoc,
				2, nil, func(ns string, a []string) (bool, error) { return m.SetMaster(ns, a[0], a[1]) }),
			boolFn("set_nomaster", "name, netns=None",
				"Take link name off its bridge; return False when it is on none.\n\n"+
					"Dry-run prints `sudo ip link set q0tap1 nomaster`."+nsDoc,
				1, nil, func(ns string, a []string) (bool, error) { return m.SetMaster(ns, a[0], "") }),
			boolFn("up", "name, netns=None",
				"Bring link name up; return False when it already is.\n\n"+
					"Dry-run prints `sudo ip link set q0br up`."+nsDoc,
				1, nil, func(ns string, a []string) (bool, error) { return m.SetUp(ns, a[0], true) }),
			boolFn("down", "name, netns=None",
				"Bring link name down; return False when it already is.\n\n"+
					"Dry-run prints `sudo ip link set q0br down`."+nsDoc,
				1, nil, func(ns string, a []string) (bool, error) { return m.SetUp(ns, a[0], false) }),
			boolFn("addr_replace", "name, addr, netns=None",
				"Give link name the address addr (\"192.168.66.1/24\"); return False when it holds it.\n\n"+
					"Dry-run prints `sudo ip addr replace 192.168.66.1/24 dev q0br`."+nsDoc,
				2, nil, func(ns string, a []string) (bool, error) { return m.AddrReplace(ns, a[0], a[1]) }),
			boolFn("addr_flush", "name, netns=None",
				"Remove every address of link name; return False when it had none.\n\n"+
					"Dry-run prints `sudo ip addr flush dev q1tap2`."+nsDoc,
				1, nil, func(ns string, a []string) (bool, error) { return m.AddrFlush(ns, a[0]) }),
			{Name: "links", Args: "prefix=None, netns=None",
				Doc: "The network links whose names begin with prefix (a string or a list of them; None: all),\n" +
					"ordered by name with numbers in numeric order (q0tap2 before q0tap10).\n\n" +
					"Each is a struct: name, kind (\"bridge\", \"tuntap\", \"veth\", \"device\" for a physical NIC or\n" +
					"loopback, or another netlink type), up (administratively), oper (operational state),\n" +
					"master (the bridge it is a port of, or \"\"), addrs (list of \"ADDR/PREFIX\", IPv4 first),\n" +
					"mac, owner and group (of a TAP, else -1), virtual (kind != \"device\").\n\n" +
					"A query: it runs in dry-run too, where it also shows the links that the run's printed\nsteps would have made." + nsDoc,
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					var pv, nsv starlark.Value
					if err := starlark.UnpackArgs(b.Name(), args, kwargs, "prefix?", &pv, "netns?", &nsv); err != nil {
						return nil, err
					}
					ns, err := m.ns(nsv)
					if err != nil {
						return nil, err
					}
					var prefixes []string
					switch x := pv.(type) {
					case nil, starlark.NoneType:
					case starlark.String:
						prefixes = []string{string(x)}
					case *starlark.List, starlark.Tuple:
						it := x.(starlark.Indexable)
						for i := 0; i < it.Len(); i++ {
							s, ok := starlark.AsString(it.Index(i))
							if !ok {
								return nil, fmt.Errorf("prefix: element %d is %s, want a string", i, it.Index(i).Type())
							}
							prefixes = append(prefixes, s)
						}
					default:
						return nil, fmt.Errorf("prefix: want a string or a list of strings, got %s", pv.Type())
					}
					ls, err := m.list(ns, prefixes...)
					if err != nil {
						return nil, err
					}
					out := make([]starlark.Value, len(ls))
					for i, l := range ls {
						out[i] = linkStruct(l)
					}
					return starlark.NewList(out), nil
				}},
			{Name: "link", Args: "name, netns=None",
				Doc: "The link called name as a struct (see net.links), or None when there is none.\n\nA query: it runs in dry-run too." + nsDoc,
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					var name string
					var nsv starlark.Value
					if err := starlark.UnpackArgs(b.Name(), args, kwargs, "name", &name, "netns?", &nsv); err != nil {
						return nil, err
					}
					ns, err := m.ns(nsv)
					if err != nil {
						return nil, err
					}
					l, err := m.current(ns, name)
					if err != nil {
						return nil, fmt.Errorf("%s: %w", name, err)
					}
					return linkStruct(l), nil
				}},
			{Name: "privileged", Args: "",
				Doc: "Whether pifarm holds CAP_NET_ADMIN and changes links itself (else each change runs\nthrough the privilege command).",
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 0); err != nil {
						return nil, err
					}
					return starlark.Bool(m.privileged()), nil
				}},
		},
	}
}
