package runtime

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.starlark.net/starlark"
	"pifarm/builtins/startest"
	"pifarm/builtins/trace"
)

// FuzzRecipeSource runs any text as a user's recipe (in a dry run, with the
// golden configuration) through the whole of pifarm's error path: syntax,
// resolve, runtime and load errors, fail(), builtins called wrongly. No
// recipe text may make pifarm panic, print a Go stack trace or exit with
// anything but 0, 1 or 2. Commands that queries would run find no program
// (PATH is an empty folder), and every input gets at most 2 seconds.
// The seed corpus is testdata/fuzz/FuzzRecipeSource plus the texts below;
// .ci/run fuzzes for a bounded time.
func FuzzRecipeSource(f *testing.F) {
	for _, s := range []string{
		"def main(opts):\n    print(undefined_name)\n",
		"print(\"hello\")\n",
		"def main(opts)\n    pass\n",
		"x = \"abc\n",
		"load(\"nosuch.star\", \"x\")\n",
		"load(\"lib.star\", \"twice\")\nprint(twice(2))\n",
		"load(\"lib.star\", \"nosuch\")\n",
		"load(\"broken.star\", \"f\")\n",
		"load(\"@pifarm//lib/common.star\", \"shjoin\")\nprint(shjoin([\"a'b\"]))\n",
		"load(\"@pifarm//../x.star\", \"x\")\n",
		"def main(opts):\n    fail(\"no\", 1, None)\n",
		"def main(opts):\n    farm.node(\"nosuch\")\n",
		"def main(opts):\n    farm.node(1, 2)\n",
		"def main(opts):\n    host.write(\"/nonexistent/\\nx\", \"y\")\n",
		"OPTIONS = [args.flag(\"n\", \"now\")]\ndef main(opts):\n    pass\n",
		"OPTIONS = [args.flag(\"xx\", \"\")]\n",
		"ARGS = [args.instances(), args.instance()]\n",
		"ARGS = 3\nOPTIONS = \"x\"\n",
		"main = 1\n",
		"def main():\n    pass\n",
		"def f(n):\n    return f(n + 1)\nf(0)\n",
		"x = {}\nx[[]] = 1\n",
		"print(json.decode(\"{\"))\n",
		"print(time.parse_duration(\"x\"))\n",
		"s = struct(a = 1)\nprint(s.b)\n",
		"def main(opts):\n    return 1 // 0\n",
		"while True:\n    pass\n",
	} {
		f.Add(s)
	}
	dir := f.TempDir()
	os.WriteFile(filepath.Join(dir, "lib.star"), []byte("def twice(x):\n    return 2 * x\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "broken.star"), []byte("def f():\n    return nosuch\n"), 0o644)
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o755)
	home := "/tmp/pifarm-golden/home"
	os.MkdirAll(home, 0o755)
	os.MkdirAll("/tmp/pifarm-golden/cache", 0o700)
	os.Chmod("/tmp/pifarm-golden/cache", 0o700)
	for k, v := range map[string]string{"HOME": home, "SUDO_USER": "pi", "XDG_CONFIG_HOME": "", "PIFARM_CONFIG": "",
		"PIFARM_CACHE": "", "CI": "", "PATH": empty} {
		f.Setenv(k, v)
	}
	cfg, _ := filepath.Abs("testdata/golden/config.star")
	builtin := startest.DefaultConfig(f)
	f.Fuzz(func(t *testing.T, src string) {
		p := filepath.Join(dir, "user.star")
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var out, errb bytes.Buffer
		code := Main(Options{Args: []string{"-n", "-c", cfg, "run", p}, Stdout: &out, Stderr: &errb, Ctx: ctx, NotRoot: true, DefaultConfig: builtin})
		e := errb.String()
		if code < 0 || code > 2 {
			t.Fatalf("exit %d for\n%s\nstderr:\n%s", code, src, e)
		}
		if strings.Contains(e, "goroutine ") || strings.Contains(e, "internal error") {
			t.Fatalf("a panic for\n%s\nstderr:\n%s", src, e)
		}
		if code != 0 && !strings.HasPrefix(e, "pifarm: ") {
			t.Fatalf("exit %d without a message for\n%s\nstderr:\n%s", code, src, e)
		}
	})
}

// FuzzCommandLine parses any command line, pifarm's own options and then a
// recipe's (flags, options with values, instances, positional strings):
// no argv may make a parser panic, and every refusal is a usage error.
func FuzzCommandLine(f *testing.F) {
	for _, s := range []string{
		"-n run box --run 2", "-hv", "-c", "--config=x run", "-nvc x y", "--", "-x",
		"-r -i a.img --useradd=bob 1", "-ria.img --", "--disk", "--run=yes", "-i", "-- -r", "1 2 3",
	} {
		f.Add(s)
	}
	s := &spec{recipe: "x", opts: []*optSpec{
		{short: "r", long: "run", def: starlark.False},
		{short: "i", long: "disk-image", metavar: "FILE", takesValue: true, def: starlark.None},
		{long: "useradd", metavar: "NAME", takesValue: true, def: starlark.None},
	}, pos: []*posSpec{{name: "first"}, {name: "rest", many: true}}}
	f.Fuzz(func(t *testing.T, line string) {
		argv := strings.Fields(line)
		if _, err := parseGlobals(argv); err != nil && !trace.IsUsage(err) {
			t.Fatalf("parseGlobals(%q): %v is not a usage error", argv, err)
		}
		if _, err := s.parse(argv, nil, nil); err != nil && !trace.IsUsage(err) {
			t.Fatalf("parse(%q): %v is not a usage error", argv, err)
		}
	})
}
