package pkgcache

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	debPath   = "/debian/pool/main/h/hello/hello_2.10-3_arm64.deb"
	hashPath  = "/debian/dists/bookworm/main/binary-arm64/by-hash/SHA256/0123abcd"
	releasePa = "/debian/dists/bookworm/InRelease"
	truncPath = "/debian/pool/main/t/trunc/trunc_1.0_all.deb"
	slowPath  = "/debian/pool/main/s/slow/slow_1.0_all.deb"
)

var lastMod = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// origin is a mirror for the tests: it counts the requests per path.
type origin struct {
	*httptest.Server
	mu       sync.Mutex
	count    map[string]int
	release  atomic.Int64  // InRelease changes with every request
	truncate atomic.Bool   // trunc.deb breaks off after half its bytes
	gate     chan struct{} // slow.deb waits for it after half its bytes
}

func body(path string, n int) []byte {
	return bytes.Repeat([]byte(path+"\n"), n/(len(path)+1)+1)[:n]
}

func newOrigin(t testing.TB) *origin {
	o := &origin{count: map[string]int{}, gate: make(chan struct{})}
	o.truncate.Store(true)
	o.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		o.count[r.URL.Path]++
		o.mu.Unlock()
		switch r.URL.Path {
		case debPath, hashPath:
			http.ServeContent(w, r, "", lastMod, bytes.NewReader(body(r.URL.Path, 100_000)))
		case releasePa:
			text := fmt.Sprintf("release %d\n", o.release.Add(1))
			http.ServeContent(w, r, "", lastMod, strings.NewReader(text))
		case truncPath:
			b := body(r.URL.Path, 1000)
			w.Header().Set("Content-Length", "1000")
			if !o.truncate.Load() {
				w.Write(b)
				return
			}
			w.Write(b[:500])
			w.(http.Flusher).Flush()
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		case slowPath:
			b := body(r.URL.Path, 300_000)
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.Write(b[:100_000])
			w.(http.Flusher).Flush()
			<-o.gate
			w.Write(b[100_000:])
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(o.Close)
	return o
}

func (o *origin) n(path string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.count[path]
}

// host is the origin's host:port, the cache's folder for it.
func (o *origin) host() string { return strings.TrimPrefix(o.URL, "http://") }

// proxied is a proxy on dir (a fresh one when empty) and a client that
// uses it.
type proxied struct {
	p      *Proxy
	srv    *httptest.Server
	client *http.Client
	dir    string
}

func newProxied(t testing.TB, dir string) *proxied {
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "packages")
	}
	p, err := NewProxy(dir)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p)
	t.Cleanup(func() { srv.Close(); p.Close() })
	u, _ := url.Parse(srv.URL)
	tr := &http.Transport{Proxy: http.ProxyURL(u), DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &proxied{p: p, srv: srv, client: &http.Client{Transport: tr}, dir: dir}
}

// get fetches u through the proxy: status, the cache header, the body.
func (px *proxied) do(t testing.TB, method, u string, h http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := px.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read the body: %v", method, u, err)
	}
	return resp, b
}

// raw sends a request line as written (no client cleans its path) and
// returns the response and its body.
func (px *proxied) raw(t testing.TB, target string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", px.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", target)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestHitMissHead(t *testing.T) {
	o := newOrigin(t)
	px := newProxied(t, "")
	want := body(debPath, 100_000)
	for i, kind := range []string{"miss", "hit"} {
		resp, b := px.do(t, "GET", o.URL+debPath, nil)
		if resp.StatusCode != 200 || !bytes.Equal(b, want) || resp.Header.Get(cacheHeader) != kind {
			t.Fatalf("GET %d: %s %s, %d bytes, want 200 %s", i, resp.Status, resp.Header.Get(cacheHeader), len(b), kind)
		}
		waitFlights(t, px.p) // the last byte reaches the client before the file its place
		if resp.ContentLength != int64(len(want)) || resp.Header.Get("Last-Modified") != lastMod.Format(http.TimeFormat) {
			t.Errorf("GET %d: Content-Length %d, Last-Modified %q", i, resp.ContentLength, resp.Header.Get("Last-Modified"))
		}
	}
	resp, b := px.do(t, "HEAD", o.URL+debPath, nil)
	if resp.StatusCode != 200 || len(b) != 0 || resp.ContentLength != int64(len(want)) || resp.Header.Get(cacheHeader) != "hit" {
		t.Errorf("HEAD: %s, %s, Content-Length %d, body %d bytes", resp.Status, resp.Header.Get(cacheHeader), resp.ContentLength, len(b))
	}
	if n := o.n(debPath); n != 1 {
		t.Errorf("the origin was asked %d times, want once", n)
	}
	file := filepath.Join(px.dir, o.host(), debPath)
	fi, err := os.Lstat(file)
	if err != nil || fi.Mode() != 0o644 || !fi.ModTime().Equal(lastMod) {
		t.Fatalf("cached file: %v %v", fi, err)
	}
	for d := filepath.Dir(file); d != filepath.Dir(px.dir); d = filepath.Dir(d) {
		if fi, err := os.Lstat(d); err != nil || fi.Mode() != os.ModeDir|0o755 {
			t.Errorf("folder %s: %v %v", d, fi.Mode(), err)
		}
	}
	s := waitStats(t, px.p, func(s Stats) bool { return s.CachedBytes == int64(len(want)) })
	if s != (Stats{Hits: 2, CachedBytes: int64(len(want)), Misses: 1, FetchedBytes: int64(len(want))}) {
		t.Errorf("stats %+v", s)
	}
}

