package ssh

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	xssh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/sys/unix"
	"pifarm/builtins/trace"
)

// Target is where a connection goes, and where its host keys are recorded.
type Target struct {
	Host       string
	Port       int
	KnownHosts string // known_hosts file: per instance in the cache
	// Shared reports that KnownHosts holds other hosts too (the reset hint
	// then uses ssh-keygen -R instead of rm).
	Shared bool
	// Via, when set, opens the connection instead of a TCP connection to
	// Addr: a guest on a remote libvirt host, whose forwarded SSH port
	// listens on that host's loopback, is reached through the host's SSH
	// connection (Addr still names it in known_hosts and messages).
	Via *Via
}

// Via opens a connection to a Target some other way than TCP to its Addr.
type Via struct {
	Dial func(deadline time.Time) (net.Conn, error)
}

// Addr is host:port.
func (t Target) Addr() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

// display is the host as an ssh command line shows it.
func (t Target) display() string {
	if t.Host == "127.0.0.1" || t.Host == "::1" {
		return "localhost"
	}
	return t.Host
}

// Auth holds the credentials of one connection.
type Auth struct {
	User string
	// Passwords are tried in turn (one connection; servers allow several
	// attempts).
	Passwords []string
	KeyFile   string // explicit private key (-i); empty: the default keys
}

// Conn is an SSH connection. In a dry run it has no client and every
// command is only printed.
type Conn struct {
	d      *trace.Door
	T      Target
	A      Auth
	client *xssh.Client
	dead   chan struct{}
	// HostKey is the key the server presented, and Learnt whether this
	// connection trusted it on first use (false: known_hosts held it).
	HostKey xssh.PublicKey
	Learnt  bool
}

// label names the connection in errors: user@host:port.
func (c *Conn) label() string { return c.A.User + "@" + c.T.Addr() }

// alive reports whether the connection is still up.
func (c *Conn) alive() bool {
	if c.client == nil {
		return true
	}
	select {
	case <-c.dead:
		return false
	default:
		return true
	}
}

// Close ends the connection.
func (c *Conn) Close() error {
	if c.client == nil {
		return nil
	}
	return c.client.Close()
}

// knownKeys returns the keys recorded for addr in file (plain entries).
func knownKeys(file, addr string) []xssh.PublicKey {
	f, err := openKnownHosts(file, os.O_RDONLY)
	if err != nil {
		return nil
	}
	defer f.Close()
	want := knownhosts.Normalize(addr)
	var keys []xssh.PublicKey
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		_, hosts, key, _, _, err := xssh.ParseKnownHosts(sc.Bytes())
		if err != nil {
			continue
		}
		for _, h := range hosts {
			if h == want {
				keys = append(keys, key)
			}
		}
	}
	return keys
}

// algorithms lists the host key algorithms that verify the known keys, so
// the server is asked for the key we know (pinning).
func algorithms(keys []xssh.PublicKey) []string {
	seen := map[string]bool{}
	var out []string
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, k := range keys {
		if k.Type() == xssh.KeyAlgoRSA {
			add(xssh.KeyAlgoRSASHA512)
			add(xssh.KeyAlgoRSASHA256)
		}
		add(k.Type())
	}
	return out
}

