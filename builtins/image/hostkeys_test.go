package image

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestHostKeys reads the host keys of an image's root file system with
// debugfs: none in a fresh image (no /etc/ssh, or no key in it), the .pub
// files (not the private keys, not other files) once there are some.
func TestHostKeys(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	m, _ := testMod(t, dir, false)
	spec := fmt.Sprintf("%s?offset=%d", fx.path, fx.rootStart*512)
	check := func(what, want string) {
		t.Helper()
		got, ok, err := m.HostKeys(fx.path)
		if err != nil || !ok || got != want {
			t.Fatalf("%s: HostKeys = %q, %v, %v; want %q", what, got, ok, err, want)
		}
	}
	check("no /etc/ssh", "")
	src := t.TempDir()
	ed := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl root@raspberrypi"
	files := map[string]string{
		"ssh_config":                 "Host *\n",
		"ssh_host_ed25519_key":       "-----BEGIN OPENSSH PRIVATE KEY-----\n",
		"ssh_host_ed25519_key.pub":   ed + "\n",
		"ssh_host_rsa_key.pub.dpkg~": "ssh-rsa AAAA old\n",
	}
	run(t, "", "debugfs", "-w", "-R", "mkdir /etc", spec)
	run(t, "", "debugfs", "-w", "-R", "mkdir /etc/ssh", spec)
	check("an empty /etc/ssh", "")
	for name, content := range files {
		p := filepath.Join(src, name)
		os.WriteFile(p, []byte(content), 0o644)
		run(t, "", "debugfs", "-w", "-R", "write "+p+" /etc/ssh/"+name, spec)
	}
	check("keys", ed+"\n")
	q := filepath.Join(dir, "clone.qcow2")
	run(t, "", "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", fx.path, q)
	if keys, ok, err := m.HostKeys(q); err != nil || ok || keys != "" {
		t.Fatalf("qcow2: %q %v %v, want not ok", keys, ok, err)
	}
}
