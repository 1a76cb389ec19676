package startest

import (
	"context"
	"flag"
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.starlark.net/starlark"
	"pifarm/builtins/trace"
)

// demo is a module as modules are written: built on the fixture's door.
func demo(d *trace.Door) *trace.Module {
	return &trace.Module{Name: "demo", Doc: "A test module.", Funcs: []trace.Func{
		{Name: "mkdir", Args: "path", Doc: "mkdir -p -m 755.", Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			var p string
			if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &p); err != nil {
				return nil, err
			}
			return nil, d.MkdirAll(p, 0o755)
		}},
		{Name: "secret", Args: "s", Doc: "Masks s.", Fn: func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			var s string
			if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &s); err != nil {
				return nil, err
			}
			d.Secret(s)
			return nil, nil
		}},
	}}
}

// recorder is a testing.TB that keeps what is reported instead of failing.
type recorder struct {
	testing.TB
	mu      sync.Mutex
	reports []string
}

func (r *recorder) Helper() {}
func (r *recorder) Error(args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reports = append(r.reports, fmt.Sprint(args...))
}
func (r *recorder) Errorf(format string, args ...any) { r.Error(fmt.Sprintf(format, args...)) }
func (r *recorder) Fatal(args ...any)                 { r.Fatalf("%s", fmt.Sprint(args...)) }
func (r *recorder) Fatalf(format string, args ...any) {
	r.Error(fmt.Sprintf(format, args...))
	panic(fatal{})
}

type fatal struct{}

// reported runs fn with rec and returns what it reported.
func (r *recorder) reported(fn func()) string {
	func() {
		defer func() {
			if p := recover(); p != nil && p != (fatal{}) {
				panic(p)
			}
		}()
		fn()
	}()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := strings.Join(r.reports, "\n")
	r.reports = nil
	return s
}

// TestFixtureModes runs one snippet dry, live and live verbose: the output
// is the trace and print() as a pifarm run shows them, and only live runs
// change the tree.
func TestFixtureModes(t *testing.T) {
	for _, tc := range []struct {
		name         string
		o            Options
		want         string
		makesFolders bool
	}{
		{"dry", Options{Dry: true}, "mkdir -p -m 755 DIR/sub\n# made\n# two lines\n# ****\n", false},
		{"live", Options{}, "made\ntwo lines\n****\n", true},
		{"live verbose", Options{Verbose: true}, "mkdir -p -m 755 DIR/sub\nmade\ntwo lines\n****\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fx := New(t, tc.o)
			fx.Add(demo(fx.Door)).Set("DIR", starlark.String(dir))
			fx.Run("modes.star", `
demo.secret("hunter2")
demo.mkdir(DIR + "/sub")
print("made")
print("two lines\nhunter2")
assert.eq(type(struct(a = 1)), "struct")
assert.eq(json.encode([1]), "[1]")
assert.eq(str(time.second), "1s")
`)
			want := strings.ReplaceAll(tc.want, "DIR", dir)
			if got := fx.Output(); got != want {
				t.Errorf("output\n%q\nwant\n%q", got, want)
			}
			if _, err := os.Stat(filepath.Join(dir, "sub")); (err == nil) != tc.makesFolders {
				t.Errorf("folder made: %v, want %v", err == nil, tc.makesFolders)
			}
			fx.Reset()
			if fx.Output() != "" {
				t.Error("Reset kept output")
			}
		})
	}
}

func TestFixtureDefaults(t *testing.T) {
	fx := New(t, Options{Dry: true})
	if fx.Door.Root || !fx.Door.DryRun || fx.Door.Priv[0] != "sudo" {
		t.Errorf("door: root %v dry %v priv %v", fx.Door.Root, fx.Door.DryRun, fx.Door.Priv)
	}
	if n, err := fx.Farm.Resolve("entwo"); err != nil || n.ID != 2 {
		t.Errorf("the repository's node table is not loaded: %v", err)
	}
	if cache := fx.Farm.Config.CacheDir(); !strings.HasPrefix(cache, os.TempDir()) {
		t.Errorf("cache %s is not a temporary folder", cache)
	}
	if !New(t, Options{Root: true}).Door.Root {
		t.Error("Root ignored")
	}
}

