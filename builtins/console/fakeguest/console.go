// Package fakeguest provides in-process stand-ins for a QEMU guest's two
// doors, for tests: a serial console behind a TCP socket (as QEMU's socket
// chardev serves it) and an SSH server (golang.org/x/crypto/ssh) that run
// shell commands with sh.
package fakeguest

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Console is an in-process stand-in for a guest's serial console behind
// QEMU's socket chardev: one client at a time (later clients wait in the
// listen backlog), nothing sent before the client types, a getty login with
// `Login incorrect` after a delay, a shell that echoes like a tty, wraps
// prompts in bash's bracketed-paste escapes, runs each line with sh (input
// typed meanwhile waits, as a tty queues it; Ctrl-C stops the command), and
// prints `reboot: System halted` after halt. Its state outlives a client,
// as a guest's does.
type Console struct {
	Listener net.Listener
	// Users maps a user to its password.
	Users map[string]string
	// Dir is the shell's working folder.
	Dir string
	// FailDelay is how long a wrong password takes (login's fail delay).
	FailDelay time.Duration
	// LoginDelay is how long a right password takes until the shell.
	LoginDelay time.Duration
	// Noise interleaves kernel messages with command output.
	Noise bool
	// Silent accepts clients and never answers (a hung guest).
	Silent bool
	// NoWatchdog keeps the console open after a power-down: a guest
	// without the bcm2835 watchdog driver leaves QEMU running.
	NoWatchdog bool
	// Command makes the command for a shell line (default: sh -c line in
	// Dir); AfterCommand runs after each one.
	Command      func(user, line string) *exec.Cmd
	AfterCommand func(line string)

	mu    sync.Mutex
	state int
	user  string
	conns int
	typed int      // bytes received from clients
	lines []string // shell lines received
	conn  io.ReadWriteCloser
	intr  int // Ctrl-Cs that stopped a running command
}

const (
	AtLogin = iota
	AtPassword
	InShell
	Halted
)

// NewConsole listens on addr (closed when the test ends) with user pi,
// password raspberry; configure, when given, adjusts it before it serves.
func NewConsole(t testing.TB, addr string, configure ...func(*Console)) *Console {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("fake console: %v", err)
	}
	fc := &Console{Listener: ln, Users: map[string]string{"pi": "raspberry"},
		Dir: t.TempDir(), FailDelay: 300 * time.Millisecond}
	for _, c := range configure {
		c(fc)
	}
	t.Cleanup(func() { ln.Close() })
	go fc.serve()
	return fc
}

// NewStreamConsole serves the console on one stream, the master side of
// a pseudo-terminal whose slave a test opens as a board's serial device;
// configure, when given, adjusts it before it serves. Listener is nil.
func NewStreamConsole(t testing.TB, rw io.ReadWriteCloser, configure ...func(*Console)) *Console {
	t.Helper()
	fc := &Console{Users: map[string]string{"pi": "raspberry"}, Dir: t.TempDir(), FailDelay: 300 * time.Millisecond}
	for _, c := range configure {
		c(fc)
	}
	fc.conns, fc.conn = 1, rw
	go fc.handle(rw)
	return fc
}

func (fc *Console) serve() {
	for {
		c, err := fc.Listener.Accept()
		if err != nil {
			return
		}
		fc.mu.Lock()
		fc.conns++
		fc.conn = c
		fc.mu.Unlock()
		fc.handle(c) // one client at a time, like QEMU
		c.Close()
	}
}

func (fc *Console) prompt() string {
	p := "$ "
	if fc.user == "root" {
		p = "# "
	}
	return "\x1b[?2004h" + fc.user + "@raspberrypi:~" + p
}

