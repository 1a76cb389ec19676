package runtime

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.starlark.net/starlark"
	"pifarm/builtins/farm"
	"pifarm/builtins/startest"
	"pifarm/builtins/trace"
)

// pifarm runs the command in-process and returns stdout, stderr and status.
func pifarm(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(Options{Args: args, Stdout: &out, Stderr: &errb, NotRoot: true, DefaultConfig: startest.DefaultConfig(t)})
	return out.String(), errb.String(), code
}

// goldenEnv pins everything a trace may depend on besides the arguments.
func goldenEnv(t *testing.T) {
	t.Helper()
	home := "/tmp/pifarm-golden/home"
	os.RemoveAll("/tmp/pifarm-golden/demo") // the demo recipe's output folder never exists
	os.MkdirAll(home, 0o755)
	// the golden config's cache exists, as a run leaves it (mode 0700)
	os.MkdirAll("/tmp/pifarm-golden/cache", 0o700)
	os.Chmod("/tmp/pifarm-golden/cache", 0o700)
	t.Setenv("HOME", home)
	t.Setenv("SUDO_USER", "pi")
	t.Setenv("XDG_CONFIG_HOME", "")
	t.Setenv("PIFARM_CONFIG", "")
	t.Setenv("PIFARM_CACHE", "")
	t.Setenv("CI", "")
}

// TestGolden runs every testdata/golden/NAME.args as a pifarm command line
// (in dry-run, with the golden config) and compares stdout, stderr and the
// exit status with NAME.trace.
func TestGolden(t *testing.T) {
	cases, _ := filepath.Glob("testdata/golden/*.args")
	if len(cases) == 0 {
		t.Fatal("no golden cases")
	}
	root, _ := filepath.Abs("../..")
	for _, c := range cases {
		name := strings.TrimSuffix(filepath.Base(c), ".args")
		t.Run(name, func(t *testing.T) {
			goldenEnv(t)
			raw, err := os.ReadFile(c)
			if err != nil {
				t.Fatal(err)
			}
			args := append([]string{"-c", filepath.Join(root, "builtins/runtime/testdata/golden/config.star")}, strings.Fields(string(raw))...)
			wd, _ := os.Getwd()
			os.Chdir(root)
			out, errs, code := pifarm(t, args...)
			os.Chdir(wd)
			if !startest.Golden(t, strings.TrimSuffix(c, ".args")+".trace", startest.Transcript(out, errs, code)) {
				t.Logf("the command: pifarm %s", strings.TrimSpace(string(raw)))
			}
		})
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	goldenEnv(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "sub", "greeting.txt")
	o, e, code := pifarm(t, "-n", "run", "testdata/recipes/demo.star", "--run", "-o", out, "1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, e)
	}
	if _, err := os.Stat(filepath.Join(dir, "sub")); err == nil {
		t.Fatal("dry run created a folder")
	}
	for _, want := range []string{"# instance <1> enone, ssh port 5701\n", "mkdir -p -m 755 " + filepath.Join(dir, "sub") + "\n", "cat > " + out + " <<'EOF'\nhello from enone\nEOF\n", "sudo sh -c 'cat " + out + "'\n"} {
		if !strings.Contains(o, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, o)
		}
	}
	// the same run, live, does it
	_, e, code = pifarm(t, "run", "testdata/recipes/demo.star", "-o", out, "--run", "1")
	if _, err := os.Stat(out); err != nil && code == 0 {
		t.Fatalf("live run did not write: %v %s", err, e)
	}
}

