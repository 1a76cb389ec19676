// Package qemu is pifarm's qemu module: it starts the Raspberry Pi 3 guests
// of the farm in QEMU (machine raspi3b) with the original pibox device set,
// finds running instances from their pidfile and QMP socket (never by
// grepping ps), stops them through QMP after checking the pid really is the
// instance's QEMU, and waits for a guest's console login prompt or SSH
// banner. QEMU never runs as root: TAP NICs are used only when the TAP
// devices exist and belong to the user.
package qemu

import (
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// New returns the qemu module for a run with door d on farm f.
func New(d *trace.Door, f *farm.Farm) *trace.Module {
	in := &Instances{D: d, F: f}
	return in.Module()
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

// Module returns the Starlark module: one table entry per builtin, each
// implemented by the method of Instances it names (see builtins.go).
func (in *Instances) Module() *trace.Module {
	return &trace.Module{
		Name: "qemu",
		Doc:  "Start, find, stop and wait for the QEMU guests (raspi3b) of the farm.",
		Funcs: []trace.Func{
			{Name: "command", Args: startArgs, Fn: in.commandFn,
				Doc: "The QEMU command line qemu.start would run for instance node (nothing is started).\n\n" +
					startOptionsDoc + "\n\nReturns struct(argv, line, lan, wlan, warnings): lan/wlan tell whether the TAP NICs\nare in it, warnings why not (and what global_bind exposes). The warnings are also\nprinted as \"# warning:\" lines, like qemu.start's: on standard error (in the trace\nwhen dry), so that a recipe's standard output can be exactly the command line."},
			{Name: "start", Args: startArgs, Fn: in.startFn,
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
exact qemu-system-aarch64 line and starts nothing; missing TAPs print "# warning:" lines.

A node placed on a libvirt host (config.star's host, or the node's own host =) starts as
a transient libvirt domain there instead, from the same instance model (machine, memory,
CPUs, acceleration, boot files, SD card, serial console on TCP 5800+N, SSH forward
5700+N and VNC 5900+N on that host's loopback, the NICs and their MACs); the trace shows
"virsh -c URI create /dev/stdin" with the domain XML. status, quit, wait_exit, qmp and
the waits work the same through libvirt (and through the host's SSH connection for a
remote one); console=True, gui=True and global_bind=True are refused there.`},
			{Name: "status", Args: "node", Fn: in.statusFn,
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
only reported.`},
			{Name: "running", Args: "", Fn: in.runningFn,
				Doc: "The status (see qemu.status) of every instance of the node table whose QEMU runs, by id."},
			{Name: "statuses", Args: "", Fn: in.statusesFn,
				Doc: "The status (see qemu.status) of every instance of the node table, by id, probed concurrently."},
			{Name: "quit", Args: "node, timeout=30", Fn: in.quitFn,
				Doc: `Terminate instance node's QEMU: QMP "quit", then wait until the process is gone.

Only a process that is this instance's QEMU (see qemu.status: the pidfile's pid, or the
holder of the pidfile's lock; with no pidfile, a QEMU of this instance by its -pidfile
that holds the disk open, whose pidfile was removed); a pid of any other process with no
QEMU behind the pidfile is refused with an error and nothing is signalled. When QMP does
not answer, the verified process gets SIGTERM (a "# warning:" and "kill -TERM PID" line).
Returns True when a QEMU was running, False when none was. Dry-run prints the
equivalent "printf ... | socat - UNIX-CONNECT:qmp.sock" line.`},
			{Name: "wait_exit", Args: "node, timeout=30", Fn: in.waitExitFn,
				Doc: "Wait until instance node's QEMU has exited (for example after the guest halted and\nsomething sent quit), at most timeout seconds; returns at once when none runs."},
			{Name: "wait_console", Args: "node, timeout=300, pattern=\"login: \", fail=True", Fn: in.waitConsoleFn,
				Doc: `Wait until instance node's serial console (TCP 5800+N) shows pattern (a regular
expression, the login prompt by default).

Connects (again while QEMU is not listening yet), sends a carriage return so a waiting
getty prints its prompt again, reads; disconnects before returning, since QEMU's console
serves one client at a time. Returns struct(ok, seen) with the tail of the output; on
timeout an error quoting what was seen (or ok=False with fail=False). Dry-run prints a
comment and returns ok=True.`},
			{Name: "wait_ssh", Args: "node, timeout=300, fail=True", Fn: in.waitSSHFn,
				Doc: `Wait until instance node's SSH port (5700+N) answers with an "SSH-" banner.

Returns struct(ok, seen) with the banner; on timeout an error quoting the last thing
seen (or ok=False with fail=False). Dry-run prints a comment and returns ok=True.`},
			{Name: "qmp", Args: "node, command, arguments=None", Fn: in.qmpFn,
				Doc: `Send one QMP command to instance node's QEMU and return its reply as JSON text
(json.decode it). Commands named query-* are queries and run in dry-run too; any other
command is an action: dry-run prints the equivalent socat line and returns "{}".`},
			{Name: "remove_instance_files", Args: "node", Fn: in.removeInstanceFilesFn,
				Doc: `Delete the cache folder of instance node, or of each instance of a list (clone disk,
boot files, "~" backups, keys, runtime files): all of them or none. Refused for instance
0 (its disk is the user's registered image). The instance locks are taken first (waiting
while another pifarm starts an instance or changes an image, like qemu.start); under
them, an instance that runs (also one started meanwhile) or whose disk another process
holds open is refused. A folder that is not there is skipped. Returns the ids whose
folder was removed. Dry-run prints "rm -rf FOLDER".`},
			{Name: "viewer", Args: "node, program=\"remote-viewer\"", Fn: in.viewerFn,
				Doc: `Start a VNC viewer (remote-viewer vnc://localhost:5900+N) for instance node in the
background and return its pid (None in dry-run, which prints the line with " &").`},
		},
	}
}
