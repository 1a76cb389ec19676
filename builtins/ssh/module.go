// Package ssh is pifarm's `ssh` module: an SSH client (golang.org/x/crypto/ssh,
// no ssh, scp or sshpass binaries) for instances (127.0.0.1:5700+N), hardware
// nodes (their LAN address, port 22) and any host:port. Host keys are trusted
// on first use and recorded per instance in the cache; commands return
// stdout, stderr and exit status; files and whole trees are copied over the
// same connection.
//
// Every remote command passes the tracing door as its equivalent
// `ssh -p 5701 root@localhost '...'` line; a dry run connects to nothing and
// returns plausible results (exit status 0, empty output).
package ssh

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
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
	d    *trace.Door
	f    *farm.Farm
	keys Keys

	mu       sync.Mutex
	conns    map[string]*connValue // user@host:port -> open connection
	keyShown bool                  // dry run: the key creation was printed
}

// ensureKey is Keys.Ensure, printing a dry run's key creation once.
func (m *module) ensureKey() (string, error) {
	if m.d.DryRun {
		m.mu.Lock()
		shown := m.keyShown
		m.keyShown = true
		m.mu.Unlock()
		if shown {
			priv, _ := m.keys.Key()
			return priv + ".pub", nil
		}
	}
	return m.keys.Ensure(m.d)
}

// New returns the `ssh` module.
func New(d *trace.Door, f *farm.Farm) *trace.Module {
	home, _ := os.UserHomeDir()
	return newWithKeys(d, f, Keys{Home: home, ConfDir: f.ConfDir()})
}

func newWithKeys(d *trace.Door, f *farm.Farm, keys Keys) *trace.Module {
	m := &module{d: d, f: f, keys: keys, conns: map[string]*connValue{}}
	return &trace.Module{
		Name: "ssh",
		Doc: `SSH to instances, hardware nodes and any host (no ssh/scp/sshpass binaries).

Host keys are trusted on first use and recorded per instance in the cache
(clones/raspi-clone-N/known_hosts); a changed key is an error that says how
to reset it. The user's key is the first ~/.ssh/id_*.pub that has its private
key, else pifarm's own key (cache/conf/id_ed25519, created by
ssh.public_key()).`,
		Funcs: []trace.Func{
			{Name: "connect", Args: `instance, port=None, user="root", password=None, key=None, timeout=30, fail=True`, Fn: m.connect,
				Doc: `Connect and log in; returns a connection.

instance is a node (farm.node), an id or alias (a QEMU instance is reached at
127.0.0.1:5700+N, a hardware node at its LAN address, port 22), or a host
name or address ("host" or "host:port"). port overrides the port. Log-in
uses key (a private key file) or the user's keys, then password when given
(a string, or a list tried in turn on the one connection).
timeout bounds the TCP connect and the SSH handshake together; a refused
port, or a forward that closes before the server speaks (the guest's sshd
not up yet), is retried until then. Connections are reused: connecting
again with the same user, host and port returns the open one. With
fail=False a connection or log-in failure returns None instead of an error
(a changed host key is always an error).

Methods of a connection c:

  c.run(cmd, stdin=None, stdin_file=None, pty=False, stream=False, check=True, timeout=None)
      run a shell command; returns struct(stdout, stderr, exit_code).
      stdin is a string or bytes, stdin_file a host file; stream copies the
      output to the terminal as it arrives; check makes a non-zero exit an
      error quoting stderr's tail; exit_code is -1 when the connection
      closed first (poweroff) or, with check=False, when timeout (seconds)
      ran out (the reason then ends stderr).
  c.put(content, path, mode=None, owner=None)
      write content (string or bytes) to path; mode like "644" or 0o644,
      owner like "pi" or "pi:pi".
  c.upload(local_dir, remote_dir)
      copy the tree under local_dir into remote_dir as one tar stream into
      tar -x (entries owned by root, existing folders keep owner and mode);
      returns struct(files, bytes).
  c.close()

Dry run: every command prints as "ssh -p 5701 root@localhost '...'" (stdin as
a here-document or "< file", uploads as "tar ... | ssh ..."), passwords
masked; run returns exit_code 0 and empty output.`},
			{Name: "login_error", Args: `instance, port=None, user="root", password=None, key=None, timeout=10`, Fn: m.loginError,
				Doc: `Try to log in (as ssh.connect does) and return None when it works, else why
not (refused port, timeout, authentication failure, changed host key) as text.
The connection is kept for reuse. Dry run: connects to nothing, returns None.`},
			{Name: "public_key", Args: "", Fn: m.publicKey,
				Doc: `The user's public key as an authorized_keys line.

The first ~/.ssh/id_*.pub that has its private key; without one, pifarm's
own ed25519 key in cache/conf (created once, through the door: a dry run
prints the ssh-keygen line and returns a placeholder).`},
			{Name: "public_key_file", Args: "", Fn: m.publicKeyFile,
				Doc: `The path of the user's public key file (see public_key), creating pifarm's
own key when the user has none.`},
			{Name: "probe", Args: "instance, port=None, timeout=2", Fn: m.probe,
				Doc: `The SSH server's banner ("SSH-2.0-...") when one answers within timeout,
else None. A query: runs in dry-run too; logs in to nothing.`},
			{Name: "command", Args: `instance, cmd="", port=None, user="root"`, Fn: m.command,
				Doc: `The ssh command line a user would type to reach the instance (and run cmd).`},
		},
	}
}

