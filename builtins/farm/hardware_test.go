package farm

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// hwConfig is a node table of one QEMU guest and one hardware box whose
// node() call ends with extra.
func hwConfig(extra string) string {
	return "nodes = [\n  node(id=1, alias=\"one\", lan=\"192.168.66.7\", wan=\"100.65.4.15\"),\n" +
		"  node(id=5, alias=\"five\", lan=\"192.168.66.12\", wan=\"100.65.10.15\", lan_mac=\"b8:27:eb:00:00:05\"" + extra + "),\n]\n"
}

func loadSrc(t *testing.T, src string) (*Config, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "user.star")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return LoadOver(nil, p, nil)
}

func TestHardwareNodeSettings(t *testing.T) {
	for _, tc := range []struct {
		name, extra string
		check       func(t *testing.T, n *Node)
	}{
		{"device", `, serial="/dev/ttyUSB0"`, func(t *testing.T, n *Node) {
			if *n.Serial != (Serial{Device: "/dev/ttyUSB0", Baud: 115200}) {
				t.Errorf("serial %+v", *n.Serial)
			}
		}},
		{"by-id link and speed", `, serial="/dev/serial/by-id/usb-FTDI_FT232R-if00-port0", serial_baud=921600`, func(t *testing.T, n *Node) {
			if n.Serial.Baud != 921600 || n.Serial.String() != "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0" {
				t.Errorf("serial %+v", *n.Serial)
			}
		}},
		{"ser2net raw", `, serial="tcp:rack1:3001"`, func(t *testing.T, n *Node) {
			if n.Serial.Addr != "rack1:3001" || n.Serial.String() != "tcp:rack1:3001" {
				t.Errorf("serial %+v", *n.Serial)
			}
		}},
		{"ipv6 ser2net", `, serial="tcp:[::1]:3001"`, func(t *testing.T, n *Node) {
			if n.Serial.Addr != "[::1]:3001" {
				t.Errorf("serial %+v", *n.Serial)
			}
		}},
		{"uhubctl preset", `, power=uhubctl(hub="1-1.4", port=2)`, func(t *testing.T, n *Node) {
			p := n.Power
			if !reflect.DeepEqual(p.On, []string{"uhubctl", "-l", "1-1.4", "-p", "2", "-a", "on"}) ||
				!reflect.DeepEqual(p.Off, []string{"uhubctl", "-l", "1-1.4", "-p", "2", "-a", "off"}) ||
				!reflect.DeepEqual(p.Cycle, []string{"uhubctl", "-l", "1-1.4", "-p", "2", "-a", "cycle"}) ||
				!reflect.DeepEqual(p.State, []string{"uhubctl", "-l", "1-1.4", "-p", "2"}) || !p.Sudo || p.Preset != "uhubctl" {
				t.Errorf("power %+v", p)
			}
			if p.Describe() != "uhubctl hub 1-1.4 port 2" {
				t.Errorf("describe %q", p.Describe())
			}
		}},
		{"uhubctl without sudo", `, power=uhubctl(hub="2-1", port=4, sudo=False)`, func(t *testing.T, n *Node) {
			if n.Power.Sudo {
				t.Error("sudo stayed on")
			}
		}},
		{"templates", `, power_on=["relay", "--board", "{id}", "on"], power_off=["relay", "--board", "{id}", "off"], power_state=("relay", "{alias}")`, func(t *testing.T, n *Node) {
			if n.Power.Cycle != nil || n.Power.Sudo || n.Power.Preset != "" || len(n.Power.State) != 2 {
				t.Errorf("power %+v", n.Power)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := loadSrc(t, hwConfig(tc.extra))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c.Nodes[1])
			if c.Nodes[0].Serial != nil || c.Nodes[0].Power != nil {
				t.Error("the QEMU guest got hardware settings")
			}
		})
	}
}

