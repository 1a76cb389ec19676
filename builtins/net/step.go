package net

import (
	"errors"
	"fmt"
	stdnet "net"
	"os/user"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Step is one privileged netlink change. It is what a trace line shows (its
// iproute2 equivalent), what the hidden `pifarm net` subcommand performs
// when pifarm re-invokes itself through the privilege command, and what is
// applied in-process when pifarm already holds CAP_NET_ADMIN.
type Step struct {
	// Verb is one of the Verbs keys.
	Verb string
	// Link is the interface the step changes.
	Link string
	// Arg is the second operand: the master of "master", the address
	// (a.b.c.d/nn) of "addr-replace".
	Arg string
	// User and Group own a TAP made by "tap-add" (names or numeric ids).
	User, Group string
	// Netns is the network namespace (a name under /run/netns, or a path);
	// empty for pifarm's own.
	Netns string
}

// Verbs lists the steps with their operand count (besides the link) and
// a one-line description, used by the hidden subcommand's usage text.
var Verbs = map[string]struct {
	Args int
	Doc  string
}{
	"bridge-add":   {0, "bridge-add LINK: create a bridge"},
	"bridge-del":   {0, "bridge-del LINK: delete a bridge (its ports stay)"},
	"tap-add":      {0, "tap-add LINK --user U [--group G]: create a persistent TAP owned by U"},
	"tap-del":      {0, "tap-del LINK: delete a TAP"},
	"master":       {1, "master LINK MASTER: make LINK a port of bridge MASTER"},
	"nomaster":     {0, "nomaster LINK: take LINK off its bridge"},
	"up":           {0, "up LINK: bring LINK up"},
	"down":         {0, "down LINK: bring LINK down"},
	"addr-replace": {1, "addr-replace LINK ADDR/PREFIX: add or replace an address"},
	"addr-flush":   {0, "addr-flush LINK: remove every address"},
	"vxlan-add":    {1, "vxlan-add LINK id=VNI,port=UDP[,local=ADDR][,dev=IFACE]: create a VXLAN device (no peer yet)"},
	"vxlan-peer":   {1, "vxlan-peer LINK ADDR: flood the VXLAN's broadcasts and unknown MACs to the host at ADDR too"},
}

// VXLAN is the configuration of a VXLAN device: its network id, the UDP
// port, and optionally the local address and underlying interface.
type VXLAN struct {
	ID    int
	Port  int
	Local string
	Dev   string
}

// String is the operand of vxlan-add: "id=66,port=4789[,local=A][,dev=D]".
func (v VXLAN) String() string {
	s := fmt.Sprintf("id=%d,port=%d", v.ID, v.Port)
	if v.Local != "" {
		s += ",local=" + v.Local
	}
	if v.Dev != "" {
		s += ",dev=" + v.Dev
	}
	return s
}

// ParseVXLAN reads the operand of vxlan-add (see VXLAN.String).
func ParseVXLAN(s string) (VXLAN, error) {
	v := VXLAN{Port: 4789}
	seen := map[string]bool{}
	for _, kv := range strings.Split(s, ",") {
		k, val, ok := strings.Cut(kv, "=")
		if !ok || seen[k] {
			return v, fmt.Errorf("vxlan %q: want id=VNI,port=UDP[,local=ADDR][,dev=IFACE]", s)
		}
		seen[k] = true
		var err error
		switch k {
		case "id":
			v.ID, err = strconv.Atoi(val)
			if err == nil && (v.ID < 1 || v.ID > 1<<24-1) {
				err = fmt.Errorf("VNI %d is outside 1..16777215", v.ID)
			}
		case "port":
			v.Port, err = strconv.Atoi(val)
			if err == nil && (v.Port < 1 || v.Port > 65535) {
				err = fmt.Errorf("port %d is not a UDP port", v.Port)
			}
		case "local":
			if stdnet.ParseIP(val) == nil {
				err = fmt.Errorf("local %q is not an address", val)
			}
			v.Local = val
		case "dev":
			err = checkName(val)
			v.Dev = val
		default:
			err = fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			return v, fmt.Errorf("vxlan %q: %v", s, err)
		}
	}
	if !seen["id"] {
		return v, fmt.Errorf("vxlan %q: no id", s)
	}
	return v, nil
}

// IP is the iproute2 command line equivalent to the step, without any
// privilege prefix: a user can paste it into a root shell.
func (s Step) IP() []string {
	ip := []string{"ip"}
	if s.Netns != "" {
		if nsPath(s.Netns) == "/run/netns/"+s.Netns {
			ip = append(ip, "-n", s.Netns)
		} else {
			ip = []string{"nsenter", "--net=" + s.Netns, "ip"}
		}
	}
	switch s.Verb {
	case "bridge-add":
		return append(ip, "link", "add", "name", s.Link, "type", "bridge")
	case "bridge-del":
		return append(ip, "link", "delete", "dev", s.Link)
	case "tap-add":
		a := append(ip, "tuntap", "add", "dev", s.Link, "mode", "tap", "user", s.User)
		if s.Group != "" {
			a = append(a, "group", s.Group)
		}
		return a
	case "tap-del":
		return append(ip, "tuntap", "del", "dev", s.Link, "mode", "tap")
	case "master":
		return append(ip, "link", "set", s.Link, "master", s.Arg)
	case "nomaster":
		return append(ip, "link", "set", s.Link, "nomaster")
	case "up", "down":
		return append(ip, "link", "set", s.Link, s.Verb)
	case "addr-replace":
		return append(ip, "addr", "replace", s.Arg, "dev", s.Link)
	case "addr-flush":
		return append(ip, "addr", "flush", "dev", s.Link)
	case "vxlan-add":
		v, _ := ParseVXLAN(s.Arg)
		a := append(ip, "link", "add", s.Link, "type", "vxlan", "id", strconv.Itoa(v.ID), "dstport", strconv.Itoa(v.Port))
		if v.Local != "" {
			a = append(a, "local", v.Local)
		}
		if v.Dev != "" {
			a = append(a, "dev", v.Dev)
		}
		return a
	case "vxlan-peer":
		b := append([]string{}, ip...)
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] == "ip" {
				b[i] = "bridge" // the same namespace prefix, iproute2's bridge tool
				break
			}
		}
		return append(b, "fdb", "append", "00:00:00:00:00:00", "dev", s.Link, "dst", s.Arg)
	}
	return append(ip, "#", "unknown step", s.Verb)
}

