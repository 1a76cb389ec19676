package host

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"pifarm/builtins/farm"
	"pifarm/builtins/startest"
)

// exec runs a Starlark snippet with the host module in the given mode and
// returns the trace output.
func exec(t *testing.T, dry bool, src string) (string, error) {
	t.Helper()
	fx := startest.New(t, startest.Options{Dry: dry, Farm: farm.New(farm.Default())})
	fx.Add(New(fx.Door, fx.Farm))
	_, err := fx.Exec("test.star", src)
	return fx.Output(), err
}

func TestDryRunPrintsAndChangesNothing(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "sub", "f.txt")
	out, err := exec(t, true, `
host.mkdir("`+filepath.Join(dir, "sub")+`")
host.write("`+f+`", "hello\n", mode = 0o600)
r = host.run(["touch", "`+filepath.Join(dir, "x")+`"], sudo = True)
if r.exit_code != 0: fail("dry run result")
q = host.query(["echo", "queried"])
if q.stdout != "queried\n": fail("query did not run: %r" % q.stdout)
`)
	if err != nil {
		t.Fatal(err)
	}
	want := "mkdir -p -m 755 " + filepath.Join(dir, "sub") + "\ncat > " + f + " <<'EOF'\nhello\nEOF\nchmod 600 " + f + "\nsudo touch " + filepath.Join(dir, "x") + "\n"
	if out != want {
		t.Fatalf("trace\n%s\nwant\n%s", out, want)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("dry run changed the folder: %v", ents)
	}
}

func TestLiveActionsAndErrors(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f.txt")
	_, err := exec(t, false, `
host.write("`+f+`", "one\n")
host.write("`+f+`", "two\n")
r = host.run(["cat", "`+f+`"])
if r.stdout != "two\n": fail("content %r" % r.stdout)
r = host.run(["sh", "-c", "exit 3"], check = False)
if r.exit_code != 3: fail("exit code %d" % r.exit_code)
host.remove("`+f+`")
host.remove("`+f+`")
`)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f + "~"); string(b) != "one\n" {
		t.Fatalf("backup %q", b)
	}
	if _, err := os.Stat(f); !os.IsNotExist(err) {
		t.Fatal("not removed")
	}
	for _, tc := range []struct{ src, want string }{
		{`host.run(["sh", "-c", "echo bad >&2; exit 2"])`, "bad"},
		{`host.run([])`, "empty argv"},
		{`host.remove("` + dir + `")`, "is a folder"},
		{`host.run(["/nonexistent/prog"])`, "/nonexistent/prog"},
	} {
		_, err := exec(t, false, tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.src, err, tc.want)
		}
	}
}

// TestDryRunLinesFollowTheFiles: mkdir of an existing folder and remove of
// a missing file print nothing (nothing would happen); remove of a file
// prints the rm -f that a live run does.
func TestDryRunLinesFollowTheFiles(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f.txt")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ src, want string }{
		{`host.mkdir("` + dir + `")`, ""},
		{`host.remove("` + filepath.Join(dir, "missing") + `")`, ""},
		{`host.remove("` + f + `")`, "rm -f " + f + "\n"},
		{`host.mkdir("` + filepath.Join(dir, "a b") + `", mode = 0o700)`, "mkdir -p -m 700 '" + filepath.Join(dir, "a b") + "'\n"},
	} {
		out, err := exec(t, true, tc.src)
		if err != nil || out != tc.want {
			t.Errorf("%s: trace %q, %v; want %q", tc.src, out, err, tc.want)
		}
	}
	if _, err := os.Stat(f); err != nil {
		t.Fatal("a dry run removed the file")
	}
}