func TestHardwareNodeErrors(t *testing.T) {
	guest := func(extra string) string {
		return "nodes = [node(id=1, alias=\"one\", lan=\"192.168.66.7\", wan=\"100.65.4.15\"" + extra + ")]\n"
	}
	two := func(a, b string) string {
		return "nodes = [\n  node(id=5, alias=\"five\", lan=\"192.168.66.12\", wan=\"100.65.10.15\", lan_mac=\"b8:27:eb:00:00:05\"" + a + "),\n" +
			"  node(id=6, alias=\"six\", lan=\"192.168.66.13\", wan=\"100.65.11.15\", lan_mac=\"b8:27:eb:00:00:06\"" + b + "),\n]\n"
	}
	for _, tc := range []struct{ name, src, want string }{
		{"serial on a guest", guest(`, serial="/dev/ttyUSB0"`), "node 1: serial is for hardware nodes (give lan_mac)"},
		{"power on a guest", guest(`, power=uhubctl(hub="1-1", port=2)`), "node 1: power control is for hardware nodes"},
		{"relative device", hwConfig(`, serial="ttyUSB0"`), `serial "ttyUSB0": want a device path such as /dev/ttyUSB0`},
		{"unclean device", hwConfig(`, serial="/dev/../dev/ttyUSB0"`), `want a device path`},
		{"tcp without port", hwConfig(`, serial="tcp:rack1"`), `want tcp:HOST:PORT`},
		{"tcp port 0", hwConfig(`, serial="tcp:rack1:0"`), `want tcp:HOST:PORT`},
		{"rfc2217", hwConfig(`, serial="rfc2217:rack1:3001"`), `ser2net's raw mode`},
		{"serial not a string", hwConfig(`, serial=5`), `serial wants a string`},
		{"odd speed", hwConfig(`, serial="/dev/ttyUSB0", serial_baud=12345`), `serial_baud 12345 is not one of 9600 19200`},
		{"speed of tcp", hwConfig(`, serial="tcp:rack1:3001", serial_baud=9600`), `serial_baud is for a serial device`},
		{"bad hub", hwConfig(`, power=uhubctl(hub="usb1", port=2)`), `hub "usb1" is not a USB hub location`},
		{"bad port", hwConfig(`, power=uhubctl(hub="1-1", port=0)`), `port 0 is not a hub port`},
		{"power a string", hwConfig(`, power="uhubctl"`), `power wants a preset such as uhubctl`},
		{"preset and template", hwConfig(`, power=uhubctl(hub="1-1", port=2), power_on=["x"]`), `exclude each other`},
		{"on without off", hwConfig(`, power_on=["relay", "on"]`), `power_on and power_off go together`},
		{"template a string", hwConfig(`, power_on="relay on", power_off=["relay", "off"]`), `power_on wants a command as a list of words`},
		{"empty template", hwConfig(`, power_on=[], power_off=["relay", "off"]`), `power_on wants a command`},
		{"unknown placeholder", hwConfig(`, power_on=["relay", "{port}"], power_off=["relay", "off"]`), `unknown placeholder {port} (known: {id}, {alias}`},
		{"open brace", hwConfig(`, power_on=["relay", "{id"], power_off=["relay", "off"]`), `'{' without '}'`},
		{"close brace", hwConfig(`, power_on=["relay", "id}"], power_off=["relay", "off"]`), `'}' without '{'`},
		{"shared console", two(`, serial="/dev/ttyUSB0"`, `, serial="/dev/ttyUSB0"`), `user.star:3:7: node 6: serial /dev/ttyUSB0 is also the serial console of node 5`},
		{"shared hub port", two(`, power=uhubctl(hub="1-1", port=2)`, `, power=uhubctl(hub="1-1", port=2)`), `node 6: power uhubctl hub 1-1 port 2 is also the power of node 5`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadSrc(t, tc.src)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "user.star:") {
				t.Errorf("the error does not name the file and line: %v", err)
			}
		})
	}
	// the same hub, other ports; other consoles: fine
	if _, err := loadSrc(t, two(`, serial="/dev/ttyUSB0", power=uhubctl(hub="1-1", port=1)`, `, serial="/dev/ttyUSB1", power=uhubctl(hub="1-1", port=2)`)); err != nil {
		t.Fatal(err)
	}
}

