// Package virt places QEMU guests on libvirt hosts: the ground the qemu
// module's libvirt placement (and the console and ssh modules' way to a
// remote guest) stands on, as farm and trace are for every module.
//
// A host is a libvirt URI of config.star (farm.HostURI): qemu:///system is
// this machine's libvirtd, reached on its unix socket; qemu+ssh://user@host/system
// is another machine's, reached over one SSH connection (golang.org/x/crypto/ssh)
// whose channel to the remote /var/run/libvirt/libvirt-sock carries libvirt's
// RPC (github.com/digitalocean/go-libvirt, pure Go: no C library, no virsh).
// The same SSH connection reaches the guest's serial console and SSH port,
// which listen on the remote host's loopback only: no port is exposed and
// the user opens no tunnel.
//
// Domain renders the domain XML of one instance from the same instance
// model as the local QEMU command line. Every action is done by the qemu
// module through the tracing door, whose dry-run line is the equivalent
// virsh command (Virsh); this package itself changes nothing on its own.
package virt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	xssh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
	"pifarm/builtins/farm"
)

// Socket is where a system libvirtd listens, on its own machine.
const Socket = "/var/run/libvirt/libvirt-sock"

// Auth says where the keys and known hosts of an SSH transport are: the
// user's ~/.ssh (id_ed25519, id_ecdsa, id_rsa without a passphrase, an
// ssh-agent, known_hosts) and pifarm's own key in ConfDir (id_ed25519).
type Auth struct {
	Home    string
	ConfDir string
}

// DefaultAuth is the Auth of this user for farm f.
func DefaultAuth(f *farm.Farm) Auth {
	home, _ := os.UserHomeDir()
	return Auth{Home: home, ConfDir: f.ConfDir()}
}

// Conn is an open connection to one libvirt host.
type Conn struct {
	Host farm.HostURI
	// L speaks libvirt's RPC.
	L   *libvirt.Libvirt
	ssh *xssh.Client
	raw net.Conn
}

// Connect opens a connection to host h: this machine's libvirt socket, or
// an SSH connection to the remote host and a channel to its socket. It
// fails within timeout, naming the host and the fix.
func Connect(ctx context.Context, h farm.HostURI, a Auth, timeout time.Duration) (*Conn, error) {
	c := &Conn{Host: h}
	deadline := time.Now().Add(timeout)
	var err error
	if h.Local() {
		var d net.Dialer
		dctx, cancel := context.WithDeadline(ctx, deadline)
		c.raw, err = d.DialContext(dctx, "unix", Socket)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("libvirt %s: connect to %s: %w (is libvirtd running? start it with `virtlogd -d; libvirtd -d` as root, or your service manager's libvirtd service; Debian: apt-get install libvirt-daemon-system)", h.URI, Socket, err)
		}
	} else {
		c.ssh, err = dialSSH(ctx, h, a, deadline)
		if err != nil {
			return nil, err
		}
		c.raw, err = c.ssh.Dial("unix", Socket)
		if err != nil {
			c.ssh.Close()
			return nil, fmt.Errorf("libvirt %s: open %s on %s over SSH: %w (is libvirtd running there, and does its sshd allow stream-local forwarding, AllowStreamLocalForwarding?)", h.URI, Socket, h.Name(), err)
		}
	}
	c.L = libvirt.NewWithDialer(dialers.NewAlreadyConnected(c.raw))
	stop := closeAt(ctx, c.raw, deadline)
	err = c.L.ConnectToURI(libvirt.QEMUSystem)
	if !stop() {
		err = fmt.Errorf("no answer within %s", timeout)
		if ctx.Err() != nil {
			err = ctx.Err()
		}
	}
	if err != nil {
		c.close()
		return nil, fmt.Errorf("libvirt %s: open qemu:///system on %s: %w (as which user does pifarm reach it? the system libvirtd wants root or the libvirt group)", h.URI, h.Name(), err)
	}
	return c, nil
}

