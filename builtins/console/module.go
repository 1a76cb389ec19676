// Package console is pifarm's `console` module: an expect-style session on
// a guest's TCP serial console (QEMU's `-serial tcp:...,server,nowait`,
// port 5800+N) or on a hardware node's serial console (a USB-UART device
// opened raw at 115200 8N1 through termios, or a raw TCP serial server
// such as ser2net). It logs in, runs commands with their exit status, and
// watches for the guest to stop, without chat, socat, nc or stty.
//
// Everything sent to a guest passes the tracing door: a dry run prints
// "# console 5801: send 'pi'" style lines (passwords masked), connects to
// nothing and returns plausible values.
package console

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.starlark.net/starlark"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

type module struct {
	d *trace.Door
	f *farm.Farm

	mu       sync.Mutex
	sessions map[string]*sessionValue // open sessions by address
}

// New returns the `console` module.
func New(d *trace.Door, f *farm.Farm) *trace.Module {
	m := &module{d: d, f: f, sessions: map[string]*sessionValue{}}
	return &trace.Module{
		Name: "console",
		End:  m.end,
		Doc: `Expect-style sessions on a serial console: a guest's TCP port (5800+N), a hardware node's device or raw TCP endpoint.

QEMU serves one console client at a time and drops what the guest prints
while nobody is connected: a session asks for a fresh prompt rather than
relying on earlier output. ANSI escapes (bash's \e[?2004h ...) and carriage
returns are removed from what is received; kernel messages may interleave.

When the run ends, however it ends (an error, a timeout, Ctrl-C), every
session still open is logged out and disconnected: a command still running
is interrupted (Ctrl-C), a log-in whose answer was not seen is looked at, and
a shell is ended with exit, each within a few seconds of its own.`,
		Funcs: []trace.Func{
			{Name: "open", Args: "instance, timeout=10", Fn: m.open,
				Doc: `Connect to the serial console of an instance and return a session.

instance is a node (farm.node), an id, an alias, or "host:port" for any TCP
console; timeout (seconds, positive) bounds the connect. A hardware node's
console is the node table's serial: a device (a USB-UART such as
/dev/ttyUSB0, opened raw at serial_baud, 115200 8N1 unless told, and locked
against other terminal programs) or tcp:HOST:PORT (a raw TCP serial server
such as ser2net). The session stays
open for the rest of the run: opening the same console again returns it.

Dry run: prints "# console 5801: ..." lines for the connection, every text
sent (passwords masked) and every command run; login returns True, run
returns output "" and exit_code 0, prompt returns kind "login".

` + sessionMethods.Reference()},
			{Name: "attach", Args: `instance, escape="^]"`, Fn: m.attach, Doc: attachDoc},
			{Name: "probe", Args: "instance, timeout=1", Fn: m.probe,
				Doc: `Whether the instance's console port accepts connections (a query: runs in
dry-run too); for a hardware node's serial device, whether it exists, is a
terminal and no other program holds it. True while pifarm itself holds the console. QEMU accepts a
second client only when the first leaves, so True does not promise that
nobody else is connected.`},
		},
	}
}

// instanceRef is the Unpacker of an instance argument: a node, an id or
// alias, or "host:port" (a string with a colon) for any TCP console.
func (m *module) instanceRef() farm.InstanceRef {
	return farm.InstanceRef{Farm: m.f, Also: "host:port", Other: func(ref string) bool {
		return strings.Contains(ref, ":")
	}}
}

