package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"go.starlark.net/starlark"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// attachDoc is the module table's text of attach.
const attachDoc = `Join this terminal to the serial console of an instance until the escape
key is typed (Ctrl-] unless told: escape = "^X" names Ctrl-X) or the console
goes away (its QEMU stopped, the board's console server closed it).

The terminal is raw while attached (Ctrl-C, Ctrl-Z and Ctrl-D go to the
guest) and restored after, however the attachment ends. instance is as for
open: a QEMU guest's TCP console (on a remote libvirt host, reached through
its SSH connection: no port is exposed, no tunnel opened by hand), a hardware
node's serial device (locked as terminal programs lock it) or raw TCP
endpoint. Nothing is logged out when you leave: what you typed is yours.
Needs a terminal on standard input. Returns "detached" (the escape key) or
"closed" (the console went away).

Dry run: prints the equivalent socat command (through ssh -t for a remote
host) and attaches nothing.`

// parseEscape turns "^]" style text into its control byte.
func parseEscape(s string) (byte, error) {
	if len(s) == 2 && s[0] == '^' {
		c := s[1]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c >= '@' && c <= '_' && c != 'M' && c != 'J' {
			return c - '@', nil
		}
	}
	return 0, trace.Usagef(`escape %q: want a control key as "^X" (^A to ^Z but ^J and ^M, ^@, ^[, ^\, ^], ^^, ^_)`, s)
}

// attachCmd is the command a user would run for the same attachment: the
// trace line of attach.
func (m *module) attachCmd(n *farm.Node, addr string, serial *farm.Serial, esc byte) trace.Cmd {
	e := fmt.Sprintf("-,rawer,escape=0x%02x", esc)
	switch {
	case serial != nil && serial.Device != "":
		return trace.Cmd{Argv: []string{"socat", e, fmt.Sprintf("%s,rawer,b%d", serial.Device, serial.Baud)}}
	case n != nil:
		if h, ok := m.f.Remote(n); ok {
			return trace.Cmd{Argv: []string{"ssh", "-t", h.Name(), "socat", e, "TCP:" + addr}}
		}
	}
	return trace.Cmd{Argv: []string{"socat", e, "TCP:" + addr}}
}

func (m *module) attach(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ref := m.instanceRef()
	escape := "^]"
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "instance", &ref, "escape?", &escape); err != nil {
		return nil, err
	}
	esc, err := parseEscape(escape)
	if err != nil {
		return nil, err
	}
	addr, label, serial, err := m.address(&ref)
	if err != nil {
		return nil, err
	}
	in, out := os.Stdin, os.Stdout
	if !m.d.DryRun && !term.IsTerminal(int(in.Fd())) {
		return nil, fmt.Errorf("console.attach %s: standard input is not a terminal (it joins your keyboard to the console); run it from a terminal, or use console.open in a recipe", label)
	}
	m.mu.Lock()
	if sv, ok := m.sessions[addr]; ok && !sv.s.closed && sv.s.alive() {
		m.mu.Unlock()
		return nil, fmt.Errorf("console.attach %s: this run holds the console in a session already (console.open): close it first (session.close())", label)
	}
	m.mu.Unlock()
	why := "detached"
	err = m.d.Do(m.d.Line(m.attachCmd(ref.Node, addr, serial, esc)), func() error {
		var conn io.ReadWriteCloser
		if serial != nil && serial.Device != "" {
			f, err := OpenSerial(serial.Device, serial.Baud)
			if err != nil {
				return err
			}
			conn = f
		} else {
			dial := m.dialer(ref.Node)
			if dial == nil {
				dial = tcpDialer(addr) // (a serial server's address, for a tcp: serial)
			}
			c, err := dial(m.d.Context(), 10*time.Second)
			if err != nil {
				return fmt.Errorf("connect to %s: %w (is the instance running?)", addr, err)
			}
			conn = c
		}
		msg := m.d.Stderr
		if msg == nil {
			msg = os.Stderr
		}
		fmt.Fprintf(msg, "%s: attached; %s leaves (the guest keeps running)\r\n", label, escape)
		why, err = Attach(m.d.Context(), conn, in, out, esc)
		fmt.Fprintf(msg, "\r\n%s: %s\n", label, map[string]string{"detached": "left", "closed": "the console closed"}[why])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("console.attach %s: %w", label, err)
	}
	return starlark.String(why), nil
}

// Attach joins the terminal in (raw while attached, restored after) and
// out to conn until the byte escape comes from in ("detached"), conn
// ends ("closed") or ctx is done (its error). conn is closed on return.
func Attach(ctx context.Context, conn io.ReadWriteCloser, in *os.File, out io.Writer, escape byte) (string, error) {
	defer conn.Close()
	fd := int(in.Fd())
	if st, err := term.MakeRaw(fd); err == nil {
		defer term.Restore(fd, st)
	}
	// A duplicate of the terminal's descriptor, non-blocking, so that Go's
	// poller runs the reads and closing it ends a read in progress: the
	// terminal is left as it was, with nothing of it read after the return.
	dup, err := unix.Dup(fd)
	if err != nil {
		return "", fmt.Errorf("attach the terminal: %w", err)
	}
	blocking := !nonblocking(fd)
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return "", fmt.Errorf("attach the terminal: %w", err)
	}
	keys := os.NewFile(uintptr(dup), "terminal")
	defer func() {
		keys.Close()
		if blocking {
			unix.SetNonblock(fd, false) // the flag is the open file's, shared with the duplicate
		}
	}()
	done := make(chan string, 2)
	var once sync.Once
	end := func(why string) { once.Do(func() { done <- why }) }
	go func() {
		io.Copy(out, conn)
		end("closed")
	}()
	go func() {
		p := make([]byte, 1024)
		for {
			n, err := keys.Read(p)
			if i := strings.IndexByte(string(p[:n]), string(escape)[0]); i >= 0 {
				conn.Write(p[:i])
				end("detached")
				return
			}
			if n > 0 {
				if _, werr := conn.Write(p[:n]); werr != nil {
					end("closed")
					return
				}
			}
			if err != nil {
				if !errors.Is(err, os.ErrClosed) {
					end("closed")
				}
				return
			}
		}
	}()
	select {
	case why := <-done:
		return why, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// nonblocking reports whether descriptor fd is in non-blocking mode.
func nonblocking(fd int) bool {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	return err == nil && fl&unix.O_NONBLOCK != 0
}

// tcpDialer connects to addr over TCP.
func tcpDialer(addr string) Dialer {
	return func(ctx context.Context, timeout time.Duration) (net.Conn, error) {
		d := net.Dialer{Timeout: timeout}
		return d.DialContext(ctx, "tcp", addr)
	}
}
