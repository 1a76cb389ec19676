package card

import (
	"archive/tar"
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.starlark.net/starlark"
	"pifarm/builtins/farm"
	"pifarm/builtins/startest"
)

// TestStarlark runs testdata/card_test.star against the module (live door)
// with an image that holds a host key and a machine-id (IMAGE), a folder
// for targets (DIR) and a tar of new files (ARCHIVE).
func TestStarlark(t *testing.T) {
	need(t, "debugfs", "mtype")
	dir := t.TempDir()
	img := makeImageWith(t, dir, 96, 2, map[string]string{
		"/etc/ssh/ssh_host_ed25519_key": "the image's key\n",
		"/etc/machine-id":               "0123456789abcdef0123456789abcdef\n",
	})
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, f := range []struct{ name, body string }{{"etc/ssh/ssh_host_ed25519_key", "card key\n"}, {"etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA card\n"}} {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o600, Size: int64(len(f.body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(f.body))
	}
	tw.Close()
	fx := startest.New(t, startest.Options{Root: true, Farm: farm.New(farm.Default())})
	fx.Add(New(fx.Door, fx.Farm), farm.NewModule(fx.Door, fx.Farm))
	fx.Set("IMAGE", starlark.String(img))
	fx.Set("DIR", starlark.String(dir))
	fx.Set("ARCHIVE", starlark.Bytes(b.String()))
	fx.Run("testdata/card_test.star", nil)

	// what the .star test wrote: read with e2fsprogs and mtools
	a := filepath.Join(dir, "a.img")
	off := "?offset=" + itoa(44<<20)
	for _, tc := range []struct {
		cmd  []string
		want string
	}{
		{[]string{"debugfs", "-R", "cat /etc/ssh/ssh_host_ed25519_key", a + off}, "card key\n"},
		{[]string{"debugfs", "-R", "cat /etc/machine-id", a + off}, ""},
		{[]string{"debugfs", "-R", "cat /etc/hostname", a + off}, "board\n"},
		{[]string{"mtype", "-i", a + "@@" + itoa(8192*512), "::pifarm-node"}, "5\n"},
		{[]string{"debugfs", "-R", "cat /etc/ssh/ssh_host_ed25519_key", filepath.Join(dir, "b.img") + off}, "the image's key\n"},
	} {
		out, err := exec.Command(tc.cmd[0], tc.cmd[1:]...).Output()
		if err != nil || string(out) != tc.want {
			t.Errorf("%s: %q (%v), want %q", strings.Join(tc.cmd, " "), out, err, tc.want)
		}
	}
	if out, err := exec.Command("e2fsck", "-fn", a+off).CombinedOutput(); err != nil {
		t.Errorf("e2fsck after the edit: %v\n%s", err, out)
	}
	if out, err := exec.Command("debugfs", "-R", "stat /etc/ssh/ssh_host_ed25519_key", a+off).Output(); err != nil || !strings.Contains(string(out), "Mode:  0600") {
		t.Errorf("the new key's mode: %s", out)
	}
}
