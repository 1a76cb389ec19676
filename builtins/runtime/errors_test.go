package runtime

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.starlark.net/starlark"
	"pifarm/builtins/startest"
	"pifarm/builtins/trace"
)

// recipeFile writes src as a user recipe in a fresh folder (with a helper
// file next to it for load()) and returns its path.
func recipeFile(t testing.TB, dir, src string) string {
	t.Helper()
	os.WriteFile(filepath.Join(dir, "lib.star"), []byte("def twice(x):\n    return 2 * x\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "broken.star"), []byte("def f():\n    return nosuch\n"), 0o644)
	p := filepath.Join(dir, "user.star")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRecipeErrorsAreClear: every kind of mistake in a user's own recipe
// (syntax, undefined name, runtime error, bad load, fail()) prints one clear
// message naming file:line and exits 1, never a Go panic or stack trace.
func TestRecipeErrorsAreClear(t *testing.T) {
	goldenEnv(t)
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"undefined name in main", "def main(opts):\n    print(undefined_name)\n", []string{"user.star:2:11: undefined: undefined_name"}},
		{"two undefined names", "def main(opts):\n    print(a)\n    print(b)\n", []string{"user.star:2:11: undefined: a", "user.star:3:11: undefined: b"}},
		{"undefined at top level", "x = nosuch\n", []string{"user.star:1:5: undefined: nosuch"}},
		{"syntax error", "def main(opts)\n    pass\n", []string{"user.star:2:1: got newline, want ':'"}},
		{"unterminated string", "x = \"abc\n", []string{"user.star:1:5"}},
		{"runtime error", "def main(opts):\n    x = 1 // 0\n", []string{"user.star:2:11", "floored division by zero"}},
		{"runtime error at top level", "x = {}[\"k\"]\n", []string{"user.star:1:7", "key \"k\" not in dict"}},
		{"fail()", "def main(opts):\n    fail(\"no good\")\n", []string{"user.star:2:9", "no good"}},
		{"load of a missing file", "load(\"nosuch.star\", \"x\")\n", []string{"cannot load nosuch.star", "no such file"}},
		{"load of a missing name", "load(\"lib.star\", \"thrice\")\n", []string{"user.star:1:1", "name thrice not found"}},
		{"load of a broken file", "load(\"broken.star\", \"f\")\n", []string{"broken.star:2:12: undefined: nosuch"}},
		{"main not callable", "main = 3\n", []string{"main"}},
		{"main with wrong arity", "def main():\n    pass\n", []string{"main"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := recipeFile(t, t.TempDir(), tc.src)
			o, e, code := pifarm(t, "run", p)
			if code != ExitFailed {
				t.Errorf("exit %d, want %d", code, ExitFailed)
			}
			for _, w := range tc.want {
				if !strings.Contains(e, w) {
					t.Errorf("stderr lacks %q", w)
				}
			}
			if strings.Contains(e, "panic") || strings.Contains(e, "goroutine") || !strings.HasPrefix(e, "pifarm: ") {
				t.Errorf("not one clear message")
			}
			if t.Failed() {
				t.Logf("stdout:\n%s\nstderr:\n%s", o, e)
			}
		})
	}
}

// TestPlainScript: a file without OPTIONS, ARGS and main is a script: its
// top level is the program (exit 0). A dry run of it changes nothing, also
// when -n comes after the file name; arguments other than pifarm's own are
// usage errors reported before the script runs.
func TestPlainScript(t *testing.T) {
	goldenEnv(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "made.txt")
	p := recipeFile(t, dir, "print(\"hello\")\nhost.write("+`"`+out+`"`+", \"x\\n\")\n")
	for _, args := range [][]string{{"-n", "run", p}, {"run", p, "-n"}, {"run", p, "--dry-run"}} {
		o, e, code := pifarm(t, args...)
		if code != ExitOK || !strings.Contains(o, "# hello\n") || !strings.Contains(o, "cat > "+out) {
			t.Errorf("%v: exit %d\n%s%s", args, code, o, e)
		}
		if _, err := os.Stat(out); err == nil {
			t.Fatalf("%v: a dry run of a script wrote %s", args, out)
		}
	}
	o, e, code := pifarm(t, "run", p, "extra")
	if code != ExitUsage || !strings.Contains(e, `unexpected argument "extra"`) || strings.Contains(o, "hello") {
		t.Errorf("extra argument: exit %d\n%s%s", code, o, e)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("a script given a bad argument ran")
	}
	o, e, code = pifarm(t, "run", p)
	if code != ExitOK || o != "hello\n" {
		t.Errorf("live: exit %d\n%s%s", code, o, e)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "x\n" {
		t.Errorf("live script did not write: %q %v", b, err)
	}
	// A file that declares OPTIONS or ARGS but no main is still a recipe
	// missing its main.
	q := filepath.Join(dir, "half.star")
	os.WriteFile(q, []byte("OPTIONS = []\n"), 0o644)
	if _, e, code := pifarm(t, "run", q); code != ExitFailed || !strings.Contains(e, "defines no main(opts)") {
		t.Errorf("OPTIONS without main: exit %d %s", code, e)
	}
}

// TestInterruptCancelsConfigLoop: Ctrl-C or SIGTERM (a cancelled context)
// also stops a config.star that loops forever.
func TestInterruptCancelsConfigLoop(t *testing.T) {
	goldenEnv(t)
	cfg := filepath.Join(t.TempDir(), "config.star")
	os.WriteFile(cfg, []byte("while True:\n    pass\n"), 0o644)
	if code, e := interruptedMain(t, "-c", cfg, "run", "nodes"); code != ExitFailed || !strings.Contains(e, "interrupted") || !strings.Contains(e, cfg) {
		t.Fatalf("exit %d: %s", code, e)
	}
}

// TestEndlessRecursionShortBacktrace: Starlark's stack overflow is reported
// with the repeated frame counted, not printed 100,000 times.
func TestEndlessRecursionShortBacktrace(t *testing.T) {
	goldenEnv(t)
	p := recipeFile(t, t.TempDir(), "def f(n):\n    return f(n + 1)\n\ndef main(opts):\n    f(0)\n")
	_, e, code := pifarm(t, "-n", "run", p)
	if code != ExitFailed || !strings.Contains(e, "Starlark stack overflow") || !strings.Contains(e, "user.star:2:13: in f\n  [the line above repeats") || strings.Count(e, "\n") > 20 {
		t.Fatalf("exit %d, %d lines:\n%.2000s", code, strings.Count(e, "\n"), e)
	}
}

// TestPanicInStarlarkIsAnError: a panic inside Starlark or a builtin (a bug)
// is reported as an error naming the file, not a crash with a stack trace.
func TestPanicInStarlarkIsAnError(t *testing.T) {
	goldenEnv(t)
	cfg, err := findConfig(context.Background(), startest.DefaultConfig(t), "testdata/golden/config.star")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rt := New(trace.New(nil, true, false, &out), cfg, &out)
	rt.predeclared["boom"] = starlark.NewBuiltin("boom", func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error) {
		var m map[string]int
		m["x"] = 1 // a nil map: panics
		return starlark.None, nil
	})
	for _, src := range []string{"boom()\n", "def main(opts):\n    boom()\n"} {
		p := recipeFile(t, t.TempDir(), src)
		err := rt.RunRecipe(source{Path: p}, "user", nil, false)
		if err == nil || !strings.Contains(err.Error(), p+": internal error") || !strings.Contains(err.Error(), "nil map") {
			t.Errorf("%q: err %v", src, err)
		}
		rt.cache = map[string]*loadEntry{}
	}
}

// TestDryRunFlagAfterRecipeName: -n or -v after the recipe's name is seen
// by the recipe too (farm.dry_run, farm.verbose), not only by the door.
func TestDryRunFlagAfterRecipeName(t *testing.T) {
	goldenEnv(t)
	dir := t.TempDir()
	p := recipeFile(t, dir, "ARGS = []\ndef main(opts):\n    print(\"dry_run=%s verbose=%s\" % (farm.dry_run, farm.verbose))\n")
	q := filepath.Join(dir, "script.star")
	os.WriteFile(q, []byte("print(\"dry_run=%s verbose=%s\" % (farm.dry_run, farm.verbose))\n"), 0o644)
	for _, f := range []string{p, q} {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"run", f, "-n"}, "# dry_run=True verbose=False\n"},
			{[]string{"-n", "run", f}, "# dry_run=True verbose=False\n"},
			{[]string{"run", f, "-v"}, "dry_run=False verbose=True\n"},
			{[]string{"run", f}, "dry_run=False verbose=False\n"},
		} {
			if o, e, code := pifarm(t, tc.args...); code != ExitOK || o != tc.want {
				t.Errorf("%v: exit %d, stdout %q, want %q %s", tc.args, code, o, tc.want, e)
			}
		}
	}
}
