// Package runtime is pifarm's host: it finds and loads config.star, builds
// the tracing door and the builtin modules, runs recipes on one Starlark
// thread (with load() of the bundled library and of user files), parses
// recipe command lines, and implements the pifarm command itself.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"go.starlark.net/lib/json"
	sltime "go.starlark.net/lib/time"
	"go.starlark.net/resolve"
	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"go.starlark.net/syntax"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
	"pifarm/builtins/virt"
	"pifarm/recipes"
)

// BundledPrefix names the embedded recipe tree in load() statements:
// load("@pifarm//lib/args.star", "x").
const BundledPrefix = "@pifarm//"

// Runtime is one configured pifarm run.
type Runtime struct {
	Door    *trace.Door
	Farm    *farm.Farm
	Modules []*trace.Module
	Stdout  io.Writer
	// Fan configures a recipe's runs over a node set (-j, --fail-fast,
	// where and how they show).
	Fan FanOptions

	predeclared starlark.StringDict
	cache       map[string]*loadEntry
}

type loadEntry struct {
	globals starlark.StringDict
	err     error
	busy    bool
}

// New builds the farm and every registered module for one run on the door
// d, which takes the configuration's privilege command.
func New(d *trace.Door, cfg *farm.Config, stdout io.Writer) *Runtime {
	f := farm.New(cfg)
	f.Reach = virt.NewTunnels(f).Reach
	d.Priv = cfg.Privilege
	rt := &Runtime{Door: d, Farm: f, Stdout: stdout, cache: map[string]*loadEntry{}}
	rt.Modules = buildModules(d, f)
	rt.predeclared = starlark.StringDict{
		"json":   json.Module,
		"time":   sltime.Module,
		"struct": starlark.NewBuiltin("struct", starlarkstruct.Make),
	}
	for _, m := range rt.Modules {
		rt.predeclared[m.Name] = m.Struct()
	}
	return rt
}

// source is a Starlark file: on disk (Path absolute) or embedded (Path
// relative to recipes/, Embedded true).
type source struct {
	Path     string
	Embedded bool
}

func (s source) key() string {
	if s.Embedded {
		return BundledPrefix + s.Path
	}
	return s.Path
}

// display is how the file is named in backtraces.
func (s source) display() string {
	if s.Embedded {
		return "recipes/" + s.Path
	}
	return s.Path
}

func (s source) read() ([]byte, error) {
	if s.Embedded {
		return fs.ReadFile(recipes.FS, s.Path)
	}
	return os.ReadFile(s.Path)
}

// resolveLoad finds the file a load() statement names, relative to from.
func resolveLoad(from source, module string) (source, error) {
	switch {
	case strings.HasPrefix(module, BundledPrefix):
		p := path.Clean(strings.TrimPrefix(module, BundledPrefix))
		if strings.HasPrefix(p, "../") {
			return source{}, fmt.Errorf("load %q: outside the bundled recipes", module)
		}
		return source{Path: p, Embedded: true}, nil
	case filepath.IsAbs(module):
		return source{Path: filepath.Clean(module)}, nil
	case from.Embedded:
		p := path.Clean(path.Join(path.Dir(from.Path), module))
		if strings.HasPrefix(p, "../") {
			return source{}, fmt.Errorf("load %q from %s: outside the bundled recipes", module, from.display())
		}
		return source{Path: p, Embedded: true}, nil
	default:
		return source{Path: filepath.Join(filepath.Dir(from.Path), module)}, nil
	}
}

// newThread makes a thread sharing the run's print, load and context:
// cancelling the run's context (Ctrl-C) cancels the thread. Call stop when
// the thread is done.
func (rt *Runtime) newThread(name string, from source) (th *starlark.Thread, stop func()) {
	th = &starlark.Thread{Name: name}
	th.Print = func(_ *starlark.Thread, msg string) {
		if rt.Door.DryRun {
			for _, line := range strings.Split(msg, "\n") {
				rt.Door.Print("# " + line)
			}
			return
		}
		fmt.Fprintln(rt.Stdout, rt.Door.Mask(msg))
	}
	th.Load = func(t *starlark.Thread, module string) (starlark.StringDict, error) {
		src, err := resolveLoad(from, module)
		if err != nil {
			return nil, err
		}
		return rt.exec(src)
	}
	ctx := rt.Door.Context()
	th.SetLocal(trace.ContextKey, ctx)
	stopCancel := context.AfterFunc(ctx, func() { th.Cancel("interrupted") })
	return th, func() { stopCancel() }
}

// exec runs a file once and caches its globals (load semantics).
func (rt *Runtime) exec(src source) (starlark.StringDict, error) {
	k := src.key()
	if e, ok := rt.cache[k]; ok {
		if e.busy {
			return nil, fmt.Errorf("cycle in load graph involving %s", src.display())
		}
		return e.globals, e.err
	}
	e := &loadEntry{busy: true}
	rt.cache[k] = e
	data, err := src.read()
	if err != nil {
		e.busy, e.err = false, fmt.Errorf("load %s: %w", src.display(), err)
		return nil, e.err
	}
	th, stop := rt.newThread(src.display(), src)
	defer stop()
	g, err := starlark.ExecFileOptions(trace.FileOptions(), th, src.display(), data, rt.predeclared)
	e.busy, e.globals, e.err = false, g, err
	return g, err
}