func TestRenderPower(t *testing.T) {
	n := &Node{ID: 5, Alias: "enfive", LAN: "192.168.66.12", LANMAC: "b8:27:eb:00:00:05", WANMAC: "00:e0:4c:00:00:05",
		Serial: &Serial{Device: "/dev/ttyUSB0", Baud: 115200}}
	for _, tc := range []struct {
		tmpl []string
		want []string
		err  string
	}{
		{[]string{"relay", "{id}", "on"}, []string{"relay", "5", "on"}, ""},
		{[]string{"pdu", "--outlet={alias}", "{name}.{lan}"}, []string{"pdu", "--outlet=enfive", "n5.192.168.66.12"}, ""},
		{[]string{"x", "{lan_mac}/{wan_mac}", "{serial}"}, []string{"x", "b8:27:eb:00:00:05/00:e0:4c:00:00:05", "/dev/ttyUSB0"}, ""},
		{[]string{"sh", "-c", "echo {{{id}}} }}"}, []string{"sh", "-c", "echo {5} }"}, ""},
		{[]string{"x", "{}"}, nil, "unknown placeholder {}"},
		{[]string{"x", "{ID}"}, nil, "unknown placeholder {ID}"},
		{[]string{"x", "a}b"}, nil, "'}' without '{'"},
	} {
		got, err := RenderPower(n, tc.tmpl)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.tmpl, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: %q, %v; want %q", tc.tmpl, got, err, tc.want)
		}
	}
	// a node without a serial console renders {serial} as ""
	got, err := RenderPower(&Node{ID: 6, Alias: "six"}, []string{"{serial}"})
	if err != nil || got[0] != "" {
		t.Errorf("%q %v", got, err)
	}
}

// FuzzParseSerial: any text either parses to a device path or TCP address
// that prints back as given (for a device) and holds no newline, or is
// refused with a message saying what is accepted.
func FuzzParseSerial(f *testing.F) {
	for _, s := range []string{"/dev/ttyUSB0", "tcp:rack1:3001", "tcp:[::1]:1", "rfc2217:x:1", "ttyS0", "/dev/../x", "tcp::1", "tcp:h:99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		s, err := ParseSerial(v)
		if err != nil {
			if !strings.Contains(err.Error(), "want") && !strings.Contains(err.Error(), "raw mode") {
				t.Fatalf("%q: error says nothing of what is accepted: %v", v, err)
			}
			return
		}
		if (s.Device == "") == (s.Addr == "") {
			t.Fatalf("%q: %+v is neither a device nor an address", v, s)
		}
		if s.Device != "" && (s.String() != v || s.Baud != DefaultBaud) {
			t.Fatalf("%q: device %+v", v, s)
		}
		if strings.ContainsAny(s.String(), "\n\x00") {
			t.Fatalf("%q: %q holds a newline or NUL", v, s.String())
		}
	})
}

// FuzzRenderPower: a rendered template never keeps an unescaped
// placeholder and never fails on text without braces.
func FuzzRenderPower(f *testing.F) {
	for _, s := range []string{"{id}", "{{", "}}", "a{alias}b", "{", "}", "{x}", "{{{id}}}"} {
		f.Add(s)
	}
	n := &Node{ID: 7, Alias: "seven", LAN: "10.0.0.7"}
	f.Fuzz(func(t *testing.T, w string) {
		got, err := RenderPower(n, []string{w})
		if !strings.ContainsAny(w, "{}") {
			if err != nil || got[0] != w {
				t.Fatalf("%q: %q %v", w, got, err)
			}
		}
		if err == nil && strings.Contains(got[0], "{id}") && !strings.Contains(w, "{{id}}") {
			t.Fatalf("%q: placeholder left in %q", w, got[0])
		}
	})
}
