package trace

import (
	"fmt"
	"sort"
	"strings"

	"go.starlark.net/starlark"
)

// Methods is the one registration of the fields and methods of a Starlark
// value type (an ssh connection, a console session, a guest tree), the
// counterpart of Module for functions: a table instead of a hand-kept Attr
// switch and name list, with the documentation `pifarm doc` shows (as
// starlark-go's lib/time keeps a method map for Duration and Time).
//
// The value type forwards to it:
//
//	var connMethods = &trace.Methods[*connValue]{Type: "ssh_connection", ...}
//
//	func (v *connValue) Attr(name string) (starlark.Value, error) { return connMethods.Attr(v, name) }
//	func (v *connValue) AttrNames() []string                      { return connMethods.AttrNames() }
//
// A method's builtin is named TYPE.NAME; its errors are prefixed with that
// name once (as Module does for functions) and wrap as BuiltinError.
type Methods[T starlark.Value] struct {
	// Type is the value's Starlark type name, as its Type() returns it.
	Type string
	// Doc says what a value of the type is (first line: a summary).
	Doc string
	// Recv names a value in the documentation: "c" shows "c.run(cmd)".
	// Empty means "v".
	Recv string
	// Fields are read-only attributes.
	Fields []Field[T]
	// Methods are the callable attributes.
	Methods []Method[T]
	// Check, when set, runs before every method call (not field reads); an
	// error stops the call. For example: a closed session refuses all but
	// close().
	Check func(recv T, method string) error
}

// Field is a read-only attribute of a value of type T.
type Field[T starlark.Value] struct {
	Name string
	// Doc is one line: what the field holds.
	Doc string
	Get func(recv T) starlark.Value
}

// Method is a method of a value of type T: its name, its parameters as
// written in a call, its documentation and its implementation, which gets
// the receiver typed.
type Method[T starlark.Value] struct {
	Name string
	// Args is the parameter list as written in a call, e.g. "cmd, check=True".
	Args string
	// Doc is the first line (a summary) and optional further paragraphs.
	Doc string
	Fn  func(recv T, thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error)
}

// Attr returns the field name of recv, or its method name bound to recv,
// or nil, nil when the type has no such attribute (Starlark then reports
// the missing attribute).
func (m *Methods[T]) Attr(recv T, name string) (starlark.Value, error) {
	for _, f := range m.Fields {
		if f.Name == name {
			return f.Get(recv), nil
		}
	}
	for _, meth := range m.Methods {
		if meth.Name != name {
			continue
		}
		full := m.Type + "." + name
		fn := meth.Fn
		return starlark.NewBuiltin(full, func(th *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			if m.Check != nil {
				if err := m.Check(recv, name); err != nil {
					return nil, wrapBuiltinErr(full, err)
				}
			}
			v, err := fn(recv, th, b, args, kwargs)
			if err != nil {
				return nil, wrapBuiltinErr(full, err)
			}
			if v == nil {
				v = starlark.None
			}
			return v, nil
		}).BindReceiver(recv), nil
	}
	return nil, nil
}

// wrapBuiltinErr names the builtin full in err once, as Module does (named).
func wrapBuiltinErr(full string, err error) error { return named(full, err) }

// AttrNames lists the fields and methods, sorted.
func (m *Methods[T]) AttrNames() []string {
	names := make([]string, 0, len(m.Fields)+len(m.Methods))
	for _, f := range m.Fields {
		names = append(names, f.Name)
	}
	for _, meth := range m.Methods {
		names = append(names, meth.Name)
	}
	sort.Strings(names)
	return names
}

// Validate reports registration mistakes: an empty or repeated name, a field
// without Get, a method without Fn. Call it from the module's tests.
func (m *Methods[T]) Validate() error {
	if m.Type == "" {
		return fmt.Errorf("methods: empty Type (set it to the value's Type())")
	}
	seen := map[string]bool{}
	add := func(kind, name string, missing bool) error {
		switch {
		case name == "":
			return fmt.Errorf("%s: a %s without a name", m.Type, kind)
		case seen[name]:
			return fmt.Errorf("%s.%s: registered twice (fields and methods share one name space)", m.Type, name)
		case missing:
			return fmt.Errorf("%s.%s: %s without an implementation", m.Type, name, kind)
		}
		seen[name] = true
		return nil
	}
	for _, f := range m.Fields {
		if err := add("field", f.Name, f.Get == nil); err != nil {
			return err
		}
	}
	for _, meth := range m.Methods {
		if err := add("method", meth.Name, meth.Fn == nil); err != nil {
			return err
		}
	}
	return nil
}

// TypeDoc is what `pifarm doc` needs of a value type: every Methods is one,
// whatever its receiver type, so a module can list its value types.
type TypeDoc interface {
	// TypeName is the Starlark type name.
	TypeName() string
	// Reference is the type's documentation.
	Reference() string
}

// TypeName implements TypeDoc.
func (m *Methods[T]) TypeName() string { return m.Type }

// Reference renders the type's documentation for `pifarm doc`: the type's
// doc, its fields, then each method with its parameters and doc, in table
// order, a value named Recv ("c.run(cmd, ...)").
func (m *Methods[T]) Reference() string {
	recv := m.Recv
	if recv == "" {
		recv = "v"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s — %s\n", m.Type, strings.TrimSpace(m.Doc))
	if len(m.Fields) > 0 {
		b.WriteString("\n")
	}
	w := 0
	for _, f := range m.Fields {
		w = max(w, len(recv)+1+len(f.Name))
	}
	for _, f := range m.Fields {
		fmt.Fprintf(&b, "  %-*s  %s\n", w, recv+"."+f.Name, strings.TrimSpace(f.Doc))
	}
	for _, meth := range m.Methods {
		fmt.Fprintf(&b, "\n%s.%s(%s)\n", recv, meth.Name, meth.Args)
		writeIndented(&b, meth.Doc)
	}
	return b.String()
}

// writeIndented writes doc indented by four spaces, blank lines kept blank.
func writeIndented(b *strings.Builder, doc string) {
	for _, line := range strings.Split(strings.TrimSpace(doc), "\n") {
		if line == "" {
			b.WriteString("\n")
			continue
		}
		b.WriteString("    " + line + "\n")
	}
}
