// Package console is pifarm's `console` module: an expect-style session on
// a guest's TCP serial console (QEMU's `-serial tcp:...,server,nowait`,
// port 5800+N). It logs in, runs commands with their exit status, and
// watches for the guest to stop, without chat, socat or nc.
//
// Everything sent to a guest passes the tracing door: a dry run prints
// "# console 5801: send 'pi'" style lines (passwords masked), connects to
// nothing and returns plausible values.
package console

import (
	"fmt"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
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
		Doc: `Expect-style sessions on a guest's TCP serial console (port 5800+N).

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
console. The session stays open for the rest of the run: opening the same
console again returns it. Its methods:

  s.expect(regex, timeout=30, fail=True)  wait for a regex (or any of a list
      of regexes) in what arrived since the last match; returns
      struct(text, groups, before, index). A timeout (or the console
      closing) is an error quoting the last lines, or None with fail=False.
  s.send(text)                 type text as is ("\r" is Enter)
  s.sendline(line)             type line and Enter
  s.login(user="pi", passwords=config pi_passwords, timeout=60)
      log in, trying the passwords in turn (Login incorrect moves on at once;
      a console left logged in is logged out first); True when logged in,
      False when every password was refused (the image has no such user).
  s.run(cmd, timeout=60)       run a shell command in the logged-in shell;
      returns struct(output, exit_code) (kernel log lines dropped)
  s.wait_halted(timeout=300)   wait for "reboot: System halted" or
      "reboot: Power down" (or QEMU closing the console); returns what it saw
  s.wait_closed(timeout=2)     whether QEMU closes the console within timeout
      (it exits by itself after a power-down with the bcm2835 watchdog driver)
  s.prompt(timeout=5)          press Enter and tell which prompt the console
      shows: struct(kind, line), kind "login", "password", "shell" (someone
      is logged in: line is its prompt, e.g. "pi@raspberrypi:~$") or
      "setup" (first-boot wizard); kind None when no prompt comes within
      timeout (another client holds the console, or the guest is busy)
  s.logout()                   end the shell this session logged into, or
      the one s.prompt() found
  s.close(logout=True)         log out (the shell this session logged into)
      and disconnect

Dry run: prints "# console 5801: ..." lines for the connection, every text
sent (passwords masked) and every command run; login returns True, run
returns output "" and exit_code 0, prompt returns kind "login".`},
			{Name: "probe", Args: "instance, timeout=1", Fn: m.probe,
				Doc: `Whether the instance's console port accepts connections (a query: runs in
dry-run too). True while pifarm itself holds the console. QEMU accepts a
second client only when the first leaves, so True does not promise that
nobody else is connected.`},
		},
	}
}

// address resolves an instance argument to a console address and a label.
func (m *module) address(v starlark.Value) (addr, label string, err error) {
	var ref string
	switch x := v.(type) {
	case starlark.String:
		ref = string(x)
		if strings.Contains(ref, ":") {
			host, port, err := net.SplitHostPort(ref)
			if err != nil || port == "" {
				return "", "", trace.Usagef("console address %q is not host:port", ref)
			}
			if host == "" {
				host = "127.0.0.1"
			}
			return net.JoinHostPort(host, port), "console " + ref, nil
		}
	case starlark.Int:
		ref = x.String()
	case starlark.HasAttrs:
		id, err := x.Attr("id")
		if err != nil || id == nil {
			return "", "", fmt.Errorf("want an instance id, alias, node or host:port, got %s", v.Type())
		}
		ref = id.String()
	default:
		return "", "", fmt.Errorf("want an instance id, alias, node or host:port, got %s", v.Type())
	}
	n, err := m.f.Resolve(ref)
	if err != nil {
		return "", "", err
	}
	port := m.f.ConsolePort(n)
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), fmt.Sprintf("console %d", port), nil
}

func seconds(v starlark.Value, def time.Duration) (time.Duration, error) {
	switch x := v.(type) {
	case nil, starlark.NoneType:
		return def, nil
	case starlark.Int:
		n, _ := x.Int64()
		return time.Duration(n) * time.Second, nil
	case starlark.Float:
		return time.Duration(float64(x) * float64(time.Second)), nil
	}
	return 0, fmt.Errorf("timeout: want seconds (int or float), got %s", v.Type())
}