// closeAt closes c when ctx is done or the deadline passes, unless stop is
// called first; stop reports whether it was in time.
func closeAt(ctx context.Context, c net.Conn, deadline time.Time) (stop func() bool) {
	t := time.NewTimer(time.Until(deadline))
	done := make(chan struct{})
	var once sync.Once
	fired := false
	var mu sync.Mutex
	go func() {
		select {
		case <-t.C:
		case <-ctx.Done():
		case <-done:
			return
		}
		mu.Lock()
		fired = true
		mu.Unlock()
		c.Close()
	}()
	return func() bool {
		once.Do(func() { t.Stop(); close(done) })
		mu.Lock()
		defer mu.Unlock()
		return !fired
	}
}

// Call runs fn, a libvirt RPC, at most timeout long: libvirt's RPC has no
// deadline of its own, so the connection is closed when the time is out or
// ctx is done (the Conn is then dead, Alive says so).
func (c *Conn) Call(ctx context.Context, timeout time.Duration, fn func(l *libvirt.Libvirt) error) error {
	stop := closeAt(ctx, c.raw, time.Now().Add(timeout))
	err := fn(c.L)
	if !stop() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("libvirt %s did not answer within %s", c.Host.URI, timeout)
	}
	return err
}

// Alive reports whether the connection still stands.
func (c *Conn) Alive() bool {
	select {
	case <-c.L.Disconnected():
		return false
	default:
		return true
	}
}

// Close ends the libvirt connection and its SSH transport.
func (c *Conn) Close() error {
	if c.Alive() {
		c.L.Disconnect()
	}
	return c.close()
}

func (c *Conn) close() error {
	var err error
	if c.raw != nil {
		c.raw.Close()
	}
	if c.ssh != nil {
		err = c.ssh.Close()
	}
	return err
}

// DialHost connects to port on the host's loopback (127.0.0.1): directly
// for this machine, through the SSH connection (a direct-tcpip channel)
// for a remote one, so a guest's console and SSH port need not listen
// beyond the host's loopback.
func (c *Conn) DialHost(ctx context.Context, port int, timeout time.Duration) (net.Conn, error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if c.ssh == nil {
		d := net.Dialer{Timeout: timeout}
		return d.DialContext(ctx, "tcp", addr)
	}
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		nc, err := c.ssh.Dial("tcp", addr)
		ch <- res{nc, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("%s on %s (through SSH): %w", addr, c.Host.Name(), r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	case <-time.After(timeout):
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, fmt.Errorf("%s on %s (through SSH): no connection within %s", addr, c.Host.Name(), timeout)
	}
}

// SSH is the SSH connection of a remote host (nil for this machine's).
func (c *Conn) SSH() *xssh.Client { return c.ssh }

// dialSSH logs in to the SSH server of h with the user's keys, an
// ssh-agent's or pifarm's own, checking the server's host key against the
// user's known_hosts (a host never seen is refused, as ssh in batch mode
// does: nothing is trusted on first use).
func dialSSH(ctx context.Context, h farm.HostURI, a Auth, deadline time.Time) (*xssh.Client, error) {
	name := h.User
	if name == "" {
		if u, err := user.Current(); err == nil {
			name = u.Username
		}
	}
	signers, closeAgent := signers(a)
	defer closeAgent()
	if len(signers) == 0 {
		return nil, fmt.Errorf("libvirt %s: no SSH key to log in with: none of ~/.ssh/id_ed25519, id_ecdsa, id_rsa without a passphrase, no ssh-agent, and no pifarm key %s (make one: ssh-keygen -t ed25519, and authorise it for %s@%s)", h.URI, filepath.Join(a.ConfDir, "id_ed25519"), name, h.Host)
	}
	var files []string
	for _, p := range []string{filepath.Join(a.Home, ".ssh", "known_hosts"), "/etc/ssh/ssh_known_hosts"} {
		if _, err := os.Stat(p); err == nil {
			files = append(files, p)
		}
	}
	var check xssh.HostKeyCallback
	if len(files) > 0 {
		kh, err := knownhosts.New(files...)
		if err != nil {
			return nil, fmt.Errorf("libvirt %s: read known hosts: %w", h.URI, err)
		}
		check = kh
	}
	cb := func(hostname string, remote net.Addr, key xssh.PublicKey) error {
		fp := xssh.FingerprintSHA256(key)
		if check == nil {
			return fmt.Errorf("host key %s of %s is not known: no ~/.ssh/known_hosts (log in once with `ssh -p %d %s@%s`, compare the fingerprint, accept it)", fp, h.Addr(), h.Port, name, h.Host)
		}
		err := check(hostname, remote, key)
		var ke *knownhosts.KeyError
		if errors.As(err, &ke) {
			if len(ke.Want) == 0 {
				return fmt.Errorf("host key %s of %s is not in %v (log in once with `ssh -p %d %s@%s`, compare the fingerprint, accept it)", fp, h.Addr(), files, h.Port, name, h.Host)
			}
			return fmt.Errorf("host key %s of %s does not match the one recorded in %s line %d: someone may be in between; if the host was reinstalled, remove that line (ssh-keygen -R %s)", fp, h.Addr(), ke.Want[0].Filename, ke.Want[0].Line, knownhosts.Normalize(h.Addr()))
		}
		return err
	}
	cfg := &xssh.ClientConfig{
		User:            name,
		Auth:            []xssh.AuthMethod{xssh.PublicKeys(signers...)},
		HostKeyCallback: cb,
		Timeout:         time.Until(deadline),
	}
	if algs := knownAlgorithms(files, h); len(algs) > 0 {
		cfg.HostKeyAlgorithms = algs
	}
	var d net.Dialer
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	nc, err := d.DialContext(dctx, "tcp", h.Addr())
	if err != nil {
		return nil, fmt.Errorf("libvirt %s: SSH to %s: %w", h.URI, h.Addr(), err)
	}
	stop := closeAt(ctx, nc, deadline)
	sc, chans, reqs, err := xssh.NewClientConn(nc, h.Addr(), cfg)
	stop()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("libvirt %s: SSH login as %s to %s: %w (is one of your keys, or pifarm's %s.pub, in %s's authorized_keys there?)", h.URI, name, h.Addr(), err, filepath.Join(a.ConfDir, "id_ed25519"), name)
	}
	return xssh.NewClient(sc, chans, reqs), nil
}

