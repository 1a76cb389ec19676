package console

import (
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeConsole is an in-process stand-in for a guest's serial console behind
// QEMU's socket chardev: one client at a time (later clients wait in the
// listen backlog), nothing sent before the client types, a getty login with
// `Login incorrect` after a delay, a shell that echoes like a tty, wraps
// prompts in bash's bracketed-paste escapes, runs each line with sh, and
// prints `reboot: System halted` after halt. Its state outlives a client,
// as a guest's does.
type fakeConsole struct {
	t         *testing.T
	ln        net.Listener
	users     map[string]string
	dir       string
	failDelay time.Duration
	noise     bool // interleave kernel messages with command output
	silent    bool // accept and never answer (a console whose guest hangs)

	mu     sync.Mutex
	state  int
	user   string
	conns  int
	halted bool
	lines  []string // shell lines received
}

const (
	fsLogin = iota
	fsPassword
	fsShell
	fsHalted
)

func newFakeConsole(t *testing.T, addr string) *fakeConsole {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("fake console: %v", err)
	}
	fc := &fakeConsole{t: t, ln: ln, users: map[string]string{"pi": "raspberry"},
		dir: t.TempDir(), failDelay: 300 * time.Millisecond}
	t.Cleanup(func() { ln.Close() })
	go fc.serve()
	return fc
}

func (fc *fakeConsole) serve() {
	for {
		c, err := fc.ln.Accept()
		if err != nil {
			return
		}
		fc.mu.Lock()
		fc.conns++
		fc.mu.Unlock()
		fc.handle(c) // one client at a time, like QEMU
		c.Close()
	}
}

func (fc *fakeConsole) prompt() string {
	p := "$ "
	if fc.user == "root" {
		p = "# "
	}
	return "\x1b[?2004h" + fc.user + "@raspberrypi:~" + p
}

func (fc *fakeConsole) handle(c net.Conn) {
	if fc.silent {
		buf := make([]byte, 256)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}
	w := func(s string) { c.Write([]byte(s)) }
	buf := make([]byte, 1024)
	var line []byte
	lastCR := false
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		for _, b := range buf[:n] {
			if b == '\n' && lastCR {
				lastCR = false
				continue
			}
			lastCR = b == '\r'
			fc.mu.Lock()
			st := fc.state
			fc.mu.Unlock()
			if st == fsHalted {
				continue
			}
			if b != '\r' && b != '\n' {
				line = append(line, b)
				if st != fsPassword {
					w(string([]byte{b}))
				}
				continue
			}
			w("\r\n")
			l := string(line)
			line = line[:0]
			if !fc.enter(c, w, l) {
				return
			}
		}
	}
}

// enter handles one line; false ends the connection (QEMU exited).
func (fc *fakeConsole) enter(c net.Conn, w func(string), l string) bool {
	fc.mu.Lock()
	st := fc.state
	fc.mu.Unlock()
	set := func(s int) { fc.mu.Lock(); fc.state = s; fc.mu.Unlock() }
	switch st {
	case fsLogin:
		if l == "" {
			w("\r\nraspberrypi login: ")
			return true
		}
		fc.user = l
		w("Password: ")
		set(fsPassword)
	case fsPassword:
		if pw, ok := fc.users[fc.user]; ok && pw == l {
			w("Linux raspberrypi 6.1.0-56-arm64 #1 SMP aarch64\r\n\r\nThe programs included with the Debian GNU/Linux system are free software.\r\n")
			w("Last login: Fri Nov 27 06:00:00 UTC 2026 on ttyAMA0\r\n")
			w(fc.prompt())
			set(fsShell)
			return true
		}
		time.Sleep(fc.failDelay)
		w("\r\nLogin incorrect\r\nraspberrypi login: ")
		set(fsLogin)
	case fsShell:
		w("\x1b[?2004l\r")
		fc.mu.Lock()
		fc.lines = append(fc.lines, l)
		fc.mu.Unlock()
		switch strings.TrimSpace(l) {
		case "exit", "logout":
			w("logout\r\n\r\nDebian GNU/Linux 12 raspberrypi ttyAMA0\r\n\r\nraspberrypi login: ")
			set(fsLogin)
			return true
		case "halt", "sudo halt":
			w("[  101.123456] systemd-shutdown[1]: Syncing filesystems and block devices.\r\n[  101.223456] reboot: System halted\r\n")
			set(fsHalted)
			return true
		case "poweroff", "sudo poweroff":
			w("[  101.223456] reboot: Power down\r\n")
			set(fsHalted)
			fc.ln.Close()
			return false
		}
		if fc.noise {
			w("[   42.000001] usb 1-1: new high-speed USB device number 3 using dwc2\r\n")
		}
		cmd := exec.Command("sh", "-c", l)
		cmd.Dir = fc.dir
		tw := &ttyWriter{w: w, noise: fc.noise}
		cmd.Stdout, cmd.Stderr = tw, tw
		cmd.Run()
		w(fc.prompt())
	}
	return true
}

// ttyWriter passes command output on as a tty would (LF becomes CR LF),
// with a kernel message after the first line when noise is set.
type ttyWriter struct {
	mu    sync.Mutex
	w     func(string)
	noise bool
	lines int
}

func (t *ttyWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range strings.SplitAfter(string(p), "\n") {
		if l == "" {
			continue
		}
		t.w(strings.ReplaceAll(l, "\n", "\r\n"))
		if strings.HasSuffix(l, "\n") {
			t.lines++
			if t.noise && t.lines == 1 {
				t.w("[   42.100002] cdc_ether 1-1:1.0 usb0: register 'cdc_ether'\r\n")
			}
		}
	}
	return len(p), nil
}

func (fc *fakeConsole) setState(st int, user string) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.state, fc.user = st, user
}

func (fc *fakeConsole) connections() int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.conns
}
