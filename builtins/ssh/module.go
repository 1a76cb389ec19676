// Package ssh is pifarm's `ssh` module: an SSH client (golang.org/x/crypto/ssh,
// no ssh, scp or sshpass binaries) for instances (127.0.0.1:5700+N), hardware
// nodes (their LAN address, port 22) and any host:port. Host keys are recorded
// per instance in the cache, learnt over a trusted channel (ssh.trust) or
// else on first use; commands return
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
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

type module struct {
	d    *trace.Door
	f    *farm.Farm
	keys Keys

	mu       sync.Mutex
	conns    map[string]*connValue // user@host:port -> open connection
	probed   map[string]*Probed    // host:port -> the connection of the last probe, for the next log-in
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
	m := &module{d: d, f: f, keys: keys, conns: map[string]*connValue{}, probed: map[string]*Probed{}}
	return &trace.Module{
		Name: "ssh",
		Doc: `SSH to instances, hardware nodes and any host (no ssh/scp/sshpass binaries).

Host keys are recorded per instance in the cache
(clones/raspi-clone-N/known_hosts): learnt over a channel pifarm trusts
(ssh.trust: the console, a disk pifarm wrote the keys to), else trusted on
first use; a connection tells which (c.host_key_check). A changed key is an
error that says how to reset it. The user's key is the first ~/.ssh/id_*.pub that has its private
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
timeout (seconds, positive) bounds the TCP connect and the SSH handshake
together; a refused port, or a forward that closes before the server speaks
(the guest's sshd not up yet), is retried until then. Connections are
reused: connecting again with the same user, host and port returns the open
one. With fail=False a connection or log-in failure returns None instead of
an error (a changed host key is always an error).

Dry run: every command prints as "ssh -p 5701 root@localhost '...'" (stdin as
a here-document or "< file", uploads as "tar ... | ssh ..."), passwords
masked; run returns exit_code 0 and empty output.

` + connMethods.Reference()},
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
			{Name: "probe", Args: "instance, port=None, timeout=10", Fn: m.probe,
				Doc: `The SSH server's banner ("SSH-2.0-...") when one answers within timeout
seconds, else None. A query: runs in dry-run too; logs in to nothing.

A port nobody listens on (QEMU's forward to a guest without an SSH server
closes at once) costs no wait; a slow guest (OpenSSH under full-system
emulation takes 0.4-2 s and more to send its banner) is waited for up to
timeout. The connection is kept open for 20 s: a log-in to the same host and
port (ssh.connect, ssh.login_error) goes on over it instead of making another
one, which would cost an emulated guest another process and banner.`},
			{Name: "trust", Args: "instance, keys, how, port=None", Fn: m.trust,
				Doc: `Record the instance's SSH host keys, learnt over a channel pifarm already
trusts (keys: the text of the guest's /etc/ssh/ssh_host_*_key.pub, one key a
line; how: where they come from, for the trace), replacing what known_hosts
recorded for its address (the old file kept as known_hosts~). The next log-in
then verifies the server's key instead of trusting the first one offered.
Returns the keys' SHA256 fingerprints. A line that is not a public key is an
error. Dry run with empty keys: says what would be recorded.`},
			{Name: "fingerprints", Args: "keys", Fn: m.fingerprints,
				Doc: `The SHA256 fingerprints ("SHA256:...") of public keys (keys: the text of
/etc/ssh/ssh_host_*_key.pub files, one key a line), ed25519's first, the others
in the order given. A line that is not a public key is an error. Reads nothing
else; the same in a dry run.`},
			{Name: "forget", Args: "instance, why, port=None", Fn: m.forget,
				Doc: `Forget the host keys recorded for the instance (its known_hosts lines; the old
file kept as known_hosts~), because its disk changed: a new image, a fresh clone,
an image whose first boot will make new keys. why is said in the trace. Returns
whether any were recorded.`},
			{Name: "new_host_keys", Args: `comment=""`, Fn: m.newHostKeys,
				Doc: `A new set of SSH host keys made on this host, as ssh-keygen -A makes them
(ed25519, ECDSA P-256, RSA 3072; OpenSSH's private key format), for a guest's
disk written offline: pifarm then knows the keys it will present before it
boots (record them with ssh.trust), instead of trusting its first key.
Returns struct(archive, public, fingerprints, files): archive is a tar of
etc/ssh/ssh_host_TYPE_key (mode 0600) and .pub (0644), owner root, to unpack
at the guest's root (bytes: the private keys appear in no trace); public the
.pub lines, ed25519 first; fingerprints their SHA256 fingerprints. Makes
nothing outside pifarm's memory, in a dry run too. The keys are made in the
background (an RSA key takes up to seconds): ask for them before a long step
and the fields wait only for what is left.`},
			{Name: "command", Args: `instance, cmd="", port=None, user="root"`, Fn: m.command,
				Doc: `The ssh command line a user would type to reach the instance (and run cmd).`},
		},
	}
}

// instanceRef is the Unpacker of an instance argument: a node, an id or
// alias, or a host name or address ("host", "host:port": a string with a
// dot or a colon, or localhost) that names no node.
func (m *module) instanceRef() farm.InstanceRef {
	return farm.InstanceRef{Farm: m.f, Also: "host", Other: func(ref string) bool {
		return strings.ContainsAny(ref, ".:") || ref == "localhost"
	}}
}

