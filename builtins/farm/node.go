package farm

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"go.starlark.net/starlark"
	"pifarm/builtins/trace"
)

// predeclared is what config.star sees besides the Starlark core.
func predeclared() starlark.StringDict {
	return starlark.StringDict{
		"node":    starlark.NewBuiltin("node", nodeBuiltin),
		"uhubctl": starlark.NewBuiltin("uhubctl", uhubctlBuiltin),
		"env": starlark.NewBuiltin("env", func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			var name, def string
			if err := starlark.UnpackArgs(b.Name(), args, kwargs, "name", &name, "default?", &def); err != nil {
				return nil, err
			}
			if v, ok := os.LookupEnv(name); ok && v != "" {
				return starlark.String(v), nil
			}
			return starlark.String(def), nil
		}),
	}
}

// nodeValue is the opaque result of node(...) in config.star.
type nodeValue struct{ n *Node }

func (v *nodeValue) String() string        { return fmt.Sprintf("node(id=%d, alias=%q)", v.n.ID, v.n.Alias) }
func (v *nodeValue) Type() string          { return "node" }
func (v *nodeValue) Freeze()               {}
func (v *nodeValue) Truth() starlark.Bool  { return true }
func (v *nodeValue) Hash() (uint32, error) { return uint32(v.n.ID), nil }

func nodeBuiltin(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n := &Node{}
	kwargs, hw := hardwareKwargs(kwargs)
	if len(args) > 0 {
		return nil, fmt.Errorf("node: use keyword arguments (id=, alias=, lan=, wan=, lan_mac=, wan_mac=, wifi_channel=, ssid=, tags=, host=)")
	}
	var lanMAC, wanMAC string
	var tags, host starlark.Value = starlark.None, starlark.None
	if err := starlark.UnpackArgs("node", args, kwargs,
		"id", &n.ID, "alias", &n.Alias, "lan", &n.LAN, "wan", &n.WAN,
		"lan_mac?", &lanMAC, "wan_mac?", &wanMAC, "wifi_channel?", &n.WifiChannel, "ssid?", &n.SSID, "tags?", &tags,
		"host?", &host); err != nil {
		return nil, err
	}
	if thread.CallStackDepth() > 1 {
		n.Pos = thread.CallFrame(1).Pos
	}
	if n.ID < 0 {
		return nil, fmt.Errorf("node: id %d is negative", n.ID)
	}
	if !aliasRE.MatchString(n.Alias) {
		return nil, fmt.Errorf("node %d: alias %q must start with a letter and hold letters, digits and '-'", n.ID, n.Alias)
	}
	if _, word := setWord(n.Alias); word {
		return nil, fmt.Errorf("node %d: alias %q is a node-set word (%s select nodes by kind); choose another alias", n.ID, n.Alias, strings.Join(SetWords, ", "))
	}
	t, err := nodeTags(n.ID, tags)
	if err != nil {
		return nil, err
	}
	n.Tags = t
	if host != starlark.None {
		h, ok := starlark.AsString(host)
		if !ok {
			return nil, fmt.Errorf("node %d: host must be a libvirt URI string, got %s", n.ID, host.Type())
		}
		if h != "" {
			if _, err := ParseHostURI(h); err != nil {
				return nil, fmt.Errorf("node %d: %v", n.ID, err)
			}
		}
		if h != "" && lanMAC != "" {
			return nil, fmt.Errorf("node %d: a hardware box (lan_mac) runs on its own board, not on a libvirt host: remove host", n.ID)
		}
		n.Host, n.HostSet = h, true
	}
	for _, a := range []struct{ field, v string }{{"lan", n.LAN}, {"wan", n.WAN}} {
		ip := net.ParseIP(a.v)
		if ip == nil || ip.To4() == nil {
			return nil, fmt.Errorf("node %d: %s %q is not an IPv4 address", n.ID, a.field, a.v)
		}
	}
	for _, m := range []struct {
		field string
		v     *string
		in    string
	}{{"lan_mac", &n.LANMAC, lanMAC}, {"wan_mac", &n.WANMAC, wanMAC}} {
		if m.in == "" {
			continue
		}
		hw, err := net.ParseMAC(m.in)
		if err != nil || len(hw) != 6 {
			return nil, fmt.Errorf("node %d: %s %q is not a MAC address", n.ID, m.field, m.in)
		}
		*m.v = hw.String()
	}
	if n.WifiChannel < 0 || n.WifiChannel > 196 {
		return nil, fmt.Errorf("node %d: wifi_channel %d is not a WiFi channel", n.ID, n.WifiChannel)
	}
	if strings.ContainsAny(n.SSID, " \t\n") || len(n.SSID) > 32 {
		return nil, fmt.Errorf("node %d: ssid %q must be 1-32 characters without blanks", n.ID, n.SSID)
	}
	if err := hw.apply(n); err != nil {
		return nil, err
	}
	return &nodeValue{n}, nil
}

