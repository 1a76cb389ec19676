package runtime

import (
	"fmt"
	"sort"
	"strings"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// optSpec is one recipe option declared with args.flag or args.option.
type optSpec struct {
	short, long, metavar, help string
	takesValue                 bool
	// many: the option may be given again and again; its value is the
	// list of the values given (empty when none).
	many bool
	def  starlark.Value
}

// posSpec is one positional argument declared with args.instance,
// args.instances or args.positional.
type posSpec struct {
	name, help string
	instance   bool
	many       bool
	required   bool
	def        string // default when not required ("" = None)
}

func (o *optSpec) String() string {
	return fmt.Sprintf("args.option(%q, %q)", o.short, o.long)
}
func (o *optSpec) Type() string          { return "args.option" }
func (o *optSpec) Freeze()               {}
func (o *optSpec) Truth() starlark.Bool  { return true }
func (o *optSpec) Hash() (uint32, error) { return starlark.String(o.long).Hash() }

func (p *posSpec) String() string        { return fmt.Sprintf("args.positional(%q)", p.name) }
func (p *posSpec) Type() string          { return "args.positional" }
func (p *posSpec) Freeze()               {}
func (p *posSpec) Truth() starlark.Bool  { return true }
func (p *posSpec) Hash() (uint32, error) { return starlark.String(p.name).Hash() }

// field is the Starlark attribute name of an option or argument.
func field(name string) string {
	return strings.ReplaceAll(strings.ToLower(name), "-", "_")
}

// optionHelpDoc says how an option's help is shown, once for flag and
// option.
const optionHelpDoc = "The first line of help is the\noption's row in --help; further lines, the details, follow it with -hv (written once,\nnot again in HELP)."

// argsModule is the `args` module recipes use to declare their command
// line. It needs neither the door nor the farm; it takes them to have the
// signature of every registered module.
func argsModule(*trace.Door, *farm.Farm) *trace.Module {
	return &trace.Module{
		Name: "args",
		Doc:  "Declarations of a recipe's command line: assign a list of them to OPTIONS and ARGS.",
		Funcs: []trace.Func{
			{Name: "flag", Args: "short, long, help", Fn: argsFlag,
				Doc: "A flag option: -s/--long. In main(opts) it is opts.long (True when given).\nshort may be \"\" for a long-only option. " + optionHelpDoc},
			{Name: "option", Args: "short, long, metavar, help, default=None, many=False", Fn: argsOption,
				Doc: "An option with a value: -s VALUE, -sVALUE, --long=VALUE or --long VALUE.\nIn main(opts) it is opts.long: the string given, else default. With many=True it may be\ngiven again and again, and opts.long is the list of the values given in order (empty when\nnone). " + optionHelpDoc},
			{Name: "instance", Args: "default=\"0\", required=False, help=\"\"", Fn: argsInstance,
				Doc: "One positional instance (node id or alias), resolved through the node table:\nopts.instance is a farm.node(...) struct. Unknown ids or aliases are usage errors.\ndefault=None with required=False makes opts.instance None when absent.\nA node set given for it (1-4, 1,3,entwo, all, qemu, hardware, @TAG) runs the recipe once\nper node, concurrently, each run with its own opts (see pifarm -hv)."},
			{Name: "instances", Args: "help=\"\"", Fn: argsInstances,
				Doc: "Any number of positional instances: opts.instances is a list of farm.node(...) structs\n(empty when none is given). Each argument may be a node set (1-4, 1,3,entwo, all, qemu,\nhardware, @TAG); the nodes come in the order given, each once."},
			{Name: "positional", Args: "name, help=\"\", required=False, many=False, default=None", Fn: argsPositional,
				Doc: "A positional string argument: opts.<name> (a list with many=True)."},
		},
	}
}

func argsFlag(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	o := &optSpec{def: starlark.False}
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "short", &o.short, "long", &o.long, "help?", &o.help); err != nil {
		return nil, err
	}
	return o, o.check()
}

func argsOption(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	o := &optSpec{takesValue: true, def: starlark.None}
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "short", &o.short, "long", &o.long,
		"metavar", &o.metavar, "help?", &o.help, "default?", &o.def, "many?", &o.many); err != nil {
		return nil, err
	}
	if o.many {
		if o.def != starlark.None {
			return nil, fmt.Errorf("%s: option --%s takes many values: its default is the empty list, not %s", b.Name(), o.long, o.def)
		}
		o.def = starlark.NewList(nil)
	}
	return o, o.check()
}

