package console

import (
	"fmt"
	"regexp"
	"time"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/trace"
)

// sessionValue is the Starlark face of a Session.
type sessionValue struct {
	s *Session
	m *module
}

// sessionMethods registers the fields and methods of a session. A closed
// session refuses every method but close.
var sessionMethods = &trace.Methods[*sessionValue]{
	Type: "console_session",
	Recv: "s",
	Doc:  "A serial console session (console.open): its fields and methods.",
	Fields: []trace.Field[*sessionValue]{
		{Name: "addr", Doc: "the console's TCP address", Get: func(v *sessionValue) starlark.Value { return starlark.String(v.s.Addr) }},
		{Name: "label", Doc: `its name in trace lines and errors ("console 5801")`, Get: func(v *sessionValue) starlark.Value { return starlark.String(v.s.Label) }},
		{Name: "user", Doc: `the user this session logged in as ("" when none)`, Get: func(v *sessionValue) starlark.Value { return starlark.String(v.s.user) }},
	},
	Methods: []trace.Method[*sessionValue]{
		{Name: "expect", Args: "regex, timeout=30, fail=True", Fn: (*sessionValue).expect,
			Doc: `Wait for a regex (or any of a list of regexes) in what arrived since the
last match; returns struct(text, groups, before, index). A timeout (or
the console closing) is an error quoting the last lines, or None with
fail=False.`},
		{Name: "send", Args: "text", Fn: (*sessionValue).send,
			Doc: `Type text as is ("\r" is Enter).`},
		{Name: "sendline", Args: "line", Fn: (*sessionValue).sendline,
			Doc: `Type line and Enter.`},
		{Name: "login", Args: `user="pi", passwords=config pi_passwords, timeout=60`, Fn: (*sessionValue).login,
			Doc: `Log in, trying the passwords (a string or a list) in turn (Login incorrect
moves on at once; a console left logged in is logged out first); True
when logged in, False when every password was refused (the image has no
such user).`},
		{Name: "run", Args: "cmd, timeout=60", Fn: (*sessionValue).run,
			Doc: `Run a shell command in the logged-in shell; returns struct(output,
exit_code) (kernel log lines dropped).`},
		{Name: "wait_halted", Args: "timeout=300", Fn: (*sessionValue).waitHalted,
			Doc: `Wait for "reboot: System halted" or "reboot: Power down" (or QEMU closing
the console); returns what it saw.`},
		{Name: "wait_closed", Args: "timeout=2", Fn: (*sessionValue).waitClosed,
			Doc: `Whether QEMU closes the console within timeout (it exits by itself after a
power-down with the bcm2835 watchdog driver).`},
		{Name: "prompt", Args: "timeout=5", Fn: (*sessionValue).prompt,
			Doc: `Press Enter and tell which prompt the console shows: struct(kind, line),
kind "login", "password", "shell" (someone is logged in: line is its
prompt, e.g. "pi@raspberrypi:~$") or "setup" (first-boot wizard); kind
None when no prompt comes within timeout (another client holds the
console, or the guest is busy).`},
		{Name: "logout", Args: "", Fn: (*sessionValue).logout,
			Doc: `End the shell this session logged into, or the one s.prompt() found.`},
		{Name: "close", Args: "logout=True", Fn: (*sessionValue).close,
			Doc: `Log out (the shell this session logged into) and disconnect.`},
	},
	Check: func(v *sessionValue, method string) error {
		if v.s.closed && method != "close" {
			return fmt.Errorf("%s: the session is closed", v.s.Label)
		}
		return nil
	},
}

func (v *sessionValue) String() string       { return fmt.Sprintf("<%s>", v.s.Label) }
func (v *sessionValue) Type() string         { return sessionMethods.Type }
func (v *sessionValue) Freeze()              {}
func (v *sessionValue) Truth() starlark.Bool { return starlark.True }
func (v *sessionValue) Hash() (uint32, error) {
	return 0, fmt.Errorf("unhashable: %s", sessionMethods.Type)
}

// Attr returns a field or a method bound to the session.
func (v *sessionValue) Attr(name string) (starlark.Value, error) { return sessionMethods.Attr(v, name) }

// AttrNames lists the session's fields and methods.
func (v *sessionValue) AttrNames() []string { return sessionMethods.AttrNames() }

func (v *sessionValue) expect(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	srcs, timeout, fail := trace.StringList{OneString: true}, trace.Seconds{D: 30 * time.Second}, true
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "regex", &srcs, "timeout?", &timeout, "fail?", &fail); err != nil {
		return nil, err
	}
	if len(srcs.Strings) == 0 {
		return nil, fmt.Errorf("regex: empty list")
	}
	var pats []*regexp.Regexp
	for _, s := range srcs.Strings {
		re, err := regexp.Compile(s)
		if err != nil {
			return nil, fmt.Errorf("regex %q: %v", s, err)
		}
		pats = append(pats, re)
	}
	mt, err := v.s.Expect(pats, timeout.D)
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
	user, timeout := "pi", trace.Seconds{D: 60 * time.Second}
	passwords := trace.StringList{OneString: true, Strings: v.m.f.Config.Passwords}
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "user?", &user, "passwords?", &passwords, "timeout?", &timeout); err != nil {
		return nil, err
	}
	ok, err := v.s.Login(user, passwords.Strings, timeout.D)
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

// timeoutArg unpacks the one argument of prompt, wait_halted and
// wait_closed: a timeout defaulting to def.
func timeoutArg(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple, def time.Duration) (time.Duration, error) {
	t := trace.Seconds{D: def}
	err := trace.UnpackArgs(b.Name(), args, kwargs, "timeout?", &t)
	return t.D, err
}

func (v *sessionValue) prompt(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	timeout, err := timeoutArg(b, args, kwargs, 5*time.Second)
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
	timeout := trace.Seconds{D: 60 * time.Second}
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "cmd", &cmd, "timeout?", &timeout); err != nil {
		return nil, err
	}
	r, err := v.s.Run(cmd, timeout.D)
	if err != nil {
		return nil, err
	}
	return starlarkstruct.FromStringDict(starlark.String("result"), starlark.StringDict{
		"output":    starlark.String(r.Output),
		"exit_code": starlark.MakeInt(r.ExitCode),
	}), nil
}

func (v *sessionValue) waitHalted(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	timeout, err := timeoutArg(b, args, kwargs, 300*time.Second)
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
	timeout, err := timeoutArg(b, args, kwargs, 2*time.Second)
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
