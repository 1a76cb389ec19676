package pkgcache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// IdentityPath is asked for (GET http://127.0.0.1:PORT/.pifarm-pkgcache) to
// learn whether a port holds a pifarm package cache, and which folder it
// serves: the answer is JSON {"dir": ..., "pid": ...}.
const IdentityPath = "/.pifarm-pkgcache"

const (
	// cacheHeader tells a client how its answer came: hit (the cache, or a
	// download another client started), miss (fetched for the cache) or
	// pass (relayed, not cacheable).
	cacheHeader = "X-Pifarm-Pkgcache"
)

// Stats are a proxy's counters since it started.
type Stats struct {
	// Hits are requests answered from the cache (or from a download that
	// another request started); CachedBytes their bytes.
	Hits, CachedBytes int64
	// Misses are requests sent upstream (downloads for the cache, relayed
	// requests, tunnels); FetchedBytes the bytes that came back.
	Misses, FetchedBytes int64
	// Errors counts downloads that broke or could not be cached; LastError
	// is the last one's message.
	Errors    int64
	LastError string
}

// Proxy is the package cache: an HTTP/1.1 forward proxy (what apt's
// Acquire::http::Proxy wants) that keeps the immutable files of a Debian
// archive — pool packages (.deb, .udeb, .ddeb) and by-hash index files —
// in a folder, by host and path, and relays everything else (InRelease,
// Release, Packages.xz change; CONNECT tunnels for https) uncached.
type Proxy struct {
	store  *store
	client *http.Client
	// proxyFor is the host's proxy for a URL (http.ProxyFromEnvironment):
	// fetches and CONNECT tunnels go through it.
	proxyFor func(*http.Request) (*url.URL, error)
	dialer   net.Dialer
	// idleTimeout ends a download for the cache that brought no byte for
	// that long (a stalled mirror; the clients retry with a new one).
	idleTimeout time.Duration
	// via marks the requests this proxy sends upstream (a Via header with
	// an id of its own): one that comes back to it (an environment proxy
	// pointing at it) is a loop. Another pkgcache upstream is no loop.
	via    string
	ctx    context.Context
	cancel context.CancelFunc

	hits, cachedBytes, misses, fetchedBytes, errs atomic.Int64

	mu      sync.Mutex
	flights map[string]*flight
	tunnels map[net.Conn]bool
	lastErr string
	closed  bool
	wg      sync.WaitGroup // requests, downloads, tunnels
}

// NewProxy returns the package cache kept in dir (made 0755 when missing).
// Upstream requests use the host's resolver and its environment's proxy
// settings (http_proxy, https_proxy, no_proxy). Close releases it.
func NewProxy(dir string) (*Proxy, error) {
	s, err := openStore(dir)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	var id [6]byte
	rand.Read(id[:])
	tr.DisableCompression = true // the bytes cached are the bytes served
	tr.ResponseHeaderTimeout = 60 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	var p *Proxy
	tr.Proxy = func(r *http.Request) (*url.URL, error) { return p.proxyFor(r) }
	p = &Proxy{
		store: s,
		client: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a proxy relays a redirect, the client follows it
		}},
		proxyFor:    http.ProxyFromEnvironment,
		dialer:      net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second},
		idleTimeout: 60 * time.Second,
		via:         "1.1 pifarm-pkgcache-" + hex.EncodeToString(id[:]),
		ctx:         ctx, cancel: cancel,
		flights: map[string]*flight{},
		tunnels: map[net.Conn]bool{},
	}
	return p, nil
}

// Dir is the folder the cache keeps its files in.
func (p *Proxy) Dir() string { return p.store.dir }

// Stats returns the counters so far.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	last := p.lastErr
	p.mu.Unlock()
	return Stats{Hits: p.hits.Load(), CachedBytes: p.cachedBytes.Load(), Misses: p.misses.Load(),
		FetchedBytes: p.fetchedBytes.Load(), Errors: p.errs.Load(), LastError: last}
}

// noteErr counts a download that broke or could not be cached (nothing is
// printed while apt's output streams to the user).
func (p *Proxy) noteErr(err error) {
	p.errs.Add(1)
	p.mu.Lock()
	p.lastErr = err.Error()
	p.mu.Unlock()
}

// Close stops the downloads and tunnels still running, waits for the
// requests in progress to end and releases the cache folder. Stop the
// server first (http.Server.Close): Close waits for its handlers.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for c := range p.tunnels {
		c.Close()
	}
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	p.client.CloseIdleConnections()
	return p.store.close()
}

// ServeHTTP answers one proxy request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		http.Error(w, "pkgcache: the package cache is shutting down", http.StatusServiceUnavailable)
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	defer p.wg.Done()

	switch {
	case r.Method == http.MethodConnect:
		p.tunnel(w, r)
	case r.URL.Host == "" && r.URL.Path == IdentityPath:
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(identity{Dir: p.store.dir, PID: os.Getpid()})
	case r.URL.Host == "":
		http.Error(w, "pkgcache: this is an HTTP proxy for absolute URLs (apt: -o Acquire::http::Proxy=http://"+r.Host+"), not a web server", http.StatusBadRequest)
	case p.viaUs(r.Header):
		http.Error(w, "pkgcache: request loops back to the proxy (does the environment's http_proxy name it?)", http.StatusLoopDetected)
	case r.URL.Scheme != "http":
		http.Error(w, "pkgcache: only http:// URLs are proxied ("+r.URL.Scheme+"://: use CONNECT, as apt does for https)", http.StatusBadRequest)
	case (r.Method == http.MethodGet || r.Method == http.MethodHead) && Cacheable(r.URL):
		key, err := CacheKey(r.URL.Host, r.URL.Path)
		if err != nil { // no place in the cache ("..", a control character): relayed
			p.forward(w, r)
			return
		}
		if p.serveHit(w, r, key) {
			return
		}
		if r.Method == http.MethodGet && !conditional(r.Header) {
			p.miss(w, r, key)
			return
		}
		p.forward(w, r)
	default:
		p.forward(w, r)
	}
}

