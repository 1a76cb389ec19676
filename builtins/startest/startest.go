// Package startest is the test support of pifarm's modules: one fixture
// that runs Starlark against modules through a dry or live door, capturing
// the trace and print() output; starlarktest's assert module; files of
// chunks with "### regexp" expected-error markers (as starlark-go's own
// testdata driver reads them); and one golden-file helper with the one
// -update flag of a test binary.
//
// Only _test.go files import it (a test in this package checks that).
// It imports the ground packages (trace, farm) and Starlark, never a module.
//
//	fx := startest.New(t, startest.Options{Dry: true})
//	fx.Add(host.New(fx.Door, fx.Farm))
//	fx.Run("test.star", `host.mkdir("/tmp/x")`)
//	startest.Golden(t, "testdata/mkdir.trace", fx.Output())
package startest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.starlark.net/lib/json"
	sltime "go.starlark.net/lib/time"
	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"go.starlark.net/starlarktest"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// Options choose the door and the farm of a Fixture.
type Options struct {
	// Dry makes the door a dry run (pifarm -n); Verbose prints live actions.
	Dry, Verbose bool
	// Root makes the door act as root (no privilege prefix in the trace).
	// The default, false, shows "sudo" as a user's run does, whoever runs
	// the tests.
	Root bool
	// Farm is the farm the modules see. nil loads the repository's
	// config.star (its node table) with the cache in a fresh temporary
	// folder, so no test touches the user's cache.
	Farm *farm.Farm
	// Ctx is the door's context; nil means the test's (t.Context()).
	Ctx context.Context
}

// Fixture runs Starlark the way the runtime runs recipes: pifarm's
// dialect (trace.FileOptions), the modules added, struct, json and time,
// assert (predeclared, and load("assert.star", "assert") works too), the
// run's context on the thread, print() into the output as a run prints it.
type Fixture struct {
	// T reports assertion failures and fatal errors.
	T testing.TB
	// Door is the door modules must be built with (module.New(fx.Door, fx.Farm)).
	Door *trace.Door
	// Farm is the farm modules must be built with.
	Farm *farm.Farm
	// Predeclared is what the Starlark code sees; Add and Set fill it.
	Predeclared starlark.StringDict
	// Load, when set, serves load() of modules other than "assert.star".
	Load func(thread *starlark.Thread, module string) (starlark.StringDict, error)

	out trace.SyncBuffer // the door and print() may write from several goroutines
}

// New returns a fixture with a door of the given mode writing into the
// fixture's output.
func New(t testing.TB, o Options) *Fixture {
	t.Helper()
	fx := &Fixture{T: t, Farm: o.Farm}
	ctx := o.Ctx
	if ctx == nil {
		ctx = t.Context()
	}
	fx.Door = trace.New(ctx, o.Dry, o.Verbose, &fx.out)
	fx.Door.Root = o.Root
	if fx.Farm == nil {
		fx.Farm = RepoFarm(t)
	}
	fx.Door.Priv = fx.Farm.Config.Privilege
	assert, err := starlarktest.LoadAssertModule()
	if err != nil {
		t.Fatalf("starlarktest.LoadAssertModule: %v", err)
	}
	fx.Predeclared = starlark.StringDict{
		"json":   json.Module,
		"time":   sltime.Module,
		"struct": starlark.NewBuiltin("struct", starlarkstruct.Make),
	}
	for k, v := range assert {
		fx.Predeclared[k] = v
	}
	return fx
}

// RepoFarm is the farm of the repository's config.star (found above the
// working folder, next to go.mod) with its cache in a temporary folder.
func RepoFarm(t testing.TB) *farm.Farm {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	c, err := farm.Load(filepath.Join(root, "config.star"), nil)
	if err != nil {
		t.Fatalf("load the repository's config.star: %v", err)
	}
	c.Cache = t.TempDir()
	return farm.New(c)
}

// repoRoot is the nearest folder holding go.mod at or above the working
// folder the test binary started in (startDir).
func repoRoot() (string, error) {
	dir, err := startDir, startDirErr
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s: run the test inside the pifarm tree", dir)
		}
	}
}

// Add predeclares modules under their names, as the runtime does.
func (fx *Fixture) Add(mods ...*trace.Module) *Fixture {
	for _, m := range mods {
		fx.Predeclared[m.Name] = m.Struct()
	}
	return fx
}

// Set predeclares one more value (a fixture path, a node struct).
func (fx *Fixture) Set(name string, v starlark.Value) *Fixture {
	fx.Predeclared[name] = v
	return fx
}

// Output is everything printed so far: trace lines and print() output, in
// order (print() as "# ..." lines in a dry run, as the runtime shows it).
func (fx *Fixture) Output() string { return fx.out.String() }

// Reset forgets the output so far.
func (fx *Fixture) Reset() { fx.out.Reset() }

// Thread returns a thread as the runtime makes one: its print, the
// fixture's load, the door's context (cancelling it cancels the thread),
// and the test as assert's reporter. Call the returned stop when done.
func (fx *Fixture) Thread(name string) (th *starlark.Thread, stop func()) {
	th = &starlark.Thread{Name: name}
	th.Print = func(_ *starlark.Thread, msg string) {
		if fx.Door.DryRun {
			for _, line := range strings.Split(msg, "\n") {
				fx.Door.Print("# " + line)
			}
			return
		}
		fmt.Fprintln(&fx.out, fx.Door.Mask(msg))
	}
	th.Load = func(th *starlark.Thread, module string) (starlark.StringDict, error) {
		if module == "assert.star" {
			return starlarktest.LoadAssertModule()
		}
		if fx.Load != nil {
			return fx.Load(th, module)
		}
		return nil, fmt.Errorf("load %q: not available in this test (set the fixture's Load)", module)
	}
	ctx := fx.Door.Context()
	th.SetLocal(trace.ContextKey, ctx)
	starlarktest.SetReporter(th, fx.T)
	stopCancel := context.AfterFunc(ctx, func() { th.Cancel("interrupted") })
	return th, func() { stopCancel() }
}

// Exec runs src (a string, []byte, or nil to read filename) and returns
// its globals and error, for tests that look at either in Go. Failed
// assert calls are reported to the test as they happen.
func (fx *Fixture) Exec(filename string, src any) (starlark.StringDict, error) {
	th, stop := fx.Thread(filename)
	defer stop()
	return starlark.ExecFileOptions(trace.FileOptions(), th, filename, src, fx.Predeclared)
}

// Run runs src like Exec; an error ends the test with the Starlark
// backtrace.
func (fx *Fixture) Run(filename string, src any) starlark.StringDict {
	fx.T.Helper()
	g, err := fx.Exec(filename, src)
	if err != nil {
		fx.T.Fatalf("%s: %s", filename, ErrorText(err))
	}
	return g
}

// ErrorText is err with the Starlark backtrace when it has one.
func ErrorText(err error) string {
	var ee *starlark.EvalError
	if errors.As(err, &ee) {
		return ee.Backtrace()
	}
	return err.Error()
}
