// Package pkgcache is the Starlark module `pkgcache`: the farm-wide package
// cache, a caching HTTP forward proxy that pifarm runs in-process on the
// host's loopback for the rest of a run, so that N guests (QEMU guests
// through user-net's .2 address, offline chroots on the host's loopback)
// download a Debian package once, across nodes and across runs.
//
// The proxy keeps what never changes under its name — the pool's packages
// (.deb, .udeb, .ddeb) and by-hash index files — in CACHE/packages/HOST/PATH,
// and relays the rest (InRelease, Release, Packages.xz; CONNECT tunnels to
// https mirrors) uncached. A file enters the cache only whole: a complete 200
// response of the announced length, synced, then renamed into place. Clients
// that miss the same file at once share one download. The cache folder is
// walked without following symbolic links.
package pkgcache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// DefaultPort is the proxy's port on 127.0.0.1 unless start says otherwise.
const DefaultPort = 5699

// module is the run's package cache.
type module struct {
	d *trace.Door
	f *farm.Farm

	mu  sync.Mutex
	run *running // nil before start
}

// running is what start made: the proxy and its server, or (shared) the
// port of another pifarm's proxy serving the same folder.
type running struct {
	port   int
	dir    string
	shared bool
	proxy  *Proxy
	srv    *http.Server
}

// New returns the pkgcache module.
func New(d *trace.Door, f *farm.Farm) *trace.Module { return (&module{d: d, f: f}).table() }

// table is the module's registration.
func (m *module) table() *trace.Module {
	return &trace.Module{
		Name: "pkgcache",
		Doc: "The farm-wide package cache: a caching HTTP proxy on the host's loopback, each package fetched once.\n" +
			"Guests (through QEMU user-net) and chroots fetch Debian packages through it, across nodes and runs.",
		Funcs: []trace.Func{
			{Name: "start", Args: "port=5699", Fn: m.startFn, Doc: startDoc},
			{Name: "stats", Args: "", Fn: m.statsFn, Doc: statsDoc},
			{Name: "guest_url", Args: "node", Fn: m.guestURLFn, Doc: guestURLDoc},
		},
		End: m.end,
	}
}

const startDoc = `Serve the package cache as an HTTP proxy on 127.0.0.1:port until the run ends (an action).

Returns struct(port, url, dir, shared): url is "http://127.0.0.1:PORT" (apt:
-o Acquire::http::Proxy=URL, in a chroot on the host), dir is CACHE/packages. Pool
packages (.deb, .udeb, .ddeb) and by-hash index files are kept by host and path;
InRelease, Release and Packages files pass through uncached, and so do CONNECT
tunnels (https mirrors). An unreachable mirror is answered 502 with a line naming
the host and the error (apt: "Failed to fetch ... 502"). A second call in a run
returns the same struct. When another pifarm's package cache serving the same
folder holds the port, it is used (shared=True; it stops when that run ends);
anything else on the port is an error. port=0 takes a free port. A wrong cached
file (a mirror served a broken one: apt says "Hash Sum mismatch") is mended by
deleting it: dir/HOST/PATH.
Dry run: a note of what would be served where; returns the struct, starts nothing.`

const statsDoc = `This run's proxy counters: struct(hits, misses, cached_bytes, fetched_bytes).

hits are requests answered from the cache (or from a download another request
started), cached_bytes their bytes; misses are requests sent upstream (downloads
for the cache, relayed index files, tunnels), fetched_bytes the bytes that came
back. All zero before start, in a dry run, and when the proxy is shared (the
other pifarm counts).`

const guestURLDoc = `The proxy's URL as a QEMU guest sees it: "http://A.B.C.2:PORT" (needs start first).

QEMU's user-net gives the host the .2 address of the node's WAN network (node.wan_net)
and delivers its connections on the host's loopback, where the proxy listens. node is
an id, alias or node struct; a hardware box (lan_mac set) is refused: it is not
behind user-net and cannot reach the host's loopback.`

func (m *module) startFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	port := DefaultPort
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "port?", &port); err != nil {
		return nil, err
	}
	if port < 0 || port > 65535 {
		return nil, fmt.Errorf("port %d is not a TCP port (want 1-65535, or 0 for a free one)", port)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.run == nil {
		run, err := m.start(port)
		if err != nil {
			return nil, err
		}
		m.run = run
	}
	return m.run.value(), nil
}

// start serves the cache on 127.0.0.1:port, or finds it served there.
func (m *module) start(port int) (*running, error) {
	dir := filepath.Join(m.f.Config.CacheDir(), "packages")
	if m.d.DryRun {
		m.d.Note("pkgcache: serve the package cache %s as an HTTP proxy on http://127.0.0.1:%d until the run ends", dir, port)
		return &running{port: port, dir: dir}, nil
	}
	if err := m.d.Context().Err(); err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		if err := checkShared(m.d.Context(), port, dir); err != nil {
			return nil, err
		}
		m.d.Note("pkgcache: the package cache of another pifarm serves %s on http://%s: using it", dir, addr)
		return &running{port: port, dir: dir, shared: true}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w (choose another port: pkgcache.start(port=N))", addr, err)
	}
	p, err := NewProxy(dir)
	if err != nil {
		ln.Close()
		return nil, err
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: log.New(io.Discard, "", 0)} // nothing on the terminal apt's output streams to
	go srv.Serve(ln)
	run := &running{port: ln.Addr().(*net.TCPAddr).Port, dir: dir, proxy: p, srv: srv}
	m.d.Note("pkgcache: serving the package cache %s as an HTTP proxy on %s until the run ends", dir, run.url())
	return run, nil
}

