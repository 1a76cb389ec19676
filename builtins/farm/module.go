package farm

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/trace"
)

// NodeStruct is the Starlark view of a node, with everything a recipe needs
// to reach it: ports, addresses, MACs, TAPs and cache paths.
func (f *Farm) NodeStruct(n *Node) *starlarkstruct.Struct {
	s := func(v string) starlark.Value { return starlark.String(v) }
	i := func(v int) starlark.Value { return starlark.MakeInt(v) }
	host, remote := "", ""
	if h, ok := f.Host(n); ok {
		host = h.URI
		if !h.Local() {
			remote = sshLogin(h)
			if h.Port != 22 {
				remote = "-p " + strconv.Itoa(h.Port) + " " + remote
			}
		}
	}
	tags := make(starlark.Tuple, len(n.Tags))
	for k, t := range n.Tags {
		tags[k] = starlark.String(t)
	}
	return starlarkstruct.FromStringDict(starlark.String("node"), starlark.StringDict{
		"id":           i(n.ID),
		"alias":        s(n.Alias),
		"kind":         s(n.Kind()),
		"tags":         tags,
		"name":         s(n.Name()),
		"lan":          s(n.LAN),
		"wan":          s(n.WAN),
		"lan_net":      s(f.LANNet(n)),
		"wan_net":      s(f.WANNet(n)),
		"ssh_port":     i(f.SSHPort(n)),
		"console_port": i(f.ConsolePort(n)),
		"vnc_port":     i(f.VNCPort(n)),
		"vnc_display":  i(f.VNCPort(n) - 5900),
		"mac_wan":      s(GuestMAC(n.ID, NICWAN)),
		"mac_lan":      s(GuestMAC(n.ID, NICLAN)),
		"mac_wlan":     s(GuestMAC(n.ID, NICWLAN)),
		"hw_lan_mac":   s(n.LANMAC),
		"hw_wan_mac":   s(n.WANMAC),
		"wifi_channel": i(n.WifiChannel),
		"ssid":         s(n.SSID),
		"lan_tap":      s(f.LANTap(n)),
		"wlan_tap":     s(f.WLANTap(n)),
		"dir":          s(f.InstanceDir(n.ID)),
		"disk":         s(f.Disk(n.ID)),
		"kernel":       s(f.Kernel(n.ID)),
		"dtb":          s(f.DTB(n.ID)),
		"sig":          s(f.Sig(n.ID)),
		"qmp":          s(f.QMP(n.ID)),
		"pidfile":      s(f.Pidfile(n.ID)),
		"known_hosts":  s(f.KnownHosts(n.ID)),
		"serial":       s(n.Serial.String()),
		"power":        s(n.Power.Describe()),
		"host":         s(host),
		// remote is the ssh arguments reaching a remote libvirt host
		// ("root@farm2", "-p 2222 root@farm2"; "" otherwise): the
		// node's ports listen on that host's loopback.
		"remote": s(remote),
	})
}

