package ssh

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"

	xssh "golang.org/x/crypto/ssh"
)

// writeKey writes priv to path in OpenSSH's format (with a passphrase when
// pass is not empty) and returns its public key.
func writeKey(t testing.TB, path string, priv any, pass string) xssh.PublicKey {
	t.Helper()
	var block *pem.Block
	var err error
	if pass == "" {
		block, err = xssh.MarshalPrivateKey(priv, "")
	} else {
		block, err = xssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte(pass))
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := xssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s.PublicKey()
}

// TestKeysParsedOncePerContent: the user's key is parsed once per content
// (the same signer for every log-in), a key file replaced by another is
// read anew, and a key with a passphrase is refused alike every time.
func TestKeysParsedOncePerContent(t *testing.T) {
	home := t.TempDir()
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	k := Keys{Home: home, ConfDir: t.TempDir()}
	path := filepath.Join(home, ".ssh", "id_ed25519")
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	pub := writeKey(t, path, priv, "")
	os.WriteFile(path+".pub", xssh.MarshalAuthorizedKey(pub), 0o644)
	signer := func() xssh.Signer {
		t.Helper()
		ss, _, done, err := k.signers("")
		done()
		if err != nil || len(ss) != 1 {
			t.Fatalf("signers: %v %v", ss, err)
		}
		return ss[0]
	}
	first := signer()
	if string(first.PublicKey().Marshal()) != string(pub.Marshal()) {
		t.Fatal("not the user's key")
	}
	if again := signer(); again != first {
		t.Error("the key was parsed again")
	}
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	pub2 := writeKey(t, path, other, "")
	if s := signer(); string(s.PublicKey().Marshal()) != string(pub2.Marshal()) {
		t.Error("a replaced key file still gives the old key")
	}
	locked := filepath.Join(t.TempDir(), "locked")
	writeKey(t, locked, priv, "secret")
	for range 2 {
		_, _, _, err := k.signers(locked)
		var pm *xssh.PassphraseMissingError
		if !errors.As(err, &pm) {
			t.Fatalf("a key with a passphrase: %v", err)
		}
	}
}

// BenchmarkSignersRSA times what each log-in spends on a user's RSA key
// (3072 bits, as ssh-keygen makes by default): finding and reading it,
// and parsing it when its content was not parsed before.
func BenchmarkSignersRSA(b *testing.B) {
	home := b.TempDir()
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	priv, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(home, ".ssh", "id_rsa")
	pub := writeKey(b, path, priv, "")
	os.WriteFile(path+".pub", xssh.MarshalAuthorizedKey(pub), 0o644)
	k := Keys{Home: home, ConfDir: b.TempDir()}
	b.ResetTimer()
	for range b.N {
		ss, _, done, err := k.signers("")
		done()
		if err != nil || len(ss) != 1 {
			b.Fatal(ss, err)
		}
	}
}
