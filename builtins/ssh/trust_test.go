package ssh

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.starlark.net/starlark"
	xssh "golang.org/x/crypto/ssh"
	"pifarm/builtins/console/fakeguest"
	"pifarm/builtins/startest"
	"pifarm/builtins/trace"
)

func TestParseHostKeys(t *testing.T) {
	ed := string(xssh.MarshalAuthorizedKey(fakeguest.NewHostKey(t, false).PublicKey()))
	rsa := string(xssh.MarshalAuthorizedKey(fakeguest.NewHostKey(t, true).PublicKey()))
	for _, tc := range []struct {
		name, text string
		n          int
		err        string
	}{
		{"two keys", ed + "\n" + strings.TrimSpace(rsa) + " root@raspberrypi\n", 2, ""},
		{"blank lines", "\n" + ed + "\n\n", 1, ""},
		{"a prompt mixed in", ed + "pi@raspberrypi:~$ \n", 0, "line 2"},
		{"empty", "\n", 0, "no public key"},
		{"garbage", "ssh-ed25519 AAAAnotbase64!!\n", 0, "not a public key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := ParseHostKeys(tc.text)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %d keys, %v; want an error with %q", len(keys), err, tc.err)
				}
				return
			}
			if err != nil || len(keys) != tc.n {
				t.Fatalf("got %d keys, %v; want %d", len(keys), err, tc.n)
			}
		})
	}
}

func FuzzParseHostKeys(f *testing.F) {
	f.Add("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x\n")
	f.Add("\n\nssh-rsa AAAA\n")
	f.Fuzz(func(t *testing.T, text string) {
		keys, err := ParseHostKeys(text)
		if err == nil && len(keys) == 0 {
			t.Fatalf("no error and no key for %q", text)
		}
	})
}

// TestTrustReplacesTheInstancesKeys: keys read over a trusted channel
// replace what known_hosts held for the instance (other hosts' lines kept,
// the old file kept as known_hosts~); the next log-in verifies them (no
// trust on first use), and a server with another key is refused.
func TestTrustReplacesTheInstancesKeys(t *testing.T) {
	f := testFarm(t)
	key := fakeguest.NewHostKey(t, false)
	fakeguest.NewSSHServer(t, addr(15), key)
	kh := f.KnownHosts(15)
	os.MkdirAll(filepath.Dir(kh), 0o700)
	other := fakeguest.NewHostKey(t, false).PublicKey()
	oldLines := "[127.0.0.1]:21115 " + strings.TrimSpace(string(xssh.MarshalAuthorizedKey(other))) + "\n" +
		"[127.0.0.1]:2222 " + strings.TrimSpace(string(xssh.MarshalAuthorizedKey(other))) + "\n"
	os.WriteFile(kh, []byte(oldLines), 0o600)
	fx := fixture(t, startest.Options{Verbose: true}, f, noKeys(t))
	fx.Set("pub", starlark.String(xssh.MarshalAuthorizedKey(key.PublicKey())))
	fx.Set("fp", starlark.String(xssh.FingerprintSHA256(key.PublicKey())))
	fx.Run("trust.star", `
assert.fails(lambda: ssh.connect(15, user = "pi", password = "raspberry", timeout = 5), "host key mismatch")
assert.eq(ssh.trust(15, pub, how = "read over the serial console"), [fp])
c = ssh.connect(15, user = "pi", password = "raspberry", timeout = 5)
assert.eq((c.host_key, c.host_key_check), (fp, "verified"))
c.close()
assert.fails(lambda: ssh.trust(15, "pi@raspberrypi:~$ ", how = "x"), "not a public key")
assert.fails(lambda: ssh.trust(15, pub, how = ""), "how= must say")
`)
	got, _ := os.ReadFile(kh)
	if !strings.Contains(string(got), "[127.0.0.1]:2222 ") || strings.Count(string(got), "\n") != 2 ||
		!strings.Contains(string(got), strings.TrimSpace(string(xssh.MarshalAuthorizedKey(key.PublicKey())))) {
		t.Fatalf("known_hosts after trust:\n%s", got)
	}
	if back, _ := os.ReadFile(kh + "~"); string(back) != oldLines {
		t.Fatalf("known_hosts~ = %q, want the old file", back)
	}
	if out := fx.Output(); !strings.Contains(out, "trust the host keys of 127.0.0.1:21115 read over the serial console: ssh-ed25519 "+xssh.FingerprintSHA256(key.PublicKey())) ||
		strings.Contains(out, "on first use") {
		t.Fatalf("trace:\n%s", out)
	}
}

