// Package qemu is pifarm's qemu module: it starts the Raspberry Pi 3 guests
// of the farm in QEMU (machine raspi3b) with the original pibox device set,
// finds running instances from their pidfile and QMP socket (never by
// grepping ps), stops them through QMP after checking the pid really is the
// instance's QEMU, and waits for a guest's console login prompt or SSH
// banner. QEMU never runs as root: TAP NICs are used only when the TAP
// devices exist and belong to the user.
package qemu

import (
	"encoding/json"
	"fmt"
	"regexp"
	"time"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// New returns the qemu module for a run with door d on farm f.
func New(d *trace.Door, f *farm.Farm) *trace.Module {
	in := &Instances{D: d, F: f}
	return in.Module()
}

type builtinFn = func(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error)

// nodeArg accepts an instance id (int or string), an alias or a node struct.
type nodeArg struct {
	f *farm.Farm
	n *farm.Node
}

func (a *nodeArg) Unpack(v starlark.Value) error {
	var ref string
	switch x := v.(type) {
	case starlark.String:
		ref = string(x)
	case starlark.Int:
		ref = x.String()
	case *starlarkstruct.Struct:
		id, err := x.Attr("id")
		if err != nil {
			return fmt.Errorf("want an instance id, alias or node, got a struct without id")
		}
		ref = id.String()
	default:
		return fmt.Errorf("want an instance id, alias or node, got %s", v.Type())
	}
	n, err := a.f.Resolve(ref)
	if err != nil {
		return err
	}
	a.n = n
	return nil
}

// nodesArg accepts an instance (see nodeArg) or a list or tuple of them.
type nodesArg struct {
	f  *farm.Farm
	ns []*farm.Node
}

func (a *nodesArg) Unpack(v starlark.Value) error {
	one := func(v starlark.Value) error {
		n := &nodeArg{f: a.f}
		if err := n.Unpack(v); err != nil {
			return err
		}
		a.ns = append(a.ns, n.n)
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

// seconds accepts an int or float number of seconds.
type seconds struct{ d time.Duration }

func (s *seconds) Unpack(v starlark.Value) error {
	switch x := v.(type) {
	case starlark.Int:
		n, _ := x.Int64()
		s.d = time.Duration(n) * time.Second
	case starlark.Float:
		s.d = time.Duration(float64(x) * float64(time.Second))
	default:
		return fmt.Errorf("want seconds (int or float), got %s", v.Type())
	}
	if s.d <= 0 {
		return fmt.Errorf("timeout must be positive")
	}
	return nil
}

func strList(v []string) *starlark.List {
	l := make([]starlark.Value, len(v))
	for i, x := range v {
		l[i] = starlark.String(x)
	}
	return starlark.NewList(l)
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
		"stale":    starlark.String(st.Stale),
		"error":    starlark.String(st.Err),
		"already":  starlark.Bool(st.Already),
		"lan":      starlark.Bool(st.LAN),
		"wlan":     starlark.Bool(st.WLAN),
		"warnings": strList(st.Warnings),
		"line":     starlark.String(st.Line),
		// vnc_password_file names the 0600 file with the VNC password of a
		// QEMU whose VNC listens beyond loopback, else "".
		"vnc_password_file": starlark.String(st.VNCPasswordFile),
	})
}

func waitStruct(r WaitResult) *starlarkstruct.Struct {
	return starlarkstruct.FromStringDict(starlark.String("qemu_wait"), starlark.StringDict{
		"ok": starlark.Bool(r.OK), "seen": starlark.String(r.Seen),
	})
}

// startOptions unpacks the display and network choices shared by command
// and start.
func (in *Instances) startOptions(name string, args starlark.Tuple, kwargs []starlark.Tuple, node *nodeArg) (Options, error) {
	var o Options
	gui, vnc, taps := false, true, true
	var extra *starlark.List
	if err := starlark.UnpackArgs(name, args, kwargs, "node", node, "console?", &o.Console, "gui?", &gui,
		"vnc?", &vnc, "global_bind?", &o.GlobalBind, "paused?", &o.Paused, "taps?", &taps, "extra?", &extra); err != nil {
		return o, err
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
	if extra != nil {
		for i := 0; i < extra.Len(); i++ {
			s, ok := starlark.AsString(extra.Index(i))
			if !ok {
				return o, fmt.Errorf("%s: extra[%d] is %s, want a string", name, i, extra.Index(i).Type())
			}
			o.Extra = append(o.Extra, s)
		}
	}
	return o, nil
}

const startArgs = "node, console=False, gui=False, vnc=True, global_bind=False, paused=False, taps=True, extra=[]"

const startOptionsDoc = `node is an instance id, alias or farm.node(...) struct. console: serial console on
this terminal (-serial mon:stdio, QEMU in the foreground; Ctrl-A X quits) instead of
TCP 5800+N. gui: QEMU's own window (-display gtk; Debian package qemu-system-gui)
instead of VNC. vnc: VNC display N (port 5900+N) on 127.0.0.1; False shows the screen
nowhere. global_bind: console, VNC and the SSH forward listen on all addresses (a
"# warning:" names each; VNC then asks for a fresh password, set over QMP and kept in
the instance folder's vnc-password, mode 0600; the serial console has none).
paused: CPUs stopped (-S). taps=False leaves out the LAN/WLAN NICs. extra: more QEMU
arguments.

-vga std of the original is not passed: QEMU 7's raspi3b ignores it (its framebuffer
is the board's own, and that is what VNC shows). The LAN (q0tapN) and WLAN (q1tapN)
NICs are added only when their TAP device exists and is usable by this user (owned
by the user, or pifarm runs as root); otherwise they are left out with a warning:
QEMU never runs through sudo. Every NIC has its own MAC (farm.node(N).mac_*).`

// Module returns the Starlark module.
func (in *Instances) Module() *trace.Module {
	d, f := in.D, in.F
	return &trace.Module{
		Name: "qemu",
		Doc:  "Start, find, stop and wait for the QEMU guests (raspi3b) of the farm.",
		Funcs: []trace.Func{
			{Name: "command", Args: startArgs,
				Doc: "The QEMU command line qemu.start would run for instance node (nothing is started).\n\n" +
					startOptionsDoc + "\n\nReturns struct(argv, line, lan, wlan, warnings): lan/wlan tell whether the TAP NICs\nare in it, warnings why not (and what global_bind exposes). The warnings are also\nprinted as \"# warning:\" lines, like qemu.start's: on standard error (in the trace\nwhen dry), so that a recipe's standard output can be exactly the command line.",
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					node := &nodeArg{f: f}
					o, err := in.startOptions(b.Name(), args, kwargs, node)
					if err != nil {
						return nil, err
					}
					p, err := Command(f, node.n, o)
					if err != nil {
						return nil, err
					}
					// Like qemu.start's: on standard error (in the trace
					// when dry), never mixed into what a recipe prints.
					for _, w := range p.Warnings {
						d.Print("# warning: " + w)
					}
					return starlarkstruct.FromStringDict(starlark.String("qemu_command"), starlark.StringDict{
						"argv": strList(p.Argv), "line": starlark.String(trace.Join(p.Argv)),
						"lan": starlark.Bool(p.LAN), "wlan": starlark.Bool(p.WLAN), "warnings": strList(p.Warnings),
					}), nil
				}},
			{Name: "start", Args: startArgs,
				Doc: "Start instance node's QEMU in the background and return once QMP answers.\n\n" +
					startOptionsDoc + `

The kernel (.ker), device tree (.dtb) and disk must exist (checking the boot partition
signature and creating clones is the recipe's job, with the image module). QEMU
daemonizes itself once its sockets are open; start then asks QMP for the run state and
returns. Concurrent starts of one instance serialise on the instance lock (flock on
the cache's lock file): one QEMU results, the others find it running. Under the lock, a
disk open for writing in another process (a QEMU whose pidfile is gone) is refused, naming
it (a query: dry runs refuse too); so is a start whose instance folder or files another
pifarm removed while it waited. The instance folder is made 0700. With console=True
QEMU runs in the foreground and start returns when it exits.

Returns the status (see qemu.status) with already=True when it was running before,
lan/wlan (TAP NICs present), warnings and line (the command run). Dry-run prints the
exact qemu-system-aarch64 line and starts nothing; missing TAPs print "# warning:" lines.`,
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					node := &nodeArg{f: f}
					o, err := in.startOptions(b.Name(), args, kwargs, node)
					if err != nil {
						return nil, err
					}
					st, err := in.Start(node.n, o)
					if err != nil {
						return nil, err
					}
					return in.StatusStruct(st), nil
				}},
			{Name: "status", Args: "node",
				Doc: `Whether instance node's QEMU runs, from its pidfile, /proc and QMP (never ps).

The QEMU is the process the pidfile names when its /proc exe is qemu-system-* and its
-pidfile is this instance's pidfile (the same file by device and inode, so a cache reached
through a symbolic link is the same cache), or else the process holding the lock QEMU keeps
on its pidfile while it runs (a pidfile overwritten with garbage or another pid).

Returns struct(id, alias, running, pid, state, stale, error, vnc_password_file, ...): pid
is None when not running; state is QMP's run state ("running", "paused", ...) or
"unreachable" (error says why); stale explains a pidfile that named no QEMU of this
instance (process gone, pid reused by another program). Only a pidfile that nobody locks
(no QEMU can be behind it) is removed, with its QMP socket when nothing listens on it
("rm -f ..." in the trace), and not while a start holds the instance lock; any other is
only reported.`,
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					node := &nodeArg{f: f}
					if err := starlark.UnpackArgs(b.Name(), args, kwargs, "node", node); err != nil {
						return nil, err
					}
					return in.StatusStruct(in.Status(node.n)), nil
				}},
			{Name: "running", Args: "",
				Doc: "The status (see qemu.status) of every instance of the node table whose QEMU runs, by id.",
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					if err := starlark.UnpackArgs(b.Name(), args, kwargs); err != nil {
						return nil, err
					}
					var l []starlark.Value
					for _, st := range in.All() {
						if st.Running {
							l = append(l, in.StatusStruct(st))
						}
					}
					return starlark.NewList(l), nil
				}},
			{Name: "statuses", Args: "",
				Doc: "The status (see qemu.status) of every instance of the node table, by id, probed concurrently.",
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					if err := starlark.UnpackArgs(b.Name(), args, kwargs); err != nil {
						return nil, err
					}
					var l []starlark.Value
					for _, st := range in.All() {
						l = append(l, in.StatusStruct(st))
					}
					return starlark.NewList(l), nil
				}},
			{Name: "quit", Args: "node, timeout=30",
				Doc: `Terminate instance node's QEMU: QMP "quit", then wait until the process is gone.

Only a process that is this instance's QEMU (see qemu.status: the pidfile's pid, or the
holder of the pidfile's lock; with no pidfile, a QEMU of this instance by its -pidfile
that holds the disk open, whose pidfile was removed); a pid of any other process with no
QEMU behind the pidfile is refused with an error and nothing is signalled. When QMP does
not answer, the verified process gets SIGTERM (a "# warning:" and "kill -TERM PID" line).
Returns True when a QEMU was running, False when none was. Dry-run prints the
equivalent "printf ... | socat - UNIX-CONNECT:qmp.sock" line.`,
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					node := &nodeArg{f: f}
					to := seconds{30 * time.Second}
					if err := starlark.UnpackArgs(b.Name(), args, kwargs, "node", node, "timeout?", &to); err != nil {
						return nil, err
					}
					was, err := in.Quit(node.n, to.d)
					return starlark.Bool(was), err
				}},
			{Name: "wait_exit", Args: "node, timeout=30",
				Doc: "Wait until instance node's QEMU has exited (for example after the guest halted and\nsomething sent quit), at most timeout seconds; returns at once when none runs.",
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					node := &nodeArg{f: f}
					to := seconds{30 * time.Second}
					if err := starlark.UnpackArgs(b.Name(), args, kwargs, "node", node, "timeout?", &to); err != nil {
						return nil, err
					}
					return starlark.None, in.WaitExit(node.n, to.d)
				}},
			{Name: "wait_console", Args: "node, timeout=300, pattern=\"login: \", fail=True",
				Doc: `Wait until instance node's serial console (TCP 5800+N) shows pattern (a regular
expression, the login prompt by default).

Connects (again while QEMU is not listening yet), sends a carriage return so a waiting
getty prints its prompt again, reads; disconnects before returning, since QEMU's console
serves one client at a time. Returns struct(ok, seen) with the tail of the output; on
timeout an error quoting what was seen (or ok=False with fail=False). Dry-run prints a
comment and returns ok=True.`,
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					node := &nodeArg{f: f}
					to := seconds{300 * time.Second}
					pattern, fail := "login: ", true
					if err := starlark.UnpackArgs(b.Name(), args, kwargs, "node", node, "timeout?", &to, "pattern?", &pattern, "fail?", &fail); err != nil {
						return nil, err
					}
					re, err := regexp.Compile(pattern)
					if err != nil {
						return nil, fmt.Errorf("pattern %q: %v", pattern, err)
					}
					r, err := in.WaitConsole(node.n, re, to.d)
					if _, isTimeout := err.(*TimeoutError); isTimeout && !fail {
						return waitStruct(r), nil
					}
					if err != nil {
						return nil, err
					}
					return waitStruct(r), nil
				}},
			{Name: "wait_ssh", Args: "node, timeout=300, fail=True",
				Doc: `Wait until instance node's SSH port (5700+N) answers with an "SSH-" banner.

Returns struct(ok, seen) with the banner; on timeout an error quoting the last thing
seen (or ok=False with fail=False). Dry-run prints a comment and returns ok=True.`,
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					node := &nodeArg{f: f}
					to := seconds{300 * time.Second}
					fail := true
					if err := starlark.UnpackArgs(b.Name(), args, kwargs, "node", node, "timeout?", &to, "fail?", &fail); err != nil {
						return nil, err
					}
					r, err := in.WaitSSH(node.n, to.d)
					if _, isTimeout := err.(*TimeoutError); isTimeout && !fail {
						return waitStruct(r), nil
					}
					if err != nil {
						return nil, err
					}
					return waitStruct(r), nil
				}},
			{Name: "qmp", Args: "node, command, arguments=None",
				Doc: `Send one QMP command to instance node's QEMU and return its reply as JSON text
(json.decode it). Commands named query-* are queries and run in dry-run too; any other
command is an action: dry-run prints the equivalent socat line and returns "{}".`,
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					node := &nodeArg{f: f}
					var command string
					var arguments starlark.Value = starlark.None
					if err := starlark.UnpackArgs(b.Name(), args, kwargs, "node", node, "command", &command, "arguments?", &arguments); err != nil {
						return nil, err
					}
					out, err := in.QMPCommand(node.n, command, arguments)
					return starlark.String(out), err
				}},
			{Name: "remove_instance_files", Args: "node",
				Doc: `Delete the cache folder of instance node, or of each instance of a list (clone disk,
boot files, "~" backups, keys, runtime files): all of them or none. Refused for instance
0 (its disk is the user's registered image). The instance locks are taken first (waiting
while another pifarm starts an instance or changes an image, like qemu.start); under
them, an instance that runs (also one started meanwhile) or whose disk another process
holds open is refused. A folder that is not there is skipped. Returns the ids whose
folder was removed. Dry-run prints "rm -rf FOLDER".`,
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					nodes := &nodesArg{f: f}
					if err := starlark.UnpackArgs(b.Name(), args, kwargs, "node", nodes); err != nil {
						return nil, err
					}
					ids, err := in.RemoveFiles(nodes.ns...)
					if err != nil {
						return nil, err
					}
					l := make([]starlark.Value, len(ids))
					for i, id := range ids {
						l[i] = starlark.MakeInt(id)
					}
					return starlark.NewList(l), nil
				}},
			{Name: "viewer", Args: "node, program=\"remote-viewer\"",
				Doc: `Start a VNC viewer (remote-viewer vnc://localhost:5900+N) for instance node in the
background and return its pid (None in dry-run, which prints the line with " &").`,
				Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					node := &nodeArg{f: f}
					program := "remote-viewer"
					if err := starlark.UnpackArgs(b.Name(), args, kwargs, "node", node, "program?", &program); err != nil {
						return nil, err
					}
					c, err := d.Start(trace.Cmd{Argv: []string{program, fmt.Sprintf("vnc://localhost:%d", f.VNCPort(node.n))}}, nil)
					if err != nil || c == nil {
						return starlark.None, err
					}
					pid := c.Process.Pid
					go c.Wait()
					return starlark.MakeInt(pid), nil
				}},
		},
	}
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

