package pkgcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// flight is one download of a cacheable file into the cache, shared by
// every client that asks for the file while it runs: each one streams the
// temporary file as it grows, so N clients at once cause one fetch and one
// cached file. The download goes on when its first client leaves (the file
// is wanted), and ends with the proxy.
type flight struct {
	key string

	mu      sync.Mutex
	changed chan struct{} // closed and replaced at every change below
	state   flightState
	header  http.Header // the response's headers for clients (streaming)
	size    int64       // the expected Content-Length (streaming)
	written int64       // bytes in f so far
	err     error       // why the stream broke (failed)
	f       *os.File    // the temporary file, read with ReadAt
	refs    int         // clients and the download holding f
}

type flightState int

const (
	waiting   flightState = iota // the first client asks upstream
	declined                     // nothing to share: each client fetches for itself
	streaming                    // f grows; clients stream it
	complete                     // every byte is in f
	failed                       // the download broke: clients abort
)

func newFlight(key string) *flight {
	return &flight{key: key, changed: make(chan struct{}), refs: 1}
}

// set changes the flight under its lock and wakes the clients.
func (fl *flight) set(change func()) {
	fl.mu.Lock()
	change()
	close(fl.changed)
	fl.changed = make(chan struct{})
	fl.mu.Unlock()
}

// leave drops one hold on the file; the last one closes it.
func (fl *flight) leave() {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	fl.refs--
	if fl.refs == 0 && fl.f != nil {
		fl.f.Close()
		fl.f = nil
	}
}

// await waits until the first client has an answer from upstream, or the
// client gives up (false).
func (fl *flight) await(r *http.Request) (flightState, bool) {
	for {
		fl.mu.Lock()
		st, ch := fl.state, fl.changed
		fl.mu.Unlock()
		if st != waiting {
			return st, true
		}
		select {
		case <-ch:
		case <-r.Context().Done():
			return st, false
		}
	}
}

// miss answers a GET of a cacheable file that is not in the cache: the
// first client starts the flight, later ones join it.
func (p *Proxy) miss(w http.ResponseWriter, r *http.Request, key []string) {
	k := strings.Join(key, "/")
	p.mu.Lock()
	fl, joined := p.flights[k]
	if joined {
		fl.mu.Lock()
		fl.refs++
		fl.mu.Unlock()
	} else {
		fl = newFlight(k)
		p.flights[k] = fl
	}
	p.mu.Unlock()
	defer fl.leave()
	if !joined {
		p.lead(w, r, fl, key)
		return
	}
	st, ok := fl.await(r)
	switch {
	case !ok:
	case st == declined:
		p.forward(w, r)
	default:
		p.hits.Add(1)
		p.tail(w, r, fl, "hit", &p.cachedBytes)
	}
}

// lead fetches the file for the flight: a complete 200 response with a
// Content-Length is written to a temporary file that every client streams
// and that becomes the cached file; anything else is relayed to this client
// alone (the others fetch for themselves).
func (p *Proxy) lead(w http.ResponseWriter, r *http.Request, fl *flight, key []string) {
	decline := func() {
		p.drop(fl)
		fl.set(func() { fl.state = declined })
	}
	t, err := p.store.create(key)
	if err != nil { // a link or a file where a folder should be: no caching
		decline()
		p.forward(w, r)
		return
	}
	// the download outlives its first client (the file is wanted), not the
	// proxy, nor a mirror that stalls: idle for idleTimeout, it is dropped
	ctx, cancel := context.WithCancel(p.ctx)
	idle := time.AfterFunc(p.idleTimeout, cancel)
	stop := func() { idle.Stop(); cancel() }
	out, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL.String(), nil)
	if err == nil {
		out.Header.Set("User-Agent", r.Header.Get("User-Agent"))
		out.Header.Set("Via", p.via)
	}
	var resp *http.Response
	if err == nil {
		resp, err = p.client.Do(out)
	}
	p.misses.Add(1)
	if err != nil {
		stop()
		t.abort()
		t.f.Close()
		decline()
		p.badGateway(w, r, err)
		return
	}
	if resp.StatusCode != http.StatusOK || resp.ContentLength < 0 || resp.Header.Get("Content-Encoding") != "" {
		idle.Stop() // the client's pace now: its leaving ends the relay
		defer context.AfterFunc(r.Context(), cancel)()
		defer cancel()
		t.abort()
		t.f.Close()
		decline()
		p.relay(w, r, resp, "miss")
		return
	}
	h := http.Header{}
	copyHeader(h, resp.Header)
	fl.set(func() {
		fl.state, fl.header, fl.size, fl.f = streaming, h, resp.ContentLength, t.f
		fl.refs++ // the download's hold
	})
	p.wg.Add(1) // this request holds the group above zero
	go func() {
		defer stop()
		p.fill(fl, resp, t, func() { idle.Reset(p.idleTimeout) })
	}()
	p.tail(w, r, fl, "miss", nil)
}

