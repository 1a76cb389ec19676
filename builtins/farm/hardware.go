package farm

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"go.starlark.net/starlark"
)

// DefaultBaud is a hardware node's serial speed unless serial_baud says
// otherwise: the Raspberry Pi's console (ttyAMA0/ttyS0) runs at 115200 8N1.
const DefaultBaud = 115200

// Bauds are the serial speeds serial_baud may name (those termios has a
// constant for that a USB-UART commonly does).
var Bauds = []int{9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600}

// Serial is how a hardware node's serial console is reached: a local
// device (a USB-UART such as /dev/ttyUSB0, a /dev/serial/by-id/... link, or
// a pty) opened raw at Baud 8N1, or a TCP endpoint that passes the bytes
// through unchanged (ser2net's raw mode).
type Serial struct {
	Device string // absolute path of the device, or ""
	Addr   string // host:port of a raw TCP serial server, or ""
	Baud   int    // bits per second (a device's; a TCP server sets its own)
}

// String is the serial console as config.star writes it: the device path,
// or tcp:HOST:PORT.
func (s *Serial) String() string {
	if s == nil {
		return ""
	}
	if s.Device != "" {
		return s.Device
	}
	return "tcp:" + s.Addr
}

// ParseSerial reads config.star's serial = "...": an absolute device path
// or tcp:HOST:PORT. Anything else is an error saying what is accepted.
func ParseSerial(v string) (*Serial, error) {
	switch {
	case strings.HasPrefix(v, "tcp:"):
		hp := strings.TrimPrefix(v, "tcp:")
		host, port, err := net.SplitHostPort(hp)
		p, perr := strconv.Atoi(port)
		if err != nil || host == "" || perr != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("serial %q: want tcp:HOST:PORT (a raw TCP serial server such as ser2net's raw mode, e.g. tcp:rack1:3001)", v)
		}
		return &Serial{Addr: net.JoinHostPort(host, port)}, nil
	case strings.HasPrefix(v, "rfc2217:") || strings.HasPrefix(v, "telnet:"):
		return nil, fmt.Errorf("serial %q: telnet/RFC 2217 framing is not spoken; configure the port in ser2net's raw mode and write tcp:HOST:PORT", v)
	case filepath.IsAbs(v) && filepath.Clean(v) == v && !strings.ContainsAny(v, "\x00\n"):
		return &Serial{Device: v, Baud: DefaultBaud}, nil
	}
	return nil, fmt.Errorf("serial %q: want a device path such as /dev/ttyUSB0 (absolute, clean) or tcp:HOST:PORT", v)
}

// Power is how a hardware node's power is switched: argv templates (see
// RenderPower) or the uhubctl preset, which fills them in.
type Power struct {
	On, Off []string // argv templates; both are required
	Cycle   []string // optional: without it a cycle is Off, a pause, On
	State   []string // optional: tells whether the power is on (see the power module)
	// Sudo runs the commands through the privilege prefix (uhubctl needs
	// root to write to the hub, unless udev rules say otherwise).
	Sudo bool
	// Preset is "uhubctl" for the preset (State's output is uhubctl's
	// status), "" for the user's own templates.
	Preset string
	Hub    string // the preset's hub location (uhubctl -l)
	Port   int    // the preset's port (uhubctl -p)
}

// Describe is the power control in one line, for tables and messages.
func (p *Power) Describe() string {
	if p == nil {
		return ""
	}
	if p.Preset == "uhubctl" {
		return fmt.Sprintf("uhubctl hub %s port %d", p.Hub, p.Port)
	}
	return "commands: " + strings.Join(p.On, " ")
}

// Placeholders are what a power template may hold, each replaced by the
// node's value: {id} 5, {alias} enfive, {name} n5, {lan} its LAN address,
// {lan_mac}, {wan_mac}, {serial} (the device path or tcp:HOST:PORT, "" when
// none). {{ and }} are literal braces.
var Placeholders = []string{"id", "alias", "name", "lan", "lan_mac", "wan_mac", "serial"}

// RenderPower fills the placeholders of an argv template with node n's
// values. An unknown placeholder or an unmatched brace is an error naming
// the word (config.star's validation calls it, so a run never meets one).
func RenderPower(n *Node, tmpl []string) ([]string, error) {
	vals := map[string]string{
		"id": strconv.Itoa(n.ID), "alias": n.Alias, "name": n.Name(), "lan": n.LAN,
		"lan_mac": n.LANMAC, "wan_mac": n.WANMAC, "serial": n.Serial.String(),
	}
	out := make([]string, len(tmpl))
	for i, w := range tmpl {
		s, err := renderWord(w, vals)
		if err != nil {
			return nil, err
		}
		out[i] = s
	}
	return out, nil
}