// hostKeyCallback verifies the server's key against the target's
// known_hosts: trust on first use (recorded through the door), a clear
// error with the reset command on a mismatch. The key accepted, and how,
// is kept in c.
func hostKeyCallback(d *trace.Door, t Target, c *Conn) xssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key xssh.PublicKey) error {
		c.HostKey, c.Learnt = nil, false
		addr := t.Addr()
		f, err := openKnownHosts(t.KnownHosts, os.O_RDONLY)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err == nil {
			// Read through the descriptor opened without following a link.
			cb, err := knownhosts.New(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
			f.Close()
			if err != nil {
				return fmt.Errorf("read %s: %w", t.KnownHosts, err)
			}
			err = cb(addr, remote, key)
			if err == nil {
				c.HostKey = key
				return nil
			}
			var ke *knownhosts.KeyError
			if !errors.As(err, &ke) {
				return err
			}
			if len(ke.Want) > 0 {
				w := ke.Want[0]
				return &HostKeyMismatch{Msg: fmt.Sprintf("host key mismatch for %s: it offers %s %s, but %s:%d records %s %s. %s",
					addr, key.Type(), xssh.FingerprintSHA256(key), t.KnownHosts, w.Line, w.Key.Type(), xssh.FingerprintSHA256(w.Key), resetHint(t))}
			}
		}
		line := knownhosts.Line([]string{knownhosts.Normalize(addr)}, key)
		err = d.Do(fmt.Sprintf("# ssh: trust the host key of %s on first use (%s %s), recorded in %s",
			addr, key.Type(), xssh.FingerprintSHA256(key), t.KnownHosts), func() error {
			return recordHostKey(t.KnownHosts, line)
		})
		if err == nil {
			c.HostKey, c.Learnt = key, true
		}
		return err
	}
}

// openKnownHosts opens a known_hosts file without following a symbolic
// link (nor blocking on a FIFO): a link planted there would make pifarm
// trust, or record, host keys in a file outside the cache. A link, or
// anything but a regular file, is an error naming the file and the fix; a
// missing file satisfies errors.Is(err, os.ErrNotExist).
func openKnownHosts(path string, flag int) (*os.File, error) {
	fd, err := unix.Open(path, flag|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o600)
	switch {
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("known_hosts %s is a symbolic link, which pifarm never makes: it neither reads host keys through it nor records them there; "+
			"remove it (rm %s) and connect again to trust the guest's key anew", path, trace.Quote(path))
	case errors.Is(err, unix.ENXIO): // a FIFO nobody reads
		return nil, fmt.Errorf("known_hosts %s is not a regular file; remove it (rm %s)", path, trace.Quote(path))
	case err != nil:
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("known_hosts %s is not a regular file; remove it (rm %s)", path, trace.Quote(path))
	}
	return f, nil
}

// recordHostKey appends a known_hosts line to path: created 0600 (an
// older, wider one is narrowed) in a folder made 0700, never through a
// symbolic link, under an exclusive lock so that two pifarm runs trusting
// a guest at once each append a whole line.
func recordHostKey(path, line string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("record the host key in %s: %w", path, err)
	}
	f, err := openKnownHosts(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", path, err)
	}
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		f.Chmod(0o600)
	}
	if _, err := f.WriteString(line + "\n"); err != nil {
		return fmt.Errorf("record the host key in %s: %w", path, err)
	}
	return f.Close()
}

// readNoFollow reads the file at path unless it is a symbolic link.
func readNoFollow(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link, which pifarm never makes; remove it (rm %s)", path, trace.Quote(path))
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 1<<20))
}

// resetHint explains a changed host key and how to forget the recorded one.
func resetHint(t Target) string {
	reset := "rm " + trace.Quote(t.KnownHosts)
	if t.Shared {
		reset = "ssh-keygen -R " + trace.Quote(knownhosts.Normalize(t.Addr())) + " -f " + trace.Quote(t.KnownHosts)
	}
	return "A re-imaged or re-keyed guest has new keys (clones share instance 0's keys until re-keyed); " +
		"if you expected the change, reset with: " + reset
}

// HostKeyMismatch is the error for a server whose key differs from the
// recorded one.
type HostKeyMismatch struct{ Msg string }

func (e *HostKeyMismatch) Error() string { return e.Msg }

// Dial connects and authenticates within timeout, which bounds the TCP
// connect and the SSH handshake together. A refused connection, or one
// closed before the SSH banner (QEMU's port forward while the guest's sshd
// is not up yet), is retried with short pauses until the deadline.
// Dry, it connects to nothing.
func Dial(d *trace.Door, t Target, a Auth, keys Keys, timeout time.Duration) (*Conn, error) {
	return dial(d, t, a, keys, timeout, nil)
}