// checkShared asks what holds 127.0.0.1:port: nil when it is a pifarm
// package cache serving dir, else an error naming the port and the fix.
func checkShared(ctx context.Context, port int, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	u := fmt.Sprintf("http://127.0.0.1:%d%s", port, IdentityPath)
	other := fmt.Sprintf("port %d on 127.0.0.1 is taken by another program (it does not answer as a pifarm package cache)", port)
	fix := "stop it, or choose another port: pkgcache.start(port=N)"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %v; %s", other, err, fix)
	}
	defer resp.Body.Close()
	var id identity
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&id) != nil || id.Dir == "" {
		return fmt.Errorf("%s; %s", other, fix)
	}
	if !sameDir(id.Dir, dir) {
		return fmt.Errorf("port %d on 127.0.0.1 is taken by the package cache of another pifarm (pid %d) serving %s, not %s; stop that run, or choose another port: pkgcache.start(port=N)", port, id.PID, id.Dir, dir)
	}
	return nil
}

// sameDir reports whether a and b name one folder.
func sameDir(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

func (r *running) url() string { return fmt.Sprintf("http://127.0.0.1:%d", r.port) }

func (r *running) value() starlark.Value {
	return starlarkstruct.FromStringDict(starlark.String("pkgcache"), starlark.StringDict{
		"port":   starlark.MakeInt(r.port),
		"url":    starlark.String(r.url()),
		"dir":    starlark.String(r.dir),
		"shared": starlark.Bool(r.shared),
	})
}

// stats are the counters of the run's own proxy (zero without one).
func (m *module) stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.run == nil || m.run.proxy == nil {
		return Stats{}
	}
	return m.run.proxy.Stats()
}

func (m *module) statsFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := trace.UnpackArgs(b.Name(), args, kwargs); err != nil {
		return nil, err
	}
	s := m.stats()
	return starlarkstruct.FromStringDict(starlark.String("stats"), starlark.StringDict{
		"hits":          starlark.MakeInt64(s.Hits),
		"misses":        starlark.MakeInt64(s.Misses),
		"cached_bytes":  starlark.MakeInt64(s.CachedBytes),
		"fetched_bytes": starlark.MakeInt64(s.FetchedBytes),
	}), nil
}

func (m *module) guestURLFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ref := farm.InstanceRef{Farm: m.f}
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "node", &ref); err != nil {
		return nil, err
	}
	m.mu.Lock()
	run := m.run
	m.mu.Unlock()
	if run == nil {
		return nil, errors.New("the package cache is not started: call pkgcache.start() first")
	}
	n := ref.Node
	if n.LANMAC != "" {
		return nil, fmt.Errorf("node %d (%s) is a hardware box: it is not behind QEMU's user-net and cannot reach the proxy on the host's loopback", n.ID, n.Alias)
	}
	host, err := userNetHost(m.f.WANNet(n))
	if err != nil {
		return nil, fmt.Errorf("node %d (%s): %v", n.ID, n.Alias, err)
	}
	return starlark.String(fmt.Sprintf("http://%s:%d", host, run.port)), nil
}

// userNetHost is the .2 address of a /24 network "A.B.C.0/24": the host as
// QEMU's user-net shows it to the guest.
func userNetHost(cidr string) (string, error) {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil || n.IP.To4() == nil {
		return "", fmt.Errorf("WAN network %q is not an IPv4 network (check the node's wan address in config.star)", cidr)
	}
	ip := n.IP.To4()
	return net.IPv4(ip[0], ip[1], ip[2], ip[3]+2).String(), nil
}

// end stops the run's proxy (downloads in progress are dropped, never
// cached) and prints one summary line with Verbose or when it served
// anything.
func (m *module) end() {
	m.mu.Lock()
	run := m.run
	m.mu.Unlock()
	if run == nil || run.proxy == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if run.srv.Shutdown(ctx) != nil {
		run.srv.Close()
	}
	run.proxy.Close()
	s := run.proxy.Stats()
	if !m.d.Verbose && s.Hits+s.Misses == 0 {
		return
	}
	line := fmt.Sprintf("# pkgcache: %d hits (%s from the cache), %d fetched (%s) on %s",
		s.Hits, size(s.CachedBytes), s.Misses, size(s.FetchedBytes), run.url())
	if s.Errors > 0 {
		line += fmt.Sprintf("; %d downloads not cached (last: %s)", s.Errors, s.LastError)
	}
	m.d.Print(line)
}

// size renders a byte count for people.
func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
