package qemu

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// The builtins of the qemu module, one named method each, in the order of
// the table in module.go. Each declares its arguments with the shared
// argument types (farm.InstanceRef, trace.Seconds, trace.StringList) and
// calls the Instances method that does the work.

// ref is an instance argument resolved in this farm's node table.
func (in *Instances) ref() farm.InstanceRef { return farm.InstanceRef{Farm: in.F} }

// instanceRefs is an instance argument (see farm.InstanceRef) or a list or
// tuple of them.
type instanceRefs struct {
	farm  *farm.Farm
	nodes []*farm.Node
}

// Unpack implements starlark.Unpacker.
func (r *instanceRefs) Unpack(v starlark.Value) error {
	one := func(v starlark.Value) error {
		ref := farm.InstanceRef{Farm: r.farm}
		if err := ref.Unpack(v); err != nil {
			return err
		}
		r.nodes = append(r.nodes, ref.Node)
		return nil
	}
	l, ok := v.(starlark.Indexable)
	if _, isStr := v.(starlark.String); !ok || isStr {
		return one(v)
	}
	for i := 0; i < l.Len(); i++ {
		if err := one(l.Index(i)); err != nil {
			return fmt.Errorf("[%d]: %w", i, err)
		}
	}
	return nil
}

// startOptions unpacks the instance and the display and network choices
// shared by command and start.
func (in *Instances) startOptions(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (*farm.Node, Options, error) {
	var o Options
	node := in.ref()
	gui, vnc, taps := false, true, true
	var extra trace.StringList
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "node", &node, "console?", &o.Console, "gui?", &gui,
		"vnc?", &vnc, "global_bind?", &o.GlobalBind, "paused?", &o.Paused, "taps?", &taps, "extra?", &extra); err != nil {
		return nil, o, err
	}
	switch {
	case gui:
		o.Display = DisplayGUI
	case vnc:
		o.Display = DisplayVNC
	default:
		o.Display = DisplayNone
	}
	o.NoTAP = !taps
	o.Extra = extra.Strings
	return node.Node, o, nil
}

// commandFn is qemu.command.
func (in *Instances) commandFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, o, err := in.startOptions(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	p, err := in.plan(n, o)
	if err != nil {
		return nil, err
	}
	line := trace.Join(p.Argv)
	if p.Line != "" {
		line = p.Line
	}
	// Like qemu.start's: on standard error (in the trace when dry), never
	// mixed into what a recipe prints.
	for _, w := range p.Warnings {
		in.D.Print("# warning: " + w)
	}
	return starlarkstruct.FromStringDict(starlark.String("qemu_command"), starlark.StringDict{
		"argv": trace.Strings(p.Argv), "line": starlark.String(line),
		"lan": starlark.Bool(p.LAN), "wlan": starlark.Bool(p.WLAN), "warnings": trace.Strings(p.Warnings),
	}), nil
}

// startFn is qemu.start.
func (in *Instances) startFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, o, err := in.startOptions(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	st, err := in.Start(n, o)
	if err != nil {
		return nil, err
	}
	return in.StatusStruct(st), nil
}

// statusFn is qemu.status.
func (in *Instances) statusFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	node := in.ref()
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "node", &node); err != nil {
		return nil, err
	}
	return in.StatusStruct(in.Status(node.Node)), nil
}

// runningFn is qemu.running.
func (in *Instances) runningFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	return in.statusList(b, args, kwargs, func(st Status) bool { return st.Running })
}

// statusesFn is qemu.statuses.
func (in *Instances) statusesFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	return in.statusList(b, args, kwargs, func(Status) bool { return true })
}

// statusList is the list of the statuses of every instance that keep
// selects, for a builtin without arguments.
func (in *Instances) statusList(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple, keep func(Status) bool) (starlark.Value, error) {
	if err := starlark.UnpackArgs(b.Name(), args, kwargs); err != nil {
		return nil, err
	}
	var l []starlark.Value
	for _, st := range in.All() {
		if keep(st) {
			l = append(l, in.StatusStruct(st))
		}
	}
	return starlark.NewList(l), nil
}

// quitFn is qemu.quit.
func (in *Instances) quitFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, timeout, err := in.nodeTimeout(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	was, err := in.Quit(n, timeout)
	return starlark.Bool(was), err
}

// waitExitFn is qemu.wait_exit.
func (in *Instances) waitExitFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, timeout, err := in.nodeTimeout(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	return starlark.None, in.WaitExit(n, timeout)
}

// nodeTimeout unpacks (node, timeout=30), the arguments of quit and
// wait_exit.
func (in *Instances) nodeTimeout(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (*farm.Node, time.Duration, error) {
	node := in.ref()
	timeout := trace.Seconds{D: 30 * time.Second}
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "node", &node, "timeout?", &timeout); err != nil {
		return nil, 0, err
	}
	return node.Node, timeout.D, nil
}