func renderWord(w string, vals map[string]string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(w); i++ {
		c := w[i]
		switch {
		case c == '{' && i+1 < len(w) && w[i+1] == '{':
			b.WriteByte('{')
			i++
		case c == '}' && i+1 < len(w) && w[i+1] == '}':
			b.WriteByte('}')
			i++
		case c == '{':
			end := strings.IndexByte(w[i:], '}')
			if end < 0 {
				return "", fmt.Errorf("%q: '{' without '}' (write {{ for a brace)", w)
			}
			key := w[i+1 : i+end]
			v, ok := vals[key]
			if !ok {
				return "", fmt.Errorf("%q: unknown placeholder {%s} (known: {%s})", w, key, strings.Join(Placeholders, "}, {"))
			}
			b.WriteString(v)
			i += end
		case c == '}':
			return "", fmt.Errorf("%q: '}' without '{' (write }} for a brace)", w)
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// hubRE is a USB hub location as uhubctl -l takes it: bus-port[.port...].
var hubRE = regexp.MustCompile(`^[0-9]{1,3}-[0-9]{1,3}(\.[0-9]{1,3}){0,6}$`)

// Uhubctl is the uhubctl preset: per-port USB power of a smart hub
// (uhubctl -l HUB -p PORT -a on|off|cycle; its status output tells the
// state). sudo runs it through the privilege prefix.
func Uhubctl(hub string, port int, sudo bool) (*Power, error) {
	if !hubRE.MatchString(hub) {
		return nil, fmt.Errorf("uhubctl: hub %q is not a USB hub location such as 1-1 or 1-1.4 (see `uhubctl` without arguments: \"Current status for hub 1-1 ...\")", hub)
	}
	if port < 1 || port > 255 {
		return nil, fmt.Errorf("uhubctl: port %d is not a hub port (1-255)", port)
	}
	base := []string{"uhubctl", "-l", hub, "-p", strconv.Itoa(port)}
	with := func(extra ...string) []string { return append(append([]string(nil), base...), extra...) }
	return &Power{
		On: with("-a", "on"), Off: with("-a", "off"), Cycle: with("-a", "cycle"), State: with(),
		Sudo: sudo, Preset: "uhubctl", Hub: hub, Port: port,
	}, nil
}

// powerValue is the result of uhubctl(...) in config.star.
type powerValue struct{ p *Power }

func (v *powerValue) String() string {
	return fmt.Sprintf("uhubctl(hub=%q, port=%d)", v.p.Hub, v.p.Port)
}
func (v *powerValue) Type() string          { return "power" }
func (v *powerValue) Freeze()               {}
func (v *powerValue) Truth() starlark.Bool  { return true }
func (v *powerValue) Hash() (uint32, error) { return 0, fmt.Errorf("unhashable: power") }

func uhubctlBuiltin(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var hub string
	var port int
	sudo := true
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "hub", &hub, "port", &port, "sudo?", &sudo); err != nil {
		return nil, err
	}
	p, err := Uhubctl(hub, port, sudo)
	if err != nil {
		return nil, err
	}
	return &powerValue{p}, nil
}

// hardwareArgs are node()'s hardware settings as given.
type hardwareArgs struct {
	serial                string
	baud                  int
	power                 starlark.Value
	on, off, cycle, state starlark.Value
	onSet, offSet         bool
	cycleSet, stateSet    bool
	err                   error
}

// hardwareKwargs takes node()'s hardware keywords (serial, serial_baud,
// power, power_on, power_off, power_cycle, power_state) out of kwargs and
// returns the rest; a value of the wrong type is kept as an error for
// apply.
func hardwareKwargs(kwargs []starlark.Tuple) ([]starlark.Tuple, *hardwareArgs) {
	h := &hardwareArgs{}
	var rest []starlark.Tuple
	for _, kv := range kwargs {
		k, _ := starlark.AsString(kv[0])
		v := kv[1]
		switch k {
		case "serial":
			s, ok := starlark.AsString(v)
			if !ok && h.err == nil {
				h.err = fmt.Errorf("serial wants a string such as \"/dev/ttyUSB0\" or \"tcp:rack1:3001\", got %s", v.Type())
			}
			h.serial = s
		case "serial_baud":
			b, err := starlark.AsInt32(v)
			if err != nil && h.err == nil {
				h.err = fmt.Errorf("serial_baud wants an integer such as 115200, got %s", v.Type())
			}
			if b == 0 && err == nil {
				b = -1 // refused by apply: 0 is no speed
			}
			h.baud = b
		case "power":
			h.power = v
		case "power_on":
			h.on, h.onSet = v, true
		case "power_off":
			h.off, h.offSet = v, true
		case "power_cycle":
			h.cycle, h.cycleSet = v, true
		case "power_state":
			h.state, h.stateSet = v, true
		default:
			rest = append(rest, kv)
		}
	}
	return rest, h
}

// apply checks the hardware settings of node n and stores them.
func (h *hardwareArgs) apply(n *Node) error {
	if h.err != nil {
		return fmt.Errorf("node %d: %v", n.ID, h.err)
	}
	hw := n.LANMAC != ""
	if h.serial != "" {
		if !hw {
			return fmt.Errorf("node %d: serial is for hardware nodes (give lan_mac); a QEMU guest's console is its TCP port (ports[\"console\"] + id)", n.ID)
		}
		s, err := ParseSerial(h.serial)
		if err != nil {
			return fmt.Errorf("node %d: %v", n.ID, err)
		}
		n.Serial = s
	}
	if h.baud != 0 {
		if n.Serial == nil || n.Serial.Device == "" {
			return fmt.Errorf("node %d: serial_baud is for a serial device (serial = \"/dev/ttyUSB0\"); a TCP serial server sets its own speed", n.ID)
		}
		ok := false
		for _, b := range Bauds {
			ok = ok || b == h.baud
		}
		if !ok {
			return fmt.Errorf("node %d: serial_baud %d is not one of %s", n.ID, h.baud, strings.Trim(fmt.Sprint(Bauds), "[]"))
		}
		n.Serial.Baud = h.baud
	}
	var p *Power
	if h.power != nil && h.power != starlark.None {
		pv, ok := h.power.(*powerValue)
		if !ok {
			return fmt.Errorf("node %d: power wants a preset such as uhubctl(hub = \"1-1\", port = 2), got %s (for your own commands use power_on and power_off)", n.ID, h.power.Type())
		}
		if h.onSet || h.offSet || h.cycleSet || h.stateSet {
			return fmt.Errorf("node %d: power = %s and power_on/power_off/power_cycle/power_state exclude each other: the preset gives all four", n.ID, pv)
		}
		c := *pv.p
		p = &c
	} else if h.onSet || h.offSet || h.cycleSet || h.stateSet {
		if !h.onSet || !h.offSet {
			return fmt.Errorf("node %d: power_on and power_off go together (pifarm switches a board on and off; power_cycle and power_state are optional)", n.ID)
		}
		p = &Power{}
		for _, t := range []struct {
			field string
			v     starlark.Value
			set   bool
			dst   *[]string
		}{{"power_on", h.on, h.onSet, &p.On}, {"power_off", h.off, h.offSet, &p.Off}, {"power_cycle", h.cycle, h.cycleSet, &p.Cycle}, {"power_state", h.state, h.stateSet, &p.State}} {
			if !t.set {
				continue
			}
			argv, err := strs(t.v)
			if _, isStr := t.v.(starlark.String); err != nil || isStr || len(argv) == 0 || argv[0] == "" {
				return fmt.Errorf("node %d: %s wants a command as a list of words, e.g. [\"/usr/local/bin/relay\", \"{id}\", \"on\"], got %s", n.ID, t.field, t.v)
			}
			*t.dst = argv
		}
	}
	if p != nil {
		if !hw {
			return fmt.Errorf("node %d: power control is for hardware nodes (give lan_mac); a QEMU guest is started and stopped by pifarm run box", n.ID)
		}
		n.Power = p
		for _, t := range [][]string{p.On, p.Off, p.Cycle, p.State} {
			if _, err := RenderPower(n, t); err != nil {
				return fmt.Errorf("node %d: power command %s", n.ID, err)
			}
		}
	}
	return nil
}

// checkHardware refuses two hardware nodes on one serial console or one
// power switch (a hub port): a command for one board would reach another.
func checkHardware(nodes []*Node) error {
	serial, power := map[string]int{}, map[string]int{}
	for _, n := range nodes {
		e := func(format string, args ...any) error {
			return &ConfigError{Pos: n.Pos, Msg: fmt.Sprintf("node %d: ", n.ID) + fmt.Sprintf(format, args...)}
		}
		if s := n.Serial.String(); s != "" {
			if id, dup := serial[s]; dup {
				return e("serial %s is also the serial console of node %d (one console per board)", s, id)
			}
			serial[s] = n.ID
		}
		if p := n.Power; p != nil && p.Preset == "uhubctl" {
			k := p.Hub + ":" + strconv.Itoa(p.Port)
			if id, dup := power[k]; dup {
				return e("power %s is also the power of node %d (one hub port per board)", p.Describe(), id)
			}
			power[k] = n.ID
		}
	}
	return nil
}
