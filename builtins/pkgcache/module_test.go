package pkgcache

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/farm"
	"pifarm/builtins/startest"
)

// fixture is a fixture with the pkgcache module, ended with the test.
func fixture(t *testing.T, o startest.Options) (*startest.Fixture, *module) {
	fx := startest.New(t, o)
	m := &module{d: fx.Door, f: fx.Farm}
	t.Cleanup(m.end)
	fx.Add(m.table())
	return fx, m
}

func TestStartDryRunStartsNothing(t *testing.T) {
	fx, _ := fixture(t, startest.Options{Dry: true})
	cache := fx.Farm.Config.CacheDir()
	fx.Run("dry.star", fmt.Sprintf(`
s = pkgcache.start()
assert.eq(s.port, 5699)
assert.eq(s.url, "http://127.0.0.1:5699")
assert.eq(s.dir, %q)
assert.eq(s.shared, False)
assert.eq(pkgcache.start(port = 7000), s)
assert.eq(pkgcache.guest_url(1), "http://100.65.4.2:5699")
assert.eq(pkgcache.guest_url("entwo"), "http://100.65.5.2:5699")
st = pkgcache.stats()
assert.eq([st.hits, st.misses, st.cached_bytes, st.fetched_bytes], [0, 0, 0, 0])
`, filepath.Join(cache, "packages")))
	want := "# pkgcache: serve the package cache " + filepath.Join(cache, "packages") + " as an HTTP proxy on http://127.0.0.1:5699 until the run ends\n"
	if got := fx.Output(); got != want {
		t.Errorf("output %q, want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(cache, "packages")); err == nil {
		t.Error("a dry run made the cache folder")
	}
}

func TestUsageErrors(t *testing.T) {
	fx, _ := fixture(t, startest.Options{Dry: true})
	fx.Farm.Config.Nodes = append(fx.Farm.Config.Nodes, &farm.Node{ID: 5, Alias: "enfive",
		LAN: "192.168.66.12", WAN: "100.65.10.15", LANMAC: "b8:27:eb:00:00:05"})
	for _, tc := range []struct{ src, want string }{
		{`pkgcache.guest_url(1)`, "pkgcache.guest_url: the package cache is not started: call pkgcache.start() first"},
		{`pkgcache.start(port = 70000)`, "pkgcache.start: port 70000 is not a TCP port"},
		{`pkgcache.start(port = "x")`, "pkgcache.start: for parameter \"port\": got string, want int"},
		{`pkgcache.start(); pkgcache.guest_url(9)`, `unknown instance "9"`},
		{`pkgcache.start(); pkgcache.guest_url(5)`, "node 5 (enfive) is a hardware box"},
	} {
		_, err := fx.Exec("usage.star", tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.src, err, tc.want)
		}
	}
}

// start runs pkgcache.start(port = port) in fx: the struct's port and
// shared, or the error.
func start(t *testing.T, fx *startest.Fixture, port int) (int, bool, error) {
	t.Helper()
	g, err := fx.Exec("start.star", fmt.Sprintf("s = pkgcache.start(port = %d)", port))
	if err != nil {
		return 0, false, err
	}
	s := g["s"].(*starlarkstruct.Struct)
	p, _ := s.Attr("port")
	shared, _ := s.Attr("shared")
	n, _ := starlark.AsInt32(p)
	return n, bool(shared.(starlark.Bool)), nil
}

