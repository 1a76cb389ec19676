package ssh

import (
	"fmt"
	"strconv"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	xssh "golang.org/x/crypto/ssh"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// connValue is the Starlark face of a Conn.
type connValue struct {
	c *Conn
	m *module
}

// connMethods registers the fields and methods of a connection.
var connMethods = &trace.Methods[*connValue]{
	Type: "ssh_connection",
	Recv: "c",
	Doc:  "An open SSH connection (returned by ssh.connect): its fields and methods.",
	Fields: []trace.Field[*connValue]{
		{Name: "host", Doc: "the host connected to (127.0.0.1 for an instance)", Get: func(v *connValue) starlark.Value { return starlark.String(v.c.T.Host) }},
		{Name: "port", Doc: "the port connected to", Get: func(v *connValue) starlark.Value { return starlark.MakeInt(v.c.T.Port) }},
		{Name: "user", Doc: "the user logged in as", Get: func(v *connValue) starlark.Value { return starlark.String(v.c.A.User) }},
		{Name: "host_key", Doc: `the SHA256 fingerprint of the host key the server presented ("" in a dry run)`, Get: func(v *connValue) starlark.Value {
			if v.c.HostKey == nil {
				return starlark.String("")
			}
			return starlark.String(xssh.FingerprintSHA256(v.c.HostKey))
		}},
		{Name: "host_key_check", Doc: `how that key was accepted: "verified" (known_hosts held it), "first use" (trusted and recorded now), "" in a dry run`, Get: func(v *connValue) starlark.Value {
			switch {
			case v.c.HostKey == nil:
				return starlark.String("")
			case v.c.Learnt:
				return starlark.String("first use")
			}
			return starlark.String("verified")
		}},
	},
	Methods: []trace.Method[*connValue]{
		{Name: "run", Args: "cmd, stdin=None, stdin_file=None, pty=False, stream=False, check=True, timeout=None", Fn: (*connValue).run,
			Doc: `Run a shell command; returns struct(stdout, stderr, exit_code).
stdin is a string or bytes, stdin_file a host file; stream copies the
output to the terminal as it arrives; check makes a non-zero exit an
error quoting stderr's tail; exit_code is -1 when the connection
closed first (poweroff) or, with check=False, when timeout (seconds)
ran out (the reason then ends stderr). timeout None: no limit.`},
		{Name: "put", Args: "content, path, mode=None, owner=None", Fn: (*connValue).put,
			Doc: `Write content (string or bytes) to path; mode like "644" or 0o644,
owner like "pi" or "pi:pi".`},
		{Name: "upload", Args: "local_dir, remote_dir", Fn: (*connValue).upload,
			Doc: `Copy the tree under local_dir into remote_dir as one tar stream into
tar -x (entries owned by root, existing folders keep owner and mode);
returns struct(files, bytes).`},
		{Name: "close", Args: "", Fn: (*connValue).close,
			Doc: `Close the connection (the next ssh.connect makes a new one).`},
	},
}

func (v *connValue) String() string        { return fmt.Sprintf("<ssh %s>", v.c.label()) }
func (v *connValue) Type() string          { return connMethods.Type }
func (v *connValue) Freeze()               {}
func (v *connValue) Truth() starlark.Bool  { return starlark.True }
func (v *connValue) Hash() (uint32, error) { return 0, fmt.Errorf("unhashable: %s", connMethods.Type) }

// Attr returns a field or a method bound to the connection.
func (v *connValue) Attr(name string) (starlark.Value, error) { return connMethods.Attr(v, name) }

// AttrNames lists the connection's fields and methods.
func (v *connValue) AttrNames() []string { return connMethods.AttrNames() }

// bytesOf is the content of a string or bytes argument.
func bytesOf(v starlark.Value, name string) ([]byte, error) {
	switch x := v.(type) {
	case starlark.String:
		return []byte(x), nil
	case starlark.Bytes:
		return []byte(x), nil
	}
	return nil, fmt.Errorf("%s: want a string or bytes, got %s", name, v.Type())
}

// modeOf is a file mode argument as chmod takes it: None (""), an octal
// string ("644") or an int (0o644).
func modeOf(v starlark.Value) (string, error) {
	switch x := v.(type) {
	case nil, starlark.NoneType:
		return "", nil
	case starlark.Int:
		n, ok := x.Int64()
		if !ok || n < 0 || n > 0o7777 {
			return "", fmt.Errorf("mode %s out of range", x)
		}
		return strconv.FormatInt(n, 8), nil
	case starlark.String:
		if _, err := strconv.ParseUint(string(x), 8, 32); err != nil {
			return "", fmt.Errorf("mode %q is not an octal number", string(x))
		}
		return string(x), nil
	}
	return "", fmt.Errorf("mode: want an octal string or an int, got %s", v.Type())
}

func (v *connValue) run(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var cmd string
	var stdin starlark.Value
	var stdinFile trace.OptString
	var timeout trace.Seconds // None: no limit
	o := RunOpts{Check: true}
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "cmd", &cmd, "stdin?", &stdin, "stdin_file?", &stdinFile,
		"pty?", &o.Pty, "stream?", &o.Stream, "check?", &o.Check, "timeout?", &timeout); err != nil {
		return nil, err
	}
	if stdin != nil && stdin != starlark.None {
		var err error
		if o.Stdin, err = bytesOf(stdin, "stdin"); err != nil {
			return nil, err
		}
	}
	if stdinFile.S != "" {
		o.StdinFile = farm.ExpandPath(stdinFile.S)
	}
	o.Timeout = timeout.D
	r, err := v.c.Run(cmd, o)
	if err != nil {
		return nil, err
	}
	return starlarkstruct.FromStringDict(starlark.String("result"), starlark.StringDict{
		"stdout":    starlark.String(r.Stdout),
		"stderr":    starlark.String(r.Stderr),
		"exit_code": starlark.MakeInt(r.ExitCode),
	}), nil
}

func (v *connValue) put(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var content, mv starlark.Value
	var path string
	var owner trace.OptString
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "content", &content, "path", &path, "mode?", &mv, "owner?", &owner); err != nil {
		return nil, err
	}
	data, err := bytesOf(content, "content")
	if err != nil {
		return nil, err
	}
	mode, err := modeOf(mv)
	if err != nil {
		return nil, err
	}
	return starlark.None, v.c.Put(data, path, mode, owner.S)
}

func (v *connValue) upload(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var local, remote string
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "local_dir", &local, "remote_dir", &remote); err != nil {
		return nil, err
	}
	r, err := v.c.Upload(farm.ExpandPath(local), remote)
	if err != nil {
		return nil, err
	}
	return starlarkstruct.FromStringDict(starlark.String("upload"), starlark.StringDict{
		"files": starlark.MakeInt64(r.Files),
		"bytes": starlark.MakeInt64(r.Bytes),
	}), nil
}

func (v *connValue) close(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(b.Name(), args, kwargs); err != nil {
		return nil, err
	}
	v.m.mu.Lock()
	for k, cv := range v.m.conns {
		if cv == v {
			delete(v.m.conns, k)
		}
	}
	v.m.mu.Unlock()
	return starlark.None, v.c.Close()
}
