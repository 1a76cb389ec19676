package farm

import (
	"fmt"
	"strconv"
	"strings"

	"go.starlark.net/starlark"
)

// InstanceRef is a starlark.Unpacker for an instance argument: an id (2 or
// "2"), an alias ("entwo") or a node struct (farm.node(...), anything with an
// id attribute), resolved in the farm's node table. An id or alias that names
// no node is the usage error of Farm.Resolve (exit status 2), which lists the
// known nodes.
//
// Set Farm (and the options) before unpacking, with trace.UnpackArgs so
// that an unknown instance stays a usage error:
//
//	ref := farm.InstanceRef{Farm: f}
//	trace.UnpackArgs(b.Name(), args, kwargs, "instance", &ref)
//	n := ref.Node
//
// Modules that take something else in the same place (ssh: a host name,
// console: "host:port", image: a file path) set Also and Other: a string that
// is not a whole number, names no node and satisfies Other is kept in Text
// with Node nil, for the module to interpret. A whole number is always an
// instance id, never a host or a path.
type InstanceRef struct {
	// Farm holds the node table the reference is resolved in.
	Farm *Farm
	// Also names what the argument may be besides an instance, for the
	// type error: "host" gives "want an instance id, alias, node or host".
	Also string
	// Other reports whether a string that names no node is something else
	// the module accepts (a host, an address, a path).
	Other func(ref string) bool
	// NoneOK accepts None, leaving Node nil and None set (for an argument
	// whose default the module decides, like image's instance 0).
	NoneOK bool

	// Node is the resolved node; nil for None or Other.
	Node *Node
	// Text is the reference as given ("2", "entwo", "host:2222"), trimmed.
	Text string
	// None reports that None was given (only with NoneOK).
	None bool
}

// Unpack implements starlark.Unpacker.
func (r *InstanceRef) Unpack(v starlark.Value) error {
	if r.Farm == nil {
		return fmt.Errorf("instance %s: no farm to resolve it in (InstanceRef.Farm is nil)", v)
	}
	r.Node, r.Text, r.None = nil, "", false
	ref, fromString, err := r.text(v)
	if err != nil || r.None {
		return err
	}
	r.Text = ref
	n, err := r.Farm.Resolve(ref)
	if err == nil {
		r.Node = n
		return nil
	}
	if _, nerr := strconv.Atoi(ref); fromString && nerr != nil && r.Other != nil && r.Other(ref) {
		return nil
	}
	return err
}

// text is the reference text of v and whether v was a string.
func (r *InstanceRef) text(v starlark.Value) (string, bool, error) {
	switch x := v.(type) {
	case starlark.NoneType:
		if r.NoneOK {
			r.None = true
			return "", false, nil
		}
	case starlark.String:
		return strings.TrimSpace(string(x)), true, nil
	case starlark.Int:
		return x.String(), false, nil
	case starlark.HasAttrs:
		id, err := x.Attr("id")
		if err != nil || id == nil {
			if v.Type() == "struct" {
				return "", false, fmt.Errorf("%s, got a struct without id", r.want())
			}
			break
		}
		switch id := id.(type) {
		case starlark.Int:
			return id.String(), false, nil
		case starlark.String:
			return strings.TrimSpace(string(id)), false, nil
		}
		return "", false, fmt.Errorf("%s, got a %s whose id is %s", r.want(), v.Type(), id.Type())
	}
	return "", false, fmt.Errorf("%s, got %s", r.want(), v.Type())
}

// want is the first half of the type error.
func (r *InstanceRef) want() string {
	if r.Also == "" {
		return "want an instance id, alias or node"
	}
	return "want an instance id, alias, node or " + r.Also
}
