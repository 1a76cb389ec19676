package trace

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
)

// Func is one builtin of a module: its Starlark name, its signature as shown
// by `pifarm doc`, its documentation and its implementation.
type Func struct {
	Name string
	// Args is the parameter list as written in a call, e.g. "n, linked=False".
	Args string
	// Doc is the first line (a summary) and optional further paragraphs.
	Doc string
	Fn  func(thread *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error)
}

// Module is a named set of builtins and values. It is the one registration
// used both by the runtime (Struct) and by the reference (`pifarm doc`).
type Module struct {
	Name  string
	Doc   string
	Funcs []Func
	// Values are constants or sub-structs exposed next to the functions.
	Values map[string]starlark.Value
	// End, when set, is called once when the run ends, however it ends
	// (success, error, Ctrl-C): it undoes what the module still holds (a
	// console left logged in). The door's context may be cancelled by then:
	// End bounds its waits itself and acts through Door.Finally.
	End func()
}

// Struct builds the Starlark module. Each builtin checks for cancellation
// before it runs and names itself (module.function) in its errors.
func (m *Module) Struct() *starlarkstruct.Module {
	members := starlark.StringDict{}
	for k, v := range m.Values {
		members[k] = v
	}
	for _, f := range m.Funcs {
		f := f
		full := m.Name + "." + f.Name
		members[f.Name] = starlark.NewBuiltin(full, func(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			if c, ok := thread.Local(ContextKey).(interface{ Err() error }); ok && c.Err() != nil {
				return nil, fmt.Errorf("%s: interrupted: %w", full, c.Err())
			}
			v, err := f.Fn(thread, b, args, kwargs)
			if err != nil {
				return nil, named(full, err)
			}
			if v == nil {
				v = starlark.None
			}
			return v, nil
		})
	}
	return &starlarkstruct.Module{Name: m.Name, Members: members}
}

// ContextKey is the thread-local key under which the runtime stores the run's
// context.Context.
const ContextKey = "pifarm.context"

// BuiltinError is an error returned by a builtin, naming it.
type BuiltinError struct {
	Op  string
	Err error
}

func (e *BuiltinError) Error() string { return e.Op + ": " + e.Err.Error() }
func (e *BuiltinError) Unwrap() error { return e.Err }

// named names the builtin full (module.function, TYPE.method) in err once,
// as a BuiltinError. An error that names it already is returned as it is:
// a BuiltinError of full (found with errors.As), and an argument error of
// starlark.UnpackArgs called with the builtin's name, which starlark-go
// makes with fmt.Errorf, worded "full: ..." (no type to find it by).
func named(full string, err error) error {
	var be *BuiltinError
	if errors.As(err, &be) && be.Op == full {
		return err
	}
	if s := err.Error(); strings.HasPrefix(s, full+":") || strings.HasPrefix(s, full+" ") {
		return err
	}
	return &BuiltinError{Op: full, Err: err}
}

// UsageError is a mistake in how pifarm was called (unknown instance, bad
// option): the command exits with status 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// IsUsage reports whether err is, or wraps, a UsageError.
func IsUsage(err error) bool {
	var u *UsageError
	return errors.As(err, &u)
}

// Summary is the first line of a doc text.
func Summary(doc string) string {
	doc = strings.TrimSpace(doc)
	if i := strings.IndexByte(doc, '\n'); i >= 0 {
		return doc[:i]
	}
	return doc
}

// Reference renders the documentation of a module, or of one of its functions
// when fn is not empty. It reports false when fn is unknown.
func (m *Module) Reference(fn string) (string, bool) {
	var b strings.Builder
	if fn == "" {
		fmt.Fprintf(&b, "%s — %s\n", m.Name, strings.TrimSpace(m.Doc))
		names := make([]string, 0, len(m.Values))
		for k := range m.Values {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			fmt.Fprintf(&b, "\n  %s.%s  (value)", m.Name, k)
		}
		if len(names) > 0 {
			b.WriteString("\n")
		}
	}
	found := false
	for _, f := range m.Funcs {
		if fn != "" && f.Name != fn {
			continue
		}
		found = true
		fmt.Fprintf(&b, "\n%s.%s(%s)\n", m.Name, f.Name, f.Args)
		for _, line := range strings.Split(strings.TrimSpace(f.Doc), "\n") {
			if line == "" {
				b.WriteString("\n")
				continue
			}
			b.WriteString("    " + line + "\n")
		}
	}
	return b.String(), fn == "" || found
}
