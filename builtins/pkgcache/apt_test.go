package pkgcache

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// TestAptGetDownload runs the real apt-get (when installed) against a flat
// repository through the proxy: the package comes from the origin once,
// the second download from the cache.
func TestAptGetDownload(t *testing.T) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("no apt-get")
	}
	top := t.TempDir()
	deb := []byte("!<arch>\n") // apt-get download checks the hash, not the contents
	pkgs := fmt.Sprintf("Package: hello\nVersion: 1.0\nArchitecture: all\nFilename: ./hello_1.0_all.deb\nSize: %d\nSHA256: %x\n\n", len(deb), sha256.Sum256(deb))
	release := fmt.Sprintf("Suite: flat\nSHA256:\n %x %d Packages\n", sha256.Sum256([]byte(pkgs)), len(pkgs))
	var debs atomic.Int64
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch path.Clean(r.URL.Path) {
		case "/Release":
			w.Write([]byte(release))
		case "/Packages":
			w.Write([]byte(pkgs))
		case "/hello_1.0_all.deb":
			debs.Add(1)
			w.Write(deb)
		default:
			http.NotFound(w, r)
		}
	}))
	defer origin.Close()
	px := newProxied(t, "")
	for _, d := range []string{"lists/partial", "cache/archives/partial", "out"} {
		os.MkdirAll(filepath.Join(top, d), 0o755)
	}
	os.WriteFile(filepath.Join(top, "sources.list"), []byte("deb [trusted=yes] "+origin.URL+"/ ./\n"), 0o644)
	os.WriteFile(filepath.Join(top, "status"), nil, 0o644)
	apt := func(args ...string) {
		t.Helper()
		argv := []string{"-q", "-o", "Acquire::http::Proxy=" + px.srv.URL, "-o", "APT::Sandbox::User=root",
			"-o", "Dir::Etc::SourceList=" + filepath.Join(top, "sources.list"), "-o", "Dir::Etc::SourceParts=/nonexistent",
			"-o", "Dir::State::Lists=" + filepath.Join(top, "lists"), "-o", "Dir::State::status=" + filepath.Join(top, "status"),
			"-o", "Dir::Cache=" + filepath.Join(top, "cache"), "-o", "Debug::NoLocking=1"}
		cmd := exec.Command("apt-get", append(argv, args...)...)
		cmd.Dir = filepath.Join(top, "out")
		if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(string(out), "Err:") {
			t.Fatalf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	apt("update")
	for i := 0; i < 2; i++ {
		os.Remove(filepath.Join(top, "out", "hello_1.0_all.deb"))
		apt("download", "hello")
		waitFlights(t, px.p)
	}
	if n, s := debs.Load(), px.p.Stats(); n != 1 || s.Hits != 1 {
		t.Errorf("the origin served the package %d times, want once; stats %+v", n, s)
	}
}