// QMPCommand sends one QMP command to instance n's QEMU (see qemu.qmp).
func (in *Instances) QMPCommand(n *farm.Node, command string, arguments starlark.Value) (string, error) {
	var args any
	if arguments != nil && arguments != starlark.None {
		js, err := starlarkJSON(arguments)
		if err != nil {
			return "", fmt.Errorf("qmp %s arguments: %w", command, err)
		}
		args = json.RawMessage(js)
	}
	st := in.Status(n)
	if !st.Running {
		return "", fmt.Errorf("instance %d is not running", n.ID)
	}
	req, _ := json.Marshal(map[string]any{"execute": command, "arguments": args})
	if args == nil {
		req, _ = json.Marshal(map[string]any{"execute": command})
	}
	run := func() (string, error) {
		q, err := DialQMP(in.D.Context(), in.F.QMP(n.ID), 3*time.Second)
		if err != nil {
			return "", err
		}
		defer q.Close()
		raw, err := q.Execute(in.D.Context(), 10*time.Second, command, args)
		if err != nil {
			return "", err
		}
		if raw == nil {
			raw = json.RawMessage("{}")
		}
		return string(raw), nil
	}
	if len(command) > 6 && command[:6] == "query-" {
		return run()
	}
	out := "{}"
	line := "printf '%s\\n' '{\"execute\":\"qmp_capabilities\"}' " + trace.Quote(string(req)) + " | socat - UNIX-CONNECT:" + trace.Quote(in.F.QMP(n.ID))
	err := in.D.Do(line, func() error {
		var err error
		out, err = run()
		return err
	})
	return out, err
}