func (m *module) open(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var target, tv starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "instance", &target, "timeout?", &tv); err != nil {
		return nil, err
	}
	timeout, err := seconds(tv, 10*time.Second)
	if err != nil {
		return nil, err
	}
	addr, label, err := m.address(target)
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
	s, err := Dial(m.d, label, addr, timeout)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (is the instance running?)", label, err)
	}
	sv = &sessionValue{s: s, m: m}
	m.mu.Lock()
	m.sessions[addr] = sv
	m.mu.Unlock()
	return sv, nil
}

func (s *Session) alive() bool {
	if s.conn == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rerr == nil
}

func (m *module) probe(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var target, tv starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "instance", &target, "timeout?", &tv); err != nil {
		return nil, err
	}
	timeout, err := seconds(tv, time.Second)
	if err != nil {
		return nil, err
	}
	addr, _, err := m.address(target)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	sv, ok := m.sessions[addr]
	m.mu.Unlock()
	if ok && !sv.s.closed && sv.s.conn != nil && sv.s.alive() {
		return starlark.True, nil
	}
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return starlark.False, nil
	}
	c.Close()
	return starlark.True, nil
}

// sessionValue is the Starlark face of a Session.
type sessionValue struct {
	s *Session
	m *module
}

var sessionMethods = []string{"close", "expect", "login", "logout", "prompt", "run", "send", "sendline", "wait_closed", "wait_halted"}

func (v *sessionValue) String() string        { return fmt.Sprintf("<%s>", v.s.Label) }
func (v *sessionValue) Type() string          { return "console_session" }
func (v *sessionValue) Freeze()               {}
func (v *sessionValue) Truth() starlark.Bool  { return starlark.True }
func (v *sessionValue) Hash() (uint32, error) { return 0, fmt.Errorf("unhashable: console_session") }

// AttrNames lists the session's methods and fields.
func (v *sessionValue) AttrNames() []string {
	return append([]string{"addr", "label", "user"}, sessionMethods...)
}

// Attr returns a method bound to the session, or a field.
func (v *sessionValue) Attr(name string) (starlark.Value, error) {
	switch name {
	case "addr":
		return starlark.String(v.s.Addr), nil
	case "label":
		return starlark.String(v.s.Label), nil
	case "user":
		return starlark.String(v.s.user), nil
	}
	var fn func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error)
	switch name {
	case "expect":
		fn = v.expect
	case "send":
		fn = v.send
	case "sendline":
		fn = v.sendline
	case "login":
		fn = v.login
	case "logout":
		fn = v.logout
	case "prompt":
		fn = v.prompt
	case "run":
		fn = v.run
	case "wait_halted":
		fn = v.waitHalted
	case "wait_closed":
		fn = v.waitClosed
	case "close":
		fn = v.close
	default:
		return nil, nil
	}
	full := "console_session." + name
	return starlark.NewBuiltin(full, func(th *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
		if v.s.closed && name != "close" {
			return nil, fmt.Errorf("%s: %s: the session is closed", full, v.s.Label)
		}
		r, err := fn(th, b, args, kw)
		if err != nil {
			return nil, &trace.BuiltinError{Op: full, Err: err}
		}
		if r == nil {
			r = starlark.None
		}
		return r, nil
	}), nil
}

func (v *sessionValue) expect(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var pv, tv starlark.Value
	fail := true
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "regex", &pv, "timeout?", &tv, "fail?", &fail); err != nil {
		return nil, err
	}
	timeout, err := seconds(tv, 30*time.Second)
	if err != nil {
		return nil, err
	}
	var srcs []string
	switch x := pv.(type) {
	case starlark.String:
		srcs = []string{string(x)}
	case starlark.Indexable:
		for i := 0; i < x.Len(); i++ {
			s, ok := starlark.AsString(x.Index(i))
			if !ok {
				return nil, fmt.Errorf("regex %d: want a string, got %s", i, x.Index(i).Type())
			}
			srcs = append(srcs, s)
		}
	default:
		return nil, fmt.Errorf("regex: want a string or a list of strings, got %s", pv.Type())
	}
	if len(srcs) == 0 {
		return nil, fmt.Errorf("regex: empty list")
	}
	var pats []*regexp.Regexp
	for _, s := range srcs {
		re, err := regexp.Compile(s)
		if err != nil {
			return nil, fmt.Errorf("regex %q: %v", s, err)
		}
		pats = append(pats, re)
	}
	mt, err := v.s.Expect(pats, timeout)
	if err != nil && !fail && v.m.d.Context().Err() == nil {
		return starlark.None, nil
	}
	if err != nil {
		return nil, err
	}
	groups := make([]starlark.Value, len(mt.Groups))
	for i, g := range mt.Groups {
		groups[i] = starlark.String(g)
	}
	return starlarkstruct.FromStringDict(starlark.String("match"), starlark.StringDict{
		"text":   starlark.String(mt.Text),
		"groups": starlark.Tuple(groups),
		"before": starlark.String(mt.Before),
		"index":  starlark.MakeInt(mt.Index),
	}), nil
}

