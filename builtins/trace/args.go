package trace

import (
	"fmt"
	"math"
	"time"

	"go.starlark.net/starlark"
)

// The argument types below are starlark.Unpacker implementations: a builtin
// declares a variable of the type (with its default already in it) and hands
// its address to UnpackArgs, which names the parameter in every error
// ("qemu.wait_ssh: for parameter timeout: want a positive number of
// seconds, got -1"). None always means "not given": the default stays and
// Set stays false, so an optional argument can be passed through from a
// caller that has no value for it.

// UnpackArgs is starlark.UnpackArgs keeping usage errors: when an Unpacker
// among pairs fails with a UsageError (farm.InstanceRef's unknown instance),
// the error is a UsageError too (exit status 2). starlark.UnpackArgs formats
// an Unpacker's error as text, which would make it an ordinary failure.
func UnpackArgs(fnname string, args starlark.Tuple, kwargs []starlark.Tuple, pairs ...any) error {
	var first error
	err := starlark.UnpackArgs(fnname, args, kwargs, recordUnpackers(pairs, 1, 2, &first)...)
	return keepUsage(err, first)
}

// UnpackPositionalArgs is starlark.UnpackPositionalArgs keeping usage
// errors, as UnpackArgs does.
func UnpackPositionalArgs(fnname string, args starlark.Tuple, kwargs []starlark.Tuple, min int, vars ...any) error {
	var first error
	err := starlark.UnpackPositionalArgs(fnname, args, kwargs, min, recordUnpackers(vars, 0, 1, &first)...)
	return keepUsage(err, first)
}

// recordUnpackers returns a copy of vars in which every Unpacker at index
// start, start+step, ... is wrapped to record its first error in first
// (pairs: the values at 1, 3, 5; positional variables: all).
func recordUnpackers(vars []any, start, step int, first *error) []any {
	out := append([]any(nil), vars...)
	for i := start; i < len(out); i += step {
		if u, ok := out[i].(starlark.Unpacker); ok {
			out[i] = &recorder{u: u, first: first}
		}
	}
	return out
}

// recorder is an Unpacker that notes the first error of the one it wraps.
type recorder struct {
	u     starlark.Unpacker
	first *error
}

func (r *recorder) Unpack(v starlark.Value) error {
	err := r.u.Unpack(v)
	if err != nil && *r.first == nil {
		*r.first = err
	}
	return err
}

// keepUsage makes err a UsageError when the first Unpacker error was one.
func keepUsage(err, first error) error {
	if err != nil && IsUsage(first) {
		return &UsageError{Msg: err.Error()}
	}
	return err
}

// Seconds is a duration argument given in seconds, an int or a float.
//
// The one rule for every timeout in pifarm: the number must be positive.
// Zero and negative numbers are refused, because none of them has one
// obvious meaning (a zero deadline is "no limit" for net.Dialer but "at
// once" for a timer, and a negative one silently became either). A function
// that wants "no limit" documents None as its default and leaves D at 0 for
// None. Values that do not fit a time.Duration (about 292 years), NaN and
// infinities are refused too.
type Seconds struct {
	// D is the duration: the default before Unpack, the given value after.
	D time.Duration
	// Set reports that a number (not None) was given.
	Set bool
}

// Unpack implements starlark.Unpacker.
func (s *Seconds) Unpack(v starlark.Value) error {
	var secs float64
	switch x := v.(type) {
	case starlark.NoneType:
		return nil
	case starlark.Int:
		n, ok := x.Int64()
		if !ok || n > math.MaxInt64/int64(time.Second) {
			return fmt.Errorf("want a positive number of seconds, got %s (too large)", x)
		}
		if n <= 0 {
			return fmt.Errorf("want a positive number of seconds, got %s", x)
		}
		s.D, s.Set = time.Duration(n)*time.Second, true
		return nil
	case starlark.Float:
		secs = float64(x)
	default:
		return fmt.Errorf("want a positive number of seconds (int or float), got %s", v.Type())
	}
	switch {
	case math.IsNaN(secs) || secs <= 0:
		return fmt.Errorf("want a positive number of seconds, got %s", v)
	case secs*float64(time.Second) >= math.MaxInt64:
		return fmt.Errorf("want a positive number of seconds, got %s (too large)", v)
	}
	d := time.Duration(secs * float64(time.Second))
	if d <= 0 {
		return fmt.Errorf("want a positive number of seconds, got %s (less than a nanosecond)", v)
	}
	s.D, s.Set = d, true
	return nil
}

// StringList is a list or tuple of strings. With OneString a lone string is
// accepted too, as a list of one.
type StringList struct {
	// OneString accepts a single string as a list of one (set it before
	// unpacking).
	OneString bool
	// Strings holds the elements (the default before Unpack).
	Strings []string
	// Set reports that a list, tuple or string (not None) was given.
	Set bool
}

// Unpack implements starlark.Unpacker.
func (l *StringList) Unpack(v starlark.Value) error {
	var seq starlark.Indexable
	switch x := v.(type) {
	case starlark.NoneType:
		return nil
	case starlark.String:
		if !l.OneString {
			return fmt.Errorf("want a list of strings, got a string (write [%s] for a list of one)", x)
		}
		l.Strings, l.Set = []string{string(x)}, true
		return nil
	case *starlark.List:
		seq = x
	case starlark.Tuple:
		seq = x
	default:
		if l.OneString {
			return fmt.Errorf("want a string or a list of strings, got %s", v.Type())
		}
		return fmt.Errorf("want a list of strings, got %s", v.Type())
	}
	out := make([]string, seq.Len())
	for i := range out {
		e := seq.Index(i)
		s, ok := e.(starlark.String)
		if !ok {
			return fmt.Errorf("element %d is %s, want a string", i, e.Type())
		}
		out[i] = string(s)
	}
	l.Strings, l.Set = out, true
	return nil
}

// OptString is an optional string: None or a string.
type OptString struct {
	// S is the string: the default before Unpack, the given one after.
	S string
	// Set reports that a string (not None) was given.
	Set bool
}

// Unpack implements starlark.Unpacker.
func (o *OptString) Unpack(v starlark.Value) error {
	switch x := v.(type) {
	case starlark.NoneType:
		return nil
	case starlark.String:
		o.S, o.Set = string(x), true
		return nil
	}
	return fmt.Errorf("want a string or None, got %s", v.Type())
}

// Strings is the Starlark list of ss: the way back from Go for results
// (warnings, names, argv) that recipes read as a list of strings.
func Strings(ss []string) *starlark.List {
	l := make([]starlark.Value, len(ss))
	for i, s := range ss {
		l[i] = starlark.String(s)
	}
	return starlark.NewList(l)
}
