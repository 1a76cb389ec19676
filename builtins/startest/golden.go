package startest

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"pifarm/builtins/trace"
)

// UpdateFlag is the name of the one flag that rewrites golden files:
// go test ./builtins/PKG -run TEST -update.
const UpdateFlag = "update"

// The flag is registered once, when a test binary links this package, so
// every package's tests share it. A package that imports startest must not
// define its own -update flag (the flag package panics on a second one):
// its tests call Updating() or Golden instead.
func init() {
	if flag.Lookup(UpdateFlag) == nil {
		flag.Bool(UpdateFlag, false, "rewrite the golden files (startest.Golden) instead of comparing with them")
	}
}

// Updating reports whether the test binary runs with -update.
func Updating() bool {
	f := flag.Lookup(UpdateFlag)
	return f != nil && f.Value.String() == "true"
}

// Golden compares got with the golden file path (relative to the package
// folder). With -update it writes got there instead (atomically, creating
// the folder) and reports a match. A difference fails the test, quoting
// both and naming the first differing line; it returns whether they match.
func Golden(t testing.TB, path, got string) bool {
	t.Helper()
	if Updating() {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatalf("golden %s: %v", path, err)
		}
		if err := trace.WriteAtomic(path, []byte(got), 0o644, false); err != nil {
			t.Fatalf("golden %s: %v", path, err)
		}
		return true
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("golden %s: %v (run the test with -update to create it)", path, err)
		return false
	}
	if string(want) == got {
		return true
	}
	t.Errorf("%s differs at line %d (if the change is meant, rerun with -update and review the diff)\n--- got\n%s--- want\n%s",
		path, firstDiff(got, string(want)), got, want)
	return false
}

// firstDiff is the number of the first line where a and b differ.
func firstDiff(a, b string) int {
	al, bl := strings.SplitAfter(a, "\n"), strings.SplitAfter(b, "\n")
	for i := range min(len(al), len(bl)) {
		if al[i] != bl[i] {
			return i + 1
		}
	}
	return min(len(al), len(bl)) + 1
}

// Transcript is the golden form of one pifarm command: its standard output,
// then "--- stderr" and the standard error when there is any, then
// "--- exit N".
func Transcript(stdout, stderr string, code int) string {
	s := stdout
	if stderr != "" {
		s += "--- stderr\n" + stderr
	}
	return s + fmt.Sprintf("--- exit %d\n", code)
}

// GoldenSection checks the generated section name of the text file path
// (the README's module list) against body: the file with the section
// replaced (trace.ReplaceSection) must equal the file. With -update the
// file is rewritten with the new section, the rest kept byte for byte.
// Missing markers fail the test, naming the lines to add.
func GoldenSection(t testing.TB, path, name, body string) bool {
	t.Helper()
	old, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("generated section %q of %s: %v", name, path, err)
		return false
	}
	want, err := trace.ReplaceSection(string(old), name, body)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return false
	}
	return Golden(t, path, want)
}