// target resolves an instance argument.
func (m *module) target(v starlark.Value, port int) (Target, error) {
	var ref string
	switch x := v.(type) {
	case starlark.String:
		ref = string(x)
	case starlark.Int:
		ref = x.String()
	case starlark.HasAttrs:
		id, err := x.Attr("id")
		if err != nil || id == nil {
			return Target{}, fmt.Errorf("want an instance id, alias, node or host, got %s", v.Type())
		}
		ref = id.String()
	default:
		return Target{}, fmt.Errorf("want an instance id, alias, node or host, got %s", v.Type())
	}
	n, err := m.f.Resolve(ref)
	if err != nil {
		looksHost := strings.ContainsAny(ref, ".:") || ref == "localhost"
		if _, nerr := strconv.Atoi(ref); nerr == nil || !looksHost {
			return Target{}, err
		}
		host, p := ref, 22
		if h, ps, serr := net.SplitHostPort(ref); serr == nil {
			host = h
			if p, err = strconv.Atoi(ps); err != nil {
				return Target{}, trace.Usagef("bad port in %q", ref)
			}
		}
		if host == "localhost" {
			host = "127.0.0.1"
		}
		if port != 0 {
			p = port
		}
		return Target{Host: host, Port: p, KnownHosts: filepath.Join(m.f.ConfDir(), "known_hosts"), Shared: true}, nil
	}
	t := Target{Host: "127.0.0.1", Port: m.f.SSHPort(n), KnownHosts: m.f.KnownHosts(n.ID)}
	if n.LANMAC != "" { // a hardware box
		t.Host, t.Port = n.LAN, 22
	}
	if port != 0 {
		t.Port = port
	}
	return t, nil
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

func optInt(v starlark.Value, name string) (int, error) {
	if v == nil || v == starlark.None {
		return 0, nil
	}
	n, err := starlark.AsInt32(v)
	if err != nil {
		return 0, fmt.Errorf("%s: want an integer, got %s", name, v.Type())
	}
	return n, nil
}

func optString(v starlark.Value, name string) (string, error) {
	if v == nil || v == starlark.None {
		return "", nil
	}
	s, ok := starlark.AsString(v)
	if !ok {
		return "", fmt.Errorf("%s: want a string, got %s", name, v.Type())
	}
	return s, nil
}

func (m *module) connect(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var inst, pv, pwv, kv, tv starlark.Value
	user, fail := "root", true
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "instance", &inst, "port?", &pv, "user?", &user,
		"password?", &pwv, "key?", &kv, "timeout?", &tv, "fail?", &fail); err != nil {
		return nil, err
	}
	port, err := optInt(pv, "port")
	if err != nil {
		return nil, err
	}
	var pws []string
	switch x := pwv.(type) {
	case nil, starlark.NoneType:
	case starlark.String:
		pws = []string{string(x)}
	case starlark.Indexable:
		for i := 0; i < x.Len(); i++ {
			s, ok := starlark.AsString(x.Index(i))
			if !ok {
				return nil, fmt.Errorf("password: element %d is not a string", i)
			}
			pws = append(pws, s)
		}
	default:
		return nil, fmt.Errorf("password: want a string or a list of strings, got %s", pwv.Type())
	}
	key, err := optString(kv, "key")
	if err != nil {
		return nil, err
	}
	if key != "" {
		key = farm.ExpandPath(key)
	}
	timeout, err := seconds(tv, 30*time.Second)
	if err != nil {
		return nil, err
	}
	t, err := m.target(inst, port)
	if err != nil {
		return nil, err
	}
	id := user + "@" + t.Addr()
	m.mu.Lock()
	if cv, ok := m.conns[id]; ok && cv.c.alive() && (key == "" || cv.c.A.KeyFile == key) {
		m.mu.Unlock()
		return cv, nil
	}
	m.mu.Unlock()
	c, err := Dial(m.d, t, Auth{User: user, Passwords: pws, KeyFile: key}, m.keys, timeout)
	if err != nil {
		var mm *HostKeyMismatch
		if !fail && !errors.As(err, &mm) {
			m.d.Note("ssh: %v", err)
			return starlark.None, nil
		}
		return nil, err
	}
	cv := &connValue{c: c, m: m}
	m.mu.Lock()
	m.conns[id] = cv
	m.mu.Unlock()
	return cv, nil
}