// TestHostKeyOfConnection: a connection tells the key its server presented
// and whether it was trusted on first use or verified against known_hosts.
func TestHostKeyOfConnection(t *testing.T) {
	f := testFarm(t)
	key := fakeguest.NewHostKey(t, true)
	fakeguest.NewSSHServer(t, addr(17), key)
	fx := fixture(t, startest.Options{}, f, noKeys(t))
	fx.Set("fp", starlark.String(xssh.FingerprintSHA256(key.PublicKey())))
	fx.Run("hostkey.star", `
c = ssh.connect(17, user = "pi", password = "raspberry", timeout = 5)
assert.eq((c.host_key, c.host_key_check), (fp, "first use"))
c.close()
c = ssh.connect(17, user = "pi", password = "raspberry", timeout = 5)
assert.eq((c.host_key, c.host_key_check), (fp, "verified"))
c.close()
`)
}

// TestFingerprints: ed25519's fingerprint first, the others in the order
// given; what is not a key is an error.
func TestFingerprints(t *testing.T) {
	fx := fixture(t, startest.Options{}, testFarm(t), noKeys(t))
	ed, rsaKey := fakeguest.NewHostKey(t, false).PublicKey(), fakeguest.NewHostKey(t, true).PublicKey()
	ecdsaKeys, err := NewHostKeys("")
	if err != nil {
		t.Fatal(err)
	}
	var ec xssh.PublicKey
	for _, k := range ecdsaKeys {
		if k.Type == "ecdsa" {
			ec, _, _, _, _ = xssh.ParseAuthorizedKey(k.Public)
		}
	}
	line := func(k xssh.PublicKey) string { return string(xssh.MarshalAuthorizedKey(k)) }
	fx.Set("text", starlark.String(line(ec)+"\n"+line(rsaKey)+line(ed)))
	fx.Set("want", trace.Strings([]string{xssh.FingerprintSHA256(ed), xssh.FingerprintSHA256(ec), xssh.FingerprintSHA256(rsaKey)}))
	fx.Run("fingerprints.star", `
assert.eq(ssh.fingerprints(text), want)
assert.fails(lambda: ssh.fingerprints(""), "no public key")
assert.fails(lambda: ssh.fingerprints("root@enone:~# "), "not a public key")
`)
}

// TestNewHostKeysValue: ssh.new_host_keys's value waits for the keys made in
// the background; its lists are the caller's to change.
func TestNewHostKeysValue(t *testing.T) {
	fx := fixture(t, startest.Options{}, testFarm(t), noKeys(t))
	fx.Run("newkeys.star", `
k = ssh.new_host_keys(comment = "root@enone")
assert.eq(type(k), "host_keys")
assert.eq(dir(k), ["archive", "files", "fingerprints", "public"])
assert.eq(len(k.fingerprints), 3)
assert.eq(ssh.fingerprints(k.public), k.fingerprints)
assert.eq(k.files[:2], ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub"])
assert.true(k.public.startswith("ssh-ed25519 ") and k.public.count("root@enone") == 3)
assert.eq(type(k.archive), "bytes")
k.fingerprints.append("x")
assert.eq(len(k.fingerprints), 3)
assert.true(ssh.new_host_keys().fingerprints != k.fingerprints)
assert.fails(lambda: ssh.new_host_keys(comment = "a\nb"), "line break")
`)
}

// TestForget: the keys recorded for an instance go (other hosts' lines
// stay, the old file is kept as known_hosts~); forgetting again changes
// nothing.
func TestForget(t *testing.T) {
	f := testFarm(t)
	kh := f.KnownHosts(16)
	os.MkdirAll(filepath.Dir(kh), 0o700)
	k := strings.TrimSpace(string(xssh.MarshalAuthorizedKey(fakeguest.NewHostKey(t, false).PublicKey())))
	old := "[127.0.0.1]:21116 " + k + "\n[127.0.0.1]:2222 " + k + "\n"
	os.WriteFile(kh, []byte(old), 0o600)
	fx := fixture(t, startest.Options{Verbose: true}, f, noKeys(t))
	fx.Run("forget.star", `
assert.eq(ssh.forget(16, why = "a new image was registered"), True)
assert.eq(ssh.forget(16, why = "again"), False)
`)
	if got, _ := os.ReadFile(kh); string(got) != "[127.0.0.1]:2222 "+k+"\n" {
		t.Fatalf("known_hosts after forget: %q", got)
	}
	if back, _ := os.ReadFile(kh + "~"); string(back) != old {
		t.Fatalf("known_hosts~ = %q", back)
	}
	if out := fx.Output(); !strings.Contains(out, "forget the host keys recorded for 127.0.0.1:21116 (a new image was registered)") || strings.Contains(out, "(again)") {
		t.Fatalf("trace:\n%s", out)
	}
}