// nodeTags reads node(tags = ...): None, or a list or tuple of tag names
// (letters, digits, '_', '.', '-'), each once.
func nodeTags(id int, v starlark.Value) ([]string, error) {
	if v == starlark.None {
		return nil, nil
	}
	it, ok := v.(starlark.Indexable)
	if _, isStr := v.(starlark.String); !ok || isStr {
		return nil, fmt.Errorf("node %d: tags must be a list of names such as [\"rack1\", \"usb\"], got %s", id, v.Type())
	}
	var tags []string
	for i := 0; i < it.Len(); i++ {
		s, ok := starlark.AsString(it.Index(i))
		if !ok || !tagRE.MatchString(s) {
			return nil, fmt.Errorf("node %d: tag %s is not a name (letters, digits, '_', '.', '-', beginning with a letter or digit)", id, it.Index(i))
		}
		for _, t := range tags {
			if strings.EqualFold(t, s) {
				return nil, fmt.Errorf("node %d: tag %q given twice", id, s)
			}
		}
		tags = append(tags, s)
	}
	return tags, nil
}

// Farm is the configured farm: what every module consults.
type Farm struct {
	Config *Config
	// Jobs is how many calls farm.parallel runs at once unless told: the
	// run's -j (the runtime sets it; 0 counts as 1).
	Jobs int
	// Reach tunnels to the ports of guests on remote libvirt hosts (see
	// DialPort); the runtime sets it.
	Reach Reacher
}

// New returns the farm of a validated configuration.
func New(c *Config) *Farm { return &Farm{Config: c} }

// Resolve finds a node by id ("2") or alias ("entwo"). Anything else is a
// usage error that names what was asked for.
func (f *Farm) Resolve(ref string) (*Node, error) {
	ref = strings.TrimSpace(ref)
	if id, err := strconv.Atoi(ref); err == nil {
		for _, n := range f.Config.Nodes {
			if n.ID == id {
				return n, nil
			}
		}
		return nil, trace.Usagef("unknown instance %q: no node with id %d in the node table of %s (ids: %s)", ref, id, f.Config.Path, f.ids())
	}
	for _, n := range f.Config.Nodes {
		if strings.EqualFold(n.Alias, ref) {
			return n, nil
		}
	}
	return nil, trace.Usagef("unknown instance %q: no node with that id or alias in %s (known: %s)", ref, f.Config.Path, f.ids())
}

func (f *Farm) ids() string {
	var s []string
	for _, n := range f.Nodes() {
		s = append(s, fmt.Sprintf("%d=%s", n.ID, n.Alias))
	}
	return strings.Join(s, ", ")
}

// Nodes returns the node table ordered by id.
func (f *Farm) Nodes() []*Node {
	ns := append([]*Node(nil), f.Config.Nodes...)
	sort.Slice(ns, func(i, j int) bool { return ns[i].ID < ns[j].ID })
	return ns
}

// Name is the node's host name on the LAN, "nN".
func (n *Node) Name() string { return fmt.Sprintf("n%d", n.ID) }

// SSHPort is the host port forwarded to the guest's port 22.
func (f *Farm) SSHPort(n *Node) int { return f.Config.Ports.SSH + n.ID }

