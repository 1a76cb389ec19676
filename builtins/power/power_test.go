package power

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"pifarm/builtins/farm"
	"pifarm/builtins/startest"
)

func TestParseUhubctl(t *testing.T) {
	for _, tc := range []struct {
		file string
		hub  string
		port int
		want string
		err  string
	}{
		{"uhubctl-usb2.txt", "1-1", 1, On, ""},
		{"uhubctl-usb2.txt", "1-1", 2, On, ""},
		{"uhubctl-usb2.txt", "1-1", 3, Off, ""},
		{"uhubctl-usb2.txt", "1-1", 4, On, ""},
		{"uhubctl-usb2.txt", "1-1", 5, "", "hub 1-1 without a port 5"},
		{"uhubctl-usb2.txt", "1-2", 1, "", "no hub 1-2"},
		{"uhubctl-usb3.txt", "2-1", 2, Off, ""},
		{"uhubctl-usb3.txt", "2-1", 3, On, ""},
		{"uhubctl-action.txt", "1-1.4", 2, Off, ""}, // the new status counts
		{"uhubctl-two-hubs.txt", "1-1", 2, Off, ""},
		{"uhubctl-two-hubs.txt", "3-2", 2, On, ""}, // a device name in brackets is no flag
		{"uhubctl-none.txt", "1-1", 2, "", "No compatible devices detected"},
		{"uhubctl-none-at.txt", "1-1", 2, "", "is the hub plugged in"}, // uhubctl 2.5 with -l
	} {
		out, err := os.ReadFile(filepath.Join("testdata", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseUhubctl(string(out), tc.hub, tc.port)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s hub %s port %d: %q, %v; want error %q", tc.file, tc.hub, tc.port, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s hub %s port %d: %q, %v; want %q", tc.file, tc.hub, tc.port, got, err, tc.want)
		}
	}
	// a CRLF output and a port line whose flags the parser does not know
	if got, _ := ParseUhubctl("Current status for hub 1-1 [x]\r\n  Port 2: 0100 power\r\n", "1-1", 2); got != On {
		t.Errorf("CRLF: %q", got)
	}
	if got, err := ParseUhubctl("Current status for hub 1-1 [x]\n  Port 2: 0100 suspend\n", "1-1", 2); got != Unknown || err != nil {
		t.Errorf("unknown flags: %q %v", got, err)
	}
}

// FuzzParseUhubctl: any output gives one of the three states or an error,
// and a state only when the output shows the asked-for port of the hub.
func FuzzParseUhubctl(f *testing.F) {
	for _, name := range []string{"uhubctl-usb2.txt", "uhubctl-usb3.txt", "uhubctl-action.txt", "uhubctl-two-hubs.txt", "uhubctl-none.txt"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b), "1-1", 2)
	}
	f.Fuzz(func(t *testing.T, out, hub string, port int) {
		st, err := ParseUhubctl(out, hub, port)
		if err != nil {
			if st != "" {
				t.Fatalf("state %q with error %v", st, err)
			}
			return
		}
		switch st {
		case On, Off, Unknown:
		default:
			t.Fatalf("state %q", st)
		}
		if !strings.Contains(out, "status for hub "+hub+" [") || !strings.Contains(out, fmt.Sprintf("Port %d: ", port)) {
			t.Fatalf("state %q from an output without hub %q port %d:\n%s", st, hub, port, out)
		}
	})
}

func TestReadState(t *testing.T) {
	fail := errors.New("exit status 1")
	for _, tc := range []struct {
		out  string
		exit int
		err  error
		want string
	}{
		{"on\n", 0, nil, On},
		{"OFF\n", 0, nil, Off},
		{"1", 0, nil, On},
		{"false", 0, nil, Off},
		{"Yes, powered", 0, nil, On},
		{"", 0, nil, On},
		{"", 1, fail, Off},
		{"", 2, fail, Unknown},
		{"maybe", 0, nil, Unknown},
		{"relay: no such board", 3, fail, Unknown},
	} {
		if got, detail := ReadState(tc.out, tc.exit, tc.err); got != tc.want || detail == "" {
			t.Errorf("%q exit %d: %q (%q), want %q", tc.out, tc.exit, got, detail, tc.want)
		}
	}
}