func argsInstance(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	p := &posSpec{name: "instance", instance: true}
	var def starlark.Value = starlark.String("0")
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "default?", &def, "required?", &p.required, "help?", &p.help); err != nil {
		return nil, err
	}
	if def != starlark.None {
		switch d := def.(type) {
		case starlark.String:
			p.def = string(d)
		case starlark.Int:
			p.def = d.String()
		default:
			return nil, fmt.Errorf("default must be an id, an alias or None, got %s", def.Type())
		}
	}
	return p, nil
}

func argsInstances(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	p := &posSpec{name: "instances", instance: true, many: true}
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "help?", &p.help); err != nil {
		return nil, err
	}
	return p, nil
}

func argsPositional(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	p := &posSpec{}
	var def starlark.Value = starlark.None
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "name", &p.name, "help?", &p.help,
		"required?", &p.required, "many?", &p.many, "default?", &def); err != nil {
		return nil, err
	}
	if s, ok := starlark.AsString(def); ok {
		p.def = s
	}
	return p, nil
}

func (o *optSpec) check() error {
	if len(o.short) > 1 || strings.HasPrefix(o.short, "-") {
		return fmt.Errorf("short option %q must be one character (or \"\")", o.short)
	}
	if o.long == "" || strings.HasPrefix(o.long, "-") || strings.ContainsAny(o.long, " =") {
		return fmt.Errorf("long option %q must be a name like \"disk-image\"", o.long)
	}
	return nil
}

// spec is a recipe's declared command line.
type spec struct {
	recipe  string
	summary string
	help    string
	opts    []*optSpec
	pos     []*posSpec
}

func readSpec(name string, g starlark.StringDict) (*spec, error) {
	s := &spec{recipe: name}
	if v, ok := g["SUMMARY"]; ok {
		s.summary, _ = starlark.AsString(v)
	}
	if v, ok := g["HELP"]; ok {
		s.help, _ = starlark.AsString(v)
	}
	if v, ok := g["OPTIONS"]; ok {
		l, ok := v.(starlark.Indexable)
		if !ok {
			return nil, fmt.Errorf("%s: OPTIONS must be a list of args.flag/args.option", name)
		}
		for i := 0; i < l.Len(); i++ {
			o, ok := l.Index(i).(*optSpec)
			if !ok {
				return nil, fmt.Errorf("%s: OPTIONS[%d] is %s, want args.flag(...) or args.option(...)", name, i, l.Index(i).Type())
			}
			s.opts = append(s.opts, o)
		}
	}
	if v, ok := g["ARGS"]; ok {
		l, ok := v.(starlark.Indexable)
		if !ok {
			return nil, fmt.Errorf("%s: ARGS must be a list of args.instance/args.instances/args.positional", name)
		}
		for i := 0; i < l.Len(); i++ {
			p, ok := l.Index(i).(*posSpec)
			if !ok {
				return nil, fmt.Errorf("%s: ARGS[%d] is %s, want args.instance(...), args.instances(...) or args.positional(...)", name, i, l.Index(i).Type())
			}
			if p.many && i != l.Len()-1 {
				return nil, fmt.Errorf("%s: ARGS[%d] takes many values and must come last", name, i)
			}
			s.pos = append(s.pos, p)
		}
	}
	// The global options work after the recipe name too: a recipe may not
	// take them over (its -n would silently run live what was meant dry).
	seen := map[string]bool{"-h": true, "-v": true, "-n": true, "--help": true, "--verbose": true, "--dry-run": true}
	for _, o := range s.opts {
		for _, k := range []string{"-" + o.short, "--" + o.long} {
			if k == "-" {
				continue
			}
			if seen[k] {
				if strings.Contains(" -h -v -n --help --verbose --dry-run ", " "+k+" ") {
					return nil, fmt.Errorf("%s: option %s is pifarm's own (help, verbose, dry run); choose another", name, k)
				}
				return nil, fmt.Errorf("%s: option %s declared twice", name, k)
			}
			seen[k] = true
		}
	}
	return s, nil
}