// TestStartLive serves, counts and summarises: a package fetched once and
// then served from the cache through the module's proxy; the end hook
// stops the proxy.
func TestStartLive(t *testing.T) {
	o := newOrigin(t)
	fx, mod := fixture(t, startest.Options{})
	port, shared, err := start(t, fx, 0)
	if err != nil || port == 0 || shared {
		t.Fatalf("start: port %d, shared %v, %v", port, shared, err)
	}
	fx.Run("again.star", fmt.Sprintf(`
s = pkgcache.start()
assert.eq(s.port, %d)
assert.eq(s.url, "http://127.0.0.1:%d")
assert.eq(s.dir, %q)
assert.eq(pkgcache.guest_url("enone"), "http://100.65.4.2:%d")
`, port, port, filepath.Join(fx.Farm.Config.CacheDir(), "packages"), port))
	proxyURL, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", port))
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
	for _, kind := range []string{"miss", "hit"} {
		resp, err := client.Get(o.URL + debPath)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Header.Get(cacheHeader) != kind {
			t.Errorf("GET: %s, want %s", resp.Header.Get(cacheHeader), kind)
		}
		waitFlights(t, mod.run.proxy)
	}
	waitStats(t, mod.run.proxy, func(s Stats) bool { return s.CachedBytes > 0 })
	fx.Run("stats.star", `
s = pkgcache.stats()
assert.eq([s.hits, s.misses, s.cached_bytes, s.fetched_bytes], [1, 1, 100000, 100000])
`)
	if out := fx.Output(); out != "" {
		t.Errorf("a quiet run printed %q", out)
	}
	mod.end()
	want := fmt.Sprintf("# pkgcache: 1 hits (97.7 KiB from the cache), 1 fetched (97.7 KiB) on http://127.0.0.1:%d\n", port)
	if out := fx.Output(); out != want {
		t.Errorf("end: %q, want %q", out, want)
	}
	if c, err := net.Dial("tcp", proxyURL.Host); err == nil {
		c.Close()
		t.Error("the proxy still listens after the end")
	}
}

func TestVerboseNotes(t *testing.T) {
	fx, mod := fixture(t, startest.Options{Verbose: true})
	port, _, err := start(t, fx, 0)
	if err != nil {
		t.Fatal(err)
	}
	mod.end()
	dir := filepath.Join(fx.Farm.Config.CacheDir(), "packages")
	want := fmt.Sprintf("# pkgcache: serving the package cache %s as an HTTP proxy on http://127.0.0.1:%d until the run ends\n"+
		"# pkgcache: 0 hits (0 bytes from the cache), 0 fetched (0 bytes) on http://127.0.0.1:%d\n", dir, port, port)
	if out := fx.Output(); out != want {
		t.Errorf("output %q, want %q", out, want)
	}
}

// TestPortShared: a second run on the same cache uses the first one's
// proxy; a run on another cache, or a port held by another program, is
// refused with the fix.
func TestPortShared(t *testing.T) {
	a, _ := fixture(t, startest.Options{})
	port, _, err := start(t, a, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, modB := fixture(t, startest.Options{Farm: a.Farm, Verbose: true})
	if p, shared, err := start(t, b, port); err != nil || p != port || !shared {
		t.Fatalf("second run, same cache: port %d, shared %v, %v", p, shared, err)
	}
	b.Run("stats.star", `assert.eq(pkgcache.stats().hits, 0)`)
	modB.end()
	if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, IdentityPath)); err != nil {
		t.Errorf("the first run's proxy stopped with the second run: %v", err)
	} else {
		resp.Body.Close()
	}

	c, _ := fixture(t, startest.Options{})
	_, _, err = start(t, c, port)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("port %d on 127.0.0.1 is taken by the package cache of another pifarm", port)) ||
		!strings.Contains(err.Error(), "pkgcache.start(port=N)") {
		t.Errorf("another cache: %v", err)
	}

	other := httptest.NewServer(http.NotFoundHandler())
	defer other.Close()
	otherPort := other.Listener.Addr().(*net.TCPAddr).Port
	d, _ := fixture(t, startest.Options{})
	_, _, err = start(t, d, otherPort)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("port %d on 127.0.0.1 is taken by another program", otherPort)) ||
		!strings.Contains(err.Error(), "pkgcache.start(port=N)") {
		t.Errorf("another program: %v", err)
	}
}