// target is where an instance argument connects: a node's SSH port (its
// LAN address, port 22, for a hardware box), or the host it names, with
// port overriding the port when not 0.
func (m *module) target(ref *farm.InstanceRef, port int) (Target, error) {
	if n := ref.Node; n != nil {
		t := Target{Host: "127.0.0.1", Port: m.f.SSHPort(n), KnownHosts: m.f.KnownHosts(n.ID)}
		if n.LANMAC != "" { // a hardware box
			t.Host, t.Port = n.LAN, 22
		}
		if port != 0 {
			t.Port = port
		}
		if _, remote := m.f.Remote(n); remote {
			p := t.Port
			t.Via = &Via{Dial: func(deadline time.Time) (net.Conn, error) {
				return m.f.DialPort(m.d.Context(), n, p, time.Until(deadline))
			}}
		}
		return t, nil
	}
	host, p := ref.Text, 22
	if h, ps, err := net.SplitHostPort(ref.Text); err == nil {
		host = h
		if p, err = strconv.Atoi(ps); err != nil {
			return Target{}, trace.Usagef("bad port in %q", ref.Text)
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

// portArg is an optional port: None (0, the instance's own) or an integer.
type portArg int

// Unpack implements starlark.Unpacker.
func (p *portArg) Unpack(v starlark.Value) error {
	if v == starlark.None {
		return nil
	}
	n, err := starlark.AsInt32(v)
	if err != nil {
		return fmt.Errorf("want an integer or None, got %s", v.Type())
	}
	*p = portArg(n)
	return nil
}

// login holds the arguments of ssh.connect and ssh.login_error.
type login struct {
	ref      farm.InstanceRef
	port     portArg
	user     string
	password trace.StringList
	key      trace.OptString
	timeout  trace.Seconds
	fail     bool
}

// loginArgs unpacks the arguments of connect (with fail) and login_error
// (without), timeout defaulting to def.
func (m *module) loginArgs(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple, def time.Duration, withFail bool) (*login, error) {
	a := &login{ref: m.instanceRef(), user: "root", password: trace.StringList{OneString: true}, timeout: trace.Seconds{D: def}, fail: true}
	pairs := []any{"instance", &a.ref, "port?", &a.port, "user?", &a.user, "password?", &a.password, "key?", &a.key, "timeout?", &a.timeout}
	if withFail {
		pairs = append(pairs, "fail?", &a.fail)
	}
	return a, trace.UnpackArgs(b.Name(), args, kwargs, pairs...)
}

// dial returns the open connection of a's user, host and port, or makes it.
func (m *module) dial(a *login) (*connValue, error) {
	key := a.key.S
	if key != "" {
		key = farm.ExpandPath(key)
	}
	t, err := m.target(&a.ref, int(a.port))
	if err != nil {
		return nil, err
	}
	id := a.user + "@" + t.Addr()
	probed := m.takeProbed(t.Addr())
	m.mu.Lock()
	if cv, ok := m.conns[id]; ok && cv.c.alive() && (key == "" || cv.c.A.KeyFile == key) {
		m.mu.Unlock()
		if probed != nil {
			probed.Close()
		}
		return cv, nil
	}
	m.mu.Unlock()
	c, err := dial(m.d, t, Auth{User: a.user, Passwords: a.password.Strings, KeyFile: key}, m.keys, a.timeout.D, probed)
	if err != nil {
		return nil, err
	}
	cv := &connValue{c: c, m: m}
	m.mu.Lock()
	m.conns[id] = cv
	m.mu.Unlock()
	return cv, nil
}

func (m *module) connect(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	a, err := m.loginArgs(b, args, kwargs, 30*time.Second, true)
	if err != nil {
		return nil, err
	}
	cv, err := m.dial(a)
	if err != nil {
		var mm *HostKeyMismatch
		if !a.fail && !trace.IsUsage(err) && !errors.As(err, &mm) {
			m.d.Note("ssh: %v", err)
			return starlark.None, nil
		}
		return nil, err
	}
	return cv, nil
}

func (m *module) loginError(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	a, err := m.loginArgs(b, args, kwargs, 10*time.Second, false)
	if err != nil {
		return nil, err
	}
	if _, err := m.dial(a); err != nil {
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

// ProbeTimeout is how long ssh.probe waits for a banner by default.
const ProbeTimeout = 10 * time.Second

func (m *module) probe(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ref, timeout := m.instanceRef(), trace.Seconds{D: ProbeTimeout}
	var port portArg
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "instance", &ref, "port?", &port, "timeout?", &timeout); err != nil {
		return nil, err
	}
	t, err := m.target(&ref, int(port))
	if err != nil {
		return nil, err
	}
	s, p := Probe(t.Addr(), timeout.D)
	if p == nil {
		return starlark.None, nil
	}
	if m.d.DryRun { // no log-in follows
		p.Close()
		return starlark.String(s), nil
	}
	m.mu.Lock()
	old := m.probed[t.Addr()]
	m.probed[t.Addr()] = p
	m.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return starlark.String(s), nil
}

// probedKeep is how long a probe's connection waits for the log-in that
// usually follows it (servers drop a connection that does not log in
// within their grace time: OpenSSH 120 s, dropbear 300 s).
const probedKeep = 20 * time.Second

// takeProbed returns the connection the last probe of addr left open
// (nil when none, or when it is older than probedKeep: then it is closed).
func (m *module) takeProbed(addr string) *Probed {
	m.mu.Lock()
	p := m.probed[addr]
	delete(m.probed, addr)
	m.mu.Unlock()
	if p != nil && time.Since(p.at) > probedKeep {
		p.Close()
		return nil
	}
	return p
}

func (m *module) command(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ref, cmd, user := m.instanceRef(), "", "root"
	var port portArg
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "instance", &ref, "cmd?", &cmd, "port?", &port, "user?", &user); err != nil {
		return nil, err
	}
	t, err := m.target(&ref, int(port))
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