// parsed is the outcome of parsing a recipe's arguments.
type parsed struct {
	help, verbose, dryRun bool
	values                map[string]starlark.Value
	// fanout holds the nodes of a node set given for a recipe's one
	// instance argument (opts.<fanoutField>, written fanoutText): the
	// recipe runs once per node. Nil for one id or alias.
	fanout      []*farm.Node
	fanoutField string
	fanoutText  string
	// jobs and failFast are -j N and --fail-fast given after the recipe
	// name (0, false: not given).
	jobs     int
	failFast bool
}

// parse applies GNU-style parsing to argv. The global -h/--help,
// -v/--verbose and -n/--dry-run are recognised after the recipe name too,
// unless the recipe declares the same names.
func (s *spec) parse(argv []string, f *farm.Farm, fm func(*farm.Node) starlark.Value) (*parsed, error) {
	p := &parsed{values: map[string]starlark.Value{}}
	for _, o := range s.opts {
		p.values[field(o.long)] = o.def
		if o.many {
			p.values[field(o.long)] = starlark.NewList(nil)
		}
	}
	set := func(o *optSpec, val string) {
		if l, ok := p.values[field(o.long)].(*starlark.List); ok && o.many {
			l.Append(starlark.String(val))
			return
		}
		p.values[field(o.long)] = starlark.String(val)
	}
	byShort, byLong := map[string]*optSpec{}, map[string]*optSpec{}
	for _, o := range s.opts {
		if o.short != "" {
			byShort[o.short] = o
		}
		byLong[o.long] = o
	}
	global := func(name string) bool {
		switch name {
		case "h", "help":
			p.help = true
		case "v", "verbose":
			p.verbose = true
		case "n", "dry-run":
			p.dryRun = true
		default:
			return false
		}
		return true
	}
	var positional []string
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		switch {
		case a == "--":
			positional = append(positional, argv[i+1:]...)
			i = len(argv)
		case strings.HasPrefix(a, "--"):
			name, val, hasVal := strings.Cut(a[2:], "=")
			o := byLong[name]
			if o == nil && name == "jobs" {
				n, err := jobsValue(s.recipe+": ", "--jobs", val, hasVal, argv, &i)
				if err != nil {
					return nil, err
				}
				p.jobs = n
				continue
			}
			if o == nil && name == "fail-fast" && !hasVal {
				p.failFast = true
				continue
			}
			if o == nil {
				if !hasVal && global(name) {
					continue
				}
				return nil, trace.Usagef("%s: unknown option --%s%s", s.recipe, name, s.suggest(name))
			}
			if !o.takesValue {
				if hasVal {
					return nil, trace.Usagef("%s: option --%s takes no value", s.recipe, name)
				}
				p.values[field(o.long)] = starlark.True
				continue
			}
			if !hasVal {
				if i+1 >= len(argv) {
					return nil, trace.Usagef("%s: option --%s needs a value (%s)", s.recipe, name, o.metavar)
				}
				i++
				val = argv[i]
			}
			set(o, val)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			for j := 1; j < len(a); j++ {
				c := string(a[j])
				o := byShort[c]
				if o == nil && c == "j" {
					n, err := jobsValue(s.recipe+": ", "-j", a[j+1:], j+1 < len(a), argv, &i)
					if err != nil {
						return nil, err
					}
					p.jobs = n
					break
				}
				if o == nil {
					if global(c) {
						continue
					}
					return nil, trace.Usagef("%s: unknown option -%s", s.recipe, c)
				}
				if !o.takesValue {
					p.values[field(o.long)] = starlark.True
					continue
				}
				val := a[j+1:]
				if val == "" {
					if i+1 >= len(argv) {
						return nil, trace.Usagef("%s: option -%s needs a value (%s)", s.recipe, c, o.metavar)
					}
					i++
					val = argv[i]
				}
				set(o, val)
				break
			}
		default:
			positional = append(positional, a)
		}
	}
	if p.help {
		return p, nil
	}
	for _, ps := range s.pos {
		var take []string
		switch {
		case ps.many:
			take, positional = positional, nil
		case len(positional) > 0:
			take, positional = positional[:1], positional[1:]
		case ps.required:
			return nil, trace.Usagef("%s: missing argument %s", s.recipe, strings.ToUpper(ps.name))
		case ps.def != "":
			take = []string{ps.def}
		}
		if !ps.instance {
			if ps.many {
				l := make([]starlark.Value, len(take))
				for i, t := range take {
					l[i] = starlark.String(t)
				}
				p.values[field(ps.name)] = starlark.NewList(l)
			} else if len(take) == 1 {
				p.values[field(ps.name)] = starlark.String(take[0])
			} else {
				p.values[field(ps.name)] = starlark.None
			}
			continue
		}
		var nodes []starlark.Value
		seen := map[int]bool{}
		for _, t := range take {
			if !ps.many && farm.IsNodeSet(t) {
				// One instance, a node set: the recipe runs once per node.
				set, err := f.Select(t)
				if err != nil {
					return nil, err
				}
				p.fanout, p.fanoutField, p.fanoutText = set, field(ps.name), t
				continue
			}
			set, err := f.Select(t)
			if err != nil {
				return nil, err
			}
			for _, n := range set {
				if !seen[n.ID] {
					seen[n.ID] = true
					nodes = append(nodes, fm(n))
				}
			}
		}
		if ps.many {
			p.values[field(ps.name)] = starlark.NewList(nodes)
		} else if len(nodes) == 1 {
			p.values[field(ps.name)] = nodes[0]
		} else {
			p.values[field(ps.name)] = starlark.None
		}
	}
	if len(positional) > 0 {
		return nil, trace.Usagef("%s: unexpected argument %q", s.recipe, positional[0])
	}
	return p, nil
}