// CLI is the argument list of the hidden subcommand that performs the step:
// `pifarm net CLI...`.
func (s Step) CLI() []string {
	a := []string{s.Verb, s.Link}
	if s.Arg != "" {
		a = append(a, s.Arg)
	}
	if s.User != "" {
		a = append(a, "--user", s.User)
	}
	if s.Group != "" {
		a = append(a, "--group", s.Group)
	}
	if s.Netns != "" {
		a = append(a, "--netns", s.Netns)
	}
	return a
}

// ParseStep reads the hidden subcommand's arguments (the inverse of CLI).
func ParseStep(args []string) (Step, error) {
	var s Step
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		var key, val string
		switch {
		case a == "--user" || a == "--group" || a == "--netns":
			if i+1 >= len(args) {
				return s, fmt.Errorf("%s needs a value", a)
			}
			key, val = a, args[i+1]
			i++
		case strings.HasPrefix(a, "--"):
			k, v, ok := strings.Cut(a, "=")
			if !ok {
				return s, fmt.Errorf("unknown option %s", a)
			}
			key, val = k, v
		default:
			pos = append(pos, a)
			continue
		}
		switch key {
		case "--user":
			s.User = val
		case "--group":
			s.Group = val
		case "--netns":
			s.Netns = val
		default:
			return s, fmt.Errorf("unknown option %s", key)
		}
	}
	if len(pos) == 0 {
		return s, errors.New("missing step")
	}
	s.Verb = pos[0]
	v, ok := Verbs[s.Verb]
	if !ok {
		return s, fmt.Errorf("unknown step %q", s.Verb)
	}
	if len(pos) != 2+v.Args {
		return s, fmt.Errorf("step %s: want %s", s.Verb, v.Doc)
	}
	s.Link = pos[1]
	if v.Args == 1 {
		s.Arg = pos[2]
	}
	return s, s.check()
}

