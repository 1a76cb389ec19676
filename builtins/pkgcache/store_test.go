package pkgcache

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

func TestCacheKey(t *testing.T) {
	for _, tc := range []struct {
		host, path string
		want       string // joined with "/"; "" for an error
	}{
		{"deb.debian.org", "/debian/pool/main/a/apt/apt_2.6.1_arm64.deb", "deb.debian.org/debian/pool/main/a/apt/apt_2.6.1_arm64.deb"},
		{"Deb.Debian.ORG:80", "/debian//pool/x.deb", "deb.debian.org/debian/pool/x.deb"},
		{"127.0.0.1:8080", "/x.deb", "127.0.0.1:8080/x.deb"},
		{"[::1]:80", "/x.deb", "[::1]/x.deb"},
		{"[::1]:8080", "/x.deb", "[::1]:8080/x.deb"},
		{"h", "/pool/f/foo/foo_1:2.0+dfsg~1_all.deb", "h/pool/f/foo/foo_1:2.0+dfsg~1_all.deb"},
		{"h", "/a/../x.deb", ""},
		{"h", "/../x.deb", ""},
		{"h", "/./x.deb", "h/x.deb"},
		{"h", "/a/./.", "h/a"},
		{"h", "/a/.hidden.deb", ""},
		{"h", "/a/" + tmpPrefix + "1234", ""},
		{"h", "/a\x00b.deb", ""},
		{"h", "/a\nb.deb", ""},
		{"h", "/a\x7fb.deb", ""},
		{"h", "/a\xc2\x85b.deb", ""}, // U+0085, a C1 control
		{"h", "/a\xffb.deb", ""},
		{"h", "/" + strings.Repeat("a", 256), ""},
		{"h", "/", ""},
		{"h", "", ""},
		{"", "/x.deb", ""},
		{"..", "/x.deb", ""},
		{".h", "/x.deb", ""},
		{"h/x", "/x.deb", ""},
		{"h\\x", "/x.deb", ""},
		{"h x", "/x.deb", ""},
	} {
		key, err := CacheKey(tc.host, tc.path)
		got := strings.Join(key, "/")
		if tc.want == "" {
			if err == nil {
				t.Errorf("CacheKey(%q, %q) = %q, want an error", tc.host, tc.path, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("CacheKey(%q, %q) = %q, %v, want %q", tc.host, tc.path, got, err, tc.want)
		}
	}
}

// FuzzCacheKey checks that every key CacheKey accepts is a path of plain
// names that stays inside the cache folder.
func FuzzCacheKey(f *testing.F) {
	for _, s := range [][2]string{
		{"deb.debian.org", "/debian/pool/main/a/apt/apt_2.6.1_arm64.deb"},
		{"h:80", "/../../etc/passwd"},
		{"[::1]:80", "/a/./b/../c.deb"},
		{"h", "//a//b.deb"},
		{"..", "/x"},
		{"h", "/a\x00/b"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, host, path string) {
		key, err := CacheKey(host, path)
		if err != nil {
			return
		}
		if len(key) < 2 {
			t.Fatalf("CacheKey(%q, %q) = %q: no file", host, path, key)
		}
		for _, c := range key {
			if c == "" || c[0] == '.' || strings.ContainsAny(c, "/\x00") || len(c) > maxName || !utf8.ValidString(c) {
				t.Fatalf("CacheKey(%q, %q): component %q", host, path, c)
			}
			for _, r := range c {
				if r < 0x20 || r == 0x7f {
					t.Fatalf("CacheKey(%q, %q): component %q holds a control character", host, path, c)
				}
			}
		}
		root := "/cache/packages"
		p := filepath.Join(append([]string{root}, key...)...)
		if rel, err := filepath.Rel(root, p); err != nil || rel != strings.Join(key, "/") {
			t.Fatalf("CacheKey(%q, %q) = %q leaves the cache: %s", host, path, key, p)
		}
	})
}

// TestOpenRefusesAnythingButAFile: a planted FIFO neither blocks nor is
// served; a folder or a link is no file either.
func TestOpenRefusesAnythingButAFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "packages")
	s, err := openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	os.MkdirAll(filepath.Join(dir, "h", "d.deb"), 0o755)
	if err := syscall.Mkfifo(filepath.Join(dir, "h", "fifo.deb"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "h", "real.deb"), []byte("x"), 0o644)
	os.Symlink("real.deb", filepath.Join(dir, "h", "link.deb"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, name := range []string{"fifo.deb", "d.deb", "link.deb", "none.deb"} {
			if f, _, err := s.open([]string{"h", name}); err == nil {
				f.Close()
				t.Errorf("open %s: served", name)
			}
		}
		if f, fi, err := s.open([]string{"h", "real.deb"}); err != nil || fi.Size() != 1 {
			t.Errorf("open real.deb: %v", err)
		} else {
			f.Close()
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("open blocked")
	}
}

func TestOpenStoreRefusesALink(t *testing.T) {
	top := t.TempDir()
	os.Mkdir(filepath.Join(top, "elsewhere"), 0o755)
	os.Symlink("elsewhere", filepath.Join(top, "packages"))
	if _, err := openStore(filepath.Join(top, "packages")); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("openStore on a link: %v", err)
	}
}
