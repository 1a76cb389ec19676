package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/term"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// Version is pifarm's version, set at build time with
// -ldflags "-X pifarm/builtins/runtime.Version=...".
var Version = "0.1.0"

// Options is one invocation of the pifarm command.
type Options struct {
	Args           []string
	Stdout, Stderr io.Writer
	Ctx            context.Context
	// DefaultConfig is the built-in config.star (main embeds it): what
	// `pifarm config` prints and the base every other configuration is
	// read over. Without it, a command that needs a configuration fails.
	DefaultConfig []byte
	// NotRoot makes the door add the privilege prefix even when running as
	// root (golden tests).
	NotRoot bool
}

// Exit statuses.
const (
	ExitOK      = 0
	ExitFailed  = 1
	ExitUsage   = 2
	usageHeader = "usage: pifarm [-n] [-v] [-c FILE] [-j N] [--fail-fast] COMMAND [ARGS...]"
)

// shortHelp is `pifarm --help`; modules is the module list (moduleIndex).
func shortHelp(modules string) string {
	return usageHeader + `

commands:
  run RECIPE [ARGS...]     run a bundled recipe (by name), a bundled path
                           (recipes/enrol.star) or your own .star file
  recipes                  list the bundled recipes
  doc [MODULE[.FUNCTION]]  reference of the builtin modules
  config                   print the built-in default config.star
  runs [RUN [NODE]]        the recent runs over node sets, one run's outcome
                           per node (RUN: last, or a run's name), a node's log

options:
  -n, --dry-run            print every action as a shell command, change nothing
  -v, --verbose            print every action as it runs
  -c, --config=FILE        use FILE instead of the config lookup
  -j, --jobs=N             a node set runs at most N nodes at a time (default:
                           the CPUs pifarm may use, fewer when as many guests
                           of qemu.memory do not fit in available memory)
      --fail-fast          a node set stops every node when one fails
  -h, --help               this help; -hv: the long explanation
      --version            print the version

'pifarm run RECIPE --help' prints a recipe's own options.

builtin modules (pifarm doc MODULE for one):
` + modules
}

const longHelp = `
pifarm develops software on a farm of Raspberry Pi 3 B+ nodes: QEMU guests
(instance 0 on a raw RaspiOS image, instances N > 0 on qcow2 clones of it) and
hardware boxes, all running copies of one disk image. The Go builtin modules
listed above do every side effect; bundled Starlark recipes compose them: image
(pimage), box (pibox), guest/enrol/shutdown/status (pijack) and bridge (pinet).

Dry run: with -n every builtin prints the equivalent shell command of each
action it would take (sudo shown where it would be used, passwords masked) and
changes nothing; queries (reading a partition table, probing a port) still run.
The output is a script you can audit or paste.

Configuration: -c FILE, else $PIFARM_CONFIG, else ./config.star, else
$XDG_CONFIG_HOME/pifarm/config.star (~/.config/pifarm/config.star), else the
built-in default (see 'pifarm config'). It holds the cache folder, image sizes,
disk margin, pi passwords, the privilege command, QEMU settings, port bases and
the node table.

Node sets: a recipe declared with one instance argument, given a node set
(1-4, 1,3,entwo, all, qemu, hardware, @TAG), runs once per node, concurrently,
each run with its own options, door and log; recipes need no change. -j N
bounds how many nodes run at once. Its default is the number of CPUs pifarm
may use (its CPU affinity), lowered so that as many guests of config.star's
qemu.memory fit in the host's available memory (MemAvailable of
/proc/meminfo), and at least 1: QEMU boots are CPU-bound. One node's failure
never stops the others unless --fail-fast. On a terminal each node has a
status line (elapsed time, state, current step) updated in place, and a
failure is printed in full when it happens; in a pipe or with -v every line
is prefixed "<id> alias |", and a table of the outcomes ends the run
(standard error). A dry run prints each node's trace as its own block, in
node order.

Exit status: 0 success (of every node of a node set), 1 a recipe failed
(fail() or a builtin error; the Starlark backtrace and the cause are printed;
for a node set: any node failed), 2 usage error (unknown option, recipe,
instance or node).
`

type globals struct {
	dryRun, verbose, help, version bool
	failFast                       bool
	jobs                           int
	config                         string
	rest                           []string
}

