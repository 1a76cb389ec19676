package trace

import "go.starlark.net/starlark"

// Ints is the Starlark list of ns: the way back from Go for results that
// recipes read as a list of ints (instance ids, partition numbers), as
// Strings is for strings.
func Ints(ns []int) *starlark.List {
	l := make([]starlark.Value, len(ns))
	for i, n := range ns {
		l[i] = starlark.MakeInt(n)
	}
	return starlark.NewList(l)
}
