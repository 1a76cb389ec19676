package net

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Link is what a listing reports about one network interface.
type Link struct {
	Name string
	// Kind is "bridge", "tuntap", "veth", "device" (physical or loopback),
	// or another netlink link type ("dummy", "vlan", ...).
	Kind string
	// Up is the administrative state (IFF_UP); Oper the operational state
	// ("up", "down", "unknown", ...).
	Up   bool
	Oper string
	// Master is the bridge the link is a port of, or "".
	Master string
	// Addrs are the link's addresses as ADDR/PREFIX, IPv4 first.
	Addrs []string
	MAC   string
	// Loopback is set for lo.
	Loopback bool
	// Owner and Group of a TAP (-1 when not a TAP or not set).
	Owner, Group int
}

// Virtual reports whether the link exists only in software.
func (l *Link) Virtual() bool { return l.Kind != "device" }

// HasAddr reports whether the link holds addr (ADDR/PREFIX).
func (l *Link) HasAddr(addr string) bool {
	for _, a := range l.Addrs {
		if a == addr {
			return true
		}
	}
	return false
}

// Links lists the interfaces of namespace ns ("" for pifarm's own) whose
// names begin with one of prefixes (all when none is given), ordered by
// name with numeric suffixes in numeric order (q0tap2 before q0tap10).
// It is a query: it runs in dry-run too and needs no privilege in pifarm's
// own namespace.
func Links(ns string, prefixes ...string) ([]*Link, error) {
	var out []*Link
	err := inNS(ns, func(h *netlink.Handle) error {
		var links []netlink.Link
		var err error
		for try := 0; try < 5; try++ {
			links, err = h.LinkList()
			if !errors.Is(err, netlink.ErrDumpInterrupted) {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		names := map[int]string{}
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
		var addrs []netlink.Addr
		for try := 0; try < 5; try++ {
			addrs, err = h.AddrList(nil, netlink.FAMILY_ALL)
			if !errors.Is(err, netlink.ErrDumpInterrupted) {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("list addresses: %w", err)
		}
		byIndex := map[int][]netlink.Addr{}
		for _, a := range addrs {
			byIndex[a.LinkIndex] = append(byIndex[a.LinkIndex], a)
		}
		for _, l := range links {
			a := l.Attrs()
			if !hasPrefix(a.Name, prefixes) {
				continue
			}
			x := &Link{Name: a.Name, Kind: l.Type(), Up: a.RawFlags&unix.IFF_UP != 0,
				Oper: a.OperState.String(), Master: names[a.MasterIndex], Owner: -1, Group: -1,
				Loopback: a.RawFlags&unix.IFF_LOOPBACK != 0}
			if a.HardwareAddr != nil {
				x.MAC = a.HardwareAddr.String()
			}
			if t, ok := l.(*netlink.Tuntap); ok {
				x.Owner, x.Group = int(t.Owner), int(t.Group)
			}
			as := byIndex[a.Index]
			sort.SliceStable(as, func(i, j int) bool {
				return (as[i].IP.To4() != nil) && (as[j].IP.To4() == nil)
			})
			for _, ad := range as {
				x.Addrs = append(x.Addrs, ad.IPNet.String())
			}
			out = append(out, x)
		}
		return nil
	})
	sortLinks(out)
	return out, err
}

func sortLinks(ls []*Link) {
	sort.Slice(ls, func(i, j int) bool { return nameLess(ls[i].Name, ls[j].Name) })
}

// LinkByName returns the named link of namespace ns, or nil when there is
// none.
func LinkByName(ns, name string) (*Link, error) {
	ls, err := Links(ns, name)
	if err != nil {
		return nil, err
	}
	for _, l := range ls {
		if l.Name == name {
			return l, nil
		}
	}
	return nil, nil
}

func hasPrefix(name string, prefixes []string) bool {
	if len(prefixes) == 0 {
		return true
	}
	for _, p := range prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// nameLess orders names by their non-digit stem, then by their numeric
// suffix, then by name.
func nameLess(a, b string) bool {
	sa, na := splitNum(a)
	sb, nb := splitNum(b)
	if sa != sb {
		return sa < sb
	}
	if na != nb {
		return na < nb
	}
	return a < b
}

// splitNum splits "q0tap12" into "q0tap" and 12 (-1 when there is no
// numeric suffix).
func splitNum(s string) (string, int) {
	i := len(s)
	for i > 0 && s[i-1] >= '0' && s[i-1] <= '9' {
		i--
	}
	if i == len(s) || len(s)-i > 9 {
		return s, -1
	}
	n := 0
	for _, c := range s[i:] {
		n = n*10 + int(c-'0')
	}
	return s[:i], n
}

// Suffix is the instance number at the end of a TAP name with the given
// prefix ("q0tap12" with "q0tap" is 12), or -1.
func Suffix(name, prefix string) int {
	if !strings.HasPrefix(name, prefix) {
		return -1
	}
	stem, n := splitNum(name)
	if stem != prefix {
		return -1
	}
	return n
}
