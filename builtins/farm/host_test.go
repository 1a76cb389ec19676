package farm

import (
	"strings"
	"testing"
)

func TestParseHostURI(t *testing.T) {
	for _, c := range []struct {
		in   string
		want HostURI
		err  string
	}{
		{in: "qemu:///system", want: HostURI{URI: "qemu:///system", Port: 22}},
		{in: "qemu+ssh://root@farm2/system", want: HostURI{URI: "qemu+ssh://root@farm2/system", SSH: true, User: "root", Host: "farm2", Port: 22}},
		{in: "qemu+ssh://127.0.0.1:2222/system", want: HostURI{URI: "qemu+ssh://127.0.0.1:2222/system", SSH: true, Host: "127.0.0.1", Port: 2222}},
		{in: "qemu+ssh://pi@[::1]:22/system", want: HostURI{URI: "qemu+ssh://pi@[::1]:22/system", SSH: true, User: "pi", Host: "::1", Port: 22}},
		{in: "qemu:///session", err: "not /system"},
		{in: "qemu+tls://farm2/system", err: `transport "qemu+tls"`},
		{in: "qemu://farm2/system", err: "without a transport"},
		{in: "qemu+ssh:///system", err: "names no SSH server"},
		{in: "qemu+ssh://farm2:99999/system", err: "is not a port"},
		{in: "qemu+ssh://farm2/system?keyfile=x", err: "parameters"},
		{in: "qemu+ssh://root:secret@farm2/system", err: "holds a password"},
		{in: "farm2", err: "no scheme"},
	} {
		got, err := ParseHostURI(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseHostURI(%q) = %v, want error with %q", c.in, err, c.err)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("ParseHostURI(%q): the error repeats the password: %v", c.in, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseHostURI(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

func TestNodeHost(t *testing.T) {
	src := `
host = "qemu:///system"
nodes = [
    node(id = 0, alias = "loner", lan = "192.168.66.63", wan = "100.65.63.15"),
    node(id = 1, alias = "enone", lan = "192.168.66.7", wan = "100.65.4.15", host = "qemu+ssh://root@farm2/system"),
    node(id = 2, alias = "entwo", lan = "192.168.66.8", wan = "100.65.5.15", host = ""),
    node(id = 3, alias = "box", lan = "192.168.66.9", wan = "100.65.6.15", lan_mac = "b8:27:eb:00:00:03"),
]
`
	c, err := Load("config.star", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	f := New(c)
	for id, want := range map[int]string{0: "qemu:///system", 1: "qemu+ssh://root@farm2/system", 2: "", 3: ""} {
		n, _ := f.Resolve(string(rune('0' + id)))
		h, ok := f.Host(n)
		if ok != (want != "") || h.URI != want {
			t.Errorf("node %d: Host = %q, %v; want %q", id, h.URI, ok, want)
		}
	}
	for _, bad := range []struct{ src, err string }{
		{`host = "qemu:///session"` + "\nnodes = [node(id = 0, alias = \"a\", lan = \"192.168.66.2\", wan = \"100.65.0.15\")]", "config.star:1"},
		{`nodes = [node(id = 0, alias = "a", lan = "192.168.66.2", wan = "100.65.0.15", host = "ssh://x")]`, "node 0: host"},
		{`nodes = [node(id = 0, alias = "a", lan = "192.168.66.2", wan = "100.65.0.15", lan_mac = "b8:27:eb:00:00:01", host = "qemu:///system")]`, "hardware box"},
		{`nodes = [node(id = 0, alias = "a", lan = "192.168.66.2", wan = "100.65.0.15", host = 3)]`, "must be a libvirt URI string"},
	} {
		if _, err := Load("config.star", []byte(bad.src)); err == nil || !strings.Contains(err.Error(), bad.err) {
			t.Errorf("Load(%s) = %v, want an error with %q", bad.src, err, bad.err)
		}
	}
}

func FuzzParseHostURI(f *testing.F) {
	for _, s := range []string{"qemu:///system", "qemu+ssh://root@farm2:22/system", "qemu+ssh://[::1]/system", "x", "qemu+ssh://a:b@c/system"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHostURI(s)
		if err != nil {
			return
		}
		if h.URI != s || (h.SSH && (h.Host == "" || h.Port <= 0 || h.Port > 65535)) || (!h.SSH && h.Host != "") {
			t.Fatalf("ParseHostURI(%q) = %+v", s, h)
		}
		if _, err := ParseHostURI(h.URI); err != nil {
			t.Fatalf("reparse %q: %v", h.URI, err)
		}
	})
}