// ConfigStruct is the Starlark view of the configuration.
func (f *Farm) ConfigStruct() *starlarkstruct.Struct {
	c := f.Config
	strList := func(v []string) *starlark.List {
		l := make([]starlark.Value, len(v))
		for i, x := range v {
			l[i] = starlark.String(x)
		}
		return starlark.NewList(l)
	}
	sizes := make([]starlark.Value, len(c.ImageSizesGiB))
	for i, x := range c.ImageSizesGiB {
		sizes[i] = starlark.MakeInt(x)
	}
	tools := starlark.NewDict(len(c.Tools))
	for k, v := range c.Tools {
		tools.SetKey(starlark.String(k), starlark.Bool(v))
	}
	d := starlark.StringDict{
		"path":            starlark.String(c.Path),
		"cache":           starlark.String(c.CacheDir()),
		"image_sizes_gib": starlark.NewList(sizes),
		"margin_percent":  starlark.Float(c.MarginPercent),
		"pi_passwords":    strList(c.Passwords),
		"privilege":       strList(c.Privilege),
		"guest_software":  starlark.String(c.GuestSoftware),
		"tools":           tools,
		"qemu": starlarkstruct.FromStringDict(starlark.String("qemu"), starlark.StringDict{
			"binary": starlark.String(c.QEMU.Binary), "machine": starlark.String(c.QEMU.Machine),
			"memory": starlark.String(c.QEMU.Memory), "cpus": starlark.MakeInt(c.QEMU.CPUs),
			"accel": starlark.String(c.QEMU.Accel), "append": starlark.String(c.QEMU.Append),
			"timeout": starlark.MakeInt(c.QEMU.Timeout),
		}),
		"ports": starlarkstruct.FromStringDict(starlark.String("ports"), starlark.StringDict{
			"ssh": starlark.MakeInt(c.Ports.SSH), "console": starlark.MakeInt(c.Ports.Console), "vnc": starlark.MakeInt(c.Ports.VNC),
		}),
		"net": starlarkstruct.FromStringDict(starlark.String("net"), starlark.StringDict{
			"bridge": starlark.String(c.Net.Bridge), "lan_tap": starlark.String(c.Net.LANTap),
			"wlan_tap": starlark.String(c.Net.WLANTap), "wlan_host": starlark.String(c.Net.WLANHost),
			"wlan_guest": starlark.String(c.Net.WLANAddr), "lan_router": starlark.String(f.LANRouter()),
		}),
	}
	return starlarkstruct.FromStringDict(starlark.String("config"), d)
}

// NewModule is the `farm` Starlark module of f on the door d, with the
// signature of every registered module (see Farm.Module).
func NewModule(d *trace.Door, f *Farm) *trace.Module { return f.Module(d) }

// Module is the `farm` Starlark module: the node table, the configuration,
// rendered guest tables, and read-only facts about the host.
func (f *Farm) Module(d *trace.Door) *trace.Module {
	m := &module{f: f}
	return &trace.Module{
		Name: "farm",
		Doc:  "The node table, the configuration (config.star) and read-only facts about the host.",
		Values: map[string]starlark.Value{
			"config":  f.ConfigStruct(),
			"dry_run": starlark.Bool(d.DryRun),
			"verbose": starlark.Bool(d.Verbose),
			// terminal: pifarm's standard output is a terminal (the
			// runtime sets it), so a recipe may redraw in place.
			"terminal": starlark.False,
		},
		Funcs: []trace.Func{
			{Name: "node", Args: "ref", Fn: m.node,
				Doc: "The node named by id (2, \"2\") or alias (\"entwo\"), as a struct with id, alias, kind (\"qemu\"\nor \"hardware\"), tags (a tuple), name, lan, wan, lan_net, wan_net, ssh_port, console_port,\nvnc_port, vnc_display, mac_wan, mac_lan, mac_wlan, hw_lan_mac, hw_wan_mac, wifi_channel,\nssid, lan_tap, wlan_tap, serial (a hardware box's serial console: a device path or\ntcp:HOST:PORT, \"\" when none), power (its power control in words, \"\" when none) and the cache paths dir, disk, kernel, dtb, sig, qmp, pidfile, known_hosts.\nAn unknown id or alias is a usage error (exit status 2)."},
			{Name: "nodes", Args: "set=\"all\"", Fn: m.nodes,
				Doc: "The nodes of a node set, ordered by id (see farm.node); every node of the table by default.\n" + setDoc},
			{Name: "parallel", Args: "fn, nodes, jobs=None", Fn: m.parallel, Doc: parallelDoc},
			{Name: "last_runs", Args: "", Fn: m.lastRuns, Doc: lastRunsDoc},
			{Name: "sleep", Args: "secs", Fn: sleep, Doc: sleepDoc},
			{Name: "hosts", Fn: m.hosts,
				Doc: "The guest's /etc/hosts rendered from the node table."},
			{Name: "iftab", Fn: m.iftab,
				Doc: "The guest's /etc/iftab (hardware interface names by MAC) rendered from the node table."},
			{Name: "wifitab", Fn: m.wifitab,
				Doc: "The guest's /etc/wifitab (alias, channel, SSID) rendered from the node table."},
			{Name: "env", Args: "name, default=\"\"", Fn: env,
				Doc: "The host environment variable name, or default when unset or empty."},
			{Name: "user", Args: "", Fn: invokingUser,
				Doc: "The invoking user's login name (behind sudo: SUDO_USER)."},
			{Name: "exists", Args: "path", Fn: exists,
				Doc: "Whether a host path exists (~ and $VARS expanded)."},
			{Name: "read", Args: "path, default=None", Fn: read,
				Doc: "The content of a host file (~ and $VARS expanded); default when it does not exist\n(an error when no default is given)."},
			{Name: "path", Args: "p", Fn: path,
				Doc: "p with ~ and $VARS expanded, made absolute."},
			{Name: "which", Args: "program", Fn: which,
				Doc: "The full path of a host program on PATH, or None."},
		},
	}
}

