package runtime

import (
	"strings"
	"testing"

	"go.starlark.net/starlark"
)

// TestOptionDetailsWithLongHelp: an option's help is written once: its
// first line is the row of --help, the lines after it (the details) follow
// the row with -hv only.
func TestOptionDetailsWithLongHelp(t *testing.T) {
	s := &spec{recipe: "x", help: "General text.", opts: []*optSpec{
		{short: "r", long: "run", def: starlark.False, help: "start it\nafter checking the boot files;\nwaits for nothing."},
		{long: "plain", def: starlark.False, help: "no details"},
	}}
	short, long := s.usage(false), s.usage(true)
	for _, want := range []string{"  -r, --run                    start it\n", "      --plain                  no details\n"} {
		if !strings.Contains(short, want) || !strings.Contains(long, want) {
			t.Errorf("usage lacks %q:\n%s\n%s", want, short, long)
		}
	}
	details := "start it\n        after checking the boot files;\n        waits for nothing.\n      --plain"
	if strings.Contains(short, "after checking") || strings.Contains(short, "General text") {
		t.Errorf("--help shows the details or HELP:\n%s", short)
	}
	if !strings.Contains(long, details) || !strings.Contains(long, "General text.") {
		t.Errorf("-hv lacks the details %q:\n%s", details, long)
	}
}
