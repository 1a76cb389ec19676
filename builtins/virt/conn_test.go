package virt_test

import (
	"context"
	"fmt"
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
	"pifarm/builtins/trace"
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

// TestUploadOnceAndKeep uploads a sparse file into pifarm's pool over a
// real sshd: the second upload does nothing, a changed file is refused for
// an instance's disk (Keep) and uploaded again otherwise, and the host's
// copy always checks out by sha256 (Upload verifies it).
func TestUploadOnceAndKeep(t *testing.T) {
	if testing.Short() {
		t.Skip("real sshd and libvirtd")
	}
	virttest.Daemon(t)
	uri, a := virttest.SSHD(t, 20926)
	h, _ := farm.ParseHostURI(uri)
	ctx := context.Background()
	c, err := virt.Connect(ctx, h, a, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := trace.New(ctx, false, false, io.Discard)
	if err := c.EnsurePool(ctx, d); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	local := filepath.Join(dir, "disk.raw")
	f, err := os.Create(local)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(96 << 20)
	f.WriteAt([]byte(strings.Repeat("pifarm", 100000)), 0)
	f.WriteAt([]byte(strings.Repeat("farm", 100000)), 70<<20)
	f.Close()
	vol := fmt.Sprintf("pifarm-test-%d.raw", os.Getpid())
	t.Cleanup(func() { os.Remove(virt.VolPath(vol)) })
	var progress strings.Builder
	u := virt.Upload{Vol: vol, Local: local, State: filepath.Join(dir, "rec"), Progress: &progress, Keep: true}
	path, err := c.Upload(ctx, d, u)
	if err != nil {
		t.Fatal(err)
	}
	if path != virt.VolPath(vol) || !strings.Contains(progress.String(), "100%") || !strings.Contains(progress.String(), "each piece checked there by sha256") {
		t.Fatalf("path %s, progress %q", path, progress.String())
	}
	progress.Reset()
	if _, err := c.Upload(ctx, d, u); err != nil || progress.Len() != 0 {
		t.Fatalf("second upload: %v, progress %q", err, progress.String())
	}
	// The file changes here: an instance's disk on the host is kept.
	f, _ = os.OpenFile(local, os.O_WRONLY, 0)
	f.WriteAt([]byte("changed"), 1<<20)
	f.Close()
	os.Chtimes(local, time.Now(), time.Now().Add(time.Minute))
	if _, err := c.Upload(ctx, d, u); err == nil || !strings.Contains(err.Error(), "not replaced") {
		t.Fatalf("changed disk: %v", err)
	}
	u.Keep = false
	if _, err := c.Upload(ctx, d, u); err != nil || !strings.Contains(progress.String(), "100%") {
		t.Fatalf("replacing upload: %v %q", err, progress.String())
	}
}
