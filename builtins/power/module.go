// Package power is pifarm's `power` module: a hardware node's power
// switched on, off or cycled, and its state asked, with the commands the
// node table names for it (power_on, power_off, power_cycle, power_state
// argv templates, or the uhubctl preset for per-port USB power). Every
// switch passes the tracing door as the command itself, so `pifarm -n`
// prints what an administrator would type.
package power

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

type module struct {
	d *trace.Door
	f *farm.Farm
}

// New returns the `power` module.
func New(d *trace.Door, f *farm.Farm) *trace.Module {
	m := &module{d: d, f: f}
	return &trace.Module{
		Name: "power",
		Doc: `Power control of hardware nodes: on, off, cycle and state, with the node table's commands.

A hardware node (one with lan_mac) names its power control in config.star:
argv templates power_on, power_off (both needed), power_cycle and
power_state, whose words may hold {id}, {alias}, {name}, {lan}, {lan_mac},
{wan_mac} and {serial}; or the preset power = uhubctl(hub = "1-1", port = 2)
(per-port USB power of a smart hub: uhubctl -l HUB -p PORT -a on|off|cycle,
its status output read for the state; through the privilege prefix unless
sudo = False). A node without power control is an error naming what to add.`,
		Funcs: []trace.Func{
			{Name: "on", Args: "node", Fn: m.switchFn("on"),
				Doc: "Switch the node's power on (its power_on command)."},
			{Name: "off", Args: "node", Fn: m.switchFn("off"),
				Doc: "Switch the node's power off (its power_off command). It cuts the power at once:\nshut the system down first (pifarm run shutdown N waits for the board's last words)."},
			{Name: "cycle", Args: "node, pause=2", Fn: m.cycle,
				Doc: "Switch the node's power off and on again: its power_cycle command, or power_off,\nsleep pause seconds, power_on."},
			{Name: "state", Args: "node, timeout=10", Fn: m.state,
				Doc: `Whether the node's power is on, as its power_state command tells: struct(state, detail),
state "on", "off" or "unknown" (no power_state command, it failed, or its answer is
not understood), detail the command's answer or why there is none.

A query: it runs in a dry run too, unless it needs the privilege prefix (then the dry
run prints it and says "unknown"). A user's power_state command tells by its first
word of output (on/off, 1/0, true/false, yes/no) or, printing nothing, by its exit
status (0 on, 1 off); the uhubctl preset's status output is read for the port's
"power" or "off" flag. timeout (seconds) bounds the command.`},
			{Name: "command", Args: "node, action", Fn: m.command,
				Doc: "The node's command for action (\"on\", \"off\", \"cycle\" or \"state\") as a list of words,\nplaceholders filled in and the privilege prefix in front where it is used; None when the\nnode table gives none (a node without power control, or without that command)."},
		},
	}
}

// node resolves the node argument: a hardware node with power control.
func (m *module) node(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple, more ...any) (*farm.Node, error) {
	ref := farm.InstanceRef{Farm: m.f}
	pairs := append([]any{"node", &ref}, more...)
	if err := trace.UnpackArgs(b.Name(), args, kwargs, pairs...); err != nil {
		return nil, err
	}
	n := ref.Node
	if n.Kind() != "hardware" {
		return nil, fmt.Errorf("node %d (%s) is a QEMU guest: its power is its QEMU (pifarm run box --run / --terminate %d)", n.ID, n.Alias, n.ID)
	}
	if n.Power == nil {
		return nil, fmt.Errorf("node %d (%s) has no power control in the node table: add power = uhubctl(hub = \"1-1\", port = 2) (a USB hub port) or power_on = [...], power_off = [...] (your own commands) to its node() in %s", n.ID, n.Alias, m.f.Config.Path)
	}
	return n, nil
}

// argv renders one of n's templates (nil: the node table gives none).
func argv(n *farm.Node, tmpl []string) ([]string, error) {
	if tmpl == nil {
		return nil, nil
	}
	a, err := farm.RenderPower(n, tmpl)
	if err != nil {
		return nil, fmt.Errorf("node %d (%s): power command %w", n.ID, n.Alias, err)
	}
	return a, nil
}

// run switches n's power with one of its templates.
func (m *module) run(n *farm.Node, what string, tmpl []string) error {
	a, err := argv(n, tmpl)
	if err != nil {
		return err
	}
	if _, err := m.d.Exec(trace.Cmd{Argv: a, Sudo: n.Power.Sudo}); err != nil {
		return fmt.Errorf("switch node %d (%s) %s: %w", n.ID, n.Alias, what, err)
	}
	return nil
}

func (m *module) switchFn(what string) func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error) {
	return func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
		n, err := m.node(b, args, kwargs)
		if err != nil {
			return nil, err
		}
		tmpl := n.Power.On
		if what == "off" {
			tmpl = n.Power.Off
		}
		return starlark.None, m.run(n, what, tmpl)
	}
}

