package farm

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"go.starlark.net/starlark"
	"pifarm/builtins/trace"
)

// setFarm is a farm of five QEMU guests (0-4) and two hardware boxes (7,
// 9), tagged.
func setFarm(t testing.TB) *Farm {
	t.Helper()
	src := `nodes = [
    node(id = 0, alias = "loner",   lan = "192.168.66.63", wan = "100.65.63.15"),
    node(id = 1, alias = "enone",   lan = "192.168.66.7",  wan = "100.65.4.15", tags = ["rack1", "usb"]),
    node(id = 2, alias = "entwo",   lan = "192.168.66.8",  wan = "100.65.5.15", tags = ("rack1",)),
    node(id = 3, alias = "en-three", lan = "192.168.66.9", wan = "100.65.6.15"),
    node(id = 4, alias = "enfour",  lan = "192.168.66.11", wan = "100.65.9.15", tags = ["rack2"]),
    node(id = 7, alias = "box7", lan = "192.168.66.17", wan = "100.65.17.15", lan_mac = "b8:27:eb:00:00:07", tags = ["rack2", "usb"]),
    node(id = 9, alias = "box9", lan = "192.168.66.19", wan = "100.65.19.15", lan_mac = "b8:27:eb:00:00:09"),
]
`
	c, err := Load("sets.star", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return New(c)
}

func TestSelect(t *testing.T) {
	f := setFarm(t)
	for _, tc := range []struct {
		ref  string
		want string // ids, or the error's text
		bad  bool
	}{
		{"2", "2", false},
		{"entwo", "2", false},
		{" EnTwo ", "2", false},
		{"en-three", "3", false}, // an alias with '-', not a range
		{"1-4", "1 2 3 4", false},
		{"1 - 3", "1 2 3", false},
		{"3-8", "3 4 7", false}, // a range selects the ids the table has
		{"1,3,entwo", "1 2 3", false},
		{"4,1,1", "1 4", false}, // in id order, each once
		{"all", "0 1 2 3 4 7 9", false},
		{"ALL", "0 1 2 3 4 7 9", false},
		{"qemu", "0 1 2 3 4", false},
		{"hardware", "7 9", false},
		{"@rack1", "1 2", false},
		{"@usb,@rack2", "1 4 7", false},
		{"@USB", "1 7", false},
		{"hardware,0", "0 7 9", false},
		{"", "empty node set", true},
		{"1,,2", "an empty item between commas", true},
		{"1,", "an empty item between commas", true},
		{"4-1", "runs backwards (write 1-4)", true},
		{"5-6", "no node has an id in 5-6", true},
		{"@nosuch", `no node is tagged "nosuch"`, true},
		{"@", `"@" is not a tag`, true},
		{"@a b", `is not a tag`, true},
		{"1,nosuch", `unknown instance "nosuch"`, true},
		{"1,8", `unknown instance "8"`, true},
		{"1 2", `unknown instance "1 2"`, true},
		{"1,2 3", `"2 3" is not an id, alias, range`, true},
		{"99999999999999999999-1", "too large", true},
	} {
		nodes, err := f.Select(tc.ref)
		if tc.bad {
			if err == nil || !trace.IsUsage(err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Select(%q) = %v, %v; want a usage error with %q", tc.ref, ids(nodes), err, tc.want)
			}
			continue
		}
		if err != nil || ids(nodes) != tc.want {
			t.Errorf("Select(%q) = %q, %v; want %q", tc.ref, ids(nodes), err, tc.want)
		}
	}
}

func ids(nodes []*Node) string {
	var s []string
	for _, n := range nodes {
		s = append(s, itoa(n.ID))
	}
	return strings.Join(s, " ")
}

func itoa(i int) string { return starlark.MakeInt(i).String() }

func TestIsNodeSet(t *testing.T) {
	for ref, want := range map[string]bool{
		"2": false, "entwo": false, "en-three": false, "1-4": true, "1,3": true, "all": true,
		"Qemu": true, "hardware": true, "@x": true, "": false, "-1": false, "a-1": false,
	} {
		if got := IsNodeSet(ref); got != want {
			t.Errorf("IsNodeSet(%q) = %v, want %v", ref, got, want)
		}
	}
}

func TestNodeTagsAndKindInConfig(t *testing.T) {
	f := setFarm(t)
	n, _ := f.Resolve("box7")
	if n.Kind() != "hardware" || !n.HasTag("rack2") || n.HasTag("rack1") {
		t.Errorf("box7: kind %s, tags %v", n.Kind(), n.Tags)
	}
	s := f.NodeStruct(n)
	if v, _ := s.Attr("kind"); v != starlark.String("hardware") {
		t.Errorf("kind attribute %v", v)
	}
	if v, _ := s.Attr("tags"); v.String() != `("rack2", "usb")` {
		t.Errorf("tags attribute %v", v)
	}
	for _, tc := range []struct{ node, want string }{
		{`alias = "all"`, `alias "all" is a node-set word`},
		{`alias = "Hardware"`, `is a node-set word`},
		{`alias = "a", tags = "rack1"`, `tags must be a list of names`},
		{`alias = "a", tags = ["ok", "not ok"]`, `tag "not ok" is not a name`},
		{`alias = "a", tags = ["x", "X"]`, `tag "X" given twice`},
		{`alias = "a", tags = [1]`, `tag 1 is not a name`},
	} {
		p := filepath.Join(t.TempDir(), "c.star")
		os.WriteFile(p, []byte(`nodes = [node(id = 1, lan = "1.2.3.4", wan = "5.6.7.8", `+tc.node+`)]`+"\n"), 0o644)
		_, err := Load(p, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "c.star:1:") {
			t.Errorf("%s: error %v, want %q at the line", tc.node, err, tc.want)
		}
	}
}

// TestFarmNodesSet: farm.nodes() takes a node set.
func TestFarmNodesSet(t *testing.T) {
	f := setFarm(t)
	m := f.Module(trace.New(nil, true, false, nil)).Struct()
	fn, _ := m.Attr("nodes")
	th := &starlark.Thread{}
	for set, want := range map[string]string{"": "0 1 2 3 4 7 9", "@usb": "1 7", "2-3": "2 3"} {
		var args starlark.Tuple
		if set != "" {
			args = starlark.Tuple{starlark.String(set)}
		}
		v, err := starlark.Call(th, fn, args, nil)
		if err != nil {
			t.Fatalf("farm.nodes(%q): %v", set, err)
		}
		var got []string
		for i := 0; i < v.(*starlark.List).Len(); i++ {
			id, _ := v.(*starlark.List).Index(i).(starlark.HasAttrs).Attr("id")
			got = append(got, id.String())
		}
		if strings.Join(got, " ") != want {
			t.Errorf("farm.nodes(%q) = %v, want %s", set, got, want)
		}
	}
	if _, err := starlark.Call(th, fn, starlark.Tuple{starlark.String("@none")}, nil); err == nil || !trace.IsUsage(err) {
		t.Errorf("farm.nodes(\"@none\"): %v, want a usage error", err)
	}
}

// FuzzNodeSet: no input makes the parser or Select panic; what Select
// returns is a sorted subset of the table without repeats, and a node set
// that parses names only nodes it can explain.
func FuzzNodeSet(f *testing.F) {
	for _, s := range []string{"1-4", "1,3,entwo", "all", "qemu", "hardware", "@rack1", "@", ",", "4-1", "1 - 2", "en-three", "9-", "-", "@usb,box9", "0-99999999999999999999"} {
		f.Add(s)
	}
	fm := setFarm(f)
	f.Fuzz(func(t *testing.T, ref string) {
		items, perr := ParseNodeSet(ref)
		nodes, err := fm.Select(ref)
		if err != nil {
			if !trace.IsUsage(err) {
				t.Fatalf("Select(%q): %v is not a usage error", ref, err)
			}
			return
		}
		if len(nodes) == 0 {
			t.Fatalf("Select(%q) selected nothing without an error", ref)
		}
		if !sort.SliceIsSorted(nodes, func(i, j int) bool { return nodes[i].ID < nodes[j].ID }) {
			t.Fatalf("Select(%q) = %s, not in id order", ref, ids(nodes))
		}
		for i := 1; i < len(nodes); i++ {
			if nodes[i].ID == nodes[i-1].ID {
				t.Fatalf("Select(%q) = %s repeats a node", ref, ids(nodes))
			}
		}
		if IsNodeSet(ref) && (perr != nil || len(items) == 0) {
			t.Fatalf("Select(%q) succeeded but ParseNodeSet: %v", ref, perr)
		}
	})
}