func (v *sessionValue) send(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var text string
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "text", &text); err != nil {
		return nil, err
	}
	return starlark.None, v.s.Send(text)
}

func (v *sessionValue) sendline(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var line string
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "line", &line); err != nil {
		return nil, err
	}
	return starlark.None, v.s.Send(line + "\r")
}

func (v *sessionValue) login(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	user := "pi"
	var pv, tv starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "user?", &user, "passwords?", &pv, "timeout?", &tv); err != nil {
		return nil, err
	}
	timeout, err := seconds(tv, 60*time.Second)
	if err != nil {
		return nil, err
	}
	passwords := v.m.f.Config.Passwords
	if pv != nil && pv != starlark.None {
		passwords = nil
		if s, ok := starlark.AsString(pv); ok {
			passwords = []string{s}
		} else if it, ok := pv.(starlark.Indexable); ok {
			for i := 0; i < it.Len(); i++ {
				s, ok := starlark.AsString(it.Index(i))
				if !ok {
					return nil, fmt.Errorf("passwords: element %d is not a string", i)
				}
				passwords = append(passwords, s)
			}
		} else {
			return nil, fmt.Errorf("passwords: want a string or a list of strings, got %s", pv.Type())
		}
	}
	ok, err := v.s.Login(user, passwords, timeout)
	if err != nil {
		return nil, fmt.Errorf("login %s: %w", user, err)
	}
	return starlark.Bool(ok), nil
}

func (v *sessionValue) logout(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(b.Name(), args, kwargs); err != nil {
		return nil, err
	}
	return starlark.None, v.s.Logout()
}

func (v *sessionValue) prompt(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var tv starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "timeout?", &tv); err != nil {
		return nil, err
	}
	timeout, err := seconds(tv, 5*time.Second)
	if err != nil {
		return nil, err
	}
	kind, line, err := v.s.Prompt(timeout)
	if err != nil {
		return nil, err
	}
	var k starlark.Value = starlark.None
	if kind != "" {
		k = starlark.String(kind)
	}
	return starlarkstruct.FromStringDict(starlark.String("prompt"), starlark.StringDict{
		"kind": k,
		"line": starlark.String(line),
	}), nil
}

func (v *sessionValue) run(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var cmd string
	var tv starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "cmd", &cmd, "timeout?", &tv); err != nil {
		return nil, err
	}
	timeout, err := seconds(tv, 60*time.Second)
	if err != nil {
		return nil, err
	}
	r, err := v.s.Run(cmd, timeout)
	if err != nil {
		return nil, err
	}
	return starlarkstruct.FromStringDict(starlark.String("result"), starlark.StringDict{
		"output":    starlark.String(r.Output),
		"exit_code": starlark.MakeInt(r.ExitCode),
	}), nil
}

func (v *sessionValue) waitHalted(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var tv starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "timeout?", &tv); err != nil {
		return nil, err
	}
	timeout, err := seconds(tv, 300*time.Second)
	if err != nil {
		return nil, err
	}
	what, err := v.s.WaitHalted(timeout)
	if err != nil {
		return nil, err
	}
	return starlark.String(what), nil
}

func (v *sessionValue) waitClosed(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var tv starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "timeout?", &tv); err != nil {
		return nil, err
	}
	timeout, err := seconds(tv, 2*time.Second)
	if err != nil {
		return nil, err
	}
	return starlark.Bool(v.s.WaitClosed(timeout)), nil
}

func (v *sessionValue) close(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	logout := true
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "logout?", &logout); err != nil {
		return nil, err
	}
	err := v.s.Close(logout)
	v.m.mu.Lock()
	if v.m.sessions[v.s.Addr] == v {
		delete(v.m.sessions, v.s.Addr)
	}
	v.m.mu.Unlock()
	return starlark.None, err
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
