package chroot

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.starlark.net/starlark"
	"pifarm/builtins/chroot/chroottest"
)

// flatRepo serves an unsigned flat apt repository on loopback holding one
// package, pifarm-probe; it returns its URL.
func flatRepo(t *testing.T) string {
	t.Helper()
	pkgs := "Package: pifarm-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: pifarm <root@localhost>\n" +
		"Filename: ./pifarm-probe_1.0_all.deb\nSize: 100\nSHA256: " + strings.Repeat("0", 64) + "\nDescription: probe\n"
	release := fmt.Sprintf("Origin: pifarm-test\nLabel: pifarm-test\nSuite: test\nCodename: test\nDate: %s\nSHA256:\n %x %d Packages\n",
		time.Now().UTC().Format(time.RFC1123), sha256.Sum256([]byte(pkgs)), len(pkgs))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch path.Clean(r.URL.Path) {
		case "/Packages":
			w.Write([]byte(pkgs))
		case "/Release":
			w.Write([]byte(release))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestAptUpdate runs c.apt_update for real on a guest root holding this
// host's apt and dpkg (so that its fallback, the guest's apt in the chroot,
// can run too): the host's apt writes the lists and the package cache into
// the guest and nothing into the host's own; a guest configuration with
// update hooks, or a source signed by a key elsewhere, makes the guest's own
// apt update instead (its hook runs in the guest, never on the host); a guest
// without apt-get gives exit code 127.
func TestAptUpdate(t *testing.T) {
	needRoot(t)
	if !hostHasApt() {
		t.Skip("this host has no apt-get, apt-config or unshare")
	}
	repo := flatRepo(t)
	hostHook := filepath.Join(t.TempDir(), "hook-ran")
	cases := []struct {
		name  string
		files map[string]string
		// want in the output; native: the host's apt did the update
		want   string
		native bool
	}{
		{"native", nil, "Reading package lists", true},
		{"hooks", map[string]string{
			"etc/apt/apt.conf.d/50hook": fmt.Sprintf("APT::Update::Post-Invoke-Success { \"touch %s\"; };\n", hostHook),
		}, "runs commands around an update: the guest's apt updates its lists", false},
		{"signed-by", map[string]string{
			"etc/apt/sources.list.d/other.list": "deb [signed-by=/opt/keys/other.gpg] " + "http://127.0.0.1:9/ ./\n",
		}, "is signed by /opt/keys/other.gpg", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			files := map[string]string{
				"etc/apt/sources.list":        "deb [trusted=yes] " + repo + "/ ./\n",
				"var/lib/dpkg/status":         "",
				"var/lib/apt/lists/.keep":     "",
				"etc/apt/apt.conf.d/.keep":    "",
				"etc/apt/preferences.d/.keep": "",
				"var/cache/apt/.keep":         "",
			}
			for _, f := range []string{"usr/share/dpkg/cputable", "usr/share/dpkg/tupletable"} {
				b, err := os.ReadFile("/" + f) // apt-get reads them
				if err != nil {
					t.Skipf("%v", err)
				}
				files[f] = string(b)
			}
			for k, v := range c.files {
				files[k] = v
			}
			img := chroottest.ImageWith(t, files, []string{"apt-get", "apt-cache", "dpkg"})
			fx := liveFixture(t)
			if err := os.MkdirAll(fx.Farm.InstanceDir(0), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(img, fx.Farm.Disk(0)); err != nil {
				t.Fatal(err)
			}
			fx.Set("native", starlark.Bool(c.native))
			fx.Set("want", starlark.String(c.want))
			fx.Run("apt.star", fmt.Sprintf(openScript, 0)+`
r = c.apt_update(["-o", "Acquire::Retries=0"])
if not native:
    # the guest's apt-get runs in the chroot without its methods: it fails,
    # after saying why it runs there
    assert.true(r.exit_code != 0, "the guest's apt in the chroot has no http method here")
else:
    if r.exit_code != 0:
        fail(r.stdout)
assert.contains(r.stdout, want)
lists = c.run("ls /var/lib/apt/lists /var/cache/apt").stdout
if native:
    assert.contains(lists, "_Packages")
    assert.contains(lists, "pkgcache.bin")
    assert.contains(c.run("cat /var/lib/apt/lists/*_Packages").stdout, "Package: pifarm-probe")
    # the guest's apt (here of the host's version) takes the package cache
    # as it is: its paths are the guest's
    stamp = "stat -c '%s %Y' /var/cache/apt/pkgcache.bin"
    before = c.run(stamp).stdout
    assert.contains(c.run("sleep 1; apt-cache policy pifarm-probe").stdout, "Candidate: 1.0")
    assert.eq(c.run(stamp).stdout, before)
c.close()
`)
			if _, err := os.Stat(hostHook); err == nil {
				t.Fatalf("the guest's update hook ran on the host")
			}
			host, _ := filepath.Glob("/var/lib/apt/lists/127.0.0.1*")
			if len(host) > 0 {
				os.Remove(host[0])
				t.Fatalf("the host's own lists were written: %v", host)
			}
		})
	}
	t.Run("no apt-get", func(t *testing.T) {
		fx := liveFixture(t)
		testImage(t, fx.Farm, 0, false)
		fx.Run("none.star", fmt.Sprintf(openScript, 0)+`
r = c.apt_update()
assert.eq(r.exit_code, 127)
assert.contains(r.stdout, "apt-get: not found on this guest")
c.close()
`)
	})
}