// knownAlgorithms are the host key algorithms recorded for h, so that the
// server offers the key known_hosts holds (an ed25519 key recorded while
// the server would present its RSA key first is no mismatch).
func knownAlgorithms(files []string, h farm.HostURI) []string {
	if len(files) == 0 {
		return nil
	}
	kh, err := knownhosts.New(files...)
	if err != nil {
		return nil
	}
	// A key that is certainly not recorded makes the callback list the
	// recorded ones.
	_, probe, err := ed25519Key()
	if err != nil {
		return nil
	}
	err = kh(h.Addr(), &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: h.Port}, probe)
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		return nil
	}
	var algs []string
	seen := map[string]bool{}
	for _, k := range ke.Want {
		for _, a := range algorithmsOf(k.Key.Type()) {
			if !seen[a] {
				seen[a] = true
				algs = append(algs, a)
			}
		}
	}
	return algs
}

func algorithmsOf(keyType string) []string {
	if keyType == xssh.KeyAlgoRSA {
		return []string{xssh.KeyAlgoRSASHA512, xssh.KeyAlgoRSASHA256, xssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// signers are the keys offered: an ssh-agent's, the user's unencrypted
// ~/.ssh/id_*, pifarm's own.
func signers(a Auth) ([]xssh.Signer, func()) {
	var out []xssh.Signer
	done := func() {}
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if c, err := net.Dial("unix", sock); err == nil {
			if ss, err := agent.NewClient(c).Signers(); err == nil {
				out = append(out, ss...)
			}
			done = func() { c.Close() }
		}
	}
	for _, p := range []string{
		filepath.Join(a.Home, ".ssh", "id_ed25519"), filepath.Join(a.Home, ".ssh", "id_ecdsa"),
		filepath.Join(a.Home, ".ssh", "id_rsa"), filepath.Join(a.ConfDir, "id_ed25519"),
	} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if s, err := xssh.ParsePrivateKey(b); err == nil {
			out = append(out, s)
		}
	}
	return out, done
}
