package farm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConfigRefusesClashes: two nodes with one hardware MAC (however it is
// written), services whose port ranges overlap, and a ports value that
// does not fit the node table are refused, blamed on the line of the file
// that set them, not on the built-in configuration's.
func TestConfigRefusesClashes(t *testing.T) {
	base := loadRepoConfig(t)
	two := func(a, b string) string {
		return "nodes = [\n  node(id=0, alias=\"a\", lan=\"1.2.3.4\", wan=\"5.6.7.8\"" + a + "),\n  node(id=1, alias=\"b\", lan=\"1.2.3.5\", wan=\"5.6.7.9\"" + b + "),\n]\n"
	}
	for _, tc := range []struct{ name, src, want string }{
		{"same lan_mac", two(`, lan_mac="b8:27:eb:00:00:01"`, `, lan_mac="b8:27:eb:00:00:01"`), `user.star:3:7: node 1: lan_mac b8:27:eb:00:00:01 is also the lan_mac of node 0`},
		{"same lan_mac, other case", two(`, lan_mac="B8:27:EB:00:00:0A"`, `, lan_mac="b8:27:eb:00:00:0a"`), `node 1: lan_mac b8:27:eb:00:00:0a is also the lan_mac of node 0`},
		{"same wan_mac", two(`, wan_mac="00:e0:4c:00:00:05"`, `, wan_mac="00-E0-4C-00-00-05"`), `node 1: wan_mac 00:e0:4c:00:00:05 is also the wan_mac of node 0`},
		{"lan_mac of one, wan_mac of another", two(`, lan_mac="00:e0:4c:00:00:05"`, `, wan_mac="00:e0:4c:00:00:05"`), `node 1: wan_mac 00:e0:4c:00:00:05 is also the lan_mac of node 0`},
		{"one node's two MACs", two(`, lan_mac="00:e0:4c:00:00:05", wan_mac="00:e0:4c:00:00:05"`, ``), `node 0: wan_mac 00:e0:4c:00:00:05 is also the lan_mac of node 0`},
		{"ssh port is the console port", "ports = {\"ssh\": 5800, \"console\": 5800, \"vnc\": 5900}\n", `user.star:1:1: ports: ssh ports 5800..5804 and console ports 5800..5804 overlap`},
		{"overlapping ranges", "\nports = {\"ssh\": 5700, \"console\": 5702, \"vnc\": 5900}\n", `user.star:2:1: ports: ssh ports 5700..5704 and console ports 5702..5706 overlap`},
		{"vnc overlaps ssh", "ports = {\"vnc\": 5704}\n", `ports: ssh ports 5700..5704 and vnc ports 5704..5708 overlap`},
		{"ports beyond 65535 blamed on ports", "# mine\nports = {\"ssh\": 65534}\n", `user.star:2:1: ports: ssh port of node 2 (entwo) would be 65536`},
		{"bad port base", "ports = {\"console\": 0}\n", `user.star:1:1: ports: console base 0 is not a port`},
		{"id too large blamed on the node", "nodes = [node(id=0, alias=\"a\", lan=\"1.2.3.4\", wan=\"5.6.7.8\"),\n  node(id=70000, alias=\"b\", lan=\"1.2.3.5\", wan=\"5.6.7.9\")]\n", `user.star:2:7: node 70000: its ssh port would be 75700`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "user.star")
			os.WriteFile(p, []byte(tc.src), 0o644)
			_, err := LoadOver(base, p, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "config.star") {
				t.Errorf("blamed on the built-in configuration: %v", err)
			}
		})
	}
	// distinct MACs and ranges that only touch are fine
	p := filepath.Join(t.TempDir(), "ok.star")
	os.WriteFile(p, []byte("ports = {\"ssh\": 5700, \"console\": 5705, \"vnc\": 5710}\n"+two(`, lan_mac="b8:27:eb:00:00:01", wan_mac="00:e0:4c:00:00:01"`, `, lan_mac="b8:27:eb:00:00:02"`)), 0o644)
	if _, err := LoadOver(base, p, nil); err != nil {
		t.Fatal(err)
	}
}

// TestConfigLoopIsCancelled: an endless loop in config.star ends when the
// run's context is cancelled (Ctrl-C, SIGTERM), like a loop in a recipe.
func TestConfigLoopIsCancelled(t *testing.T) {
	p := filepath.Join(t.TempDir(), "loop.star")
	os.WriteFile(p, []byte("x = 0\nwhile True:\n    x += 1\n"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() {
		_, err := LoadContext(ctx, nil, p, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "interrupted") || !strings.Contains(err.Error(), "loop.star:") {
			t.Fatalf("err %v, want an interruption naming loop.star", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the loop in config.star was not interrupted")
	}
}
