package console

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.starlark.net/starlark"
	"golang.org/x/sys/unix"
	"pifarm/builtins/console/fakeguest"
	"pifarm/builtins/farm"
	"pifarm/builtins/startest"
)

// ptyPair opens a real pseudo-terminal: the master (the board's side, as
// QEMU's -serial pty holds it) and the slave's path (what the node table
// names, as it names /dev/ttyUSB0). Both end with the test.
func ptyPair(t *testing.T) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	// (through SyscallConn: Fd would make the master blocking, and its
	// Close would then wait for a read in progress)
	rc, err := m.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ierr error
	rc.Control(func(fd uintptr) {
		if ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ierr == nil {
			n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN)
		}
	})
	if ierr != nil {
		t.Fatalf("unlockpt/ptsname: %v", ierr)
	}
	return m, fmt.Sprintf("/dev/pts/%d", n)
}

func TestOpenSerialSettings(t *testing.T) {
	_, slave := ptyPair(t)
	for _, baud := range []int{115200, 9600, 921600} {
		f, err := OpenSerial(slave, baud)
		if err != nil {
			t.Fatal(err)
		}
		tio, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		want := speeds[baud]
		switch {
		case tio.Cflag&unix.CBAUD != want:
			t.Errorf("%d: speed bits %#o, want %#o", baud, tio.Cflag&unix.CBAUD, want)
		case tio.Cflag&unix.CSIZE != unix.CS8 || tio.Cflag&(unix.PARENB|unix.CSTOPB|unix.CRTSCTS) != 0:
			t.Errorf("%d: not 8N1 without flow control: cflag %#o", baud, tio.Cflag)
		case tio.Lflag&(unix.ECHO|unix.ICANON|unix.ISIG) != 0 || tio.Oflag&unix.OPOST != 0 || tio.Iflag&(unix.ICRNL|unix.IXON) != 0:
			t.Errorf("%d: not raw: iflag %#o oflag %#o lflag %#o", baud, tio.Iflag, tio.Oflag, tio.Lflag)
		case tio.Cflag&unix.CLOCAL == 0:
			t.Errorf("%d: waits for modem lines (no CLOCAL)", baud)
		}
		// a second client is refused while the first holds it
		if _, err := OpenSerial(slave, baud); err == nil || !strings.Contains(err.Error(), "another program holds it") {
			t.Errorf("second open: %v", err)
		}
		if probeSerial(slave) {
			t.Error("probe says a held console is free")
		}
		f.Close()
		if !probeSerial(slave) {
			t.Error("probe says a free console is not there")
		}
	}
	for _, tc := range []struct {
		dev  string
		baud int
		want string
	}{
		{"/dev/null", 115200, "not a terminal device"},
		{filepath.Join(t.TempDir(), "ttyUSB9"), 115200, "is the USB-UART plugged in?"},
		{slave, 12345, "12345 baud is not supported"},
	} {
		if _, err := OpenSerial(tc.dev, tc.baud); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.dev) {
			t.Errorf("%s at %d: %v, want %q", tc.dev, tc.baud, err, tc.want)
		}
	}
	if probeSerial("/dev/null") || probeSerial(filepath.Join(t.TempDir(), "none")) {
		t.Error("probe accepts what is no console")
	}
}