// findRecipe resolves what `pifarm run X` names: a bundled name ("enrol"),
// a file on disk, or a bundled path ("recipes/enrol.star") that falls back to
// the embedded copy when no such file exists on disk.
func findRecipe(name string) (source, string, error) {
	base := strings.TrimSuffix(path.Base(filepath.ToSlash(name)), ".star")
	if !strings.ContainsRune(name, '/') && !strings.HasSuffix(name, ".star") {
		p := name + ".star"
		if _, err := fs.Stat(recipes.FS, p); err == nil {
			return source{Path: p, Embedded: true}, name, nil
		}
		return source{}, "", trace.Usagef("no bundled recipe %q (see `pifarm recipes`; a file must end in .star)", name)
	}
	if fi, err := os.Stat(name); err == nil && !fi.IsDir() {
		abs, _ := filepath.Abs(name)
		return source{Path: abs}, base, nil
	}
	slash := filepath.ToSlash(name)
	if i := strings.LastIndex(slash, "recipes/"); i >= 0 {
		p := slash[i+len("recipes/"):]
		if _, err := fs.Stat(recipes.FS, p); err == nil {
			return source{Path: p, Embedded: true}, base, nil
		}
	}
	if _, err := fs.Stat(recipes.FS, slash); err == nil && !strings.HasPrefix(slash, "/") {
		return source{Path: slash, Embedded: true}, base, nil
	}
	return source{}, "", trace.Usagef("recipe %s: no such file (nor a bundled recipe of that name)", name)
}

// BundledRecipes lists the top-level bundled recipe names.
func BundledRecipes() []string {
	ents, _ := fs.ReadDir(recipes.FS, ".")
	var names []string
	for _, e := range ents {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".star") {
			names = append(names, strings.TrimSuffix(e.Name(), ".star"))
		}
	}
	sort.Strings(names)
	return names
}

// loadSpec executes a recipe's top level and reads its declarations.
func (rt *Runtime) loadSpec(src source, name string) (*spec, starlark.StringDict, error) {
	g, err := rt.exec(src)
	if err != nil {
		return nil, nil, err
	}
	s, err := readSpec(name, g)
	return s, g, err
}

// RunRecipe parses argv against the recipe's declared command line and calls
// its main(opts). A file that declares no OPTIONS, ARGS or main is a plain
// script: its argv is parsed (pifarm's own -n/-v/-h only) before its top
// level, which is the program, runs. The cache folder is checked (and made,
// 0700, when missing) once, after the command line is known and before the
// first step of the recipe or script.
func (rt *Runtime) RunRecipe(src source, name string, argv []string, longHelp bool) (err error) {
	defer recoverPanic(src.display(), &err)
	script := isScript(src)
	s, g := &spec{recipe: name}, starlark.StringDict(nil)
	if !script {
		if s, g, err = rt.loadSpec(src, name); err != nil {
			return err
		}
	}
	p, err := s.parse(argv, rt.Farm, func(n *farm.Node) starlark.Value { return rt.Farm.NodeStruct(n) })
	if err != nil {
		return err
	}
	if p.help {
		fmt.Fprint(rt.Stdout, s.usage(longHelp || p.verbose))
		return nil
	}
	rt.applyFlags(p)
	mainFn, ok := g["main"].(starlark.Callable)
	if !script && !ok {
		return fmt.Errorf("recipe %s declares OPTIONS or ARGS but defines no main(opts) function (a plain script has neither)", src.display())
	}
	if err := rt.prepareCache(); err != nil {
		return err
	}
	if p.jobs > 0 {
		rt.Fan.Jobs = p.jobs
	}
	rt.Farm.Jobs = rt.jobs()
	if p.fanout != nil {
		rt.Fan.FailFast = rt.Fan.FailFast || p.failFast
		return rt.fanOut(src, name, argv, p)
	}
	if script {
		_, err = rt.exec(src)
		return err
	}
	th, stop := rt.newThread(name, src)
	defer stop()
	_, err = starlark.Call(th, mainFn, starlark.Tuple{p.opts()}, nil)
	return err
}

// applyFlags applies pifarm's own options given after the recipe name, to
// the door and to what the recipe reads (farm.dry_run, farm.verbose).
func (rt *Runtime) applyFlags(p *parsed) {
	if p.dryRun {
		rt.Door.DryRun = true
		rt.Door.Out = rt.Stdout
	}
	if p.verbose {
		rt.Door.Verbose = true
	}
	rt.setFlags(rt.Door.DryRun, rt.Door.Verbose)
}

// setFlags sets what the recipe reads as farm.dry_run, farm.verbose and
// farm.terminal (standard output is a terminal; never for one node of a
// node set, whose output goes to its log).
func (rt *Runtime) setFlags(dryRun, verbose bool) {
	if m, ok := rt.predeclared["farm"].(*starlarkstruct.Module); ok {
		m.Members["dry_run"] = starlark.Bool(dryRun)
		m.Members["verbose"] = starlark.Bool(verbose)
		m.Members["terminal"] = starlark.Bool(rt.Fan.Terminal)
	}
}