func (m *module) loginError(th *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	hasTimeout := len(args) >= 6
	for _, kv := range kwargs {
		switch k, _ := starlark.AsString(kv[0]); k {
		case "fail":
			return nil, fmt.Errorf("%s: unexpected keyword argument fail", b.Name())
		case "timeout":
			hasTimeout = true
		}
	}
	if !hasTimeout {
		kwargs = append(kwargs, starlark.Tuple{starlark.String("timeout"), starlark.MakeInt(10)})
	}
	_, err := m.connect(th, b, args, kwargs)
	if err != nil {
		if trace.IsUsage(err) {
			return nil, err
		}
		return starlark.String(err.Error()), nil
	}
	return starlark.None, nil
}

func (m *module) publicKeyFile(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(b.Name(), args, kwargs); err != nil {
		return nil, err
	}
	p, err := m.ensureKey()
	return starlark.String(p), err
}

func (m *module) publicKey(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(b.Name(), args, kwargs); err != nil {
		return nil, err
	}
	p, err := m.ensureKey()
	if err != nil {
		return nil, err
	}
	line, err := publicLine(p)
	if err != nil && m.d.DryRun && os.IsNotExist(err) {
		return starlark.String("ssh-ed25519 AAAA-created-by-a-live-run pifarm"), nil
	}
	return starlark.String(line), err
}

func (m *module) probe(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var inst, pv, tv starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "instance", &inst, "port?", &pv, "timeout?", &tv); err != nil {
		return nil, err
	}
	port, err := optInt(pv, "port")
	if err != nil {
		return nil, err
	}
	timeout, err := seconds(tv, 2*time.Second)
	if err != nil {
		return nil, err
	}
	t, err := m.target(inst, port)
	if err != nil {
		return nil, err
	}
	if s := Banner(t.Addr(), timeout); s != "" {
		return starlark.String(s), nil
	}
	return starlark.None, nil
}