func (s *spec) suggest(name string) string {
	for _, o := range s.opts {
		if strings.HasPrefix(o.long, name) || strings.HasPrefix(name, o.long) {
			return " (did you mean --" + o.long + "?)"
		}
	}
	return ""
}

// opts builds the struct handed to main(opts).
func (p *parsed) opts() *starlarkstruct.Struct {
	d := starlark.StringDict{}
	keys := make([]string, 0, len(p.values))
	for k := range p.values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		d[k] = p.values[k]
	}
	return starlarkstruct.FromStringDict(starlark.String("opts"), d)
}

// usage renders `pifarm run NAME --help` (long adds HELP).
func (s *spec) usage(long bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: pifarm [-n] [-v] run %s", s.recipe)
	if len(s.opts) > 0 {
		b.WriteString(" [OPTIONS]")
	}
	for _, p := range s.pos {
		n := strings.ToUpper(p.name)
		if p.instance {
			n = "N"
		}
		if p.many {
			n += "..."
		}
		if !p.required {
			n = "[" + n + "]"
		}
		b.WriteString(" " + n)
	}
	b.WriteString("\n")
	if s.summary != "" {
		b.WriteString("\n" + s.summary + "\n")
	}
	if long && s.help != "" {
		b.WriteString("\n" + strings.TrimSpace(s.help) + "\n")
	}
	type row struct{ l, r, more string }
	var rows []row
	for _, o := range s.opts {
		l := "    "
		if o.short != "" {
			l = "-" + o.short + ", "
		}
		l += "--" + o.long
		if o.takesValue {
			l += "=" + o.metavar
		}
		if o.many {
			l += "..."
		}
		summary, more, _ := strings.Cut(o.help, "\n")
		rows = append(rows, row{l, summary, more})
	}
	for _, p := range s.pos {
		if p.instance && !p.many {
			rows = append(rows, row{"-j, --jobs=N", "with a node set: at most N nodes at a time", ""},
				row{"    --fail-fast", "with a node set: stop every node when one fails", ""})
		}
	}
	rows = append(rows, row{"-h, --help", "this help; with -v the long explanation", ""},
		row{"-n, --dry-run", "print what would be done, change nothing", ""},
		row{"-v, --verbose", "print every command as it runs", ""})
	b.WriteString("\noptions:\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "  %-28s %s\n", r.l, r.r)
		if long && strings.TrimSpace(r.more) != "" {
			for _, line := range strings.Split(strings.TrimSpace(r.more), "\n") {
				b.WriteString(strings.TrimRight("        "+line, " ") + "\n")
			}
		}
	}
	if len(s.pos) > 0 {
		b.WriteString("\narguments:\n")
		for _, p := range s.pos {
			n := strings.ToUpper(p.name)
			h := p.help
			if p.instance {
				n = "N"
				if h == "" {
					h = "instance: node id or alias from the node table"
					if !p.many {
						h += ", or a node set (one run per node)"
					}
				}
				if p.many {
					n = "N..."
				} else if p.def != "" {
					h += " (default " + p.def + ")"
				}
			}
			fmt.Fprintf(&b, "  %-28s %s\n", n, h)
		}
	}
	return b.String()
}