type identity struct {
	Dir string `json:"dir"`
	PID int    `json:"pid"`
}

// Cacheable reports whether u names a file that never changes under its
// name: a package of a Debian pool (.deb, .udeb, .ddeb) or an index file
// named by its hash (.../by-hash/SHA256/...). A query or an encoded slash
// makes it not cacheable (the file's name would not be its path).
func Cacheable(u *url.URL) bool {
	if u.RawQuery != "" || u.ForceQuery || strings.Contains(strings.ToLower(u.EscapedPath()), "%2f") {
		return false
	}
	path := u.Path
	for _, ext := range []string{".deb", ".udeb", ".ddeb"} {
		if strings.HasSuffix(path, ext) {
			return true
		}
	}
	i := strings.Index(path, "/by-hash/")
	return i >= 0 && !strings.HasSuffix(path, "/") && strings.Count(path[i+len("/by-hash/"):], "/") == 1
}

// conditional reports whether a request asks for part of a file or only a
// changed one: a miss then goes upstream as it is, uncached.
func conditional(h http.Header) bool {
	for _, k := range []string{"Range", "If-Range", "If-Modified-Since", "If-None-Match", "If-Match", "If-Unmodified-Since"} {
		if h.Get(k) != "" {
			return true
		}
	}
	return false
}

// serveHit answers from the cache when it holds key's file (HEAD, ranges
// and If-Modified-Since as http.ServeContent does); false when it does not.
func (p *Proxy) serveHit(w http.ResponseWriter, r *http.Request, key []string) bool {
	f, fi, err := p.store.open(key)
	if err != nil {
		return false
	}
	defer f.Close()
	p.hits.Add(1)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set(cacheHeader, "hit")
	cw := &countWriter{ResponseWriter: w}
	http.ServeContent(cw, r, "", fi.ModTime(), f)
	p.cachedBytes.Add(cw.n)
	return true
}

// countWriter counts the body bytes written; it keeps the ResponseWriter's
// ReadFrom (sendfile from a cached file).
type countWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

func (c *countWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := io.Copy(c.ResponseWriter, r)
	c.n += n
	return n, err
}

// forward sends the request upstream as it is and relays the answer.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request) {
	body := r.Body
	if r.ContentLength == 0 {
		body = nil
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, r.URL.String(), body)
	if err != nil {
		http.Error(w, fmt.Sprintf("pkgcache: %s %s: %v", r.Method, r.URL.Redacted(), err), http.StatusBadRequest)
		return
	}
	out.ContentLength = r.ContentLength
	copyHeader(out.Header, r.Header)
	out.Header.Add("Via", p.via)
	p.misses.Add(1)
	resp, err := p.client.Do(out)
	if err != nil {
		p.badGateway(w, r, err)
		return
	}
	p.relay(w, r, resp, "pass")
}

// relay copies an upstream response to the client: status, end-to-end
// headers, body. A body that breaks off aborts the client's response too.
func (p *Proxy) relay(w http.ResponseWriter, r *http.Request, resp *http.Response, kind string) {
	defer resp.Body.Close()
	copyHeader(w.Header(), resp.Header)
	if resp.ContentLength >= 0 && w.Header().Get("Content-Length") == "" && resp.StatusCode != http.StatusNotModified {
		w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.Header().Set(cacheHeader, kind)
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return
	}
	n, err := io.Copy(w, resp.Body)
	p.fetchedBytes.Add(n)
	if err != nil {
		panic(http.ErrAbortHandler)
	}
}

// badGateway answers a request whose upstream could not be reached: 502
// and one line naming the host and the error.
func (p *Proxy) badGateway(w http.ResponseWriter, r *http.Request, err error) {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	http.Error(w, fmt.Sprintf("pkgcache: cannot fetch from %s: %v", r.URL.Host, err), http.StatusBadGateway)
}

// hopHeaders belong to one connection, never relayed.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// copyHeader adds src's end-to-end headers to dst (without the hop-by-hop
// ones, and those that src's Connection header names).
func copyHeader(dst, src http.Header) {
	skip := map[string]bool{}
	for _, h := range hopHeaders {
		skip[h] = true
	}
	for _, v := range src.Values("Connection") {
		for _, f := range strings.Split(v, ",") {
			skip[http.CanonicalHeaderKey(strings.TrimSpace(f))] = true
		}
	}
	for k, vs := range src {
		if skip[http.CanonicalHeaderKey(k)] {
			continue
		}
		for _, v := range vs {
			dst.Add(k, v)
		}
	}
}

// viaUs reports whether the proxy sent this request itself.
func (p *Proxy) viaUs(h http.Header) bool {
	for _, v := range h.Values("Via") {
		for _, hop := range strings.Split(v, ",") {
			if strings.TrimSpace(hop) == p.via {
				return true
			}
		}
	}
	return false
}
