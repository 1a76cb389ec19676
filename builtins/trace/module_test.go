package trace

import (
	"errors"
	"strings"
	"testing"

	"go.starlark.net/starlark"
)

// TestBuiltinErrorsNamedOnce: a builtin's error is prefixed with its name
// once, whether it was a plain error, a BuiltinError of the builtin
// (wrapped further or not), starlark's argument error, or a usage error.
func TestBuiltinErrorsNamedOnce(t *testing.T) {
	var fail error
	m := &Module{Name: "m", Funcs: []Func{
		{Name: "f", Args: "x", Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			var x string
			if err := starlark.UnpackArgs(b.Name(), args, kwargs, "x", &x); err != nil {
				return nil, err
			}
			return nil, fail
		}},
	}}
	f := m.Struct().Members["f"]
	call := func(args ...starlark.Value) error {
		_, err := starlark.Call(&starlark.Thread{}, f, args, nil)
		return err
	}
	for _, tc := range []struct {
		fail  error
		args  []starlark.Value
		want  string
		usage bool
	}{
		{errors.New("boom"), []starlark.Value{starlark.String("a")}, "m.f: boom", false},
		{&BuiltinError{Op: "m.f", Err: errors.New("boom")}, []starlark.Value{starlark.String("a")}, "m.f: boom", false},
		{&BuiltinError{Op: "other.g", Err: errors.New("boom")}, []starlark.Value{starlark.String("a")}, "m.f: other.g: boom", false},
		{Usagef("unknown instance %q", "x"), []starlark.Value{starlark.String("a")}, `m.f: unknown instance "x"`, true},
		{nil, nil, "m.f: missing argument for x", false},
	} {
		fail = tc.fail
		err := call(tc.args...)
		if err == nil || err.Error() != tc.want || IsUsage(err) != tc.usage {
			t.Errorf("%v: %v (usage %v), want %q (usage %v)", tc.fail, err, IsUsage(err), tc.want, tc.usage)
		}
		var be *BuiltinError
		if tc.fail != nil && (!errors.As(err, &be) || !strings.HasPrefix(be.Op, "m.f")) {
			t.Errorf("%v: not a BuiltinError of m.f: %#v", tc.fail, err)
		}
	}
}