// waitConsoleFn is qemu.wait_console.
func (in *Instances) waitConsoleFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	node := in.ref()
	timeout := trace.Seconds{D: 300 * time.Second}
	pattern, fail := "login: ", true
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "node", &node, "timeout?", &timeout, "pattern?", &pattern, "fail?", &fail); err != nil {
		return nil, err
	}
	re, err := regexp.Compile(pattern)
	if err != nil {
		return nil, fmt.Errorf("pattern %q: %v", pattern, err)
	}
	r, err := in.WaitConsole(node.Node, re, timeout.D)
	return waitValue(r, err, fail)
}

// waitSSHFn is qemu.wait_ssh.
func (in *Instances) waitSSHFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	node := in.ref()
	timeout := trace.Seconds{D: 300 * time.Second}
	fail := true
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "node", &node, "timeout?", &timeout, "fail?", &fail); err != nil {
		return nil, err
	}
	r, err := in.WaitSSH(node.Node, timeout.D)
	return waitValue(r, err, fail)
}

// waitValue is the Starlark result of a wait, struct(ok, seen): a timeout
// is an error, or ok=False when fail is false; any other error is one.
func waitValue(r WaitResult, err error, fail bool) (starlark.Value, error) {
	var timeout *TimeoutError
	if err != nil && (fail || !errors.As(err, &timeout)) {
		return nil, err
	}
	return starlarkstruct.FromStringDict(starlark.String("qemu_wait"), starlark.StringDict{
		"ok": starlark.Bool(r.OK), "seen": starlark.String(r.Seen),
	}), nil
}

// qmpFn is qemu.qmp.
func (in *Instances) qmpFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	node := in.ref()
	var command string
	var arguments starlark.Value = starlark.None
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "node", &node, "command", &command, "arguments?", &arguments); err != nil {
		return nil, err
	}
	out, err := in.QMPCommand(node.Node, command, arguments)
	return starlark.String(out), err
}

// removeInstanceFilesFn is qemu.remove_instance_files.
func (in *Instances) removeInstanceFilesFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	nodes := &instanceRefs{farm: in.F}
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "node", nodes); err != nil {
		return nil, err
	}
	ids, err := in.RemoveFiles(nodes.nodes...)
	if err != nil {
		return nil, err
	}
	return trace.Ints(ids), nil
}

// viewerFn is qemu.viewer.
func (in *Instances) viewerFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	node := in.ref()
	program := "remote-viewer"
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "node", &node, "program?", &program); err != nil {
		return nil, err
	}
	c, err := in.D.Start(trace.Cmd{Argv: []string{program, fmt.Sprintf("vnc://localhost:%d", in.F.VNCPort(node.Node))}}, nil)
	if err != nil || c == nil {
		return starlark.None, err
	}
	pid := c.Process.Pid
	go c.Wait()
	return starlark.MakeInt(pid), nil
}

// StatusStruct is the Starlark view of a Status.
func (in *Instances) StatusStruct(st Status) *starlarkstruct.Struct {
	var pid starlark.Value = starlark.None
	if st.PID > 0 {
		pid = starlark.MakeInt(st.PID)
	}
	return starlarkstruct.FromStringDict(starlark.String("qemu_status"), starlark.StringDict{
		"id":       starlark.MakeInt(st.ID),
		"alias":    starlark.String(st.Alias),
		"running":  starlark.Bool(st.Running),
		"pid":      pid,
		"state":    starlark.String(st.State),
		"stale":    starlark.String(st.StaleReason),
		"error":    starlark.String(st.Err),
		"already":  starlark.Bool(st.Already),
		"lan":      starlark.Bool(st.LAN),
		"wlan":     starlark.Bool(st.WLAN),
		"warnings": trace.Strings(st.Warnings),
		"line":     starlark.String(st.Line),
		// vnc_password_file names the 0600 file with the VNC password of a
		// QEMU whose VNC listens beyond loopback, else "".
		"vnc_password_file": starlark.String(st.VNCPasswordFile),
		// host and domain: the libvirt URI and domain name of a node
		// placed on a libvirt host, else "".
		"host":   starlark.String(st.Host),
		"domain": starlark.String(st.Domain),
		// where says in words what runs: "pid 7139", or the domain and
		// its host ("domain pifarm-enone-1a2b3c on root@farm2").
		"where": starlark.String(st.Where(in.F)),
	})
}

// All probes every instance of the node table concurrently.
func (in *Instances) All() []Status {
	nodes := in.F.Nodes()
	out := make([]Status, len(nodes))
	done := make(chan struct{})
	for i, n := range nodes {
		go func() {
			out[i] = in.Status(n)
			done <- struct{}{}
		}()
	}
	for range nodes {
		<-done
	}
	return out
}