// testFarm has a QEMU guest (1), a board on a uhubctl hub port (5), a
// board switched by testdata/board-power.sh with its state in stateFile
// (6), one with templates but no power_state (7) and one without power
// control (8).
func testFarm(t *testing.T, stateFile string) *farm.Farm {
	t.Helper()
	script, _ := filepath.Abs("testdata/board-power.sh")
	src := fmt.Sprintf(`
cache = %q
nodes = [
    node(id = 1, alias = "one", lan = "192.168.66.7", wan = "100.65.4.15"),
    node(id = 5, alias = "five", lan = "192.168.66.12", wan = "100.65.10.15", lan_mac = "b8:27:eb:00:00:05",
         power = uhubctl(hub = "1-1.4", port = 2)),
    node(id = 6, alias = "six", lan = "192.168.66.13", wan = "100.65.11.15", lan_mac = "b8:27:eb:00:00:06",
         power_on = [%[2]q, %[3]q, "on"], power_off = [%[2]q, %[3]q, "off"], power_state = [%[2]q, %[3]q, "state"]),
    node(id = 7, alias = "seven", lan = "192.168.66.14", wan = "100.65.12.15", lan_mac = "b8:27:eb:00:00:07",
         power_on = ["relay", "{alias}", "on"], power_off = ["relay", "{alias}", "off"]),
    node(id = 8, alias = "eight", lan = "192.168.66.15", wan = "100.65.13.15", lan_mac = "b8:27:eb:00:00:08"),
    node(id = 9, alias = "nine", lan = "192.168.66.16", wan = "100.65.14.15", lan_mac = "b8:27:eb:00:00:09",
         power = uhubctl(hub = "1-1", port = 3, sudo = False)),
]
`, filepath.Join(t.TempDir(), "cache"), script, stateFile)
	c, err := farm.Load("power-config.star", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return farm.New(c)
}

func fixture(t *testing.T, o startest.Options, stateFile string) *startest.Fixture {
	t.Helper()
	o.Farm = testFarm(t, stateFile)
	fx := startest.New(t, o)
	return fx.Add(New(fx.Door, fx.Farm))
}

// Dry, every switch is the command itself, uhubctl's through sudo; the
// state of a uhubctl port is not asked (it needs sudo) and says so.
func TestDryRunTrace(t *testing.T) {
	fx := fixture(t, startest.Options{Dry: true}, filepath.Join(t.TempDir(), "state"))
	fx.Run("dry.star", `
power.on(5)
power.off("five")
power.cycle(5)
power.cycle(7, pause = 0.5)
s = power.state(5)
assert.eq(s.state, "unknown")
assert.eq(power.command(5, "on"), ["sudo", "uhubctl", "-l", "1-1.4", "-p", "2", "-a", "on"])
assert.eq(power.command(7, "off"), ["relay", "seven", "off"])
assert.eq(power.command(7, "cycle"), None)
assert.eq(power.command(8, "on"), None)
assert.eq(power.command(1, "on"), None)
`)
	want := `sudo uhubctl -l 1-1.4 -p 2 -a on
sudo uhubctl -l 1-1.4 -p 2 -a off
sudo uhubctl -l 1-1.4 -p 2 -a cycle
relay seven off
sleep 0.5
relay seven on
# query (not run in a dry run: it needs the privilege prefix): sudo uhubctl -l 1-1.4 -p 2
`
	if fx.Output() != want {
		t.Errorf("dry trace:\n%s\nwant:\n%s", fx.Output(), want)
	}
}

// Live, the node table's own commands switch the board and tell its state.
func TestLiveSwitching(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	fx := fixture(t, startest.Options{}, state)
	fx.Run("live.star", `
assert.eq(power.state(6).state, "off")
power.on(6)
s = power.state("six")
assert.eq(s.state, "on")
assert.eq(s.detail, "on")
power.cycle(6, pause = 0.05)
assert.eq(power.state(6).state, "on")
power.off(6)
assert.eq(power.state(6).state, "off")
s = power.state(7)
assert.eq(s.state, "unknown")
assert.eq(s.detail, "no power_state command in the node table")
`)
	log, _ := os.ReadFile(state + ".log")
	if string(log) != "on\noff\non\noff\n" {
		t.Errorf("switches: %q, want on, off (cycle), on, off", log)
	}
}

func TestErrors(t *testing.T) {
	fx := fixture(t, startest.Options{}, filepath.Join(t.TempDir(), "state"))
	for _, tc := range []struct{ src, want string }{
		{"power.on(1)", "node 1 (one) is a QEMU guest: its power is its QEMU"},
		{"power.off(8)", `node 8 (eight) has no power control in the node table: add power = uhubctl(hub = "1-1", port = 2)`},
		{"power.on(7)", `switch node 7 (seven) on: relay seven on`},
		{"power.state(8)", "no power control"},
		{`power.command(5, "reset")`, `action "reset" is not on, off, cycle or state`},
		{"power.on(10)", `unknown instance "10"`},
	} {
		_, err := fx.Exec("err.star", tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.src, err, tc.want)
		}
	}
}

// The uhubctl preset live, against a uhubctl on PATH that keeps the port's
// state in a file and prints uhubctl 2.5's status lines: the switches are
// uhubctl's own command lines, the state is read from its output.
func TestUhubctlLive(t *testing.T) {
	bin := t.TempDir()
	state := filepath.Join(bin, "port3")
	script := `#!/bin/sh
# uhubctl -l 1-1 -p 3 [-a on|off|cycle]
echo "$@" >> "` + state + `.argv"
st=$(cat "` + state + `" 2>/dev/null || echo 0100)
flag() { [ "$1" = 0000 ] && echo off || echo power; }
echo "Current status for hub 1-1 [0424:2514, USB 2.00, 4 ports, ppps]"
echo "  Port 3: $st $(flag $st)"
case $6 in
on | cycle) st=0100 ;;
off) st=0000 ;;
*) exit 0 ;;
esac
echo "$st" > "` + state + `"
echo "Sent power $6 request"
echo "New status for hub 1-1 [0424:2514, USB 2.00, 4 ports, ppps]"
echo "  Port 3: $st $(flag $st)"
`
	if err := os.WriteFile(filepath.Join(bin, "uhubctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	fx := fixture(t, startest.Options{}, filepath.Join(t.TempDir(), "state"))
	fx.Run("uhubctl.star", `
s = power.state(9)
assert.eq(s.state, "on")
assert.eq(s.detail, "uhubctl: hub 1-1 port 3 on")
power.off(9)
assert.eq(power.state(9).state, "off")
power.cycle(9)
assert.eq(power.state(9).state, "on")
assert.eq(power.command(9, "off"), ["uhubctl", "-l", "1-1", "-p", "3", "-a", "off"])
`)
	argv, _ := os.ReadFile(state + ".argv")
	want := "-l 1-1 -p 3\n-l 1-1 -p 3 -a off\n-l 1-1 -p 3\n-l 1-1 -p 3 -a cycle\n-l 1-1 -p 3\n"
	if string(argv) != want {
		t.Errorf("uhubctl ran with:\n%s\nwant:\n%s", argv, want)
	}
}