func (fc *Console) handle(c io.ReadWriter) {
	if fc.Silent {
		buf := make([]byte, 256)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}
	var wmu sync.Mutex
	w := func(s string) { wmu.Lock(); c.Write([]byte(s)); wmu.Unlock() }
	in, quit := make(chan []byte), make(chan struct{})
	defer close(quit)
	go func() {
		defer close(in)
		for {
			buf := make([]byte, 1024)
			n, err := c.Read(buf)
			if n > 0 {
				select {
				case in <- buf[:n]:
				case <-quit:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	var (
		line    []byte
		lastCR  bool
		pending []byte     // typed while a command runs (the tty queues it)
		running *exec.Cmd  // the shell's foreground command
		done    chan error // receives when running ends
	)
	defer func() {
		if running != nil {
			kill(running)
			<-done
		}
	}()
	// feed handles typed bytes until a command starts; the rest waits.
	feed := func(p []byte) (rest []byte, ok bool) {
		for i, b := range p {
			if b == '\n' && lastCR {
				lastCR = false
				continue
			}
			lastCR = b == '\r'
			fc.mu.Lock()
			st := fc.state
			fc.mu.Unlock()
			if st == Halted {
				continue
			}
			if b == 0x03 { // Ctrl-C: the line typed so far is dropped
				line = line[:0]
				w("^C\r\n")
				if st == InShell {
					w(fc.prompt())
				} else {
					fc.mu.Lock()
					fc.state = AtLogin
					fc.mu.Unlock()
					w("\r\nraspberrypi login: ")
				}
				continue
			}
			if b != '\r' && b != '\n' {
				line = append(line, b)
				if st != AtPassword {
					w(string([]byte{b}))
				}
				continue
			}
			w("\r\n")
			l := string(line)
			line = line[:0]
			cmd, ok := fc.enter(w, l)
			if !ok {
				return nil, false
			}
			if cmd != nil {
				running, done = cmd, make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				return p[i+1:], true
			}
		}
		return nil, true
	}
	for {
		var doneCh chan error
		if running != nil {
			doneCh = done
		}
		select {
		case p, ok := <-in:
			if !ok {
				return
			}
			fc.mu.Lock()
			fc.typed += len(p)
			fc.mu.Unlock()
			if running != nil {
				for _, b := range p {
					if b == 0x03 {
						fc.mu.Lock()
						fc.intr++
						fc.mu.Unlock()
						kill(running) // SIGINT to the foreground job
						pending = pending[:0]
						continue
					}
					pending = append(pending, b)
				}
				continue
			}
			rest, ok := feed(p)
			if !ok {
				return
			}
			pending = append(pending, rest...)
		case <-doneCh:
			running, done = nil, nil
			if fc.AfterCommand != nil {
				fc.AfterCommand(fc.lastLine())
			}
			w(fc.prompt())
			for running == nil && len(pending) > 0 {
				p := pending
				pending = nil
				rest, ok := feed(p)
				if !ok {
					return
				}
				pending = append(pending, rest...)
			}
		}
	}
}

func kill(cmd *exec.Cmd) {
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

func (fc *Console) lastLine() string {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if len(fc.lines) == 0 {
		return ""
	}
	return fc.lines[len(fc.lines)-1]
}

// enter handles one line; false ends the connection (QEMU exited). A shell
// line is started as a command and returned: the prompt follows when it
// ends.
func (fc *Console) enter(w func(string), l string) (*exec.Cmd, bool) {
	fc.mu.Lock()
	st := fc.state
	fc.mu.Unlock()
	set := func(s int) { fc.mu.Lock(); fc.state = s; fc.mu.Unlock() }
	switch st {
	case AtLogin:
		if l == "" {
			w("\r\nraspberrypi login: ")
			return nil, true
		}
		fc.user = l
		set(AtPassword) // before the client sees the prompt
		w("Password: ")
	case AtPassword:
		if pw, ok := fc.Users[fc.user]; ok && pw == l {
			time.Sleep(fc.LoginDelay)
			w("Linux raspberrypi 6.1.0-56-arm64 #1 SMP aarch64\r\n\r\nThe programs included with the Debian GNU/Linux system are free software.\r\n")
			w("Last login: Fri Nov 27 06:00:00 UTC 2026 on ttyAMA0\r\n")
			set(InShell)
			w(fc.prompt())
			return nil, true
		}
		time.Sleep(fc.FailDelay)
		set(AtLogin)
		w("\r\nLogin incorrect\r\nraspberrypi login: ")
	case InShell:
		w("\x1b[?2004l\r")
		fc.mu.Lock()
		fc.lines = append(fc.lines, l)
		fc.mu.Unlock()
		switch strings.TrimSpace(l) {
		case "":
			w(fc.prompt())
			return nil, true
		case "exit", "logout":
			set(AtLogin)
			w("logout\r\n\r\nDebian GNU/Linux 12 raspberrypi ttyAMA0\r\n\r\nraspberrypi login: ")
			return nil, true
		case "halt", "sudo halt", "sudo -n halt":
			set(Halted)
			w("[  101.123456] systemd-shutdown[1]: Syncing filesystems and block devices.\r\n[  101.223456] reboot: System halted\r\n")
			return nil, true
		case "poweroff", "sudo poweroff", "sudo -n poweroff":
			set(Halted)
			w("[  101.223456] reboot: Power down\r\n")
			if fc.NoWatchdog {
				return nil, true
			}
			fc.Listener.Close()
			return nil, false
		}
		if fc.Noise {
			w("[   42.000001] usb 1-1: new high-speed USB device number 3 using dwc2\r\n")
		}
		var cmd *exec.Cmd
		if fc.Command != nil {
			cmd = fc.Command(fc.user, l)
		} else {
			cmd = exec.Command("sh", "-c", l)
			cmd.Dir = fc.Dir
		}
		tw := &ttyWriter{w: w, noise: fc.Noise}
		cmd.Stdout, cmd.Stderr = tw, tw
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Setpgid = true // its own job: Ctrl-C stops it and its children
		if err := cmd.Start(); err != nil {
			tw.Write([]byte("sh: " + err.Error() + "\n"))
			w(fc.prompt())
			return nil, true
		}
		return cmd, true
	}
	return nil, true
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

// SetState puts the console in a state (AtLogin, AtPassword, InShell as
// user), as a previous client may have left it.
func (fc *Console) SetState(st int, user string) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.state, fc.user = st, user
}

// PowerDown prints the kernel's last words and closes the console, as QEMU
// does when it exits after a power-down. A board's console on a stream
// (NewStreamConsole) stays open, as a UART does until its power is cut:
// the test closes the stream then.
func (fc *Console) PowerDown() {
	fc.mu.Lock()
	c := fc.conn
	fc.state = Halted
	fc.mu.Unlock()
	if c != nil {
		c.Write([]byte("[  101.223456] reboot: Power down\r\n"))
	}
	if fc.Listener == nil {
		return
	}
	fc.Listener.Close()
	if c != nil {
		c.Close()
	}
}

// Lines returns the shell lines received so far.
func (fc *Console) Lines() []string {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return append([]string(nil), fc.lines...)
}

// Typed counts the bytes clients sent so far.
func (fc *Console) Typed() int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.typed
}

// Connections counts the clients accepted so far.
func (fc *Console) Connections() int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.conns
}

// Interrupts counts the Ctrl-Cs that stopped a running command.
func (fc *Console) Interrupts() int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.intr
}

// State returns the console's state (AtLogin, AtPassword, InShell, Halted)
// and the user of its shell.
func (fc *Console) State() (int, string) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.state, fc.user
}

// PTYMaster is the master side of a pseudo-terminal as QEMU's pty chardev
// uses it: a read while no client has the slave open fails with EIO,
// which the board does not take for its end; it waits for the next client
// (polling, as QEMU does) until Close.
func PTYMaster(f *os.File) io.ReadWriteCloser { return &ptyMaster{f: f} }

type ptyMaster struct {
	f      *os.File
	mu     sync.Mutex
	closed bool
}

func (p *ptyMaster) Read(b []byte) (int, error) {
	for {
		n, err := p.f.Read(b)
		if !errors.Is(err, syscall.EIO) {
			return n, err
		}
		p.mu.Lock()
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return n, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *ptyMaster) Write(b []byte) (int, error) { return p.f.Write(b) }

func (p *ptyMaster) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	return p.f.Close()
}