// address is the console address of an instance argument and its label;
// serial is set for a hardware node's serial console (its device or raw
// TCP endpoint, which addr then names).
func (m *module) address(ref *farm.InstanceRef) (addr, label string, serial *farm.Serial, err error) {
	if n := ref.Node; n != nil {
		if n.Kind() == "hardware" {
			if n.Serial == nil {
				return "", "", nil, fmt.Errorf("node %d (%s) is a hardware box without a serial console in the node table: add serial = \"/dev/ttyUSB0\" (its USB-UART) or serial = \"tcp:HOST:PORT\" (a ser2net raw port) to its node() in %s", n.ID, n.Alias, m.f.Config.Path)
			}
			if n.Serial.Device != "" {
				return n.Serial.Device, "serial " + n.Serial.Device, n.Serial, nil
			}
			return n.Serial.Addr, "serial " + n.Serial.String(), n.Serial, nil
		}
		port := m.f.ConsolePort(n)
		label := fmt.Sprintf("console %d", port)
		if h, ok := m.f.Remote(n); ok {
			label += " on " + h.Name()
		}
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), label, nil, nil
	}
	host, port, err := net.SplitHostPort(ref.Text)
	if err != nil || port == "" {
		return "", "", nil, trace.Usagef("console address %q is not host:port", ref.Text)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), "console " + ref.Text, nil, nil
}

// openArgs unpacks the instance and timeout arguments of open and probe:
// the console's address and label (and serial console, see address).
func (m *module) openArgs(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple, def time.Duration) (addr, label string, serial *farm.Serial, dial Dialer, timeout time.Duration, err error) {
	ref, t := m.instanceRef(), trace.Seconds{D: def}
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "instance", &ref, "timeout?", &t); err != nil {
		return "", "", nil, nil, 0, err
	}
	addr, label, serial, err = m.address(&ref)
	return addr, label, serial, m.dialer(ref.Node), t.D, err
}

// dialer is how the console of node n is reached: nil (a TCP connection
// to its address) unless n is a guest on a remote libvirt host, whose
// console port listens on that host's loopback and is reached through
// the host's SSH connection (farm.Farm.DialPort).
func (m *module) dialer(n *farm.Node) Dialer {
	if n == nil {
		return nil
	}
	if _, ok := m.f.Remote(n); !ok {
		return nil
	}
	port := m.f.ConsolePort(n)
	return func(ctx context.Context, timeout time.Duration) (net.Conn, error) {
		return m.f.DialPort(ctx, n, port, timeout)
	}
}

func (m *module) open(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	addr, label, serial, dial, timeout, err := m.openArgs(b, args, kwargs, 10*time.Second)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	sv, ok := m.sessions[addr]
	if ok && !sv.s.closed && sv.s.alive() {
		m.mu.Unlock()
		return sv, nil
	}
	m.mu.Unlock()
	if ok && !sv.s.closed && sv.s.conn != nil {
		sv.s.conn.Close() // QEMU closed it (the instance stopped): free the socket
	}
	var s *Session
	if serial != nil {
		s, err = DialSerial(m.d, label, serial, timeout)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
	} else if s, err = DialVia(m.d, label, addr, timeout, dial); err != nil {
		return nil, fmt.Errorf("%s: %w (is the instance running?)", label, err)
	}
	sv = &sessionValue{s: s, m: m}
	m.mu.Lock()
	m.sessions[addr] = sv
	m.mu.Unlock()
	return sv, nil
}

func (m *module) probe(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	addr, _, serial, dial, timeout, err := m.openArgs(b, args, kwargs, time.Second)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	sv, ok := m.sessions[addr]
	m.mu.Unlock()
	if ok && !sv.s.closed && sv.s.conn != nil && sv.s.alive() {
		return starlark.True, nil
	}
	if serial != nil && serial.Device != "" {
		return starlark.Bool(probeSerial(serial.Device)), nil
	}
	if dial == nil {
		dial = tcpDialer(addr)
	}
	c, err := dial(m.d.Context(), timeout)
	if err != nil {
		return starlark.False, nil
	}
	c.Close()
	return starlark.True, nil
}

// end logs out and disconnects every session still open when the run ends
// (trace.Module.End), in address order.
func (m *module) end() {
	m.mu.Lock()
	var open []*sessionValue
	for _, sv := range m.sessions {
		open = append(open, sv)
	}
	m.sessions = map[string]*sessionValue{}
	m.mu.Unlock()
	sort.Slice(open, func(i, j int) bool { return open[i].s.Addr < open[j].s.Addr })
	for _, sv := range open {
		sv.s.End()
	}
}