// module holds what the farm module's functions act on.
type module struct{ f *Farm }

func (m *module) node(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ref := InstanceRef{Farm: m.f}
	if err := trace.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &ref); err != nil {
		return nil, err
	}
	return m.f.NodeStruct(ref.Node), nil
}

// setDoc says what a node set is, in the reference of the functions that
// take one.
const setDoc = `A node set is an id or alias, or a comma-separated list of ids, aliases,
ranges (1-4), all, qemu (the QEMU guests), hardware (the boxes with lan_mac) and
@TAG (the nodes tagged so in config.star), e.g. "1-3,entfour" or "@rack1".
An unknown id, alias or tag is a usage error (exit status 2).`

func (m *module) nodes(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	set := "all"
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "set?", &set); err != nil {
		return nil, err
	}
	nodes, err := m.f.Select(set)
	if err != nil {
		return nil, err
	}
	l := make([]starlark.Value, 0, len(nodes))
	for _, n := range nodes {
		l = append(l, m.f.NodeStruct(n))
	}
	return starlark.NewList(l), nil
}

func (m *module) hosts(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	return rendered(b, args, kwargs, m.f.Hosts)
}

func (m *module) iftab(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	return rendered(b, args, kwargs, m.f.IfTab)
}

func (m *module) wifitab(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	return rendered(b, args, kwargs, m.f.WifiTab)
}

// rendered is the text of a table rendered from the node table (hosts,
// iftab, wifitab), which take no arguments.
func rendered(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple, render func() string) (starlark.Value, error) {
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 0); err != nil {
		return nil, err
	}
	return starlark.String(render()), nil
}

func env(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var name, def string
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "name", &name, "default?", &def); err != nil {
		return nil, err
	}
	if v := os.Getenv(name); v != "" {
		return starlark.String(v), nil
	}
	return starlark.String(def), nil
}

func invokingUser(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	return starlark.String(InvokingUser()), nil
}

func exists(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var p string
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &p); err != nil {
		return nil, err
	}
	_, err := os.Stat(ExpandPath(p))
	return starlark.Bool(err == nil), nil
}

func read(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var p string
	var def starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "path", &p, "default?", &def); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(ExpandPath(p))
	if errors.Is(err, os.ErrNotExist) && def != nil {
		return def, nil
	}
	if err != nil {
		return nil, err
	}
	return starlark.String(data), nil
}

func path(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var p string
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &p); err != nil {
		return nil, err
	}
	return starlark.String(ExpandPath(p)), nil
}

func which(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var p string
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &p); err != nil {
		return nil, err
	}
	if full, err := lookPath(p); err == nil {
		return starlark.String(full), nil
	}
	return starlark.None, nil
}

// InvokingUser is the login name of the user who ran pifarm (SUDO_USER when
// run through sudo).
func InvokingUser() string {
	if u := os.Getenv("SUDO_USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return strconv.Itoa(os.Getuid())
}

func lookPath(p string) (string, error) {
	if filepath.IsAbs(p) {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
		return "", os.ErrNotExist
	}
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		full := filepath.Join(dir, p)
		if fi, err := os.Stat(full); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return full, nil
		}
	}
	return "", os.ErrNotExist
}