// drop takes the flight off the proxy's table: later requests look in the
// cache again.
func (p *Proxy) drop(fl *flight) {
	p.mu.Lock()
	if p.flights[fl.key] == fl {
		delete(p.flights, fl.key)
	}
	p.mu.Unlock()
}

// fill copies the response body into the temporary file, then renames it
// into place when every announced byte arrived; a short or broken body is
// removed, never cached. alive is called at every read that brought bytes.
func (p *Proxy) fill(fl *flight, resp *http.Response, t *temp, alive func()) {
	defer p.wg.Done()
	defer fl.leave()
	defer resp.Body.Close()
	buf := make([]byte, 256<<10)
	var n int64
	var err error
	for {
		m, rerr := resp.Body.Read(buf)
		if m > 0 {
			alive()
			if _, werr := t.f.Write(buf[:m]); werr != nil {
				err = fmt.Errorf("write %s: %w", t.s.path(t.key), werr)
				break
			}
			n += int64(m)
			p.fetchedBytes.Add(int64(m))
			fl.set(func() { fl.written = n })
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			err = fmt.Errorf("fetch %s: %w", resp.Request.URL, rerr)
			break
		}
	}
	if err == nil && n != fl.size {
		err = fmt.Errorf("fetch %s: %d of %d bytes", resp.Request.URL, n, fl.size)
	}
	if err != nil {
		t.abort()
	} else if cerr := t.commit(lastModified(resp.Header)); cerr != nil {
		p.noteErr(cerr) // the clients still get every byte; the file is not cached
	}
	p.drop(fl)
	fl.set(func() {
		if err != nil {
			fl.state, fl.err = failed, err
			p.noteErr(err)
		} else {
			fl.state = complete
		}
	})
}

// tail streams the flight's file to one client as it grows, counting the
// bytes in counter when set. A broken download aborts the response (the
// client must not take a short file for a whole one).
func (p *Proxy) tail(w http.ResponseWriter, r *http.Request, fl *flight, kind string, counter interface{ Add(int64) int64 }) {
	fl.mu.Lock()
	header, size, f := fl.header, fl.size, fl.f
	fl.mu.Unlock()
	copyHeader(w.Header(), header)
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.Header().Set(cacheHeader, kind)
	w.WriteHeader(http.StatusOK)
	buf := make([]byte, 256<<10)
	var off int64
	for off < size {
		fl.mu.Lock()
		n, st, ch := fl.written, fl.state, fl.changed
		fl.mu.Unlock()
		if off < n {
			m, err := f.ReadAt(buf[:min(n-off, int64(len(buf)))], off)
			if m > 0 {
				if _, werr := w.Write(buf[:m]); werr != nil {
					return
				}
				off += int64(m)
				if counter != nil {
					counter.Add(int64(m))
				}
			}
			if err != nil && !errors.Is(err, io.EOF) {
				panic(http.ErrAbortHandler)
			}
			continue
		}
		if st == failed {
			panic(http.ErrAbortHandler)
		}
		select {
		case <-ch:
		case <-r.Context().Done():
			return
		}
	}
}

// lastModified is the response's Last-Modified time, zero without one.
func lastModified(h http.Header) time.Time {
	t, err := http.ParseTime(h.Get("Last-Modified"))
	if err != nil {
		return time.Time{}
	}
	return t
}
