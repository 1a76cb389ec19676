package farm

import (
	"strings"
	"testing"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/trace"
)

// TestInstanceRef covers what the five hand-written instance arguments
// (farm.node, qemu, image, ssh, console) accepted and the errors they gave;
// the type error reads as each module's did through Also.
func TestInstanceRef(t *testing.T) {
	f := New(loadRepoConfig(t))
	n3, _ := f.Resolve("3")
	st := func(d starlark.StringDict) starlark.Value {
		return starlarkstruct.FromStringDict(starlark.String("struct"), d)
	}
	looksHost := func(ref string) bool { return strings.ContainsAny(ref, ".:") || ref == "localhost" }
	for _, tc := range []struct {
		name   string
		in     starlark.Value
		ref    InstanceRef // options
		id     int         // want Node.ID; -1 for no node
		text   string
		none   bool
		err    string
		usage  bool
		prefix bool // the error keeps UnpackArgs's "f: for parameter instance:" prefix
	}{
		{name: "int", in: starlark.MakeInt(2), id: 2, text: "2"},
		{name: "id string", in: starlark.String("2"), id: 2, text: "2"},
		{name: "alias", in: starlark.String("entwo"), id: 2, text: "entwo"},
		{name: "alias any case, blanks", in: starlark.String(" ENTwo "), id: 2, text: "ENTwo"},
		{name: "node struct", in: f.NodeStruct(n3), id: 3, text: "3"},
		{name: "struct with alias id", in: st(starlark.StringDict{"id": starlark.String("enone")}), id: 1, text: "enone"},
		{name: "unknown id", in: starlark.MakeInt(9), id: -1, text: "9", usage: true,
			err: `unknown instance "9": no node with id 9 in the node table of ../../config.star (ids: 0=loner, 1=enone, 2=entwo, 3=enthree, 4=enfour)`},
		{name: "unknown alias", in: starlark.String("nosuch"), id: -1, text: "nosuch", usage: true,
			err: `unknown instance "nosuch": no node with that id or alias in ../../config.star (known: 0=loner`},
		{name: "bool", in: starlark.True, id: -1, err: "f: for parameter instance: want an instance id, alias or node, got bool", prefix: true},
		{name: "list", in: starlark.NewList(nil), id: -1, err: "want an instance id, alias or node, got list"},
		{name: "float", in: starlark.Float(2), id: -1, err: "want an instance id, alias or node, got float"},
		{name: "struct without id", in: st(starlark.StringDict{"alias": starlark.String("x")}), id: -1,
			err: "want an instance id, alias or node, got a struct without id"},
		{name: "struct with a bad id", in: st(starlark.StringDict{"id": starlark.None}), id: -1,
			err: "want an instance id, alias or node, got a struct whose id is NoneType"},
		{name: "None refused", in: starlark.None, id: -1, err: "want an instance id, alias or node, got NoneType"},
		{name: "None allowed", in: starlark.None, ref: InstanceRef{NoneOK: true}, id: -1, none: true},
		// ssh: a host name is something else; a number never is
		{name: "ssh host", in: starlark.String("example.org:2222"), ref: InstanceRef{Also: "host", Other: looksHost}, id: -1, text: "example.org:2222"},
		{name: "ssh alias first", in: starlark.String("enone"), ref: InstanceRef{Also: "host", Other: looksHost}, id: 1, text: "enone"},
		{name: "ssh number is an id", in: starlark.String("9"), ref: InstanceRef{Also: "host", Other: func(string) bool { return true }}, id: -1, text: "9",
			usage: true, err: `unknown instance "9"`},
		{name: "ssh int is an id", in: starlark.MakeInt(9), ref: InstanceRef{Also: "host", Other: func(string) bool { return true }}, id: -1, text: "9",
			usage: true, err: `unknown instance "9"`},
		{name: "ssh not a host", in: starlark.String("nohost"), ref: InstanceRef{Also: "host", Other: looksHost}, id: -1, text: "nohost",
			usage: true, err: `unknown instance "nohost"`},
		{name: "ssh type error", in: starlark.Float(1), ref: InstanceRef{Also: "host"}, id: -1,
			err: "want an instance id, alias, node or host, got float"},
		{name: "console type error", in: starlark.True, ref: InstanceRef{Also: "host:port"}, id: -1,
			err: "want an instance id, alias, node or host:port, got bool"},
		{name: "console address", in: starlark.String(":5801"), ref: InstanceRef{Also: "host:port", Other: func(r string) bool { return strings.Contains(r, ":") }}, id: -1, text: ":5801"},
		// image: any other string is a file path
		{name: "image path", in: starlark.String("~/raspios.img"), ref: InstanceRef{Other: func(string) bool { return true }}, id: -1, text: "~/raspios.img"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.ref
			r.Farm = f
			err := trace.UnpackArgs("f", starlark.Tuple{tc.in}, nil, "instance", &r)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				if trace.IsUsage(err) != tc.usage {
					t.Fatalf("usage error %v, want %v: %v", trace.IsUsage(err), tc.usage, err)
				}
				if r.Node != nil {
					t.Fatalf("a failed reference left node %d", r.Node.ID)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			id := -1
			if r.Node != nil {
				id = r.Node.ID
			}
			if id != tc.id || r.Text != tc.text || r.None != tc.none {
				t.Fatalf("node %d text %q none %v, want %d %q %v", id, r.Text, r.None, tc.id, tc.text, tc.none)
			}
		})
	}
}

// The usage error of an unknown instance survives trace.UnpackArgs's
// wrapping (exit status 2), not starlark.UnpackArgs's (which formats it as
// text); a reference without a farm is a plain error.
func TestInstanceRefWrapping(t *testing.T) {
	f := New(loadRepoConfig(t))
	r := InstanceRef{Farm: f}
	nosuch := starlark.Tuple{starlark.String("nosuch")}
	err := trace.UnpackArgs("qemu.start", nosuch, nil, "node", &r)
	if err == nil || !trace.IsUsage(err) || !strings.HasPrefix(err.Error(), "qemu.start: for parameter node: unknown instance") {
		t.Fatalf("err %v (usage %v)", err, trace.IsUsage(err))
	}
	if err := trace.UnpackPositionalArgs("farm.node", nosuch, nil, 1, &r); !trace.IsUsage(err) {
		t.Fatalf("positional: %v (usage %v)", err, trace.IsUsage(err))
	}
	if err := starlark.UnpackArgs("qemu.start", nosuch, nil, "node", &r); err == nil || trace.IsUsage(err) {
		t.Fatalf("starlark.UnpackArgs now keeps usage errors (trace.UnpackArgs may go): %v", err)
	}
	var nofarm InstanceRef
	if err := nofarm.Unpack(starlark.MakeInt(1)); err == nil || !strings.Contains(err.Error(), "InstanceRef.Farm is nil") {
		t.Fatalf("no farm: %v", err)
	}
	// reuse: a second Unpack forgets the first result
	r = InstanceRef{Farm: f, NoneOK: true}
	r.Unpack(starlark.MakeInt(1))
	r.Unpack(starlark.None)
	if r.Node != nil || !r.None || r.Text != "" {
		t.Fatalf("stale result after a second Unpack: %+v", r)
	}
}