// dial is Dial, logging in first on probed when it is not nil (a
// connection Probe opened to t): the handshake goes on after the banner it
// read, no new connection is made for it. It is closed when not used.
func dial(d *trace.Door, t Target, a Auth, keys Keys, timeout time.Duration, probed *Probed) (c *Conn, err error) {
	defer func() {
		if probed != nil {
			probed.Close()
		}
	}()
	c = &Conn{d: d, T: t, A: a}
	byLen := append([]string(nil), a.Passwords...)
	sort.Slice(byLen, func(i, j int) bool { return len(byLen[i]) > len(byLen[j]) })
	for _, p := range byLen {
		d.Secret(p)
	}
	if d.DryRun {
		switch len(a.Passwords) {
		case 0:
		case 1:
			d.Note("ssh: log in as %s on %s with password %s", a.User, t.Addr(), a.Passwords[0])
		default:
			d.Note("ssh: log in as %s on %s with passwords %s in turn", a.User, t.Addr(), strings.Join(a.Passwords, ", "))
		}
		return c, nil
	}
	signers, tried, agentDone, err := keys.signers(a.KeyFile)
	if err != nil {
		return nil, err
	}
	defer agentDone()
	var methods []xssh.AuthMethod
	if len(signers) > 0 {
		methods = append(methods, xssh.PublicKeys(signers...))
	}
	if n := len(a.Passwords); n > 0 {
		next := func(i *int) string {
			pw := a.Passwords[*i%n]
			*i++
			return pw
		}
		var ip, ik int
		methods = append(methods,
			xssh.RetryableAuthMethod(xssh.PasswordCallback(func() (string, error) { return next(&ip), nil }), n),
			xssh.RetryableAuthMethod(xssh.KeyboardInteractive(
				func(name, instruction string, questions []string, echos []bool) ([]string, error) {
					pw := next(&ik)
					ans := make([]string, len(questions))
					for i := range ans {
						ans[i] = pw
					}
					return ans, nil
				}), n))
		if n == 1 {
			tried = append(tried, "password")
		} else {
			tried = append(tried, fmt.Sprintf("%d passwords", n))
		}
	}
	if len(methods) == 0 {
		return nil, fmt.Errorf("%s@%s: no key and no password to log in with (no ~/.ssh/id_*.pub with its private key, and no pifarm key in %s yet: authorising your key for the guest creates one)", a.User, t.Addr(), keys.ConfDir)
	}
	cfg := &xssh.ClientConfig{
		User:            a.User,
		Auth:            methods,
		HostKeyCallback: hostKeyCallback(d, t, c),
		Timeout:         timeout,
	}
	if algos := algorithms(knownKeys(t.KnownHosts, t.Addr())); len(algos) > 0 {
		cfg.HostKeyAlgorithms = algos
	}
	if d.Verbose {
		d.Print(fmt.Sprintf("# ssh: connect to %s as %s", t.Addr(), a.User))
	}
	deadline := time.Now().Add(timeout)
	ctx := d.Context()
	pause := 20 * time.Millisecond
	for {
		var nc net.Conn
		if probed != nil {
			nc, probed = probed, nil
		}
		var client *xssh.Client
		var err error
		if nc == nil && t.Via != nil {
			if nc, err = t.Via.Dial(deadline); err != nil {
				// The remote host's loopback refused: the guest's
				// forward is not there yet, as a refused connection.
				err = fmt.Errorf("%w (%w)", err, syscall.ECONNREFUSED)
			}
		}
		if err == nil {
			client, err = dialOnce(ctx, t.Addr(), cfg, deadline, nc)
		}
		if err == nil {
			c.client = client
			c.dead = make(chan struct{})
			go func() { client.Wait(); close(c.dead) }()
			return c, nil
		}
		var mm *HostKeyMismatch
		var ne *xssh.AlgorithmNegotiationError
		switch {
		case errors.As(err, &mm):
			return nil, mm
		case len(cfg.HostKeyAlgorithms) > 0 && errors.As(err, &ne) && ne.What == "host key":
			// Pinned to the recorded key types, and the server has none of them.
			return nil, &HostKeyMismatch{Msg: fmt.Sprintf("host key mismatch for %s: %s records a key of type %s, but the server offers none of that type (%v). %s",
				t.Addr(), t.KnownHosts, strings.Join(cfg.HostKeyAlgorithms, ", "), err, resetHint(t))}
		case strings.Contains(err.Error(), "unable to authenticate"):
			// x/crypto/ssh has no error type for a refused log-in, only this text.
			return nil, fmt.Errorf("%s@%s: authentication failed (tried: %s)", a.User, t.Addr(), strings.Join(tried, ", "))
		case ctx.Err() != nil:
			return nil, fmt.Errorf("%s@%s: %w", a.User, t.Addr(), ctx.Err())
		case !retryable(err) && !isTimeout(err):
			return nil, fmt.Errorf("%s@%s: %v", a.User, t.Addr(), err)
		case time.Until(deadline) < pause:
			return nil, fmt.Errorf("%s@%s: %v (gave up after %s)", a.User, t.Addr(), err, timeout)
		}
		select {
		case <-time.After(pause):
		case <-ctx.Done():
		}
		if pause < 250*time.Millisecond {
			pause *= 2
		}
	}
}

