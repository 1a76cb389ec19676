package pkgcache

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
)

// tunnel answers CONNECT host:port: a byte pipe to the host (through the
// environment's https proxy when it names one), uncached, so that https
// mirrors work through the proxy.
func (p *Proxy) tunnel(w http.ResponseWriter, r *http.Request) {
	target := r.Host
	if _, _, err := net.SplitHostPort(target); err != nil {
		http.Error(w, fmt.Sprintf("pkgcache: CONNECT %q: want host:port", target), http.StatusBadRequest)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "pkgcache: CONNECT needs an HTTP/1.1 connection", http.StatusHTTPVersionNotSupported)
		return
	}
	p.misses.Add(1)
	up, err := p.dialTunnel(r.Context(), target)
	if err != nil {
		http.Error(w, fmt.Sprintf("pkgcache: cannot connect to %s: %v", target, err), http.StatusBadGateway)
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		up.Close()
		return
	}
	if !p.track(conn, up) {
		conn.Close()
		up.Close()
		return
	}
	defer p.untrack(conn, up)
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	// bytes the client sent after its request, already read into brw
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		if _, err := up.Write(b); err != nil {
			return
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(up, conn)
		closeWrite(up)
	}()
	io.Copy(counter{conn, &p.fetchedBytes}, up)
	closeWrite(conn)
	wg.Wait()
}

// counter counts the bytes written through it as they pass.
type counter struct {
	w io.Writer
	n interface{ Add(int64) int64 }
}

func (c counter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// closeWrite half-closes a TCP connection (the other direction may still
// carry bytes), or closes another kind.
func closeWrite(c net.Conn) {
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
		return
	}
	c.Close()
}

// track registers a tunnel's connections so that Close ends them; false
// when the proxy is closing.
func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range cs {
		p.tunnels[c] = true
	}
	return true
}

func (p *Proxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.tunnels, c)
		c.Close()
	}
}

// dialTunnel connects to target, directly or through the environment's
// proxy for https://target (an http:// proxy, asked with CONNECT).
func (p *Proxy) dialTunnel(ctx context.Context, target string) (net.Conn, error) {
	via, err := p.proxyFor(&http.Request{URL: &url.URL{Scheme: "https", Host: target}})
	if err != nil {
		return nil, fmt.Errorf("environment proxy: %w", err)
	}
	if via == nil {
		return p.dialer.DialContext(ctx, "tcp", target)
	}
	if via.Scheme != "http" {
		return nil, fmt.Errorf("the environment's proxy %s is not http:// (only an http:// proxy is asked to CONNECT; set https_proxy to one, or no_proxy for %s)", via.Redacted(), target)
	}
	addr := via.Host
	if via.Port() == "" {
		addr = net.JoinHostPort(via.Hostname(), "80")
	}
	c, err := p.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("environment proxy %s: %w", via.Redacted(), err)
	}
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: target}, Host: target, Header: http.Header{}}
	if u := via.User; u != nil {
		pw, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pw)))
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	br := bufio.NewReader(c)
	err = req.Write(c)
	var resp *http.Response
	if err == nil {
		resp, err = http.ReadResponse(br, req)
	}
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("it answered %s", resp.Status)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s through the environment proxy %s: %w", target, via.Redacted(), err)
	}
	if br.Buffered() > 0 { // the server spoke first (a TLS server does not)
		return &bufConn{Conn: c, r: br}, nil
	}
	return c, nil
}

// bufConn is a connection whose first bytes were read ahead into r.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }
