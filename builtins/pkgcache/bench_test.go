package pkgcache

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkServe50MB compares a 50 MB package fetched over loopback from
// the origin directly, through the proxy on a miss (fetched and written to
// the cache) and through the proxy on a hit (sent from the cached file).
func BenchmarkServe50MB(b *testing.B) {
	const size = 50 << 20
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	const path = "/debian/pool/main/b/big/big_1.0_arm64.deb"
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", lastMod, bytes.NewReader(data))
	}))
	defer origin.Close()
	px := newProxied(b, "")
	host := strings.TrimPrefix(origin.URL, "http://")
	get := func(b *testing.B, c *http.Client) {
		resp, err := c.Get(origin.URL + path)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != size {
			b.Fatalf("%d bytes, %v", n, err)
		}
	}
	b.Run("origin", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			get(b, origin.Client())
		}
	})
	b.Run("proxy-miss", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			b.StopTimer()
			os.RemoveAll(filepath.Join(px.dir, host))
			b.StartTimer()
			get(b, px.client)
			waitFlights(b, px.p)
		}
	})
	b.Run("proxy-hit", func(b *testing.B) {
		get(b, px.client)
		waitFlights(b, px.p)
		b.SetBytes(size)
		for b.Loop() {
			get(b, px.client)
		}
	})
}