// TestFixtureAssertAndLoad: assert is predeclared and loadable, and its
// failures reach the test; other loads go to Load or fail clearly.
func TestFixtureAssertAndLoad(t *testing.T) {
	rec := &recorder{TB: t}
	fx := New(rec, Options{Dry: true})
	if got := rec.reported(func() { fx.Run("a.star", "assert.eq(1, 2)") }); !strings.Contains(got, "1 != 2") {
		t.Errorf("a failed assert reported %q", got)
	}
	if got := rec.reported(func() { fx.Run("a.star", `load("assert.star", a = "assert")`+"\na.eq(1, 1)") }); got != "" {
		t.Errorf("load of assert.star: %s", got)
	}
	_, err := fx.Exec("l.star", `load("lib.star", "x")`)
	if err == nil || !strings.Contains(err.Error(), `load "lib.star": not available in this test (set the fixture's Load)`) {
		t.Errorf("unknown load: %v", err)
	}
	fx.Load = func(_ *starlark.Thread, module string) (starlark.StringDict, error) {
		return starlark.StringDict{"x": starlark.String(module)}, nil
	}
	g, err := fx.Exec("l.star", `load("lib.star", "x")`+"\ny = x")
	if err != nil || g["y"] != starlark.String("lib.star") {
		t.Errorf("Load: %v %v", g, err)
	}
	if got := rec.reported(func() { fx.Run("f.star", "def f():\n    fail('deep')\nf()") }); !strings.Contains(got, "Traceback") || !strings.Contains(got, "f.star:3:2: in <toplevel>") {
		t.Errorf("Run's failure lacks the backtrace: %q", got)
	}
}

// TestFixtureCancel: cancelling the context stops a running script, as
// Ctrl-C stops a recipe.
func TestFixtureCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	fx := New(t, Options{Ctx: ctx})
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := fx.Exec("loop.star", "while True:\n    pass")
	if err == nil || !strings.Contains(err.Error(), "interrupted") || time.Since(start) > 5*time.Second {
		t.Fatalf("cancel: %v after %v", err, time.Since(start))
	}
}

func TestRunChunks(t *testing.T) {
	fx := New(t, Options{Dry: true})
	fx.Add(demo(fx.Door)).Set("OUT", starlark.String("/nonexistent/out"))
	fx.RunChunks("testdata/chunks.star")
	if want := "mkdir -p -m 755 /nonexistent/out\n# made /nonexistent/out\n"; fx.Output() != want {
		t.Errorf("output %q, want %q", fx.Output(), want)
	}
}

// TestRunChunksReports: each kind of mismatch is reported with its line.
func TestRunChunksReports(t *testing.T) {
	rec := &recorder{TB: t}
	fx := New(rec, Options{Dry: true})
	got := rec.reported(func() { fx.RunChunks("testdata/chunks_bad.star") })
	for _, want := range []string{
		"testdata/chunks_bad.star:1: unexpected error: floored division by zero",
		`testdata/chunks_bad.star:3: error "fail: other" does not match "expected text"`,
		`testdata/chunks_bad.star:5: expected an error matching "never happens", got none`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	if got := rec.reported(func() { fx.RunChunks("testdata/nosuch.star") }); !strings.Contains(got, "no such file") {
		t.Errorf("missing file: %q", got)
	}
}

func TestChunks(t *testing.T) {
	for _, tc := range []struct {
		text    string
		chunks  int
		want    map[int]string // line -> regexp, over all chunks
		wantErr string
	}{
		{"a = 1\n", 1, map[int]string{}, ""},
		{"a = 1\n---\nb ### \"x+\"\n---\n\nc ### `y`\n", 3, map[int]string{3: "x+", 6: "y"}, ""},
		{"a ### x\n", 0, nil, `f.star:1: want ### "regexp"`},
		{"ok\n---\na ### \"(\"\n", 0, nil, "f.star:3: want ### \"regexp\" (a quoted Go string holding a regular expression): error parsing regexp"},
	} {
		cs, err := Chunks("f.star", tc.text)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Chunks(%q): err %v, want %q", tc.text, err, tc.wantErr)
			}
			continue
		}
		if err != nil || len(cs) != tc.chunks {
			t.Fatalf("Chunks(%q): %d chunks, %v", tc.text, len(cs), err)
		}
		got := map[int]string{}
		for _, c := range cs {
			for line, rx := range c.Want {
				got[line] = rx.String()
				// the padded source puts the marker on its file line
				if l := strings.Split(c.Source, "\n")[line-1]; !strings.Contains(l, "###") {
					t.Errorf("line %d of the padded chunk is %q", line, l)
				}
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("Chunks(%q) markers %v, want %v", tc.text, got, tc.want)
		}
	}
}

func FuzzChunks(f *testing.F) {
	f.Add("a = 1\n---\nb ### \"x\"\n")
	f.Add("###\n---\n---\n")
	f.Fuzz(func(t *testing.T, text string) {
		cs, err := Chunks("f.star", text)
		if err != nil {
			return
		}
		lines := 0
		for i, c := range cs {
			if i > 0 && !strings.HasPrefix(c.Source, strings.Repeat("\n", lines)) {
				t.Fatalf("chunk %d is not padded to line %d", i, lines+1)
			}
			lines = strings.Count(c.Source, "\n") + 2 // the chunk's last line and the "---"
		}
	})
}