// hwFarm is a farm whose node 5 is a hardware box with the given serial
// console (and node 1 a QEMU guest).
func hwFarm(t *testing.T, serial string) *farm.Farm {
	t.Helper()
	src := fmt.Sprintf(`
cache = %q
ports = {"ssh": 21100, "console": %d, "vnc": 21900}
nodes = [
    node(id = 1, alias = "one", lan = "192.168.66.7", wan = "100.65.4.15"),
    node(id = 5, alias = "five", lan = "192.168.66.12", wan = "100.65.10.15", lan_mac = "b8:27:eb:00:00:05", serial = %q),
    node(id = 6, alias = "six", lan = "192.168.66.13", wan = "100.65.11.15", lan_mac = "b8:27:eb:00:00:06"),
]
`, filepath.Join(t.TempDir(), "cache"), consoleBase, serial)
	c, err := farm.Load("hw-config.star", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return farm.New(c)
}

// A board's console on a real pty, from Starlark as the recipes use it:
// console.open(node) of a hardware node opens its serial device, logs in,
// runs commands with their exit status, sees the kernel's last words and
// notices the board's side going away (its power cut).
func TestSerialConsoleOfAHardwareNode(t *testing.T) {
	master, slave := ptyPair(t)
	fc := fakeguest.NewStreamConsole(t, fakeguest.PTYMaster(master), func(c *fakeguest.Console) { c.Noise = true })
	fx := startest.New(t, startest.Options{Verbose: true, Farm: hwFarm(t, slave)})
	mod := New(fx.Door, fx.Farm)
	t.Cleanup(mod.End)
	fx.Add(mod)
	g := fx.Run("serial.star", `
probe_before = console.probe(5)
s = console.open(5, timeout = 2)
assert.eq(s.addr, "`+slave+`")
assert.true(console.probe(5))  # held by this run
assert.true(s.login("pi", ["wrong", "raspberry"], timeout = 10))
r = s.run("echo over the wire; sh -c 'exit 3'", timeout = 5)
assert.eq(r.output, "over the wire")
assert.eq(r.exit_code, 3)
assert.eq(console.open("five"), s)  # the same session again
`)
	if g["probe_before"] != starlark.True {
		t.Errorf("probe before open: %v", g["probe_before"])
	}
	out := fx.Output()
	if !strings.Contains(out, "# serial "+slave+": open "+slave+" at 115200 baud 8N1, raw (as stty -F "+slave+" 115200 cs8") {
		t.Errorf("trace lacks the open line:\n%s", out)
	}
	if strings.Contains(out, "raspberry") {
		t.Errorf("password in the trace:\n%s", out)
	}
	if _, user := fc.State(); user != "pi" {
		t.Errorf("console state user %q", user)
	}
	// the board powers down: the kernel's last line; its console stays
	// until the power is cut, then the session sees it end
	go func() { time.Sleep(200 * time.Millisecond); fc.PowerDown() }()
	fx.Set("s", g["s"]).Run("halt.star", `
assert.eq(s.wait_halted(timeout = 5), "reboot: Power down")
assert.true(not s.wait_closed(timeout = 0.3))
`)
	master.Close()
	fx.Run("cut.star", `assert.true(s.wait_closed(timeout = 5))`)
}

func TestSerialConsoleErrors(t *testing.T) {
	fx := startest.New(t, startest.Options{Farm: hwFarm(t, "/dev/ttyUSB0")})
	fx.Add(New(fx.Door, fx.Farm))
	for _, tc := range []struct{ src, want string }{
		{"console.open(6)", `node 6 (six) is a hardware box without a serial console in the node table: add serial = "/dev/ttyUSB0"`},
		{"console.probe(6)", `without a serial console`},
	} {
		_, err := fx.Exec("err.star", tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.src, err, tc.want)
		}
	}
	// a missing device is an open error naming it and the likely cause
	dir := t.TempDir()
	fx = startest.New(t, startest.Options{Farm: hwFarm(t, filepath.Join(dir, "ttyUSB0"))})
	fx.Add(New(fx.Door, fx.Farm))
	_, err := fx.Exec("missing.star", "console.open(5)")
	if err == nil || !strings.Contains(err.Error(), "serial "+dir) || !strings.Contains(err.Error(), "plugged in") {
		t.Errorf("open of a missing device: %v", err)
	}
	if v := fx.Run("probe.star", "p = console.probe(5)\n")["p"]; v != starlark.False {
		t.Errorf("probe of a missing device: %v", v)
	}
}

// Dry, a hardware node's console opens nothing and the trace says what
// would be set, as a command an administrator could type.
func TestSerialConsoleDryRun(t *testing.T) {
	fx := startest.New(t, startest.Options{Dry: true, Farm: hwFarm(t, "/dev/serial/by-id/usb-FTDI-if00")})
	fx.Add(New(fx.Door, fx.Farm))
	fx.Run("dry.star", `
s = console.open(5)
assert.true(s.login("pi", ["raspberry"]))
s.close()
`)
	want := "# serial /dev/serial/by-id/usb-FTDI-if00: open /dev/serial/by-id/usb-FTDI-if00 at 115200 baud 8N1, raw (as stty -F /dev/serial/by-id/usb-FTDI-if00 115200 cs8 -cstopb -parenb -crtscts clocal cread raw -echo)\n"
	if !strings.HasPrefix(fx.Output(), want) {
		t.Errorf("dry trace:\n%s\nwant it to begin with:\n%s", fx.Output(), want)
	}
}
