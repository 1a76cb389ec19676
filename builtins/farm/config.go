// Package farm is the ground every pifarm module stands on: the
// configuration (config.star), the node table, instance ids and aliases,
// per-instance ports, MAC addresses and cache paths, and the guest's
// /etc/hosts, /etc/iftab and /etc/wifitab rendered from the one node table.
package farm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"go.starlark.net/starlark"
	"go.starlark.net/syntax"
	"pifarm/builtins/trace"
)

// Config is the parsed config.star.
type Config struct {
	// Path names where the configuration came from (a file, or
	// "the built-in config.star").
	Path string

	Cache         string   // cache folder: clones, boot files, keys, mounts
	ImageSizesGiB []int    // accepted raw image sizes, ascending
	MarginPercent float64  // disk margin reserve after partition 2
	Passwords     []string // passwords to try for user pi
	Privilege     []string // privilege command, e.g. ["sudo"]
	GuestSoftware string   // extra guest software tree (GUEST_INSTALL)
	QEMU          QEMUConfig
	Ports         Ports
	Net           NetConfig
	Tools         map[string]bool // optional helpers: remote-viewer, guestmount
	// Host is the libvirt URI of every QEMU node that names none ("":
	// a plain QEMU process of this machine); see HostURI.
	Host  string
	Nodes []*Node

	pos map[string]syntax.Position
}

// QEMUConfig holds how guests are started.
type QEMUConfig struct {
	Binary  string
	Machine string
	Memory  string
	CPUs    int
	Accel   string // e.g. "tcg,thread=single"; empty for QEMU's default
	Append  string // kernel command line
	Timeout int    // seconds to wait for QMP after start
}

// Ports are the bases of the per-instance ports.
type Ports struct{ SSH, Console, VNC int }

// NetConfig names the host side of the guests' networks.
type NetConfig struct {
	Bridge   string // LAN bridge, q0br
	LANTap   string // LAN TAP prefix, q0tap
	WLANTap  string // WLAN TAP prefix, q1tap
	WLANHost string // host end of the guests' WLAN, 172.19.111.2/24
	WLANAddr string // the guests' own wlan0 address, 172.19.111.1/24
}

// Node is one row of the node table.
type Node struct {
	ID          int
	Alias       string
	LAN         string // LAN IPv4 address
	WAN         string // WAN IPv4 address (QEMU user-net gives it by DHCP)
	LANMAC      string // hardware box: MAC of the built-in NIC (lanN)
	WANMAC      string // hardware box: MAC of the USB WAN adaptor
	WifiChannel int
	SSID        string
	// Tags are the node's own labels (config.star's tags = [...]): the
	// node set @TAG selects the nodes carrying TAG.
	Tags []string
	// Host is the node's own libvirt URI (node(host = ...)); HostSet
	// tells it was given, so host = "" keeps a node off the
	// configuration's host. Farm.Host resolves both.
	Host    string
	HostSet bool
	// Serial is a hardware box's serial console (nil: none configured).
	Serial *Serial
	// Power switches a hardware box's power (nil: not under pifarm's control).
	Power *Power
	Pos   syntax.Position
}

// ConfigError is a configuration mistake, positioned in the file.
type ConfigError struct {
	Pos syntax.Position
	Msg string
}

func (e *ConfigError) Error() string {
	if e.Pos.IsValid() {
		return fmt.Sprintf("%s: %s", e.Pos, e.Msg)
	}
	return e.Msg
}

// settings lists every top-level name config.star may set. Names that begin
// with "_" are the user's own helpers and are ignored.
var settings = map[string]bool{
	"cache": true, "image_sizes_gib": true, "margin_percent": true, "pi_passwords": true,
	"privilege": true, "guest_software": true, "qemu": true, "ports": true, "net": true,
	"tools": true, "nodes": true, "host": true,
}

// Load reads and validates a config.star on top of the built-in defaults.
// src may be nil to read path.
func Load(path string, src []byte) (*Config, error) {
	return LoadOver(nil, path, src)
}

// LoadOver reads and validates a config.star whose omitted settings keep
// the values of base (the embedded default configuration); nil base means
// Default().
func LoadOver(base *Config, path string, src []byte) (*Config, error) {
	return LoadContext(context.Background(), base, path, src)
}

