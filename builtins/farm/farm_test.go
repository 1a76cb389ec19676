package farm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"pifarm/builtins/trace"
)

func loadRepoConfig(t *testing.T) *Config {
	t.Helper()
	c, err := Load("../../config.star", nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDefaultConfigReproducesOriginalNodes(t *testing.T) {
	c := loadRepoConfig(t)
	f := New(c)
	want := []struct {
		id         int
		alias, lan string
		wan        string
	}{
		{0, "loner", "192.168.66.63", "100.65.63.15"},
		{1, "enone", "192.168.66.7", "100.65.4.15"},
		{2, "entwo", "192.168.66.8", "100.65.5.15"},
		{3, "enthree", "192.168.66.9", "100.65.6.15"},
		{4, "enfour", "192.168.66.11", "100.65.9.15"},
	}
	ns := f.Nodes()
	if len(ns) != len(want) {
		t.Fatalf("%d nodes", len(ns))
	}
	for i, w := range want {
		n := ns[i]
		if n.ID != w.id || n.Alias != w.alias || n.LAN != w.lan || n.WAN != w.wan {
			t.Errorf("node %d = %+v, want %+v", i, n, w)
		}
	}
	if c.MarginPercent != 6 || c.Passwords[0] != "raspberry" || c.Ports.SSH != 5700 || c.Ports.Console != 5800 || c.Ports.VNC != 5900 {
		t.Errorf("defaults: %+v", c)
	}
	if got := c.ImageSizesGiB; len(got) != 3 || got[0] != 4 || got[2] != 16 {
		t.Errorf("sizes %v", got)
	}
}

func TestResolve(t *testing.T) {
	f := New(loadRepoConfig(t))
	for _, tc := range []struct {
		ref string
		id  int
		bad bool
	}{
		{"0", 0, false}, {"2", 2, false}, {"entwo", 2, false}, {"EnFour", 4, false},
		{"7", 0, true}, {"nosuch", 0, true}, {"-1", 0, true},
	} {
		n, err := f.Resolve(tc.ref)
		if tc.bad {
			if err == nil || !trace.IsUsage(err) || !strings.Contains(err.Error(), tc.ref) {
				t.Errorf("Resolve(%q) err = %v, want a usage error naming it", tc.ref, err)
			}
			continue
		}
		if err != nil || n.ID != tc.id {
			t.Errorf("Resolve(%q) = %v, %v", tc.ref, n, err)
		}
	}
}

func TestPortsNetsMACs(t *testing.T) {
	f := New(loadRepoConfig(t))
	n, _ := f.Resolve("entwo")
	if f.SSHPort(n) != 5702 || f.ConsolePort(n) != 5802 || f.VNCPort(n) != 5902 {
		t.Error("ports")
	}
	if f.WANNet(n) != "100.65.5.0/24" || f.LANNet(n) != "192.168.66.0/24" || f.LANRouter() != "192.168.66.1/24" {
		t.Error(f.WANNet(n), f.LANNet(n), f.LANRouter())
	}
	seen := map[string]bool{}
	for _, n := range f.Nodes() {
		for nic := 0; nic < 3; nic++ {
			m := GuestMAC(n.ID, nic)
			if seen[m] {
				t.Fatalf("MAC %s repeated", m)
			}
			seen[m] = true
		}
	}
	if GuestMAC(2, NICLAN) != "52:54:51:00:00:02" {
		t.Error(GuestMAC(2, NICLAN))
	}
	if !strings.HasSuffix(f.Disk(0), "clones/raspi-clone-0/clone-0.raw") || !strings.HasSuffix(f.Disk(3), "raspi-clone-3/clone-3.qcow2") {
		t.Error(f.Disk(0), f.Disk(3))
	}
}

func TestRender(t *testing.T) {
	f := New(loadRepoConfig(t))
	h := f.Hosts()
	for _, want := range []string{"192.168.66.8\tn2.lan\tentwo\n", "100.65.5.15\tn2.wan\n", "127.0.0.1\tlocalhost\n"} {
		if !strings.Contains(h, want) {
			t.Errorf("hosts lacks %q:\n%s", want, h)
		}
	}
	if w := f.WifiTab(); !strings.Contains(w, "enone 6 enone\n") {
		t.Errorf("wifitab:\n%s", w)
	}
	c := loadRepoConfig(t)
	c.Nodes[1].LANMAC = "b8:27:eb:00:00:01"
	if it := New(c).IfTab(); !strings.Contains(it, "lan1 mac b8:27:eb:00:00:01\n") {
		t.Errorf("iftab:\n%s", it)
	}
}

func TestConfigErrorsNameFileAndLine(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"syntax", "cache = \"x\"\nnodes = [\n", "bad.star:3:1"},
		{"unknown field", "nodes = [\n  node(id=0, alias=\"a\", lan=\"1.2.3.4\", wan=\"5.6.7.8\"),\n  node(id=1, alias=\"b\", lan=\"1.2.3.5\", wan=\"5.6.7.9\", colour=\"red\"),\n]\n", "bad.star:3:7"},
		{"bad ip", "nodes = [node(id=0, alias=\"a\", lan=\"1.2.3.400\", wan=\"5.6.7.8\")]\n", "1.2.3.400"},
		{"unknown setting", "cache = \"/tmp/x\"\ncahce = \"/tmp/y\"\n", "bad.star:2:1: unknown setting \"cahce\""},
		{"bad size", "image_sizes_gib = [4, 6]\n", "bad.star:1:1: image_sizes_gib: 6 is not a power of two"},
		{"dup id", "nodes = [node(id=0, alias=\"a\", lan=\"1.2.3.4\", wan=\"5.6.7.8\"),\n node(id=0, alias=\"b\", lan=\"1.2.3.5\", wan=\"5.6.7.9\")]\n", "bad.star:2:6: node 0: duplicate id"},
		{"qemu key", "qemu = {\"cpu\": 4}\n", "unknown key \"cpu\""},
		{"runtime error", "x = 1\n_y = 1 // 0\n", "bad.star:2:8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "bad.star")
			os.WriteFile(p, []byte(tc.src), 0o644)
			_, err := Load(p, nil)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

func TestEnvInConfig(t *testing.T) {
	t.Setenv("PIFARM_TEST_CACHE", "/tmp/pifarm-env-test")
	p := filepath.Join(t.TempDir(), "c.star")
	os.WriteFile(p, []byte("cache = env(\"PIFARM_TEST_CACHE\", \"/nope\")\nnodes = [node(id=0, alias=\"a\", lan=\"1.2.3.4\", wan=\"5.6.7.8\")]\n"), 0o644)
	c, err := Load(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.CacheDir() != "/tmp/pifarm-env-test" {
		t.Fatal(c.CacheDir())
	}
}

func TestPartialConfigKeepsBase(t *testing.T) {
	base := loadRepoConfig(t)
	p := filepath.Join(t.TempDir(), "c.star")
	os.WriteFile(p, []byte("margin_percent = 3\n"), 0o644)
	c, err := LoadOver(base, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.MarginPercent != 3 || len(c.Nodes) != 5 || base.MarginPercent != 6 {
		t.Fatalf("overlay: margin %v nodes %d base margin %v", c.MarginPercent, len(c.Nodes), base.MarginPercent)
	}
}