// check validates the operands before anything is touched.
func (s Step) check() error {
	if err := checkName(s.Link); err != nil {
		return err
	}
	switch s.Verb {
	case "master":
		return checkName(s.Arg)
	case "addr-replace":
		if _, _, err := stdnet.ParseCIDR(s.Arg); err != nil {
			return fmt.Errorf("%s: address %q is not ADDR/PREFIX", s.Link, s.Arg)
		}
	case "tap-add":
		if s.User == "" {
			return errors.New("tap-add needs --user")
		}
	case "vxlan-add":
		_, err := ParseVXLAN(s.Arg)
		return err
	case "vxlan-peer":
		if stdnet.ParseIP(s.Arg) == nil {
			return fmt.Errorf("%s: peer %q is not an address", s.Link, s.Arg)
		}
	}
	return nil
}

// checkName refuses what the kernel would refuse as an interface name.
func checkName(n string) error {
	if n == "" || len(n) > 15 || n == "." || n == ".." {
		return fmt.Errorf("interface name %q: 1 to 15 characters", n)
	}
	for _, c := range n {
		if c == '/' || c == ':' || c <= ' ' || c == '%' {
			return fmt.Errorf("interface name %q holds %q", n, c)
		}
	}
	return nil
}

// Apply performs the step with netlink. It must run with CAP_NET_ADMIN. It
// is idempotent where the iproute2 command is: adding an existing bridge of
// that name, or a TAP that exists, is fine.
func (s Step) Apply() error {
	if err := s.check(); err != nil {
		return err
	}
	var uid, gid int
	if s.Verb == "tap-add" {
		var err error
		if uid, gid, err = lookupOwner(s.User, s.Group); err != nil {
			return err
		}
	}
	return inNS(s.Netns, func(h *netlink.Handle) error {
		link := func(name string) (netlink.Link, error) {
			l, err := h.LinkByName(name)
			if err != nil {
				var nf netlink.LinkNotFoundError
				if errors.As(err, &nf) {
					return nil, fmt.Errorf("%s: no such link", name)
				}
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			return l, nil
		}
		switch s.Verb {
		case "bridge-add":
			if l, err := h.LinkByName(s.Link); err == nil {
				if l.Type() != "bridge" {
					return fmt.Errorf("%s exists and is a %s, not a bridge", s.Link, l.Type())
				}
				return nil
			}
			return h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: s.Link}})
		case "tap-add":
			if l, err := h.LinkByName(s.Link); err == nil && l.Type() != "tuntap" {
				return fmt.Errorf("%s exists and is a %s, not a TAP", s.Link, l.Type())
			}
			// Without IFF_TUN_EXCL an existing, unused TAP is attached to
			// and gets the new owner, as `ip tuntap add` does.
			t := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: s.Link},
				Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI,
				Owner: uint32(uid), Group: uint32(gid)}
			if err := h.LinkAdd(t); err != nil {
				if errors.Is(err, syscall.EBUSY) {
					return fmt.Errorf("%s is in use (a running QEMU holds it): %w", s.Link, err)
				}
				return err
			}
			return nil
		case "bridge-del", "tap-del":
			l, err := link(s.Link)
			if err != nil {
				return err
			}
			want := map[string]string{"bridge-del": "bridge", "tap-del": "tuntap"}[s.Verb]
			if l.Type() != want {
				return fmt.Errorf("%s is a %s, not a %s", s.Link, l.Type(), want)
			}
			return h.LinkDel(l)
		case "master":
			l, err := link(s.Link)
			if err != nil {
				return err
			}
			m, err := link(s.Arg)
			if err != nil {
				return err
			}
			if m.Type() != "bridge" {
				return fmt.Errorf("%s is a %s, not a bridge", s.Arg, m.Type())
			}
			return h.LinkSetMaster(l, m)
		case "nomaster":
			l, err := link(s.Link)
			if err != nil {
				return err
			}
			return h.LinkSetNoMaster(l)
		case "up", "down":
			l, err := link(s.Link)
			if err != nil {
				return err
			}
			if s.Verb == "up" {
				return h.LinkSetUp(l)
			}
			return h.LinkSetDown(l)
		case "addr-replace":
			l, err := link(s.Link)
			if err != nil {
				return err
			}
			a, err := netlink.ParseAddr(s.Arg)
			if err != nil {
				return err
			}
			return h.AddrReplace(l, a)
		case "vxlan-add":
			v, err := ParseVXLAN(s.Arg)
			if err != nil {
				return err
			}
			if l, err := h.LinkByName(s.Link); err == nil {
				x, ok := l.(*netlink.Vxlan)
				if !ok {
					return fmt.Errorf("%s exists and is a %s, not a VXLAN", s.Link, l.Type())
				}
				if x.VxlanId != v.ID || x.Port != v.Port {
					return fmt.Errorf("%s exists with VNI %d port %d, not VNI %d port %d: delete it first", s.Link, x.VxlanId, x.Port, v.ID, v.Port)
				}
				return nil
			}
			x := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: s.Link}, VxlanId: v.ID, Port: v.Port, Learning: true}
			if v.Local != "" {
				x.SrcAddr = stdnet.ParseIP(v.Local)
			}
			if v.Dev != "" {
				d, err := link(v.Dev)
				if err != nil {
					return err
				}
				x.VtepDevIndex = d.Attrs().Index
			}
			return h.LinkAdd(x)
		case "vxlan-peer":
			l, err := link(s.Link)
			if err != nil {
				return err
			}
			if l.Type() != "vxlan" {
				return fmt.Errorf("%s is a %s, not a VXLAN", s.Link, l.Type())
			}
			return h.NeighAppend(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: unix.AF_BRIDGE,
				Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT | netlink.NUD_NOARP,
				HardwareAddr: make(stdnet.HardwareAddr, 6), IP: stdnet.ParseIP(s.Arg)})
		case "addr-flush":
			l, err := link(s.Link)
			if err != nil {
				return err
			}
			addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
			if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
				return err
			}
			for _, a := range addrs {
				if err := h.AddrDel(l, &a); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
					return fmt.Errorf("delete %s: %w", a.IPNet, err)
				}
			}
			return nil
		}
		return fmt.Errorf("unknown step %q", s.Verb)
	})
}

// lookupOwner resolves a TAP's user and group (names or numeric ids); an
// empty group is the user's primary group.
func lookupOwner(usr, group string) (uid, gid int, err error) {
	u, err := user.Lookup(usr)
	if err != nil {
		if n, nerr := strconv.Atoi(usr); nerr == nil && n >= 0 {
			u, err = user.LookupId(usr)
			if err != nil {
				// A numeric id need not have a passwd entry.
				uid, gid = n, n
				if group != "" {
					gid, err = lookupGroup(group)
				}
				return uid, gid, err
			}
		} else {
			return 0, 0, fmt.Errorf("user %q: %w", usr, err)
		}
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	if group != "" {
		gid, err = lookupGroup(group)
	}
	return uid, gid, err
}

func lookupGroup(group string) (int, error) {
	if n, err := strconv.Atoi(group); err == nil && n >= 0 {
		return n, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w", group, err)
	}
	return strconv.Atoi(g.Gid)
}
