package trace

import (
	"reflect"
	"strings"
	"testing"

	"go.starlark.net/starlark"
)

func TestFileOptionsIsTheRecipeDialect(t *testing.T) {
	a, b := FileOptions(), FileOptions()
	if a == b {
		t.Fatal("FileOptions shares one value between callers")
	}
	src := `
s = set([1])
def f(n):
    return 1 if n == 0 else n * f(n - 1)
x = 0
while x < 3:
    x += 1
for i in []:
    pass
x = f(4)
`
	if _, err := starlark.ExecFileOptions(a, &starlark.Thread{}, "t.star", src, nil); err != nil {
		t.Fatal(err)
	}
}

func TestIndexAndNames(t *testing.T) {
	mods := []*Module{
		{Name: "farm", Doc: "The node table.\n\nMore."},
		{Name: "console", Doc: "  Serial consoles.  "},
		{Name: "ssh", Doc: ""},
	}
	want := "  farm     The node table.\n  console  Serial consoles.\n  ssh      \n"
	if got := Index(mods); got != want {
		t.Fatalf("Index:\n%q\nwant\n%q", got, want)
	}
	if got := Names(mods); !reflect.DeepEqual(got, []string{"farm", "console", "ssh"}) {
		t.Fatalf("Names = %v", got)
	}
	if Index(nil) != "" {
		t.Fatal("Index of no modules is not empty")
	}
}

func TestReplaceSection(t *testing.T) {
	begin, end := SectionMarkers("modules")
	doc := "# pifarm\n\n" + begin + "\nold line\n" + end + "\n\ntail\n"
	for _, tc := range []struct {
		text, body, want, wantErr string
	}{
		{doc, "  a  x\n", "# pifarm\n\n" + begin + "\n  a  x\n" + end + "\n\ntail\n", ""},
		{doc, "no newline", "# pifarm\n\n" + begin + "\nno newline\n" + end + "\n\ntail\n", ""},
		{doc, "", "# pifarm\n\n" + begin + "\n" + end + "\n\ntail\n", ""},
		{begin + "\n" + end + "\n", "x\n", begin + "\nx\n" + end + "\n", ""},
		{"no markers\n", "x", "", `section "modules": want exactly one line "<!-- modules: generated, do not edit -->"`},
		{end + "\n" + begin + "\n", "x", "", "followed later by one line"},
		{doc + doc, "x", "", "want exactly one"},
	} {
		got, err := ReplaceSection(tc.text, "modules", tc.body)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ReplaceSection(%q): err %v, want %q", tc.text, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ReplaceSection(%q, %q) = %q (%v), want %q", tc.text, tc.body, got, err, tc.want)
		}
		if again, _ := ReplaceSection(got, "modules", tc.body); again != got {
			t.Errorf("ReplaceSection is not idempotent: %q", again)
		}
	}
}
