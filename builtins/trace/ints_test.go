package trace

import "testing"

func TestInts(t *testing.T) {
	for _, tc := range []struct {
		in   []int
		want string
	}{
		{nil, "[]"},
		{[]int{}, "[]"},
		{[]int{3, 0, -1}, "[3, 0, -1]"},
	} {
		if got := Ints(tc.in).String(); got != tc.want {
			t.Errorf("Ints(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