// ConsolePort is the TCP port of the guest's serial console.
func (f *Farm) ConsolePort(n *Node) int { return f.Config.Ports.Console + n.ID }

// VNCPort is the TCP port of the guest's VNC display (display number = id
// when the base is 5900).
func (f *Farm) VNCPort(n *Node) int { return f.Config.Ports.VNC + n.ID }

// WANNet is the /24 network around the node's WAN address, as QEMU user-net's
// net= option wants it.
func (f *Farm) WANNet(n *Node) string { return net24(n.WAN) }

// LANNet is the /24 network around the node's LAN address.
func (f *Farm) LANNet(n *Node) string { return net24(n.LAN) }

// LANRouter is the .1 address of the LAN network with its prefix, the
// bridge's address when the host routes for the LAN; "" without nodes (a
// farm of Default(), which no loaded configuration is).
func (f *Farm) LANRouter() string {
	nodes := f.Nodes()
	if len(nodes) == 0 {
		return ""
	}
	ip := net.ParseIP(nodes[0].LAN).To4()
	if ip == nil {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d.1/24", ip[0], ip[1], ip[2])
}

func net24(addr string) string {
	ip := net.ParseIP(addr).To4()
	if ip == nil {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d.0/24", ip[0], ip[1], ip[2])
}

// NIC numbers for GuestMAC.
const (
	NICWAN  = 0
	NICLAN  = 1
	NICWLAN = 2
)

// GuestMAC is the MAC address of a QEMU guest's NIC: locally administered,
// distinct for every NIC of every instance, so clones of one image never
// collide on a bridge.
func GuestMAC(id, nic int) string {
	return fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", 0x50+nic, (id>>16)&0xff, (id>>8)&0xff, id&0xff)
}

// LANTap and WLANTap are the host TAP devices of instance n.
func (f *Farm) LANTap(n *Node) string  { return fmt.Sprintf("%s%d", f.Config.Net.LANTap, n.ID) }
func (f *Farm) WLANTap(n *Node) string { return fmt.Sprintf("%s%d", f.Config.Net.WLANTap, n.ID) }

// ---- cache layout ----

// InstanceDir is cache/clones/raspi-clone-N.
func (f *Farm) InstanceDir(id int) string {
	return filepath.Join(f.Config.CacheDir(), "clones", fmt.Sprintf("raspi-clone-%d", id))
}

// Disk is the instance's disk: clone-0.raw (a link to the registered image)
// or clone-N.qcow2.
func (f *Farm) Disk(id int) string {
	if id == 0 {
		return f.instanceFile(id, "raw")
	}
	return f.instanceFile(id, "qcow2")
}

// Kernel, DTB and Sig are the boot files next to the disk.
func (f *Farm) Kernel(id int) string { return f.instanceFile(id, "ker") }
func (f *Farm) DTB(id int) string    { return f.instanceFile(id, "dtb") }
func (f *Farm) Sig(id int) string    { return f.instanceFile(id, "sig") }

func (f *Farm) instanceFile(id int, ext string) string {
	return filepath.Join(f.InstanceDir(id), fmt.Sprintf("clone-%d.%s", id, ext))
}

// QMP, Pidfile, KnownHosts and Lock are per-instance runtime files.
func (f *Farm) QMP(id int) string        { return filepath.Join(f.InstanceDir(id), "qmp.sock") }
func (f *Farm) Pidfile(id int) string    { return filepath.Join(f.InstanceDir(id), "qemu.pid") }
func (f *Farm) KnownHosts(id int) string { return filepath.Join(f.InstanceDir(id), "known_hosts") }
func (f *Farm) Lock(id int) string       { return filepath.Join(f.InstanceDir(id), "lock") }

// MountDir is cache/mnt/boot or cache/mnt/root.
func (f *Farm) MountDir(part string) string {
	return filepath.Join(f.Config.CacheDir(), "mnt", part)
}

// ConfDir holds flag files and the registered image's record.
func (f *Farm) ConfDir() string { return filepath.Join(f.Config.CacheDir(), "conf") }
