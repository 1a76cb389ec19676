package ssh

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	xssh "golang.org/x/crypto/ssh"
)

// TestNewHostKeys: the keys are what ssh-keygen -A makes, in the files
// sshd reads: OpenSSH's private key format (ssh-keygen -y derives the same
// public key from each), the .pub lines pifarm records, modes 0600 and
// 0644 owned by root in the archive.
func TestNewHostKeys(t *testing.T) {
	keys, err := NewHostKeys("root@enone")
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, k := range keys {
		types = append(types, k.Type)
	}
	if strings.Join(types, " ") != "ed25519 ecdsa rsa" {
		t.Fatalf("types %v", types)
	}
	archive, err := HostKeysTar(keys)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tr := tar.NewReader(bytes.NewReader(archive))
	n := 0
	for ; ; n++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		want := int64(0o600)
		if strings.HasSuffix(h.Name, ".pub") {
			want = 0o644
		}
		if !strings.HasPrefix(h.Name, "etc/ssh/ssh_host_") || h.Mode != want || h.Uid != 0 || h.Gid != 0 || h.Uname != "root" {
			t.Errorf("entry %s mode %o uid %d", h.Name, h.Mode, h.Uid)
		}
		b, _ := io.ReadAll(tr)
		os.WriteFile(filepath.Join(dir, filepath.Base(h.Name)), b, os.FileMode(h.Mode))
	}
	if n != 6 {
		t.Fatalf("%d entries", n)
	}
	for _, k := range keys {
		priv := filepath.Join(dir, "ssh_host_"+k.Type+"_key")
		signer, err := xssh.ParsePrivateKey(k.Private)
		if err != nil {
			t.Fatalf("%s: %v", k.Type, err)
		}
		pub, comment, _, _, err := xssh.ParseAuthorizedKey(k.Public)
		if err != nil || comment != "root@enone" || !bytes.Equal(pub.Marshal(), signer.PublicKey().Marshal()) || xssh.FingerprintSHA256(pub) != k.Fingerprint {
			t.Fatalf("%s: public %q %v", k.Type, k.Public, err)
		}
		if _, err := exec.LookPath("ssh-keygen"); err != nil {
			continue
		}
		out, err := exec.Command("ssh-keygen", "-y", "-f", priv).Output()
		if err != nil {
			t.Fatalf("ssh-keygen -y %s: %v", k.Type, err)
		}
		if got := strings.Fields(string(out)); len(got) < 2 || got[1] != strings.Fields(string(k.Public))[1] {
			t.Errorf("%s: ssh-keygen derives %q", k.Type, out)
		}
	}
	again, _ := NewHostKeys("")
	if again[0].Fingerprint == keys[0].Fingerprint || strings.Count(string(again[0].Public), " ") != 1 {
		t.Fatalf("a second set: %+v", again[0])
	}
}
