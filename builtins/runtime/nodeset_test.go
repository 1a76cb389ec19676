package runtime

import (
	"strings"
	"testing"
)

// TestInstancesTakeNodeSets: an argument declared with args.instances takes
// node sets; the nodes come in the order given, each once; a set naming an
// unknown node or tag is a usage error.
func TestInstancesTakeNodeSets(t *testing.T) {
	goldenEnv(t)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"run", "nodes", "3-4", "1,3"}, 0, "id  alias    lan            wan          ssh   console  vnc   lan mac\n3   enthree  192.168.66.9   100.65.6.15  5703  5803     5903  52:54:51:00:00:03\n4   enfour   192.168.66.11  100.65.9.15  5704  5804     5904  52:54:51:00:00:04\n1   enone    192.168.66.7   100.65.4.15  5701  5801     5901  52:54:51:00:00:01\n"},
		{[]string{"run", "nodes", "qemu"}, 0, "\n0   loner"},
		{[]string{"run", "nodes", "@rack1"}, 2, `no node is tagged "rack1"`},
		{[]string{"run", "nodes", "1,9"}, 2, `unknown instance "9"`},
		{[]string{"run", "nodes", "4-1"}, 2, "runs backwards"},
	} {
		o, e, code := pifarm(t, tc.args...)
		if code != tc.code || !strings.Contains(o+e, tc.want) {
			t.Errorf("%v: exit %d (want %d), output lacks %q:\n%s%s", tc.args, code, tc.code, tc.want, o, e)
		}
	}
}
