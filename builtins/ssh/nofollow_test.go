package ssh

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	xssh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
	"pifarm/builtins/console/fakeguest"
)

// A symbolic link planted at an instance's known_hosts is neither written
// through nor read: the host key never lands in (or is taken from) a file
// outside the cache. A known_hosts pifarm creates is 0600 in a 0700 folder.
func TestKnownHostsNeverThroughASymlink(t *testing.T) {
	hk := fakeguest.NewHostKey(t, false)
	fakeguest.NewSSHServer(t, addr(30), hk)
	outside := t.TempDir()
	for _, tc := range []struct {
		name  string
		plant func(kh, elsewhere string) // sets up the known_hosts path
		err   string                     // "" : the connection works
	}{
		{"link to a file elsewhere", func(kh, elsewhere string) {
			os.WriteFile(elsewhere, []byte("# the user's own file\n"), 0o644)
			os.Symlink(elsewhere, kh)
		}, "is a symbolic link"},
		{"dangling link", func(kh, elsewhere string) { os.Symlink(elsewhere, kh) }, "is a symbolic link"},
		{"link to a file that trusts the key", func(kh, elsewhere string) {
			// someone pre-trusted a key for the guest in a file of theirs
			os.WriteFile(elsewhere, []byte(fmt.Sprintf("[127.0.0.1]:%d %s", sshBase+30, xssh.MarshalAuthorizedKey(hk.PublicKey()))), 0o644)
			os.Symlink(elsewhere, kh)
		}, "is a symbolic link"},
		{"fifo", func(kh, elsewhere string) { mkfifo(t, kh) }, "not a regular file"},
		{"none yet", func(kh, elsewhere string) {}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "clones", "raspi-clone-30")
			kh := filepath.Join(dir, "known_hosts")
			elsewhere := filepath.Join(outside, strings.ReplaceAll(tc.name, " ", "-"))
			if tc.name != "none yet" {
				os.MkdirAll(dir, 0o700)
			}
			tc.plant(kh, elsewhere)
			before, _ := os.ReadFile(elsewhere)
			tg := Target{Host: "127.0.0.1", Port: sshBase + 30, KnownHosts: kh}
			done := make(chan struct{})
			var err error
			go func() {
				defer close(done)
				var c *Conn
				if c, err = Dial(live(), tg, Auth{User: "pi", Passwords: []string{"raspberry"}}, noKeys(t), 5*time.Second); err == nil {
					c.Close()
				}
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Dial hangs (opened a FIFO for writing?)")
			}
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				for p, want := range map[string]os.FileMode{kh: 0o600, dir: 0o700} {
					if fi, err := os.Lstat(p); err != nil || fi.Mode().Perm() != want {
						t.Errorf("%s: %v %v, want mode %o", p, fi.Mode(), err, want)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), kh) {
				t.Errorf("error %v, want one naming %s and %q", err, kh, tc.err)
			}
			after, aerr := os.ReadFile(elsewhere)
			if string(after) != string(before) || (before == nil && aerr == nil) {
				t.Errorf("the file outside the cache changed: %q -> %q", before, after)
			}
		})
	}
}

// pifarm's own key pair is made in a 0700 folder, the private key 0600,
// never through a symbolic link planted at either file; a key pair behind
// such a link is refused, not used.
func TestOwnKeyNeverThroughASymlink(t *testing.T) {
	outside := t.TempDir()
	for _, tc := range []struct {
		name  string
		plant func(priv string)
		err   string
	}{
		{"fresh", func(string) {}, ""},
		{"private key a dangling link", func(priv string) { os.Symlink(filepath.Join(outside, "planted"), priv) }, "symbolic link"},
		{"public key a dangling link", func(priv string) { os.Symlink(filepath.Join(outside, "planted.pub"), priv+".pub") }, "symbolic link"},
		{"a planted key pair", func(priv string) {
			GenerateKey(filepath.Join(outside, "theirs"), "theirs")
			os.Symlink(filepath.Join(outside, "theirs"), priv)
			os.Symlink(filepath.Join(outside, "theirs.pub"), priv+".pub")
		}, "symbolic link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := filepath.Join(t.TempDir(), "cache", "conf")
			k := Keys{Home: t.TempDir(), ConfDir: conf}
			if tc.name != "fresh" {
				os.MkdirAll(conf, 0o700)
			}
			tc.plant(k.PifarmKey())
			_, err := k.Ensure(live())
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("error %v, want %q", err, tc.err)
				}
				if _, err := os.Lstat(filepath.Join(outside, "planted")); err == nil {
					t.Error("a key was written outside the cache")
				}
				if _, err := os.Lstat(filepath.Join(outside, "planted.pub")); err == nil {
					t.Error("a key was written outside the cache")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for p, want := range map[string]os.FileMode{conf: 0o700, k.PifarmKey(): 0o600, k.PifarmKey() + ".pub": 0o644} {
				if fi, err := os.Lstat(p); err != nil || fi.Mode().Perm() != want {
					t.Errorf("%s: %v %v, want mode %o", p, fi.Mode(), err, want)
				}
			}
		})
	}
}

func mkfifo(t *testing.T, p string) {
	t.Helper()
	if err := syscallMkfifo(p); err != nil {
		t.Fatal(err)
	}
}

var syscallMkfifo = func(p string) error { return unix.Mkfifo(p, 0o600) }