func dialOnce(ctx interface {
	Done() <-chan struct{}
	Err() error
}, addr string, cfg *xssh.ClientConfig, deadline time.Time, nc net.Conn) (*xssh.Client, error) {
	if nc == nil {
		dl := net.Dialer{Deadline: deadline}
		var err error
		if nc, err = dl.Dial("tcp", addr); err != nil {
			return nil, err
		}
	}
	// ClientConfig.Timeout covers the TCP connect only: bound the handshake.
	nc.SetDeadline(deadline)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			nc.Close()
		case <-stop:
		}
	}()
	cc, chans, reqs, err := xssh.NewClientConn(nc, addr, cfg)
	if err != nil {
		nc.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("SSH handshake timed out: %w", err)
		}
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return xssh.NewClient(cc, chans, reqs), nil
}

// isTimeout reports whether err is a deadline running out.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// retryable: the port is not there yet, or the forwarder closed before
// the server spoke (x/crypto/ssh wraps the handshake's EOF and reset).
func retryable(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)
}

// Probed is a connection on which Probe read the server's banner: what
// was read of it (the banner line and whatever followed) is read again
// first, so that an SSH handshake can go on over it. Logging in on it
// saves a connection: under full-system emulation each new connection
// costs the guest's SSH server a process and seconds before its banner.
type Probed struct {
	net.Conn
	pre []byte
	at  time.Time // when the banner was read
}

// Read returns what Probe read first, then what the connection brings.
func (p *Probed) Read(b []byte) (int, error) {
	if len(p.pre) > 0 {
		n := copy(b, p.pre)
		p.pre = p.pre[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// Probe reads the server's identification line ("SSH-2.0-...") without
// logging in and returns it with the connection it came on, or "" and nil
// when none arrives within timeout.
func Probe(addr string, timeout time.Duration) (string, *Probed) {
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", nil
	}
	nc.SetDeadline(time.Now().Add(timeout))
	r := bufio.NewReader(nc)
	var seen []byte
	for i := 0; i < 20; i++ {
		line, err := r.ReadString('\n')
		seen = append(seen, line...)
		if strings.HasPrefix(line, "SSH-") {
			rest, _ := r.Peek(r.Buffered())
			nc.SetDeadline(time.Time{})
			return strings.TrimSpace(line), &Probed{Conn: nc, pre: append(seen, rest...), at: time.Now()}
		}
		if err != nil {
			break
		}
	}
	nc.Close()
	return "", nil
}

// Banner is Probe's line; the connection is closed.
func Banner(addr string, timeout time.Duration) string {
	s, p := Probe(addr, timeout)
	if p != nil {
		p.Close()
	}
	return s
}
