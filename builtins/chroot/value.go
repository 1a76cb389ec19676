package chroot

import (
	"fmt"

	"go.starlark.net/starlark"
	"pifarm/builtins/trace"
)

// value is the Starlark face of a Root.
type value struct {
	r *Root
	m *module
}

// methods registers the fields and methods of an open root.
var methods = &trace.Methods[*value]{
	Type: "chroot",
	Recv: "c",
	Doc: "A stopped instance's disk open on the host (returned by chroot.open). c.run has the\n" +
		"shape of an SSH connection's, so provisioning steps take either.",
	Fields: []trace.Field[*value]{
		{Name: "instance", Doc: "the instance id", Get: func(v *value) starlark.Value { return starlark.MakeInt(v.r.ID) }},
		{Name: "path", Doc: "the host folder holding the guest's /", Get: func(v *value) starlark.Value { return starlark.String(v.r.Path) }},
		{Name: "disk", Doc: "the disk file opened (a raw image or a qcow2 clone)", Get: func(v *value) starlark.Value { return starlark.String(v.r.Disk) }},
		{Name: "boot_dir", Doc: "where partition 1 is mounted in the guest, or None", Get: func(v *value) starlark.Value {
			if v.r.BootDir == "" {
				return starlark.None
			}
			return starlark.String(v.r.BootDir)
		}},
		{Name: "arch", Doc: "the guest's architecture as uname -m names it (empty in a dry run)", Get: func(v *value) starlark.Value { return starlark.String(v.r.Arch) }},
		{Name: "offline", Doc: "True: commands run on the host in the guest's root, not in a running guest", Get: func(v *value) starlark.Value { return starlark.True }},
	},
	Methods: []trace.Method[*value]{
		{Name: "run", Args: "cmd, stdin=None, stream=False, check=True, timeout=None", Fn: (*value).run,
			Doc: `Run a shell command as root in the guest's root file system; returns
struct(stdout, stderr, exit_code). stdin is a string or bytes; stream copies the
output to the terminal as it arrives; check makes a non-zero exit an error
quoting stderr's tail; timeout (seconds) ends the command (timeout(1)).
The environment is clean: PATH, HOME=/root, LC_ALL=C.UTF-8 if the guest has it
(else C), TERM=dumb. Dry run: prints "chroot ROOT ... sh -c CMD".`},
		{Name: "apt_update", Args: "options=[], stream=False", Fn: (*value).aptUpdate,
			Doc: `apt-get update for the guest, run by this host's own apt (native speed) in a
mount namespace where the guest's apt configuration, lists, package cache,
dpkg status and keyrings stand where the guest sees them, for the guest's
architectures (its dpkg's); by the guest's apt in the chroot when the host has
no apt, or the guest's configuration runs commands around an update, or a
source is signed by a key outside /etc/apt and /usr/share/keyrings. options
are apt-get's (e.g. ["-o", "Acquire::http::Proxy=URL"]). Returns
struct(stdout, stderr, exit_code), all output in stdout; exit_code 127: the
guest has no apt-get.`},
		{Name: "close", Args: "", Fn: (*value).close,
			Doc: `Undo the open in reverse order (files made, mounts, the qcow2 export) and let
the instance lock go. A run that ends without close() closes it too.`},
	},
	Check: func(v *value, method string) error {
		if v.r.closed && method != "close" {
			return fmt.Errorf("the root of instance %d is closed; open it again (chroot.open)", v.r.ID)
		}
		return nil
	},
}

func (v *value) String() string        { return fmt.Sprintf("<chroot %d %s>", v.r.ID, v.r.Path) }
func (v *value) Type() string          { return methods.Type }
func (v *value) Freeze()               {}
func (v *value) Truth() starlark.Bool  { return starlark.True }
func (v *value) Hash() (uint32, error) { return 0, fmt.Errorf("unhashable: %s", methods.Type) }

// Attr returns a field or a method bound to the root.
func (v *value) Attr(name string) (starlark.Value, error) { return methods.Attr(v, name) }

// AttrNames lists the root's fields and methods.
func (v *value) AttrNames() []string { return methods.AttrNames() }

func (v *value) run(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var cmd string
	var stdin starlark.Value
	var timeout trace.Seconds
	o := RunOpts{Check: true}
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "cmd", &cmd, "stdin?", &stdin, "stream?", &o.Stream, "check?", &o.Check, "timeout?", &timeout); err != nil {
		return nil, err
	}
	switch x := stdin.(type) {
	case nil, starlark.NoneType:
	case starlark.String:
		o.Stdin, o.Text = []byte(x), true
	case starlark.Bytes:
		o.Stdin = []byte(x)
	default:
		return nil, fmt.Errorf("stdin: want a string or bytes, got %s", stdin.Type())
	}
	o.Timeout = timeout.D
	res, err := v.r.Run(cmd, o)
	if err != nil {
		return nil, err
	}
	return trace.ResultStruct(res.Stdout, res.Stderr, res.ExitCode), nil
}

func (v *value) aptUpdate(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var opts trace.StringList
	var stream bool
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "options?", &opts, "stream?", &stream); err != nil {
		return nil, err
	}
	res, err := v.r.AptUpdate(opts.Strings, stream)
	if err != nil {
		return nil, err
	}
	return trace.ResultStruct(res.Stdout, res.Stderr, res.ExitCode), nil
}

func (v *value) close(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := trace.UnpackArgs(b.Name(), args, kwargs); err != nil {
		return nil, err
	}
	err := v.r.Close()
	v.m.closed(v.r)
	return starlark.None, err
}