// scriptNames are the top-level names that make a file a recipe rather than
// a plain script.
var scriptNames = map[string]bool{"main": true, "OPTIONS": true, "ARGS": true}

// isScript reports whether the file binds none of main, OPTIONS and ARGS at
// its top level (by def, assignment or load), read from its syntax before
// anything runs. A file that does not parse is not called a script: running
// it reports the syntax error.
func isScript(src source) bool {
	data, err := src.read()
	if err != nil {
		return false
	}
	f, err := trace.FileOptions().Parse(src.display(), data, 0)
	if err != nil {
		return false
	}
	bound := false
	var bind func(e syntax.Expr)
	bind = func(e syntax.Expr) {
		switch x := e.(type) {
		case *syntax.Ident:
			bound = bound || scriptNames[x.Name]
		case *syntax.TupleExpr:
			for _, y := range x.List {
				bind(y)
			}
		case *syntax.ListExpr:
			for _, y := range x.List {
				bind(y)
			}
		case *syntax.ParenExpr:
			bind(x.X)
		}
	}
	// Global names are bound by the top-level statements and by those
	// nested in top-level if/for/while (not by a function's body).
	var walk func(stmts []syntax.Stmt)
	walk = func(stmts []syntax.Stmt) {
		for _, st := range stmts {
			switch x := st.(type) {
			case *syntax.DefStmt:
				bind(x.Name)
			case *syntax.AssignStmt:
				bind(x.LHS)
			case *syntax.LoadStmt:
				for _, id := range x.To {
					bind(id)
				}
			case *syntax.ForStmt:
				bind(x.Vars)
				walk(x.Body)
			case *syntax.WhileStmt:
				walk(x.Body)
			case *syntax.IfStmt:
				walk(x.True)
				walk(x.False)
			}
		}
	}
	walk(f.Stmts)
	return !bound
}

// recoverPanic turns a panic inside Starlark or a builtin into an error
// naming the file, so that no recipe text can crash pifarm with a Go stack
// trace.
func recoverPanic(file string, err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%s: internal error while running it (a bug in pifarm, please report it with this file): %v", file, r)
	}
}

// prepareCache checks the cache folder (farm.CheckCache: a folder of this
// user's, not writable by others) and, when it does not exist yet, makes it
// with mode 0700 through the door (a dry run prints the mkdir).
func (rt *Runtime) prepareCache() error {
	dir := rt.Farm.Config.CacheDir()
	exists, err := farm.CheckCache(dir)
	if err != nil || exists {
		return err
	}
	return rt.Door.Do("mkdir -p -m 700 "+trace.Quote(dir), func() error { return farm.MakeCache(dir) })
}

// Summary returns a bundled recipe's SUMMARY (executing its top level only).
func (rt *Runtime) Summary(name string) (summary string, err error) {
	src, _, err := findRecipe(name)
	if err != nil {
		return "", err
	}
	defer recoverPanic(src.display(), &err)
	s, _, err := rt.loadSpec(src, name)
	if err != nil {
		return "", err
	}
	return s.summary, nil
}

// errorText renders an error for the user: the innermost Starlark
// backtrace (file:line of the recipe) and the Go error that caused it.
func errorText(err error) string {
	var inner *starlark.EvalError
	for e := err; e != nil; e = errors.Unwrap(e) {
		if x, ok := e.(*starlark.EvalError); ok {
			inner = x
		}
	}
	if inner == nil {
		// The resolver reports every undefined name of a file; its
		// Error() shows only the first.
		var el resolve.ErrorList
		if errors.As(err, &el) {
			lines := make([]string, len(el))
			for i, e := range el {
				lines[i] = e.Error()
			}
			return strings.Join(lines, "\n")
		}
		return err.Error()
	}
	return backtrace(inner)
}

// backtrace is Starlark's backtrace of e with a frame repeated over and over
// (endless recursion) shown a few times and then counted, not 100,000 times.
func backtrace(e *starlark.EvalError) string {
	var b strings.Builder
	// as EvalError.Backtrace: a builtin on top is named in the Error line
	frames, suffix := e.CallStack, ""
	if last := len(frames) - 1; last >= 0 && frames[last].Pos.Filename() == "<builtin>" {
		suffix = " in " + frames[last].Name
		frames = frames[:last]
	}
	if len(frames) > 0 {
		b.WriteString("Traceback (most recent call last):\n")
	}
	for i := 0; i < len(frames); {
		j := i + 1
		for j < len(frames) && frames[j] == frames[i] {
			j++
		}
		shown := j - i
		if shown > 3 {
			shown = 3
		}
		for k := 0; k < shown; k++ {
			fmt.Fprintf(&b, "  %s: in %s\n", frames[i].Pos, frames[i].Name)
		}
		if n := j - i - shown; n > 0 {
			fmt.Fprintf(&b, "  [the line above repeats %d more times]\n", n)
		}
		i = j
	}
	b.WriteString("Error" + suffix + ": " + e.Msg)
	return b.String()
}