// LoadContext is LoadOver for a run: cancelling ctx (Ctrl-C, SIGTERM) stops
// config.star's evaluation, an endless loop included.
func LoadContext(ctx context.Context, base *Config, path string, src []byte) (*Config, error) {
	if src == nil {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		src = b
	}
	opts := &syntax.FileOptions{Set: true, While: true, TopLevelControl: true, GlobalReassign: true, Recursion: true}
	f, err := opts.Parse(path, src, 0)
	if err != nil {
		return nil, configErr(err)
	}
	pos := map[string]syntax.Position{}
	for _, st := range f.Stmts {
		if a, ok := st.(*syntax.AssignStmt); ok {
			if id, ok := a.LHS.(*syntax.Ident); ok {
				if _, seen := pos[id.Name]; !seen {
					pos[id.Name] = id.NamePos
				}
			}
		}
	}
	thread := &starlark.Thread{Name: "config", Load: func(*starlark.Thread, string) (starlark.StringDict, error) {
		return nil, errors.New("load() is not available in config.star")
	}}
	stop := context.AfterFunc(ctx, func() { thread.Cancel("interrupted") })
	globals, err := starlark.ExecFileOptions(opts, thread, path, src, predeclared())
	stop()
	if err != nil {
		return nil, configErr(err)
	}
	c := Default()
	if base != nil {
		c = base.clone()
	}
	c.Path = path
	c.pos = pos
	names := make([]string, 0, len(globals))
	for k := range globals {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if strings.HasPrefix(k, "_") {
			continue
		}
		if _, isFunc := globals[k].(*starlark.Function); isFunc {
			continue
		}
		if !settings[k] {
			return nil, c.errf(k, "unknown setting %q (known: %s; prefix your own names with _)", k, known())
		}
		if err := c.set(k, globals[k]); err != nil {
			return nil, err
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func known() string {
	var ks []string
	for k := range settings {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

// configErr turns a Starlark parse or evaluation error into a positioned
// ConfigError (file:line:col of the innermost frame in the file).
func configErr(err error) error {
	var se syntax.Error
	if errors.As(err, &se) {
		return &ConfigError{Pos: se.Pos, Msg: se.Msg}
	}
	var ee *starlark.EvalError
	if errors.As(err, &ee) {
		for i := len(ee.CallStack) - 1; i >= 0; i-- {
			p := ee.CallStack[i].Pos
			if p.IsValid() && p.Filename() != "<builtin>" {
				return &ConfigError{Pos: p, Msg: ee.Msg}
			}
		}
		return &ConfigError{Msg: ee.Msg}
	}
	return err
}

func (c *Config) errf(key, format string, args ...any) error {
	return &ConfigError{Pos: c.pos[key], Msg: fmt.Sprintf(format, args...)}
}

// Default is the built-in configuration used for any setting config.star
// leaves out.
func Default() *Config {
	return &Config{
		Cache:         "~/.cache/pifarm",
		ImageSizesGiB: []int{4, 8, 16},
		MarginPercent: 6,
		Passwords:     []string{"raspberry", "raspberrypi"},
		Privilege:     []string{"sudo"},
		QEMU: QEMUConfig{
			Binary: "qemu-system-aarch64", Machine: "raspi3b", Memory: "1G", CPUs: 4,
			Accel:   "tcg,thread=single",
			Append:  "rw earlyprintk loglevel=8 console=ttyAMA0,115200 dwc_otg.lpm_enable=0 root=/dev/mmcblk0p2 rootdelay=1",
			Timeout: 10,
		},
		Ports: Ports{SSH: 5700, Console: 5800, VNC: 5900},
		Net: NetConfig{Bridge: "q0br", LANTap: "q0tap", WLANTap: "q1tap",
			WLANHost: "172.19.111.2/24", WLANAddr: "172.19.111.1/24"},
		Tools: map[string]bool{"remote-viewer": true, "guestmount": true},
	}
}

func (c *Config) clone() *Config {
	n := *c
	n.ImageSizesGiB = append([]int(nil), c.ImageSizesGiB...)
	n.Passwords = append([]string(nil), c.Passwords...)
	n.Privilege = append([]string(nil), c.Privilege...)
	n.Tools = map[string]bool{}
	for k, v := range c.Tools {
		n.Tools[k] = v
	}
	n.Nodes = append([]*Node(nil), c.Nodes...)
	return &n
}

func (c *Config) set(k string, v starlark.Value) error {
	var err error
	switch k {
	case "cache":
		c.Cache, err = str(v)
	case "image_sizes_gib":
		c.ImageSizesGiB, err = ints(v)
		if err == nil {
			sort.Ints(c.ImageSizesGiB)
			for _, s := range c.ImageSizesGiB {
				if s <= 0 || s&(s-1) != 0 {
					err = fmt.Errorf("%d is not a power of two (QEMU's SD card needs one)", s)
				}
			}
		}
	case "margin_percent":
		c.MarginPercent, err = num(v)
		if err == nil && (c.MarginPercent < 0 || c.MarginPercent >= 50) {
			err = fmt.Errorf("%v is outside 0..50", c.MarginPercent)
		}
	case "pi_passwords":
		c.Passwords, err = strs(v)
	case "privilege":
		c.Privilege, err = strs(v)
	case "guest_software":
		c.GuestSoftware, err = str(v)
	case "host":
		c.Host, err = str(v)
		if err == nil && c.Host != "" {
			_, err = ParseHostURI(c.Host)
		}
	case "qemu":
		err = c.setQEMU(v)
	case "ports":
		err = dictInto(v, map[string]any{"ssh": &c.Ports.SSH, "console": &c.Ports.Console, "vnc": &c.Ports.VNC})
	case "net":
		err = dictInto(v, map[string]any{"bridge": &c.Net.Bridge, "lan_tap": &c.Net.LANTap,
			"wlan_tap": &c.Net.WLANTap, "wlan_host": &c.Net.WLANHost, "wlan_guest": &c.Net.WLANAddr})
	case "tools":
		d, ok := v.(*starlark.Dict)
		if !ok {
			err = fmt.Errorf("want a dict of tool name to bool, got %s", v.Type())
			break
		}
		for _, it := range d.Items() {
			name, ok1 := starlark.AsString(it[0])
			on, ok2 := it[1].(starlark.Bool)
			if !ok1 || !ok2 {
				err = fmt.Errorf("want \"tool\": True/False, got %s: %s", it[0], it[1])
				break
			}
			c.Tools[name] = bool(on)
		}
	case "nodes":
		l, ok := v.(*starlark.List)
		if !ok {
			err = fmt.Errorf("want a list of node(...), got %s", v.Type())
			break
		}
		c.Nodes = nil
		for i := 0; i < l.Len(); i++ {
			n, ok := l.Index(i).(*nodeValue)
			if !ok {
				err = fmt.Errorf("element %d is %s, want node(...)", i, l.Index(i).Type())
				break
			}
			c.Nodes = append(c.Nodes, n.n)
		}
	}
	if err != nil {
		return c.errf(k, "%s: %v", k, err)
	}
	return nil
}

func (c *Config) setQEMU(v starlark.Value) error {
	q := &c.QEMU
	return dictInto(v, map[string]any{"binary": &q.Binary, "machine": &q.Machine, "memory": &q.Memory,
		"cpus": &q.CPUs, "accel": &q.Accel, "append": &q.Append, "timeout": &q.Timeout})
}

var aliasRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9-]*$`)

func (c *Config) validate() error {
	if len(c.Nodes) == 0 {
		return c.errf("nodes", "nodes: the node table is empty")
	}
	services := []struct {
		name string
		base int
	}{{"ssh", c.Ports.SSH}, {"console", c.Ports.Console}, {"vnc", c.Ports.VNC}}
	for _, p := range services {
		if p.base <= 0 || p.base > 65535 {
			return c.errf("ports", "ports: %s base %d is not a port", p.name, p.base)
		}
	}
	ids, aliases, lans := map[int]bool{}, map[string]bool{}, map[string]bool{}
	type macUse struct {
		field string
		id    int
	}
	macs := map[string]macUse{}
	maxID := 0
	for _, n := range c.Nodes {
		e := func(format string, args ...any) error {
			return &ConfigError{Pos: n.Pos, Msg: fmt.Sprintf("node %d: ", n.ID) + fmt.Sprintf(format, args...)}
		}
		if ids[n.ID] {
			return e("duplicate id %d", n.ID)
		}
		if aliases[n.Alias] {
			return e("duplicate alias %q", n.Alias)
		}
		if lans[n.LAN] {
			return e("duplicate LAN address %s", n.LAN)
		}
		ids[n.ID], aliases[n.Alias], lans[n.LAN] = true, true, true
		// node() stores MACs in one spelling (lower case, colons), so
		// "B8:27:EB:.." and "b8-27-eb-.." are the same address here.
		for _, m := range []struct{ field, mac string }{{"lan_mac", n.LANMAC}, {"wan_mac", n.WANMAC}} {
			if m.mac == "" {
				continue
			}
			if u, dup := macs[m.mac]; dup {
				return e("%s %s is also the %s of node %d (a hardware box is found by its MACs: each must be unique)", m.field, m.mac, u.field, u.id)
			}
			macs[m.mac] = macUse{m.field, n.ID}
		}
		if n.ID > maxID {
			maxID = n.ID
		}
	}
	if err := checkHardware(c.Nodes); err != nil {
		return err
	}
	// Instance N uses base+N of every service: a port past 65535 is blamed
	// on ports when this file set it, else on the node.
	for _, n := range c.Nodes {
		for _, p := range services {
			if p.base+n.ID <= 65535 {
				continue
			}
			if _, mine := c.pos["ports"]; mine {
				return c.errf("ports", "ports: %s port of node %d (%s) would be %d, past 65535; choose a lower %s base", p.name, n.ID, n.Alias, p.base+n.ID, p.name)
			}
			return &ConfigError{Pos: n.Pos, Msg: fmt.Sprintf("node %d: its %s port would be %d, past 65535 (%s base %d + id); choose a smaller id or set ports", n.ID, p.name, p.base+n.ID, p.name, p.base)}
		}
	}
	// The per-instance ranges base..base+maxID of two services must not
	// share a port (an ssh forward on a console port fails at start).
	for i := range services {
		for j := i + 1; j < len(services); j++ {
			a, b := services[i], services[j]
			if a.base <= b.base+maxID && b.base <= a.base+maxID {
				return c.errf("ports", "ports: %s ports %d..%d and %s ports %d..%d overlap (node ids go up to %d); choose bases at least %d apart",
					a.name, a.base, a.base+maxID, b.name, b.base, b.base+maxID, maxID, maxID+1)
			}
		}
	}
	for _, a := range []struct{ key, v string }{{"wlan_host", c.Net.WLANHost}, {"wlan_guest", c.Net.WLANAddr}} {
		if _, _, err := net.ParseCIDR(a.v); err != nil {
			return c.errf("net", "net: %s %q is not an address/prefix", a.key, a.v)
		}
	}
	if len(c.ImageSizesGiB) == 0 {
		return c.errf("image_sizes_gib", "image_sizes_gib: empty")
	}
	if c.QEMU.CPUs < 1 {
		return c.errf("qemu", "qemu: cpus must be at least 1")
	}
	return nil
}

// CacheDir is the cache folder with ~ and $VARS expanded, made absolute.
func (c *Config) CacheDir() string {
	return ExpandPath(c.Cache)
}

// CheckCache checks the cache folder dir before a run uses it: it must be a
// folder owned by the user pifarm runs as (or by root) and writable by no
// one else, or another user could plant files or symbolic links that pifarm
// would read, run or write through. It reports whether dir exists; a missing
// dir is fine (MakeCache makes it).
func CheckCache(dir string) (exists bool, err error) {
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("cache folder %s: %w (set cache in config.star to a folder of your own)", dir, err)
	}
	if !fi.IsDir() {
		return true, fmt.Errorf("cache folder %s is not a folder (%s); remove it, or set cache in config.star to a folder of your own", dir, fi.Mode().Type())
	}
	uid := os.Geteuid()
	owner := -1
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		owner = int(st.Uid)
	}
	perm := fi.Mode().Perm()
	var problems, fixes []string
	if owner != uid && owner != 0 {
		problems = append(problems, fmt.Sprintf("is owned by %s, not by %s who runs pifarm", userName(owner), userName(uid)))
		fixes = append(fixes, fmt.Sprintf("chown %d %s", uid, trace.Quote(dir)))
	}
	if perm&0o022 != 0 {
		problems = append(problems, fmt.Sprintf("has mode %04o (writable by its group or by everyone)", perm))
		fixes = append(fixes, "chmod 700 "+trace.Quote(dir))
	}
	if len(problems) == 0 {
		return true, nil
	}
	return true, fmt.Errorf("cache folder %s %s: another user could plant files or symbolic links there that pifarm would use; fix: %s (as its owner or root), or set cache in config.star to a folder of your own",
		dir, strings.Join(problems, " and "), strings.Join(fixes, " && "))
}

// MakeCache makes the cache folder dir with mode 0700 (its missing parents
// with 0755), as `mkdir -p -m 700 DIR` does, and checks the result.
func MakeCache(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("make cache folder %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("make cache folder %s: %w", dir, err)
	}
	_, err := CheckCache(dir)
	return err
}

func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return fmt.Sprintf("%s (uid %d)", u.Username, uid)
	}
	return fmt.Sprintf("uid %d", uid)
}

// ExpandPath expands a leading ~ and $VARS and makes the path absolute.
func ExpandPath(p string) string {
	p = os.ExpandEnv(p)
	if p == "~" || strings.HasPrefix(p, "~/") {
		if h, err := os.UserHomeDir(); err == nil {
			p = filepath.Join(h, p[1:])
		}
	}
	if a, err := filepath.Abs(p); err == nil {
		p = a
	}
	return p
}

// ---- value helpers ----

func str(v starlark.Value) (string, error) {
	s, ok := starlark.AsString(v)
	if !ok {
		return "", fmt.Errorf("want a string, got %s %s", v.Type(), v)
	}
	return s, nil
}

func strs(v starlark.Value) ([]string, error) {
	it, ok := v.(starlark.Indexable)
	if !ok {
		return nil, fmt.Errorf("want a list of strings, got %s", v.Type())
	}
	var out []string
	for i := 0; i < it.Len(); i++ {
		s, err := str(it.Index(i))
		if err != nil {
			return nil, fmt.Errorf("element %d: %v", i, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func ints(v starlark.Value) ([]int, error) {
	it, ok := v.(starlark.Indexable)
	if !ok {
		return nil, fmt.Errorf("want a list of integers, got %s", v.Type())
	}
	var out []int
	for i := 0; i < it.Len(); i++ {
		n, err := starlark.AsInt32(it.Index(i))
		if err != nil {
			return nil, fmt.Errorf("element %d: want an integer, got %s", i, it.Index(i))
		}
		out = append(out, n)
	}
	return out, nil
}

func num(v starlark.Value) (float64, error) {
	switch x := v.(type) {
	case starlark.Int:
		n, _ := x.Int64()
		return float64(n), nil
	case starlark.Float:
		return float64(x), nil
	}
	return 0, fmt.Errorf("want a number, got %s %s", v.Type(), v)
}

// dictInto copies the entries of a Starlark dict into typed fields; unknown
// keys are errors.
func dictInto(v starlark.Value, fields map[string]any) error {
	d, ok := v.(*starlark.Dict)
	if !ok {
		return fmt.Errorf("want a dict, got %s", v.Type())
	}
	for _, it := range d.Items() {
		k, ok := starlark.AsString(it[0])
		if !ok {
			return fmt.Errorf("key %s is not a string", it[0])
		}
		f, ok := fields[k]
		if !ok {
			var ks []string
			for x := range fields {
				ks = append(ks, x)
			}
			sort.Strings(ks)
			return fmt.Errorf("unknown key %q (known: %s)", k, strings.Join(ks, ", "))
		}
		switch p := f.(type) {
		case *string:
			s, err := str(it[1])
			if err != nil {
				return fmt.Errorf("%s: %v", k, err)
			}
			*p = s
		case *int:
			n, err := starlark.AsInt32(it[1])
			if err != nil {
				return fmt.Errorf("%s: want an integer, got %s", k, it[1])
			}
			*p = n
		}
	}
	return nil
}