func TestGolden(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "x.trace")
	rec := &recorder{TB: t}
	if got := rec.reported(func() { Golden(rec, path, "a\n") }); !strings.Contains(got, "run the test with -update to create it") {
		t.Errorf("missing golden: %q", got)
	}
	setUpdate(t, true)
	if got := rec.reported(func() { Golden(rec, path, "a\nb\n") }); got != "" {
		t.Errorf("update reported %q", got)
	}
	setUpdate(t, false)
	if b, _ := os.ReadFile(path); string(b) != "a\nb\n" {
		t.Fatalf("-update wrote %q", b)
	}
	if ok := Golden(t, path, "a\nb\n"); !ok {
		t.Error("same text does not match")
	}
	got := rec.reported(func() {
		if Golden(rec, path, "a\nc\n") {
			t.Error("a difference matched")
		}
	})
	if !strings.Contains(got, "x.trace differs at line 2") || !strings.Contains(got, "--- got\na\nc\n--- want\na\nb\n") {
		t.Errorf("difference reported as %q", got)
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("golden folder holds %d files (a temporary file left?)", len(ents))
	}
}

// setUpdate sets the shared -update flag for the rest of the test.
func setUpdate(t *testing.T, on bool) {
	f := flag.Lookup(UpdateFlag)
	if f == nil {
		t.Fatal("-update is not registered")
	}
	old := f.Value.String()
	flag.Set(UpdateFlag, strconv.FormatBool(on))
	t.Cleanup(func() { flag.Set(UpdateFlag, old) })
	if Updating() != on {
		t.Fatalf("Updating() = %v after -update=%v", Updating(), on)
	}
}

func TestTranscript(t *testing.T) {
	for _, tc := range []struct {
		out, errs string
		code      int
		want      string
	}{
		{"a\n", "", 0, "a\n--- exit 0\n"},
		{"", "pifarm: bad\n", 2, "--- stderr\npifarm: bad\n--- exit 2\n"},
		{"x\n", "y\n", 1, "x\n--- stderr\ny\n--- exit 1\n"},
	} {
		if got := Transcript(tc.out, tc.errs, tc.code); got != tc.want {
			t.Errorf("Transcript(%q, %q, %d) = %q, want %q", tc.out, tc.errs, tc.code, got, tc.want)
		}
	}
}

// TestOnlyTestsImportStartest: startest is test support; the pifarm binary
// must not link it (nor its -update flag).
func TestOnlyTestsImportStartest(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	err = filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() && strings.HasPrefix(e.Name(), ".") && p != root {
			return filepath.SkipDir
		}
		if e.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") || filepath.Dir(p) == filepath.Join(root, "builtins", "startest") {
			return nil
		}
		af, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		for _, imp := range af.Imports {
			if path, _ := strconv.Unquote(imp.Path.Value); path == "pifarm/builtins/startest" {
				t.Errorf("%s imports startest: only _test.go files may", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 30 {
		t.Fatalf("only %d files checked", checked)
	}
}

// TestGoldenSection: a generated section (the README's module list) is
// checked against the registration and rewritten by -update, the rest of
// the file kept.
func TestGoldenSection(t *testing.T) {
	begin, end := trace.SectionMarkers("modules")
	path := filepath.Join(t.TempDir(), "README.md")
	os.WriteFile(path, []byte("# x\n\n"+begin+"\n  farm  old\n"+end+"\n\nrest\n"), 0o644)
	mods := []*trace.Module{{Name: "farm", Doc: "The node table."}, {Name: "guest", Doc: "Guest trees."}}
	rec := &recorder{TB: t}
	if got := rec.reported(func() { GoldenSection(rec, path, "modules", trace.Index(mods)) }); !strings.Contains(got, "README.md differs at line 4") {
		t.Errorf("a stale section reported %q", got)
	}
	setUpdate(t, true)
	GoldenSection(t, path, "modules", trace.Index(mods))
	want := "# x\n\n" + begin + "\n  farm   The node table.\n  guest  Guest trees.\n" + end + "\n\nrest\n"
	if b, _ := os.ReadFile(path); string(b) != want {
		t.Errorf("-update wrote\n%s\nwant\n%s", b, want)
	}
	os.WriteFile(path, []byte("no markers\n"), 0o644)
	if got := rec.reported(func() { GoldenSection(rec, path, "modules", "x") }); !strings.Contains(got, "want exactly one line") {
		t.Errorf("missing markers reported %q", got)
	}
	if b, _ := os.ReadFile(path); string(b) != "no markers\n" {
		t.Errorf("a file without markers was rewritten: %q", b)
	}
}
