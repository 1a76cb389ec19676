package virt_test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"pifarm/builtins/farm"
	"pifarm/builtins/virt"
	"pifarm/builtins/virt/virttest"
)

// TestConnectOverSSH speaks libvirt's RPC through a real sshd on loopback
// (qemu+ssh://root@127.0.0.1:PORT/system) and reaches a port on the host's
// loopback through the same connection; a host key that is not recorded,
// or differs, is refused before anything is sent.
func TestConnectOverSSH(t *testing.T) {
	if testing.Short() {
		t.Skip("real sshd and libvirtd")
	}
	virttest.Daemon(t)
	uri, a := virttest.SSHD(t, 20922)
	h, err := farm.ParseHostURI(uri)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c, err := virt.Connect(ctx, h, a, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var v uint64
	if err := c.Call(ctx, 5*time.Second, func(l *libvirt.Libvirt) (err error) { v, err = l.ConnectGetLibVersion(); return }); err != nil || v < 9000000 {
		t.Fatalf("libvirt version over SSH: %d %v", v, err)
	}
	// A service on the host's loopback, reached through the SSH connection.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err == nil {
			io.WriteString(s, "SSH-2.0-guest\r\n")
			s.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	nc, err := c.DialHost(ctx, port, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(nc)
	nc.Close()
	if string(got) != "SSH-2.0-guest\r\n" {
		t.Fatalf("through the tunnel: %q", got)
	}
	// Nothing known about the server: refused, naming the fix.
	kh := filepath.Join(a.Home, ".ssh", "known_hosts")
	rec, _ := os.ReadFile(kh)
	os.Remove(kh)
	if _, err := virt.Connect(ctx, h, a, 5*time.Second); err == nil || !strings.Contains(err.Error(), "not known") {
		t.Errorf("unknown host key: %v", err)
	}
	// Another key recorded for it: refused as a mismatch.
	other := strings.Fields(string(rec))
	other[2] = "AAAAC3NzaC1lZDI1NTE5AAAAIB3nZ0fJ2y9tFxN5vQk2m3q5Gdq8n7xPp5xZtM6v9yYz"
	os.WriteFile(kh, []byte(strings.Join(other, " ")+"\n"), 0o600)
	if _, err := virt.Connect(ctx, h, a, 5*time.Second); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("changed host key: %v", err)
	}
	// No key to log in with.
	os.WriteFile(kh, rec, 0o600)
	b := a
	b.ConfDir = t.TempDir()
	t.Setenv("SSH_AUTH_SOCK", "")
	if _, err := virt.Connect(ctx, h, b, 5*time.Second); err == nil || !strings.Contains(err.Error(), "no SSH key") {
		t.Errorf("no key: %v", err)
	}
	// Nobody listens.
	h2, _ := farm.ParseHostURI("qemu+ssh://root@127.0.0.1:" + strconv.Itoa(port) + "/system")
	ln.Close()
	if _, err := virt.Connect(ctx, h2, a, 2*time.Second); err == nil || !strings.Contains(err.Error(), "SSH to 127.0.0.1") {
		t.Errorf("closed port: %v", err)
	}
}
