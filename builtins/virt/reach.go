package virt

import (
	"context"
	"net"
	"strconv"
	"sync"
	"time"

	xssh "golang.org/x/crypto/ssh"
	"pifarm/builtins/farm"
)

// Tunnels reaches the ports of guests on remote libvirt hosts through one
// SSH connection per host, opened when first needed and kept for the run
// (farm.Farm.Reach is its Reach).
type Tunnels struct {
	F    *farm.Farm
	Auth Auth
	mu   sync.Mutex
	ssh  map[string]*xssh.Client
}

// NewTunnels returns the tunnels of farm f with this user's keys.
func NewTunnels(f *farm.Farm) *Tunnels { return &Tunnels{F: f, Auth: DefaultAuth(f)} }

// Reach connects to port on the loopback of node n's remote host.
func (t *Tunnels) Reach(ctx context.Context, n *farm.Node, port int, timeout time.Duration) (net.Conn, error) {
	h, ok := t.F.Remote(n)
	if !ok {
		d := net.Dialer{Timeout: timeout}
		return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	}
	c, err := t.client(ctx, h, timeout)
	if err != nil {
		return nil, err
	}
	conn := &Conn{Host: h, ssh: c}
	nc, err := conn.DialHost(ctx, port, timeout)
	if err != nil {
		// The connection may have died (the host rebooted): once more
		// on a fresh one.
		t.drop(h, c)
		if c, err2 := t.client(ctx, h, timeout); err2 == nil {
			conn.ssh = c
			nc, err = conn.DialHost(ctx, port, timeout)
		}
	}
	return nc, err
}

func (t *Tunnels) client(ctx context.Context, h farm.HostURI, timeout time.Duration) (*xssh.Client, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.ssh[h.URI]; c != nil {
		return c, nil
	}
	c, err := dialSSH(ctx, h, t.Auth, time.Now().Add(timeout))
	if err != nil {
		return nil, err
	}
	if t.ssh == nil {
		t.ssh = map[string]*xssh.Client{}
	}
	t.ssh[h.URI] = c
	return c, nil
}

func (t *Tunnels) drop(h farm.HostURI, c *xssh.Client) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ssh[h.URI] == c {
		delete(t.ssh, h.URI)
		c.Close()
	}
}

// Close ends every SSH connection.
func (t *Tunnels) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, c := range t.ssh {
		c.Close()
		delete(t.ssh, k)
	}
}