func TestIndexFilesPassThrough(t *testing.T) {
	o := newOrigin(t)
	px := newProxied(t, "")
	for i := 1; i <= 2; i++ {
		resp, b := px.do(t, "GET", o.URL+releasePa, nil)
		if want := fmt.Sprintf("release %d\n", i); string(b) != want || resp.Header.Get(cacheHeader) != "pass" {
			t.Errorf("InRelease %d: %q (%s), want %q", i, b, resp.Header.Get(cacheHeader), want)
		}
	}
	resp, _ := px.do(t, "GET", o.URL+releasePa, http.Header{"If-Modified-Since": {lastMod.Format(http.TimeFormat)}})
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("InRelease If-Modified-Since: %s, want 304", resp.Status)
	}
	if n := o.n(releasePa); n != 3 {
		t.Errorf("InRelease: the origin was asked %d times, want 3", n)
	}
	if _, err := os.Lstat(filepath.Join(px.dir, o.host(), releasePa)); err == nil {
		t.Error("InRelease was cached")
	}
	// by-hash files are named by their contents: cached
	for _, kind := range []string{"miss", "hit"} {
		resp, b := px.do(t, "GET", o.URL+hashPath, nil)
		if !bytes.Equal(b, body(hashPath, 100_000)) || resp.Header.Get(cacheHeader) != kind {
			t.Errorf("by-hash: %d bytes, %s, want %s", len(b), resp.Header.Get(cacheHeader), kind)
		}
	}
	if n := o.n(hashPath); n != 1 {
		t.Errorf("by-hash: the origin was asked %d times, want once", n)
	}
	// a missing package is relayed, not cached
	resp, _ = px.do(t, "GET", o.URL+"/debian/pool/main/n/none_1_all.deb", nil)
	if resp.StatusCode != 404 {
		t.Errorf("missing package: %s", resp.Status)
	}
}

func TestTruncatedNotCached(t *testing.T) {
	o := newOrigin(t)
	px := newProxied(t, "")
	px.broken(t, o.URL+truncPath)
	o.truncate.Store(false)
	resp2, b := px.do(t, "GET", o.URL+truncPath, nil)
	if !bytes.Equal(b, body(truncPath, 1000)) || resp2.Header.Get(cacheHeader) != "miss" || o.n(truncPath) != 2 {
		t.Errorf("after the truncated download: %d bytes, %s, origin asked %d times", len(b), resp2.Header.Get(cacheHeader), o.n(truncPath))
	}
	if s := px.p.Stats(); s.Errors != 1 || !strings.Contains(s.LastError, "500 of 1000") && !strings.Contains(s.LastError, "unexpected EOF") {
		t.Errorf("stats %+v", s)
	}
}

// broken asks for u, a download that breaks off: the client must see an
// error, and nothing may be left in the cache.
func (px *proxied) broken(t testing.TB, u string) {
	t.Helper()
	resp, err := px.client.Get(u)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatalf("GET %s: a broken download reached the client whole", u)
	}
	waitFlights(t, px.p)
	if left := files(t, px.dir); len(left) != 0 {
		t.Errorf("GET %s: files left in the cache: %v", u, left)
	}
}

