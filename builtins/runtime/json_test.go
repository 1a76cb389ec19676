package runtime

import (
	"encoding/json"
	"reflect"
	"sort"
	"testing"
)

// decodeJSON decodes a command's --json output, failing the test on
// anything else.
func decodeJSON(t *testing.T, args ...string) any {
	t.Helper()
	o, e, code := pifarm(t, args...)
	var v any
	if code != 0 || json.Unmarshal([]byte(o), &v) != nil {
		t.Fatalf("%v: exit %d, not JSON:\n%s%s", args, code, o, e)
	}
	return v
}

// keysOf are the sorted keys of a JSON object.
func keysOf(t *testing.T, v any) []string {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%v is not an object", v)
	}
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// TestJSONShapes: --json of the tables has the shape the README
// documents (the keys of every object).
func TestJSONShapes(t *testing.T) {
	fanEnv(t)
	for _, tc := range []struct {
		args []string
		keys []string
		n    int
	}{
		{[]string{"run", "nodes", "--json"}, []string{"alias", "console_port", "hw_lan_mac", "hw_wan_mac", "id", "kind", "lan", "mac_lan", "mac_wan", "mac_wlan", "power", "serial", "ssh_port", "ssid", "tags", "vnc_port", "wan", "wifi_channel"}, 5},
		{[]string{"run", "box", "--json"}, []string{"alias", "clone", "id", "lan", "pid", "running", "state"}, 5},
	} {
		l, ok := decodeJSON(t, tc.args...).([]any)
		if !ok || len(l) != tc.n {
			t.Fatalf("%v: %v, want a list of %d", tc.args, l, tc.n)
		}
		if got := keysOf(t, l[0]); !reflect.DeepEqual(got, tc.keys) {
			t.Errorf("%v: keys %v, want %v", tc.args, got, tc.keys)
		}
	}
	n := decodeJSON(t, "run", "nodes", "--json", "entwo").([]any)[0].(map[string]any)
	if n["id"] != 2.0 || n["kind"] != "qemu" || n["ssh_port"] != 5702.0 || !reflect.DeepEqual(n["tags"], []any{}) {
		t.Errorf("node 2: %v", n)
	}
	b := decodeJSON(t, "run", "box", "--json").([]any)[1].(map[string]any)
	if b["id"] != 1.0 || b["clone"] != "no" || b["running"] != false || b["pid"] != nil || b["state"] != nil {
		t.Errorf("box row of node 1: %v", b)
	}
	br := decodeJSON(t, "run", "bridge", "--json")
	if got := keysOf(t, br); !reflect.DeepEqual(got, []string{"bridge", "bridge_exists", "interfaces"}) {
		t.Errorf("bridge --json keys %v", got)
	}
	ifs := br.(map[string]any)["interfaces"].([]any)
	if len(ifs) < 5 || !reflect.DeepEqual(keysOf(t, ifs[0]), []string{"bridged", "id", "interface", "kind", "lan", "name", "up", "virtual", "wlan_host"}) {
		t.Errorf("bridge --json interfaces: %v", ifs)
	}

	if l := decodeJSON(t, "runs", "--json"); !reflect.DeepEqual(l, []any{}) {
		t.Errorf("runs --json without runs: %v", l)
	}
	pifarm(t, "run", fanRecipe, "1,2")
	runs := decodeJSON(t, "runs", "--json").([]any)
	want := []string{"args", "exit", "finished", "nodes", "recipe", "run", "seconds", "set", "started"}
	if len(runs) != 1 || !reflect.DeepEqual(keysOf(t, runs[0]), want) {
		t.Fatalf("runs --json: %v", runs)
	}
	one := decodeJSON(t, "runs", "last", "--json")
	if !reflect.DeepEqual(keysOf(t, one), want) {
		t.Errorf("runs last --json: %v", one)
	}
	node := one.(map[string]any)["nodes"].([]any)[1]
	if !reflect.DeepEqual(keysOf(t, node), []string{"alias", "error", "exit", "log", "node", "seconds"}) || node.(map[string]any)["alias"] != "entwo" {
		t.Errorf("a node of runs last --json: %v", node)
	}
}
