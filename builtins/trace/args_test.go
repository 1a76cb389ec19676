package trace

import (
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.starlark.net/starlark"
)

// unpack passes v through starlark.UnpackArgs as parameter "p" of builtin
// "f", as a module's function does, so the errors are the ones users see.
func unpack(v starlark.Value, into starlark.Unpacker) error {
	return starlark.UnpackArgs("f", starlark.Tuple{v}, nil, "p", into)
}

func TestSeconds(t *testing.T) {
	big := starlark.MakeInt64(math.MaxInt64)
	for _, tc := range []struct {
		in      starlark.Value
		want    time.Duration
		set     bool
		wantErr string
	}{
		{starlark.MakeInt(30), 30 * time.Second, true, ""},
		{starlark.Float(0.25), 250 * time.Millisecond, true, ""},
		{starlark.Float(1e-9), time.Nanosecond, true, ""},
		{starlark.None, 7 * time.Second, false, ""}, // the default stays
		{starlark.MakeInt(0), 0, false, "f: for parameter p: want a positive number of seconds, got 0"},
		{starlark.MakeInt(-1), 0, false, "want a positive number of seconds, got -1"},
		{starlark.Float(-0.5), 0, false, "want a positive number of seconds, got -0.5"},
		{starlark.Float(0), 0, false, "want a positive number of seconds, got 0.0"},
		{starlark.Float(math.NaN()), 0, false, "want a positive number of seconds, got nan"},
		{starlark.Float(math.Inf(1)), 0, false, "got +inf (too large)"},
		{starlark.Float(1e-12), 0, false, "(less than a nanosecond)"},
		{big, 0, false, "got 9223372036854775807 (too large)"},
		{starlark.MakeInt(1).Lsh(70), 0, false, "(too large)"},
		{starlark.String("10"), 0, false, "want a positive number of seconds (int or float), got string"},
		{starlark.True, 0, false, "got bool"},
	} {
		s := Seconds{D: 7 * time.Second}
		err := unpack(tc.in, &s)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Seconds(%s): err %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || s.D != tc.want || s.Set != tc.set {
			t.Errorf("Seconds(%s) = %v set=%v err=%v, want %v set=%v", tc.in, s.D, s.Set, err, tc.want, tc.set)
		}
	}
}

func TestStringList(t *testing.T) {
	list := func(vs ...starlark.Value) *starlark.List { return starlark.NewList(vs) }
	s := func(x string) starlark.Value { return starlark.String(x) }
	for _, tc := range []struct {
		in      starlark.Value
		one     bool
		want    []string
		set     bool
		wantErr string
	}{
		{list(s("a"), s("b c")), false, []string{"a", "b c"}, true, ""},
		{starlark.Tuple{s("x")}, false, []string{"x"}, true, ""},
		{list(), false, []string{}, true, ""},
		{starlark.None, false, []string{"default"}, false, ""},
		{s("solo"), true, []string{"solo"}, true, ""},
		{s("solo"), false, nil, false, `f: for parameter p: want a list of strings, got a string (write ["solo"] for a list of one)`},
		{list(s("a"), starlark.MakeInt(2)), false, nil, false, "f: for parameter p: element 1 is int, want a string"},
		{list(starlark.Bytes("b")), false, nil, false, "element 0 is bytes, want a string"},
		{starlark.MakeInt(1), false, nil, false, "want a list of strings, got int"},
		{starlark.MakeInt(1), true, nil, false, "want a string or a list of strings, got int"},
		{starlark.NewDict(0), false, nil, false, "got dict"},
	} {
		l := StringList{OneString: tc.one, Strings: []string{"default"}}
		err := unpack(tc.in, &l)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("StringList(%s): err %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(l.Strings, tc.want) || l.Set != tc.set {
			t.Errorf("StringList(%s) = %q set=%v err=%v, want %q set=%v", tc.in, l.Strings, l.Set, err, tc.want, tc.set)
		}
	}
}

func TestOptString(t *testing.T) {
	for _, tc := range []struct {
		in      starlark.Value
		want    string
		set     bool
		wantErr string
	}{
		{starlark.String("pi"), "pi", true, ""},
		{starlark.String(""), "", true, ""},
		{starlark.None, "def", false, ""},
		{starlark.MakeInt(3), "", false, "f: for parameter p: want a string or None, got int"},
		{starlark.Bytes("x"), "", false, "want a string or None, got bytes"},
	} {
		o := OptString{S: "def"}
		err := unpack(tc.in, &o)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("OptString(%s): err %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || o.S != tc.want || o.Set != tc.set {
			t.Errorf("OptString(%s) = %q set=%v err=%v, want %q set=%v", tc.in, o.S, o.Set, err, tc.want, tc.set)
		}
	}
}