func (m *module) command(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var inst, pv starlark.Value
	cmd, user := "", "root"
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "instance", &inst, "cmd?", &cmd, "port?", &pv, "user?", &user); err != nil {
		return nil, err
	}
	port, err := optInt(pv, "port")
	if err != nil {
		return nil, err
	}
	t, err := m.target(inst, port)
	if err != nil {
		return nil, err
	}
	c := &Conn{d: m.d, T: t, A: Auth{User: user}}
	line := c.Line(cmd, RunOpts{})
	if cmd == "" {
		line = strings.TrimSuffix(line, " ''")
	}
	return starlark.String(line), nil
}

// connValue is the Starlark face of a Conn.
type connValue struct {
	c *Conn
	m *module
}

func (v *connValue) String() string        { return fmt.Sprintf("<ssh %s>", v.c.label()) }
func (v *connValue) Type() string          { return "ssh_connection" }
func (v *connValue) Freeze()               {}
func (v *connValue) Truth() starlark.Bool  { return starlark.True }
func (v *connValue) Hash() (uint32, error) { return 0, fmt.Errorf("unhashable: ssh_connection") }

// AttrNames lists the connection's fields and methods.
func (v *connValue) AttrNames() []string {
	return []string{"close", "host", "port", "put", "run", "upload", "user"}
}

// Attr returns a field or a method bound to the connection.
func (v *connValue) Attr(name string) (starlark.Value, error) {
	switch name {
	case "host":
		return starlark.String(v.c.T.Host), nil
	case "port":
		return starlark.MakeInt(v.c.T.Port), nil
	case "user":
		return starlark.String(v.c.A.User), nil
	}
	var fn func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error)
	switch name {
	case "run":
		fn = v.run
	case "put":
		fn = v.put
	case "upload":
		fn = v.upload
	case "close":
		fn = v.close
	default:
		return nil, nil
	}
	full := "ssh_connection." + name
	return starlark.NewBuiltin(full, func(th *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
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

func bytesOf(v starlark.Value, name string) ([]byte, error) {
	switch x := v.(type) {
	case starlark.String:
		return []byte(x), nil
	case starlark.Bytes:
		return []byte(x), nil
	}
	return nil, fmt.Errorf("%s: want a string or bytes, got %s", name, v.Type())
}

func (v *connValue) run(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var cmd string
	var stdin, sf, tv starlark.Value
	pty, stream, check := false, false, true
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "cmd", &cmd, "stdin?", &stdin, "stdin_file?", &sf,
		"pty?", &pty, "stream?", &stream, "check?", &check, "timeout?", &tv); err != nil {
		return nil, err
	}
	o := RunOpts{Pty: pty, Stream: stream, Check: check}
	var err error
	if stdin != nil && stdin != starlark.None {
		if o.Stdin, err = bytesOf(stdin, "stdin"); err != nil {
			return nil, err
		}
	}
	f, err := optString(sf, "stdin_file")
	if err != nil {
		return nil, err
	}
	if f != "" {
		o.StdinFile = farm.ExpandPath(f)
	}
	if o.Timeout, err = seconds(tv, 0); err != nil {
		return nil, err
	}
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
	var content, mv, ov starlark.Value
	var path string
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "content", &content, "path", &path, "mode?", &mv, "owner?", &ov); err != nil {
		return nil, err
	}
	data, err := bytesOf(content, "content")
	if err != nil {
		return nil, err
	}
	mode := ""
	switch x := mv.(type) {
	case nil, starlark.NoneType:
	case starlark.Int:
		n, ok := x.Int64()
		if !ok || n < 0 || n > 0o7777 {
			return nil, fmt.Errorf("mode %s out of range", x)
		}
		mode = strconv.FormatInt(n, 8)
	case starlark.String:
		mode = string(x)
		if _, err := strconv.ParseUint(mode, 8, 32); err != nil {
			return nil, fmt.Errorf("mode %q is not an octal number", mode)
		}
	default:
		return nil, fmt.Errorf("mode: want an octal string or an int, got %s", mv.Type())
	}
	owner, err := optString(ov, "owner")
	if err != nil {
		return nil, err
	}
	return starlark.None, v.c.Put(data, path, mode, owner)
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