func parseGlobals(args []string) (*globals, error) {
	g := &globals{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			g.rest = args[i+1:]
			return g, nil
		case a == "--dry-run":
			g.dryRun = true
		case a == "--verbose":
			g.verbose = true
		case a == "--help":
			g.help = true
		case a == "--version":
			g.version = true
		case a == "--fail-fast":
			g.failFast = true
		case a == "--jobs" || strings.HasPrefix(a, "--jobs="):
			v, ok := strings.CutPrefix(a, "--jobs=")
			n, err := jobsValue("", "--jobs", v, ok, args, &i)
			if err != nil {
				return nil, err
			}
			g.jobs = n
		case a == "--config":
			if i+1 >= len(args) {
				return nil, trace.Usagef("option --config needs a FILE")
			}
			i++
			g.config = args[i]
		case strings.HasPrefix(a, "--config="):
			g.config = strings.TrimPrefix(a, "--config=")
		case strings.HasPrefix(a, "--"):
			return nil, trace.Usagef("unknown option %s", a)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			for j := 1; j < len(a); j++ {
				switch a[j] {
				case 'n':
					g.dryRun = true
				case 'v':
					g.verbose = true
				case 'h':
					g.help = true
				case 'j':
					n, err := jobsValue("", "-j", a[j+1:], j+1 < len(a), args, &i)
					if err != nil {
						return nil, err
					}
					g.jobs = n
					j = len(a)
				case 'c':
					v := a[j+1:]
					if v == "" {
						if i+1 >= len(args) {
							return nil, trace.Usagef("option -c needs a FILE")
						}
						i++
						v = args[i]
					}
					g.config = v
					j = len(a)
				default:
					return nil, trace.Usagef("unknown option -%c", a[j])
				}
			}
		default:
			g.rest = args[i:]
			return g, nil
		}
	}
	return g, nil
}

// findConfig applies the lookup order and loads the configuration over the
// built-in one (builtin, config.star's text); ctx (Ctrl-C) stops a
// config.star that does not finish.
func findConfig(ctx context.Context, builtin []byte, explicit string) (*farm.Config, error) {
	candidates := []string{}
	if explicit != "" {
		candidates = append(candidates, explicit)
	} else {
		if p := os.Getenv("PIFARM_CONFIG"); p != "" {
			candidates = append(candidates, p)
		} else {
			if _, err := os.Stat("config.star"); err == nil {
				candidates = append(candidates, "config.star")
			} else {
				xdg := os.Getenv("XDG_CONFIG_HOME")
				if xdg == "" {
					if h, err := os.UserHomeDir(); err == nil {
						xdg = filepath.Join(h, ".config")
					}
				}
				if xdg != "" {
					p := filepath.Join(xdg, "pifarm", "config.star")
					if _, err := os.Stat(p); err == nil {
						candidates = append(candidates, p)
					}
				}
			}
		}
	}
	if builtin == nil {
		return nil, errors.New("no built-in config.star (Options.DefaultConfig is empty: the pifarm command sets it from the embedded file)")
	}
	base, err := farm.Load("the built-in config.star", builtin)
	if err != nil {
		return nil, fmt.Errorf("the built-in config.star: %w", err)
	}
	if len(candidates) == 0 {
		return base, nil
	}
	c, err := farm.LoadContext(ctx, base, candidates[0], nil)
	if err != nil {
		var ce *farm.ConfigError
		if errors.As(err, &ce) {
			return nil, err
		}
		return nil, fmt.Errorf("config %s: %w", candidates[0], err)
	}
	return c, nil
}

