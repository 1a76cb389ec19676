package farm

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// HostURI is a parsed libvirt connection URI naming where a node's QEMU
// runs: "qemu:///system" (the libvirtd of this machine) or
// "qemu+ssh://[user@]host[:port]/system" (a remote libvirtd reached over
// SSH). pifarm speaks libvirt's RPC itself, so no other transport (tls,
// tcp, libssh) and no query parameters are taken.
type HostURI struct {
	// URI is the text as written in config.star.
	URI string
	// SSH is set for qemu+ssh://.
	SSH bool
	// User is the SSH user ("" means the local user's name).
	User string
	// Host and Port are the SSH server (Port 22 unless given).
	Host string
	Port int
}

// Local reports whether the libvirtd is this machine's own.
func (h HostURI) Local() bool { return !h.SSH }

// Addr is the SSH server as host:port.
func (h HostURI) Addr() string { return net.JoinHostPort(h.Host, strconv.Itoa(h.Port)) }

// Name is how messages name the host: "this machine's libvirtd" or
// "user@host".
func (h HostURI) Name() string {
	if !h.SSH {
		return "this machine's libvirtd (qemu:///system)"
	}
	s := h.Host
	if h.User != "" {
		s = h.User + "@" + s
	}
	if h.Port != 22 {
		s += ":" + strconv.Itoa(h.Port)
	}
	return s
}

// ParseHostURI parses a libvirt URI of the form qemu:///system or
// qemu+ssh://[user@]host[:port]/system. Errors say what is accepted.
func ParseHostURI(s string) (HostURI, error) {
	const want = `want "qemu:///system" or "qemu+ssh://[user@]host[:port]/system"`
	u, err := url.Parse(s)
	if err != nil {
		return HostURI{}, fmt.Errorf("host %q is not a libvirt URI (%s)", s, want)
	}
	h := HostURI{URI: s, Port: 22}
	switch u.Scheme {
	case "qemu":
		if u.Host != "" || u.User != nil {
			return HostURI{}, fmt.Errorf("host %q names a machine without a transport; %s (pifarm reaches other machines over SSH only)", s, want)
		}
	case "qemu+ssh":
		h.SSH = true
		h.Host = u.Hostname()
		if h.Host == "" {
			return HostURI{}, fmt.Errorf("host %q names no SSH server; %s", s, want)
		}
		if u.User != nil {
			if _, has := u.User.Password(); has {
				return HostURI{}, fmt.Errorf("host %q holds a password; pifarm logs in by key (yours, an ssh-agent's or its own): remove it", hideUserinfo(s))
			}
			h.User = u.User.Username()
		}
		if p := u.Port(); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n <= 0 || n > 65535 {
				return HostURI{}, fmt.Errorf("host %q: port %q is not a port", s, p)
			}
			h.Port = n
		}
	case "":
		return HostURI{}, fmt.Errorf("host %q has no scheme; %s", s, want)
	default:
		return HostURI{}, fmt.Errorf("host %q: transport %q is not supported; %s", s, u.Scheme, want)
	}
	if u.Path != "/system" {
		return HostURI{}, fmt.Errorf("host %q: path %q is not /system (the guests run under the system libvirtd, whose QEMU can open TAP devices and whose storage pools hold the disks); %s", s, u.Path, want)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return HostURI{}, fmt.Errorf("host %q: parameters (%q) are not taken; %s", s, u.RawQuery+u.Fragment, want)
	}
	return h, nil
}

// hideUserinfo replaces the user information of a URI by "****", so an
// error never repeats a password.
func hideUserinfo(s string) string {
	i := strings.Index(s, "://")
	if i < 0 {
		return s
	}
	rest := s[i+3:]
	if j := strings.LastIndexByte(rest, '@'); j >= 0 {
		return s[:i+3] + "****" + rest[j:]
	}
	return s
}

// Host is the libvirt host of node n: its own host = ..., else the
// configuration's top-level host; ok is false when the node's QEMU is a
// plain process of this machine (no host, or host = "").
func (f *Farm) Host(n *Node) (h HostURI, ok bool) {
	s := f.Config.Host
	if n.HostSet {
		s = n.Host
	}
	if s == "" || n.LANMAC != "" {
		return HostURI{}, false
	}
	h, err := ParseHostURI(s)
	if err != nil {
		return HostURI{}, false // validated at load: not reached
	}
	return h, true
}

// Reacher connects to TCP port on the loopback of node n's host within
// timeout: the run sets one (see Farm.Reach) that tunnels through a remote
// libvirt host's SSH connection.
type Reacher func(ctx context.Context, n *Node, port int, timeout time.Duration) (net.Conn, error)

// Remote reports the remote libvirt host of node n: one reached over SSH,
// whose guests' ports listen on that host's loopback.
func (f *Farm) Remote(n *Node) (HostURI, bool) {
	h, ok := f.Host(n)
	if !ok || h.Local() {
		return HostURI{}, false
	}
	return h, true
}

// DialPort connects to TCP port of node n's host: 127.0.0.1 of this machine,
// or of the node's remote libvirt host through f.Reach (the host's SSH
// connection), so a remote guest's console and SSH port are reached with
// no port exposed and no tunnel opened by hand.
func (f *Farm) DialPort(ctx context.Context, n *Node, port int, timeout time.Duration) (net.Conn, error) {
	if h, ok := f.Remote(n); ok {
		if f.Reach == nil {
			return nil, fmt.Errorf("node %d is on %s, and this program has no way to reach it (no tunnel set up)", n.ID, h.URI)
		}
		return f.Reach(ctx, n, port, timeout)
	}
	d := net.Dialer{Timeout: timeout}
	return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
}

// sshLogin is [user@]host of an SSH host, as ssh takes it.
func sshLogin(h HostURI) string {
	s := h.Host
	if h.User != "" {
		s = h.User + "@" + s
	}
	return s
}