// starlarkJSON encodes a Starlark dict/list/scalar as JSON.
func starlarkJSON(v starlark.Value) ([]byte, error) {
	var conv func(v starlark.Value) (any, error)
	conv = func(v starlark.Value) (any, error) {
		switch x := v.(type) {
		case starlark.NoneType:
			return nil, nil
		case starlark.Bool:
			return bool(x), nil
		case starlark.Int:
			n, ok := x.Int64()
			if !ok {
				return nil, fmt.Errorf("integer %s too large", x)
			}
			return n, nil
		case starlark.Float:
			return float64(x), nil
		case starlark.String:
			return string(x), nil
		case *starlark.List, starlark.Tuple:
			it := x.(starlark.Indexable)
			l := make([]any, it.Len())
			for i := range l {
				e, err := conv(it.Index(i))
				if err != nil {
					return nil, err
				}
				l[i] = e
			}
			return l, nil
		case *starlark.Dict:
			m := map[string]any{}
			for _, kv := range x.Items() {
				k, ok := starlark.AsString(kv[0])
				if !ok {
					return nil, fmt.Errorf("dict key %s is not a string", kv[0])
				}
				e, err := conv(kv[1])
				if err != nil {
					return nil, err
				}
				m[k] = e
			}
			return m, nil
		}
		return nil, fmt.Errorf("cannot encode %s as JSON", v.Type())
	}
	g, err := conv(v)
	if err != nil {
		return nil, err
	}
	return json.Marshal(g)
}