// waitFlights waits until no download runs.
func waitFlights(t testing.TB, p *Proxy) {
	t.Helper()
	for i := 0; ; i++ {
		p.mu.Lock()
		n := len(p.flights)
		p.mu.Unlock()
		if n == 0 {
			return
		}
		if i > 500 {
			t.Fatalf("%d downloads still running", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitStats waits until the counters satisfy ok (a handler counts the
// bytes it sent after the client read them), and returns them.
func waitStats(t testing.TB, p *Proxy, ok func(Stats) bool) Stats {
	t.Helper()
	for i := 0; i < 200; i++ {
		if s := p.Stats(); ok(s) {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p.Stats()
}

// files lists the files under dir (relative), temporary ones included.
func files(t testing.TB, dir string) []string {
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

func TestConcurrentMissesOneDownload(t *testing.T) {
	o := newOrigin(t)
	px := newProxied(t, "")
	const clients = 5
	want := body(slowPath, 300_000)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := px.client.Get(o.URL + slowPath)
			if err != nil {
				errs <- err
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || !bytes.Equal(b, want) {
				errs <- fmt.Errorf("%d bytes, %v", len(b), err)
			}
		}()
	}
	// every client holds the one flight (and the download its own hold)
	for i := 0; ; i++ {
		px.p.mu.Lock()
		refs := 0
		for _, fl := range px.p.flights {
			fl.mu.Lock()
			refs = fl.refs
			fl.mu.Unlock()
		}
		px.p.mu.Unlock()
		if refs == clients+1 {
			break
		}
		if i > 500 {
			t.Fatalf("%d holds on the download, want %d", refs, clients+1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(o.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitFlights(t, px.p)
	if n := o.n(slowPath); n != 1 {
		t.Errorf("the origin was asked %d times, want once", n)
	}
	if got := files(t, px.dir); len(got) != 1 {
		t.Errorf("cache holds %v, want one file", got)
	}
	if s := px.p.Stats(); s.Misses != 1 || s.Hits != clients-1 || s.FetchedBytes != int64(len(want)) {
		t.Errorf("stats %+v", s)
	}
}

// TestStalledMirror: a download that brings no byte for the idle timeout
// is dropped; its clients see a broken response, nothing is cached.
func TestStalledMirror(t *testing.T) {
	o := newOrigin(t)
	t.Cleanup(func() { close(o.gate) }) // before the origin closes (cleanups run last first)
	px := newProxied(t, "")
	px.p.idleTimeout = 200 * time.Millisecond
	px.broken(t, o.URL+slowPath)
	if s := px.p.Stats(); s.Errors != 1 || !strings.Contains(s.LastError, "context canceled") {
		t.Errorf("stats %+v", s)
	}
}

func TestTraversalStaysInside(t *testing.T) {
	o := newOrigin(t)
	top := t.TempDir()
	px := newProxied(t, filepath.Join(top, "packages"))
	secret := filepath.Join(top, "secret.deb")
	if err := os.WriteFile(secret, []byte("SECRET"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := o.URL
	for _, target := range []string{
		h + "/../secret.deb",
		h + "/../../secret.deb",
		h + "/debian/%2e%2e/%2e%2e/%2e%2e/secret.deb",
		h + "/debian/..%2f..%2f..%2fsecret.deb",
		h + "/debian/.%2e/.%2E/secret.deb",
		h + "/../../etc/passwd",
		"http://../secret.deb",
		"http://%2e%2e/secret.deb",
		h + "/debian/pool/a\x01b.deb",
	} {
		resp, b := px.raw(t, target)
		t.Logf("%s: %s %q", target, resp.Status, b)
		if strings.Contains(b, "SECRET") || strings.Contains(b, "root:") || resp.StatusCode == 200 || resp.Header.Get(cacheHeader) == "hit" {
			t.Errorf("GET %s: %s %q", target, resp.Status, b)
		}
	}
	got := files(t, top)
	if len(got) != 1 || got[0] != "secret.deb" {
		t.Errorf("files under %s: %v, want only secret.deb", top, got)
	}
}

func TestSymlinkInCacheNotFollowed(t *testing.T) {
	o := newOrigin(t)
	top := t.TempDir()
	px := newProxied(t, filepath.Join(top, "packages"))
	outside := filepath.Join(top, "outside")
	os.MkdirAll(outside, 0o755)
	secret := filepath.Join(outside, "secret")
	os.WriteFile(secret, []byte("SECRET"), 0o644)
	want := body(debPath, 100_000)

	// a link where the package goes: not served, replaced by the download
	file := filepath.Join(px.dir, o.host(), debPath)
	os.MkdirAll(filepath.Dir(file), 0o755)
	if err := os.Symlink(secret, file); err != nil {
		t.Fatal(err)
	}
	resp, b := px.do(t, "GET", o.URL+debPath, nil)
	if !bytes.Equal(b, want) || resp.Header.Get(cacheHeader) != "miss" {
		t.Errorf("file link: %s, %q...", resp.Header.Get(cacheHeader), b[:min(20, len(b))])
	}
	waitFlights(t, px.p)
	if fi, err := os.Lstat(file); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("the link was not replaced by the package: %v %v", fi, err)
	}

	// a link where a folder goes: nothing written through it, nothing cached
	os.RemoveAll(filepath.Join(px.dir, o.host(), "debian", "dists"))
	if err := os.Symlink(outside, filepath.Join(px.dir, o.host(), "debian", "dists")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		resp, b = px.do(t, "GET", o.URL+hashPath, nil)
		if !bytes.Equal(b, body(hashPath, 100_000)) || resp.Header.Get(cacheHeader) != "pass" {
			t.Errorf("folder link %d: %s, %d bytes", i, resp.Header.Get(cacheHeader), len(b))
		}
	}
	if got := files(t, outside); len(got) != 1 {
		t.Errorf("written through the folder link: %v", got)
	}
	if b, _ := os.ReadFile(secret); string(b) != "SECRET" {
		t.Errorf("the link's target changed: %q", b)
	}
}

func TestConnectTunnel(t *testing.T) {
	tlsOrigin := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "secure "+r.URL.Path)
	}))
	defer tlsOrigin.Close()
	px := newProxied(t, "")
	tr := px.client.Transport.(*http.Transport)
	tr.TLSClientConfig = tlsOrigin.Client().Transport.(*http.Transport).TLSClientConfig
	resp, b := px.do(t, "GET", tlsOrigin.URL+"/debian/InRelease", nil)
	if resp.StatusCode != 200 || string(b) != "secure /debian/InRelease" {
		t.Errorf("through CONNECT: %s %q", resp.Status, b)
	}
	if s := waitStats(t, px.p, func(s Stats) bool { return s.FetchedBytes > 0 }); s.Misses != 1 || s.FetchedBytes == 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestEnvironmentProxy: with an environment proxy (here another pkgcache),
// fetches and tunnels go through it; a chain of two is no loop.
func TestEnvironmentProxy(t *testing.T) {
	o := newOrigin(t)
	tlsOrigin := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "secure")
	}))
	defer tlsOrigin.Close()
	upstream := newProxied(t, "")
	px := newProxied(t, "")
	up, _ := url.Parse(upstream.srv.URL)
	px.p.proxyFor = func(*http.Request) (*url.URL, error) { return up, nil }
	px.client.Transport.(*http.Transport).TLSClientConfig = tlsOrigin.Client().Transport.(*http.Transport).TLSClientConfig
	if resp, b := px.do(t, "GET", o.URL+debPath, nil); resp.StatusCode != 200 || len(b) != 100_000 {
		t.Errorf("http through two: %s, %d bytes", resp.Status, len(b))
	}
	if resp, b := px.do(t, "GET", tlsOrigin.URL+"/", nil); resp.StatusCode != 200 || string(b) != "secure" {
		t.Errorf("https through two: %s %q", resp.Status, b)
	}
	waitFlights(t, upstream.p)
	if s := upstream.p.Stats(); s.Misses != 2 {
		t.Errorf("the environment proxy saw %d requests, want 2", s.Misses)
	}
}

func TestUnreachable502(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	px := newProxied(t, "")
	for _, path := range []string{debPath, releasePa} {
		resp, b := px.do(t, "GET", "http://"+dead+path, nil)
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), dead) ||
			!strings.Contains(string(b), "refused") || strings.Count(string(b), "\n") != 1 {
			t.Errorf("%s: %s %q", path, resp.Status, b)
		}
	}
}

func TestNotAProxyRequest(t *testing.T) {
	px := newProxied(t, "")
	for _, tc := range []struct {
		target, header string
		status         int
		want           string
	}{
		{IdentityPath, "", 200, `"dir":"` + px.dir + `"`},
		{"/", "", 400, "Acquire::http::Proxy"},
		{"http://example.invalid/x.deb", "Via: 1.0 squid, " + px.p.via + "\r\n", http.StatusLoopDetected, "loops"},
	} {
		c, err := net.Dial("tcp", px.srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sConnection: close\r\n\r\n", tc.target, tc.header)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		c.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.want) {
			t.Errorf("GET %s: %s %q, want %d with %q", tc.target, resp.Status, b, tc.status, tc.want)
		}
	}
}

func TestCacheable(t *testing.T) {
	for _, tc := range []struct {
		u    string
		want bool
	}{
		{"http://h/debian/pool/main/a/apt/apt_2.6.1_arm64.deb", true},
		{"http://h/debian/pool/main/d/debian-installer/x.udeb", true},
		{"http://h/debian-debug/pool/main/x/x-dbgsym.ddeb", true},
		{"http://h/debian/dists/bookworm/main/binary-arm64/by-hash/SHA256/abc", true},
		{"http://h/debian/dists/bookworm/main/binary-arm64/by-hash/SHA256/", false},
		{"http://h/debian/dists/bookworm/main/binary-arm64/by-hash/", false},
		{"http://h/debian/dists/bookworm/InRelease", false},
		{"http://h/debian/dists/bookworm/main/binary-arm64/Packages.xz", false},
		{"http://h/debian/pool/x.deb?v=2", false},
		{"http://h/debian/pool/a%2Fb.deb", false},
	} {
		u, err := url.Parse(tc.u)
		if err != nil {
			t.Fatal(err)
		}
		if got := Cacheable(u); got != tc.want {
			t.Errorf("Cacheable(%s) = %v, want %v", tc.u, got, tc.want)
		}
	}
}