// An optional parameter left out never reaches Unpack: the default stays.
func TestArgsDefaultsWhenOmitted(t *testing.T) {
	s := Seconds{D: time.Minute}
	l := StringList{Strings: []string{"x"}}
	o := OptString{S: "root"}
	if err := starlark.UnpackArgs("f", nil, nil, "timeout?", &s, "list?", &l, "user?", &o); err != nil {
		t.Fatal(err)
	}
	if s.D != time.Minute || s.Set || l.Set || l.Strings[0] != "x" || o.Set || o.S != "root" {
		t.Fatalf("defaults changed: %+v %+v %+v", s, l, o)
	}
}

func TestStrings(t *testing.T) {
	if got := Strings([]string{"a", "b c"}).String(); got != `["a", "b c"]` {
		t.Fatalf("Strings = %s", got)
	}
	if got := Strings(nil).Len(); got != 0 {
		t.Fatalf("Strings(nil) has %d elements", got)
	}
}

func FuzzSeconds(f *testing.F) {
	for _, x := range []float64{1, 0, -1, 0.5, 1e-10, 1e300, math.NaN()} {
		f.Add(x)
	}
	f.Fuzz(func(t *testing.T, x float64) {
		s := Seconds{D: time.Second}
		err := s.Unpack(starlark.Float(x))
		if err == nil && (s.D <= 0 || !s.Set) {
			t.Fatalf("Seconds(%v) accepted as %v", x, s.D)
		}
		if err != nil && (s.D != time.Second || s.Set) {
			t.Fatalf("Seconds(%v) failed but changed the value: %v", x, s.D)
		}
	})
}

// usageArg is an Unpacker that fails with a usage error for "bad".
type usageArg struct{ s string }

func (u *usageArg) Unpack(v starlark.Value) error {
	if v == starlark.String("bad") {
		return Usagef("unknown thing %q", "bad")
	}
	u.s = v.String()
	return nil
}

// TestUnpackArgsKeepsUsageErrors: an Unpacker's usage error stays one
// through the parameter wrapping; other errors stay ordinary.
func TestUnpackArgsKeepsUsageErrors(t *testing.T) {
	bad, good := starlark.String("bad"), starlark.String("ok")
	for _, tc := range []struct {
		name       string
		unpack     func(a *usageArg, s *Seconds) error
		wantErr    string
		wantUsage  bool
		wantResult string
	}{
		{"pairs usage", func(a *usageArg, s *Seconds) error {
			return UnpackArgs("m.f", starlark.Tuple{bad}, nil, "thing", a, "timeout?", s)
		}, `m.f: for parameter thing: unknown thing "bad"`, true, ""},
		{"pairs other error", func(a *usageArg, s *Seconds) error {
			return UnpackArgs("m.f", starlark.Tuple{good, starlark.MakeInt(-1)}, nil, "thing", a, "timeout?", s)
		}, "m.f: for parameter timeout: want a positive number of seconds, got -1", false, ""},
		{"pairs missing argument", func(a *usageArg, s *Seconds) error {
			return UnpackArgs("m.f", nil, nil, "thing", a)
		}, "m.f: missing argument for thing", false, ""},
		{"pairs ok", func(a *usageArg, s *Seconds) error {
			return UnpackArgs("m.f", nil, []starlark.Tuple{{starlark.String("thing"), good}}, "thing", a, "timeout?", s)
		}, "", false, `"ok"`},
		{"positional usage", func(a *usageArg, s *Seconds) error {
			return UnpackPositionalArgs("m.g", starlark.Tuple{bad}, nil, 1, a, s)
		}, `m.g: for parameter 1: unknown thing "bad"`, true, ""},
		{"positional ok", func(a *usageArg, s *Seconds) error {
			return UnpackPositionalArgs("m.g", starlark.Tuple{good, starlark.MakeInt(3)}, nil, 1, a, s)
		}, "", false, `"ok"`},
	} {
		var a usageArg
		s := Seconds{D: time.Second}
		err := tc.unpack(&a, &s)
		if tc.wantErr == "" {
			if err != nil || a.s != tc.wantResult {
				t.Errorf("%s: %v, got %q", tc.name, err, a.s)
			}
			continue
		}
		if err == nil || err.Error() != tc.wantErr || IsUsage(err) != tc.wantUsage {
			t.Errorf("%s: err %v (usage %v), want %q (usage %v)", tc.name, err, IsUsage(err), tc.wantErr, tc.wantUsage)
		}
	}
}