func TestExitStatuses(t *testing.T) {
	goldenEnv(t)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown instance", []string{"run", "testdata/recipes/demo.star", "nosuch"}, 2, `unknown instance "nosuch"`},
		{"unknown id", []string{"run", "testdata/recipes/demo.star", "9"}, 2, `unknown instance "9"`},
		{"unknown option", []string{"run", "testdata/recipes/demo.star", "--frobnicate"}, 2, "unknown option --frobnicate"},
		{"missing value", []string{"run", "testdata/recipes/demo.star", "--out"}, 2, "needs a value"},
		{"extra argument", []string{"run", "testdata/recipes/demo.star", "1", "2"}, 2, `unexpected argument "2"`},
		{"unknown recipe", []string{"run", "nosuch"}, 2, `no bundled recipe "nosuch"`},
		{"missing file", []string{"run", "/nonexistent/x.star"}, 2, "no such file"},
		{"fail()", []string{"run", "testdata/recipes/demo.star", "--fail", "2"}, 1, "demo.star:17:13: in main"},
		{"builtin usage error in recipe", []string{"run", "testdata/recipes/builtinerr.star"}, 2, "builtinerr.star:3:18"},
		{"bad load", []string{"run", "testdata/recipes/badload.star"}, 1, "cannot load nosuch.star"},
		{"unknown global option", []string{"--bogus"}, 2, "unknown option --bogus"},
		{"unknown command", []string{"frob"}, 2, `unknown command "frob"`},
		{"no command", nil, 2, "usage: pifarm"},
		{"bad config", []string{"-c", "testdata/bad-config.star", "recipes"}, 2, "bad-config.star:3:"},
		{"doc unknown", []string{"doc", "nosuch"}, 2, `no module "nosuch"`},
		{"doc unknown function", []string{"doc", "farm.nosuch"}, 2, `no function "nosuch"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, e, code := pifarm(t, tc.args...)
			if code != tc.code || !strings.Contains(o+e, tc.want) {
				t.Fatalf("exit %d (want %d), output lacks %q:\n%s%s", code, tc.code, tc.want, o, e)
			}
		})
	}
}

// TestNoBuiltinConfig: a command that needs a configuration, run without
// Options.DefaultConfig, is a usage error that says what is missing;
// --help and --version need none.
func TestNoBuiltinConfig(t *testing.T) {
	goldenEnv(t)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"recipes"}, ExitUsage, "no built-in config.star"},
		{[]string{"--help"}, ExitOK, "builtin modules"},
		{[]string{"--version"}, ExitOK, "pifarm "},
	} {
		var out, errb bytes.Buffer
		code := Main(Options{Args: tc.args, Stdout: &out, Stderr: &errb})
		if code != tc.code || !strings.Contains(out.String()+errb.String(), tc.want) {
			t.Errorf("%v: exit %d, want %d with %q:\n%s%s", tc.args, code, tc.code, tc.want, out.String(), errb.String())
		}
	}
}

func TestHelpAndLists(t *testing.T) {
	goldenEnv(t)
	o, _, code := pifarm(t, "--help")
	if code != 0 || !strings.Contains(o, "run RECIPE") || strings.Contains(o, "Exit status") {
		t.Fatalf("--help: %d %s", code, o)
	}
	for _, m := range trace.Names(buildModules(trace.New(nil, true, false, io.Discard), farm.New(farm.Default()))) {
		if !strings.Contains(o, "\n  "+m+" ") {
			t.Errorf("--help does not list the module %s:\n%s", m, o)
		}
	}
	o, _, _ = pifarm(t, "-hv")
	if !strings.Contains(o, "Exit status") {
		t.Fatalf("-hv lacks the long explanation:\n%s", o)
	}
	o, _, code = pifarm(t, "run", "testdata/recipes/demo.star", "--help")
	if code != 0 || !strings.Contains(o, "--useradd=NAME") || !strings.Contains(o, "-r, --run") || strings.Contains(o, "Writes a greeting") {
		t.Fatalf("recipe --help: %d\n%s", code, o)
	}
	o, _, _ = pifarm(t, "-hv", "run", "testdata/recipes/demo.star")
	if !strings.Contains(o, "Writes a greeting") {
		t.Fatalf("recipe -hv lacks HELP:\n%s", o)
	}
	o, _, code = pifarm(t, "recipes")
	if code != 0 || !strings.Contains(o, "nodes") || strings.Contains(o, "broken") {
		t.Fatalf("recipes: %d\n%s", code, o)
	}
	o, _, code = pifarm(t, "doc")
	if code != 0 || !strings.Contains(o, "farm.node(ref)") || !strings.Contains(o, "host.run(") {
		t.Fatalf("doc: %s", o)
	}
	o, _, code = pifarm(t, "doc", "farm.node")
	if code != 0 || !strings.Contains(o, "unknown id or alias is a usage error") {
		t.Fatalf("doc farm.node: %s", o)
	}
	o, _, _ = pifarm(t, "--version")
	if !strings.HasPrefix(o, "pifarm ") {
		t.Fatal(o)
	}
}

func TestBundledRecipeByPathFallsBackToEmbedded(t *testing.T) {
	goldenEnv(t)
	wd, _ := os.Getwd()
	os.Chdir(t.TempDir())
	defer os.Chdir(wd)
	o, e, code := pifarm(t, "run", "recipes/nodes.star", "entwo")
	if code != 0 || !strings.Contains(o, "192.168.66.8") {
		t.Fatalf("%d %s %s", code, o, e)
	}
	o, _, code = pifarm(t, "run", "nodes", "--wifitab")
	if code != 0 || !strings.Contains(o, "entwo 11 entwo") {
		t.Fatalf("%d %s", code, o)
	}
}

func TestConfigLookupOrder(t *testing.T) {
	goldenEnv(t)
	dir := t.TempDir()
	write := func(p, margin string) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("margin_percent = "+margin+"\n"), 0o644)
	}
	xdg := filepath.Join(dir, "xdg")
	write(filepath.Join(xdg, "pifarm", "config.star"), "1")
	write(filepath.Join(dir, "cwd", "config.star"), "2")
	write(filepath.Join(dir, "env.star"), "3")
	write(filepath.Join(dir, "flag.star"), "4")
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	explicit := ""
	margin := func() float64 {
		c, err := findConfig(context.Background(), startest.DefaultConfig(t), explicit)
		if err != nil {
			t.Fatal(err)
		}
		return c.MarginPercent
	}
	t.Setenv("XDG_CONFIG_HOME", xdg)
	os.Chdir(dir)
	if m := margin(); m != 1 {
		t.Errorf("xdg: %v", m)
	}
	os.Chdir(filepath.Join(dir, "cwd"))
	if m := margin(); m != 2 {
		t.Errorf("cwd: %v", m)
	}
	t.Setenv("PIFARM_CONFIG", filepath.Join(dir, "env.star"))
	if m := margin(); m != 3 {
		t.Errorf("env: %v", m)
	}
	explicit = filepath.Join(dir, "flag.star")
	if m := margin(); m != 4 {
		t.Errorf("flag: %v", m)
	}
	explicit = ""
	t.Setenv("PIFARM_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "none"))
	os.Chdir(dir)
	if m := margin(); m != 6 {
		t.Errorf("embedded default: %v", m)
	}
}

func TestParseOptions(t *testing.T) {
	s := &spec{recipe: "x", opts: []*optSpec{
		{short: "r", long: "run", def: starlark.False},
		{short: "i", long: "disk-image", metavar: "FILE", takesValue: true, def: starlark.None},
		{long: "useradd", metavar: "NAME", takesValue: true, def: starlark.None},
		{short: "d", long: "device", metavar: "DEV", takesValue: true, many: true, def: starlark.NewList(nil)},
	}}
	for _, tc := range []struct {
		argv []string
		want map[string]string
		err  string
	}{
		{[]string{"-r"}, map[string]string{"run": "True", "disk_image": "None"}, ""},
		{[]string{"-ri", "a.img"}, map[string]string{"run": "True", "disk_image": `"a.img"`}, ""},
		{[]string{"-ia.img"}, map[string]string{"disk_image": `"a.img"`}, ""},
		{[]string{"--disk-image=b.img", "--useradd", "bob"}, map[string]string{"disk_image": `"b.img"`, "useradd": `"bob"`}, ""},
		{[]string{"-r"}, map[string]string{"device": "[]"}, ""},
		{[]string{"-d", "a", "--device=b", "-dc", "--device", "a"}, map[string]string{"device": `["a", "b", "c", "a"]`}, ""},
		{[]string{"--device"}, nil, "needs a value (DEV)"},
		{[]string{"--run=yes"}, nil, "takes no value"},
		{[]string{"--disk"}, nil, "did you mean --disk-image"},
		{[]string{"-x"}, nil, "unknown option -x"},
		{[]string{"--", "-r"}, nil, `unexpected argument "-r"`},
	} {
		p, err := s.parse(tc.argv, nil, nil)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !trace.IsUsage(err) {
				t.Errorf("%v: err %v, want usage error %q", tc.argv, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.argv, err)
			continue
		}
		for k, v := range tc.want {
			if got := p.values[k].String(); got != v {
				t.Errorf("%v: %s = %s, want %s", tc.argv, k, got, v)
			}
		}
	}
}

// TestStar runs the .star tests in testdata/star on the startest fixture
// with the recipes' runtime: every registered module (dry run, golden
// configuration) and load() of the bundled library.
func TestStar(t *testing.T) {
	goldenEnv(t)
	files, _ := filepath.Glob("testdata/star/*_test.star")
	if len(files) == 0 {
		t.Fatal("no .star tests")
	}
	cfg, err := findConfig(context.Background(), startest.DefaultConfig(t), "testdata/golden/config.star")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			fx := startest.New(t, startest.Options{Dry: true, Farm: farm.New(cfg)})
			rt := New(fx.Door, cfg, io.Discard)
			fx.Add(rt.Modules...)
			abs, _ := filepath.Abs(f)
			fx.Load = func(_ *starlark.Thread, module string) (starlark.StringDict, error) {
				src, err := resolveLoad(source{Path: abs}, module)
				if err != nil {
					return nil, err
				}
				return rt.exec(src)
			}
			fx.Run(abs, nil)
		})
	}
}

// TestInterruptCancelsBlockingBuiltin: Ctrl-C (a cancelled context) ends a
// recipe blocked in a builtin promptly, with exit status 1.
func TestInterruptCancelsBlockingBuiltin(t *testing.T) {
	goldenEnv(t)
	dir := t.TempDir()
	rec := filepath.Join(dir, "block.star")
	os.WriteFile(rec, []byte("def main(opts):\n    host.run([\"sleep\", \"30\"])\n    print(\"not reached\")\n"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	var out, errb bytes.Buffer
	t0 := time.Now()
	code := Main(Options{Args: []string{"run", rec}, Stdout: &out, Stderr: &errb, Ctx: ctx, DefaultConfig: startest.DefaultConfig(t)})
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("took %v after the interrupt", d)
	}
	if code != ExitFailed || !strings.Contains(errb.String(), "context canceled") || strings.Contains(out.String(), "not reached") {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
	}
}

// TestInterruptCancelsStarlarkLoop: Ctrl-C also stops a recipe busy in
// Starlark itself (the thread is cancelled between steps).
func TestInterruptCancelsStarlarkLoop(t *testing.T) {
	goldenEnv(t)
	rec := filepath.Join(t.TempDir(), "loop.star")
	os.WriteFile(rec, []byte("def main(opts):\n    while True:\n        x = 1\n"), 0o644)
	if code, e := interruptedMain(t, "run", rec); code != ExitFailed || !strings.Contains(e, "interrupted") {
		t.Fatalf("exit %d: %s", code, e)
	}
}

// interruptedMain runs pifarm and cancels its context (Ctrl-C) after 200 ms;
// the run must end within 10 s. It returns the exit status and stderr.
func interruptedMain(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	var out, errb bytes.Buffer
	builtin := startest.DefaultConfig(t)
	done := make(chan int, 1)
	go func() {
		done <- Main(Options{Args: args, Stdout: &out, Stderr: &errb, Ctx: ctx, DefaultConfig: builtin})
	}()
	select {
	case code := <-done:
		return code, errb.String()
	case <-time.After(10 * time.Second):
		t.Fatalf("pifarm %v was not interrupted", args)
	}
	return 0, ""
}

// TestRecipeMayNotTakeGlobalOptions: -n, -v, -h and their long forms work
// after the recipe name; a recipe that declares one is refused (its -n
// would run live what the user meant as a dry run).
func TestRecipeMayNotTakeGlobalOptions(t *testing.T) {
	for _, o := range []*optSpec{
		{short: "n", long: "now", def: starlark.False},
		{short: "v", long: "vnc", def: starlark.False},
		{long: "dry-run", def: starlark.False},
	} {
		g := starlark.StringDict{"OPTIONS": starlark.NewList([]starlark.Value{o})}
		if _, err := readSpec("x", g); err == nil || !strings.Contains(err.Error(), "pifarm's own") {
			t.Errorf("option -%s/--%s: err %v, want a refusal", o.short, o.long, err)
		}
	}
	g := starlark.StringDict{"OPTIONS": starlark.NewList([]starlark.Value{&optSpec{short: "r", long: "run", def: starlark.False}})}
	if _, err := readSpec("x", g); err != nil {
		t.Errorf("-r/--run: %v", err)
	}
}