func (m *module) cycle(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	pause := trace.Seconds{D: 2 * time.Second}
	n, err := m.node(b, args, kwargs, "pause?", &pause)
	if err != nil {
		return nil, err
	}
	if n.Power.Cycle != nil {
		return starlark.None, m.run(n, "off and on", n.Power.Cycle)
	}
	if err := m.run(n, "off", n.Power.Off); err != nil {
		return nil, err
	}
	err = m.d.Do("sleep "+strconv.FormatFloat(pause.D.Seconds(), 'f', -1, 64), func() error {
		t := time.NewTimer(pause.D)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-m.d.Context().Done():
			return fmt.Errorf("interrupted while node %d (%s) is off: switch it on with pifarm run power --on %d", n.ID, n.Alias, n.ID)
		}
	})
	if err != nil {
		return nil, err
	}
	return starlark.None, m.run(n, "on", n.Power.On)
}

func (m *module) state(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	timeout := trace.Seconds{D: 10 * time.Second}
	n, err := m.node(b, args, kwargs, "timeout?", &timeout)
	if err != nil {
		return nil, err
	}
	st, detail, err := m.query(n, timeout.D)
	if err != nil {
		return nil, err
	}
	return starlarkstruct.FromStringDict(starlark.String("power_state"), starlark.StringDict{
		"state": starlark.String(st), "detail": starlark.String(detail),
	}), nil
}

// query runs n's power_state command within timeout and reads its answer.
func (m *module) query(n *farm.Node, timeout time.Duration) (state, detail string, err error) {
	a, err := argv(n, n.Power.State)
	if err != nil {
		return "", "", err
	}
	if a == nil {
		return Unknown, "no power_state command in the node table", nil
	}
	c := trace.Cmd{Argv: a, Sudo: n.Power.Sudo}
	if m.d.DryRun && c.Sudo && !m.d.Root {
		m.d.Print("# query (not run in a dry run: it needs the privilege prefix): " + m.d.Line(c))
		return Unknown, "not asked in a dry run", nil
	}
	ctx, cancel := context.WithTimeout(m.d.Context(), timeout)
	defer cancel()
	q := trace.New(ctx, false, m.d.Verbose, m.d.Out)
	q.Priv, q.Root = m.d.Priv, m.d.Root
	res, qerr := q.Query(c)
	if ctx.Err() == context.DeadlineExceeded && m.d.Context().Err() == nil {
		return Unknown, fmt.Sprintf("%s did not answer within %s", trace.Join(a), timeout), nil
	}
	if err := m.d.Context().Err(); err != nil {
		return "", "", err
	}
	out := strings.TrimSpace(string(res.Stdout))
	if n.Power.Preset == "uhubctl" {
		// uhubctl says what it lacks on standard error, exiting 1
		st, perr := ParseUhubctl(out+"\n"+string(res.Stderr), n.Power.Hub, n.Power.Port)
		if perr != nil {
			return Unknown, perr.Error(), nil
		}
		return st, fmt.Sprintf("uhubctl: hub %s port %d %s", n.Power.Hub, n.Power.Port, st), nil
	}
	st, detail := ReadState(out, res.ExitCode, qerr)
	return st, detail, nil
}

// ReadState reads a user's power_state command: the first word of its
// output (on/off, 1/0, true/false, yes/no, any case) or, when it printed
// nothing, its exit status (0 on, 1 off). Anything else is Unknown, with
// the answer (or the failure) as the detail.
func ReadState(out string, exit int, err error) (string, string) {
	first := ""
	if f := strings.Fields(out); len(f) > 0 {
		first = strings.ToLower(strings.Trim(f[0], ".,:;!"))
	}
	line := strings.SplitN(out, "\n", 2)[0]
	switch first {
	case "on", "1", "true", "yes":
		return On, line
	case "off", "0", "false", "no":
		return Off, line
	case "":
		switch exit {
		case 0:
			if err == nil {
				return On, "exit status 0"
			}
		case 1:
			return Off, "exit status 1"
		}
		if err != nil {
			return Unknown, err.Error()
		}
		return Unknown, fmt.Sprintf("exit status %d and no output", exit)
	}
	if err != nil {
		return Unknown, err.Error()
	}
	return Unknown, fmt.Sprintf("answer %q is not on or off", line)
}

func (m *module) command(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ref := farm.InstanceRef{Farm: m.f}
	var action string
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "node", &ref, "action", &action); err != nil {
		return nil, err
	}
	n := ref.Node
	if n.Power == nil {
		return starlark.None, nil
	}
	var tmpl []string
	switch action {
	case "on":
		tmpl = n.Power.On
	case "off":
		tmpl = n.Power.Off
	case "cycle":
		tmpl = n.Power.Cycle
	case "state":
		tmpl = n.Power.State
	default:
		return nil, trace.Usagef("%s: action %q is not on, off, cycle or state", b.Name(), action)
	}
	a, err := argv(n, tmpl)
	if err != nil || a == nil {
		return starlark.None, err
	}
	if n.Power.Sudo && !m.d.Root {
		a = append(append([]string(nil), m.d.Priv...), a...)
	}
	l := make([]starlark.Value, len(a))
	for i, w := range a {
		l[i] = starlark.String(w)
	}
	return starlark.NewList(l), nil
}
