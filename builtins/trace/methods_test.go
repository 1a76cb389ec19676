package trace

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"go.starlark.net/starlark"
)

// counter is a value type with one field and three methods, registered
// the way modules register theirs.
type counter struct {
	n      int
	closed bool
}

var counterMethods = &Methods[*counter]{
	Type: "counter",
	Doc:  "A counter.\n\nMore about counters.",
	Recv: "c",
	Fields: []Field[*counter]{
		{Name: "n", Doc: "the count", Get: func(c *counter) starlark.Value { return starlark.MakeInt(c.n) }},
	},
	Methods: []Method[*counter]{
		{Name: "add", Args: "k=1", Doc: "Add k.\n\nReturns None.", Fn: func(c *counter, _ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			k := 1
			if err := starlark.UnpackArgs(b.Name(), args, kwargs, "k?", &k); err != nil {
				return nil, err
			}
			if k < 0 {
				return nil, fmt.Errorf("k %d is negative (count down with a new counter)", k)
			}
			c.n += k
			return nil, nil
		}},
		{Name: "get", Args: "", Doc: "The count.", Fn: func(c *counter, _ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			return starlark.MakeInt(c.n), nil
		}},
		{Name: "close", Args: "", Doc: "Stop counting.", Fn: func(c *counter, _ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			c.closed = true
			return nil, nil
		}},
	},
	Check: func(c *counter, method string) error {
		if c.closed && method != "close" {
			return errors.New("the counter is closed")
		}
		return nil
	},
}

func (c *counter) String() string        { return fmt.Sprintf("<counter %d>", c.n) }
func (c *counter) Type() string          { return "counter" }
func (c *counter) Freeze()               {}
func (c *counter) Truth() starlark.Bool  { return true }
func (c *counter) Hash() (uint32, error) { return 0, errors.New("unhashable: counter") }
func (c *counter) Attr(name string) (starlark.Value, error) {
	return counterMethods.Attr(c, name)
}
func (c *counter) AttrNames() []string { return counterMethods.AttrNames() }

func TestMethodsFromStarlark(t *testing.T) {
	c := &counter{}
	th := &starlark.Thread{Name: "test"}
	pre := starlark.StringDict{"c": c}
	for _, tc := range []struct{ src, wantErr string }{
		{"c.add()\nc.add(k = 2)\nif c.get() != 3 or c.n != 3: fail(c.n)", ""},
		{"m = c.add\nm(4)\nif c.n != 7: fail(c.n)", ""}, // a bound method keeps its receiver
		{"if dir(c) != ['add', 'close', 'get', 'n']: fail(dir(c))", ""},
		{"if type(c.add) != 'builtin_function_or_method': fail(type(c.add))", ""},
		{"c.nope", "counter has no .nope field or method"},
		{"c.add(-1)", "counter.add: k -1 is negative (count down with a new counter)"},
		{"c.add(k = 'x')", "got string, want int"},
		{"c.close()\nc.add()", "counter.add: the counter is closed"},
		{"c.close()", ""}, // close is allowed on a closed counter
	} {
		_, err := starlark.ExecFileOptions(FileOptions(), th, "t.star", tc.src, pre)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tc.src, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: err %v, want %q", tc.src, err, tc.wantErr)
		case err != nil && strings.Contains(err.Error(), "counter.add: counter.add"):
			t.Errorf("%s: the method is named twice: %v", tc.src, err)
		}
	}
	var be *BuiltinError
	_, err := starlark.Call(th, mustAttr(t, &counter{closed: true}, "get"), nil, nil)
	if !errors.As(err, &be) || be.Op != "counter.get" {
		t.Fatalf("a method error is not a BuiltinError naming the method: %#v", err)
	}
	if v, err := starlark.Call(th, mustAttr(t, &counter{}, "close"), nil, nil); err != nil || v != starlark.None {
		t.Fatalf("a method returning nil gives %v %v, want None", v, err)
	}
}

func mustAttr(t *testing.T, c *counter, name string) starlark.Value {
	t.Helper()
	v, err := c.Attr(name)
	if err != nil || v == nil {
		t.Fatalf("Attr(%s) = %v %v", name, v, err)
	}
	return v
}

func TestMethodsReference(t *testing.T) {
	var doc TypeDoc = counterMethods
	want := `counter — A counter.

More about counters.

  c.n  the count

c.add(k=1)
    Add k.

    Returns None.

c.get()
    The count.

c.close()
    Stop counting.
`
	if doc.TypeName() != "counter" || doc.Reference() != want {
		t.Fatalf("reference of %s:\n%s\nwant\n%s", doc.TypeName(), doc.Reference(), want)
	}
}

func TestMethodsValidate(t *testing.T) {
	get := func(*counter) starlark.Value { return starlark.None }
	fn := counterMethods.Methods[0].Fn
	for _, tc := range []struct {
		m    *Methods[*counter]
		want string
	}{
		{counterMethods, ""},
		{&Methods[*counter]{}, "methods: empty Type"},
		{&Methods[*counter]{Type: "x", Fields: []Field[*counter]{{Name: "a", Get: get}}, Methods: []Method[*counter]{{Name: "a", Fn: fn}}}, "x.a: registered twice"},
		{&Methods[*counter]{Type: "x", Methods: []Method[*counter]{{Name: "m"}}}, "x.m: method without an implementation"},
		{&Methods[*counter]{Type: "x", Fields: []Field[*counter]{{Get: get}}}, "x: a field without a name"},
	} {
		err := tc.m.Validate()
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%s): %v, want %q", tc.m.Type, err, tc.want)
		}
	}
	if got := counterMethods.AttrNames(); !reflect.DeepEqual(got, []string{"add", "close", "get", "n"}) {
		t.Errorf("AttrNames = %v", got)
	}
}