// Main runs the pifarm command and returns its exit status.
func Main(o Options) int {
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	if o.Ctx == nil {
		o.Ctx = context.Background()
	}
	fail := func(code int, err error) int {
		msg := errorText(err)
		fmt.Fprintf(o.Stderr, "pifarm: %s\n", msg)
		if cause := rootCause(err); cause != "" && !strings.Contains(msg, cause) {
			fmt.Fprintf(o.Stderr, "cause: %s\n", cause)
		}
		return code
	}
	g, err := parseGlobals(o.Args)
	if err != nil {
		fmt.Fprintf(o.Stderr, "pifarm: %v\n%s\n", err, usageHeader)
		return ExitUsage
	}
	if g.version {
		fmt.Fprintf(o.Stdout, "pifarm %s\n", Version)
		return ExitOK
	}
	if len(g.rest) == 0 || (g.help && g.rest[0] != "run") {
		if !g.help {
			fmt.Fprintf(o.Stderr, "%s\n(pifarm --help lists the commands)\n", usageHeader)
			return ExitUsage
		}
		fmt.Fprint(o.Stdout, shortHelp(moduleIndex()))
		if g.verbose {
			fmt.Fprint(o.Stdout, longHelp)
		}
		return ExitOK
	}
	cmd, rest := g.rest[0], g.rest[1:]
	if cmd == "config" {
		o.Stdout.Write(o.DefaultConfig)
		return ExitOK
	}
	cfg, err := findConfig(o.Ctx, o.DefaultConfig, g.config)
	if err != nil {
		fmt.Fprintf(o.Stderr, "pifarm: %v\n", err)
		if o.Ctx.Err() != nil {
			return ExitFailed
		}
		return ExitUsage
	}
	out := o.Stderr
	if g.dryRun {
		out = o.Stdout
	}
	d := trace.New(o.Ctx, g.dryRun, g.verbose, out)
	if o.NotRoot {
		d.Root = false
	}
	rt := New(d, cfg, o.Stdout)
	defer rt.End()
	rt.Fan = FanOptions{Jobs: g.jobs, FailFast: g.failFast, Stderr: o.Stderr}
	if f, ok := o.Stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) && os.Getenv("TERM") != "dumb" {
		rt.Fan.Terminal = true
		rt.Fan.Size = func() (int, int) {
			c, r, err := term.GetSize(int(f.Fd()))
			if err != nil {
				return 0, 0
			}
			return c, r
		}
	}
	switch cmd {
	case "run":
		if len(rest) == 0 {
			fmt.Fprintf(o.Stderr, "pifarm: run needs a RECIPE (see `pifarm recipes`)\n")
			return ExitUsage
		}
		src, name, err := findRecipe(rest[0])
		if err != nil {
			return fail(ExitUsage, err)
		}
		argv := rest[1:]
		if g.help {
			argv = append([]string{"--help"}, argv...)
		}
		if err := rt.RunRecipe(src, name, argv, g.verbose && g.help); err != nil {
			if trace.IsUsage(err) {
				return fail(ExitUsage, err)
			}
			return fail(ExitFailed, err)
		}
		return ExitOK
	case "recipes":
		w := 0
		names := BundledRecipes()
		for _, n := range names {
			if len(n) > w {
				w = len(n)
			}
		}
		for _, n := range names {
			s, err := rt.Summary(n)
			if err != nil {
				s = "(broken: " + lastLine(errorText(err)) + ")"
			}
			fmt.Fprintf(o.Stdout, "%-*s  %s\n", w, n, s)
		}
		return ExitOK
	case "doc":
		return rt.doc(rest, o.Stdout, o.Stderr)
	case "runs":
		return rt.runsCmd(rest, o.Stdout, o.Stderr)
	}
	fmt.Fprintf(o.Stderr, "pifarm: unknown command %q\n%s\n", cmd, usageHeader)
	return ExitUsage
}

// End lets every module undo what the run still holds (consoles logged
// out), however the run ended: error, Ctrl-C or success.
func (rt *Runtime) End() {
	for _, m := range rt.Modules {
		if m.End != nil {
			m.End()
		}
	}
}

func (rt *Runtime) doc(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stdout, "pifarm builtin modules (pifarm doc MODULE for one, MODULE.FUNCTION for a function):")
		fmt.Fprintln(stdout)
		for _, m := range rt.Modules {
			fmt.Fprintf(stdout, "%-8s %s\n", m.Name, trace.Summary(m.Doc))
			for _, f := range m.Funcs {
				fmt.Fprintf(stdout, "  %s.%s(%s)\n      %s\n", m.Name, f.Name, f.Args, trace.Summary(f.Doc))
			}
		}
		fmt.Fprintln(stdout, "\nalso predeclared: json (encode, decode, indent), time (now, parse_duration, ...), struct(**kwargs), fail, print")
		return ExitOK
	}
	mod, fn, _ := strings.Cut(args[0], ".")
	for _, m := range rt.Modules {
		if m.Name != mod {
			continue
		}
		ref, ok := m.Reference(fn)
		if !ok {
			fmt.Fprintf(stderr, "pifarm: doc: module %s has no function %q\n", mod, fn)
			return ExitUsage
		}
		fmt.Fprint(stdout, ref)
		return ExitOK
	}
	var names []string
	for _, m := range rt.Modules {
		names = append(names, m.Name)
	}
	fmt.Fprintf(stderr, "pifarm: doc: no module %q (modules: %s)\n", mod, strings.Join(names, ", "))
	return ExitUsage
}

// lastLine is the last line of s: of a Starlark backtrace, the error
// itself ("Error: ...").
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// rootCause is the innermost Go error beneath Starlark's wrapping, when it
// adds information. Errors are never compared with == here: some (the
// resolver's ErrorList, a slice) are not comparable.
func rootCause(err error) string {
	last, depth := err, 0
	for e := errors.Unwrap(err); e != nil; e = errors.Unwrap(e) {
		last, depth = e, depth+1
	}
	if depth == 0 {
		return ""
	}
	return last.Error()
}
