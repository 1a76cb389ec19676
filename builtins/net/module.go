package net

import (
	"bytes"
	"errors"
	"fmt"
	stdnet "net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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
	if !m.d.DryRun || s.Verb == "vxlan-peer" {
		return // (a forwarding entry: the link is as it was)
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
	case "vxlan-add":
		l = &Link{Name: s.Link, Kind: "vxlan", Oper: "down", Owner: -1, Group: -1}
	case "vxlan-peer":
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

// VXLANAdd joins this host's LAN to other hosts': the VXLAN device name
// with v (created unless it exists with that VNI and port), flooding its
// broadcasts and unknown MACs to each of peers (the other hosts'
// addresses; a peer it floods to already is left alone). It returns
// whether anything changed. Enslaving it to the bridge and bringing it up
// are SetMaster and SetUp.
func (m *mod) VXLANAdd(ns, name string, v VXLAN, peers []string) (bool, error) {
	spec := v.String()
	if _, err := ParseVXLAN(spec); err != nil {
		return false, trace.Usagef("%v", err)
	}
	for _, p := range peers {
		if stdnet.ParseIP(p) == nil {
			return false, trace.Usagef("vxlan %s: peer %q is not an address", name, p)
		}
	}
	l, err := m.current(ns, name)
	if err != nil {
		return false, err
	}
	did := false
	have := map[string]bool{}
	switch {
	case l == nil:
		if err := m.run(Step{Verb: "vxlan-add", Link: name, Arg: spec, Netns: ns}, nil); err != nil {
			return false, err
		}
		did = true
	case l.Kind != "vxlan":
		return false, fmt.Errorf("%s exists and is a %s, not a VXLAN", name, l.Kind)
	default:
		if have, err = vxlanPeers(ns, name); err != nil {
			return false, err
		}
	}
	for _, p := range peers {
		if have[stdnet.ParseIP(p).String()] {
			m.d.Note("%s floods to %s already", name, p)
			continue
		}
		if err := m.run(Step{Verb: "vxlan-peer", Link: name, Arg: p, Netns: ns}, l); err != nil {
			return did, err
		}
		did = true
	}
	return did, nil
}

// vxlanPeers are the addresses a VXLAN device floods to (its all-zero MAC
// forwarding entries): a query.
func vxlanPeers(ns, name string) (map[string]bool, error) {
	out := map[string]bool{}
	err := inNS(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		ns, err := h.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
		if err != nil {
			return err
		}
		for _, n := range ns {
			if n.IP != nil && (n.HardwareAddr == nil || n.HardwareAddr.String() == "00:00:00:00:00:00") {
				out[n.IP.String()] = true
			}
		}
		return nil
	})
	return out, err
}
