package guest

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
	"pifarm/recipes"
)

// New returns the `guest` module. Every function is a query: it reads the
// bundled trees or host folders and returns values; dry-run or not, nothing
// changes anywhere.
func New(d *trace.Door, f *farm.Farm) *trace.Module {
	return NewFS(recipes.FS)
}

// NewFS is New with the bundled recipe tree given (tests use their own).
func NewFS(bundled fs.FS) *trace.Module {
	m := &module{bundled: bundled}
	return &trace.Module{
		Name: "guest",
		Doc: `Guest software trees (base, local and the user's guest_software folder), read and checked on the host.
A tree is files/ (rooted at the guest's /), permissions ("<abs-path> <user>:<group> <octal>"),
packages (Debian names, one per line) and post-install (a sh script run as root). Every
function is a query: nothing is sent anywhere; recipes ship the results with the ssh module.`,
		Funcs: []trace.Func{
			{Name: "tree", Args: "*sources", Fn: m.tree,
				Doc: `Read and merge guest trees into one tree value.
Each source is a bundled tree name ("base", "local") or a host folder (a path with a '/',
~ and $VARS expanded, e.g. config.guest_software); "" and None are skipped. A later
source's file replaces an earlier one with the same guest path; its permission lines
override; package lists are united; post-install scripts run in source order.
Errors (before anything is sent): a permissions line that is not
"<abs-path> <user>:<group> <octal>" or a bad package name, named as tree/file:line.

` + treeMethods.Reference()},
			{Name: "packages", Args: "*lists", Fn: packages,
				Doc: `Check and unite package lists (lists of names, or trees): order of first appearance,
no duplicates. A name that is not Debian package syntax ([a-z0-9][a-z0-9+.-]+, optional
:arch) is an error naming it; nothing is silently dropped.`},
			{Name: "check_user", Args: "name", Fn: checkUser,
				Doc: "name, when it is a valid account name ([a-z_][a-z0-9_.-]*, at most 32 characters); else an error."},
			{Name: "sudoers", Args: "name", Fn: sudoers,
				Doc: `The sudoers drop-in for passwordless sudo of user name, as struct(path, text):
path is /etc/sudoers.d/NAME ('.' replaced by '_', since sudo skips drop-ins whose names
hold a '.'), text is "NAME ALL=(ALL:ALL) NOPASSWD: ALL\n". Install it with mode 0440.`},
			{Name: "quote", Args: "s", Fn: quote,
				Doc: `s quoted for a POSIX shell: unchanged when it holds only safe characters
(letters, digits and -_./:,=+@%), else in single quotes. A newline stays a newline
inside the quotes (no $'\n', which the guest's sh may not know): a quoted script
keeps its lines.`},
		},
	}
}

// module holds what the guest module reads trees from.
type module struct{ bundled fs.FS }

// noKeywords refuses keyword arguments to a function of *args only.
func noKeywords(b *starlark.Builtin, kwargs []starlark.Tuple) error {
	if len(kwargs) > 0 {
		return fmt.Errorf("%s: unexpected keyword argument %s", b.Name(), kwargs[0][0])
	}
	return nil
}

func (m *module) tree(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := noKeywords(b, kwargs); err != nil {
		return nil, err
	}
	t := &Tree{}
	var names []string
	for i, a := range args {
		var src trace.OptString
		if err := src.Unpack(a); err != nil {
			return nil, fmt.Errorf("source %d: want a tree name or folder, got %s", i+1, a.Type())
		}
		if src.S == "" {
			continue
		}
		l, err := OpenSource(m.bundled, src.S, farm.ExpandPath)
		if err != nil {
			return nil, err
		}
		t.Layers = append(t.Layers, l)
		names = append(names, l.Name)
	}
	return &treeValue{t: t, names: names}, nil
}

func packages(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := noKeywords(b, kwargs); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	add := func(p string) error {
		if err := CheckPackage(p); err != nil {
			return err
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
		return nil
	}
	for i, a := range args {
		if tv, ok := a.(*treeValue); ok {
			for _, p := range tv.t.Packages() {
				if err := add(p); err != nil {
					return nil, err
				}
			}
			continue
		}
		if a == starlark.None {
			continue
		}
		it, ok := a.(starlark.Iterable)
		if !ok {
			return nil, fmt.Errorf("argument %d: want a list of names or a tree, got %s", i+1, a.Type())
		}
		if err := eachString(it, add); err != nil {
			return nil, fmt.Errorf("list %d: %w", i+1, err)
		}
	}
	return trace.Strings(out), nil
}

// errNotString is the error of eachString for an element that is not a
// string.
var errNotString = errors.New("is not a string")

// eachString calls fn with every element of it, stopping at the first
// error (an element that is not a string: "ELEMENT is not a string").
func eachString(it starlark.Iterable, fn func(string) error) error {
	iter := it.Iterate()
	defer iter.Done()
	var v starlark.Value
	for iter.Next(&v) {
		s, ok := starlark.AsString(v)
		if !ok {
			return fmt.Errorf("%s %w", v, errNotString)
		}
		if err := fn(s); err != nil {
			return err
		}
	}
	return nil
}

// userArg is the one argument of check_user and sudoers: a valid account
// name.
func userArg(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (string, error) {
	var name string
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &name); err != nil {
		return "", err
	}
	if !LoginRE.MatchString(name) {
		return "", fmt.Errorf("%q is not a user name (lower case letter or _, then letters, digits, '_', '.', '-'; at most 32)", name)
	}
	return name, nil
}

func checkUser(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	name, err := userArg(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	return starlark.String(name), nil
}

func sudoers(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	name, err := userArg(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	return starlarkstruct.FromStringDict(starlark.String("sudoers"), starlark.StringDict{
		"path": starlark.String("/etc/sudoers.d/" + strings.ReplaceAll(name, ".", "_")),
		"text": starlark.String(name + " ALL=(ALL:ALL) NOPASSWD: ALL\n"),
	}), nil
}

func quote(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var s string
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &s); err != nil {
		return nil, err
	}
	return starlark.String(shQuote(s)), nil
}

// treeValue is the Starlark view of a Tree.
type treeValue struct {
	t     *Tree
	names []string
}

var _ starlark.HasAttrs = (*treeValue)(nil)

func (v *treeValue) String() string {
	return fmt.Sprintf("guest.tree(%s)", strings.Join(v.names, ", "))
}
func (v *treeValue) Type() string          { return "guest.tree" }
func (v *treeValue) Freeze()               {}
func (v *treeValue) Truth() starlark.Bool  { return len(v.t.Layers) > 0 }
func (v *treeValue) Hash() (uint32, error) { return 0, fmt.Errorf("unhashable: guest.tree") }

func (v *treeValue) Attr(name string) (starlark.Value, error) { return treeMethods.Attr(v, name) }
func (v *treeValue) AttrNames() []string                      { return treeMethods.AttrNames() }

// treeMethods are the fields and methods of a guest tree.
var treeMethods = &trace.Methods[*treeValue]{
	Type: "guest.tree",
	Doc:  "The merged guest trees of guest.tree(...): their files, permissions, packages and post-install scripts.",
	Recv: "t",
	Fields: []trace.Field[*treeValue]{
		{Name: "sources", Doc: "the names of the merged sources, in order", Get: treeSources},
		{Name: "files", Doc: "the guest paths of the files, sorted", Get: treeFiles},
		{Name: "packages", Doc: "the united package names", Get: treePackages},
		{Name: "permissions", Doc: `list of struct(path, owner, group, mode "0755", where "file:line")`, Get: treePermissions},
		{Name: "post_install", Doc: "list of struct(source, script), in source order", Get: treePostInstall},
	},
	Methods: []trace.Method[*treeValue]{
		{Name: "tar", Args: "extra={}", Fn: treeTar,
			Doc: "The files as a tar stream (bytes): paths relative to /, uid/gid 0, modes from the\n" +
				"permissions or the source (for bundled trees 0755 when the file starts with \"#!\",\n" +
				"else 0644). extra adds {\"/abs/path\": text} files with mode 0644, e.g. rendered tables."},
		{Name: "perm_script", Args: "", Fn: treePermScript,
			Doc: "The permissions as \"chown u:g path && chmod mode path || exit\" lines."},
		{Name: "mode", Args: "path", Fn: treeMode,
			Doc: "The mode of a file of the tree, as \"0644\"; an error for a path the tree does not hold."},
	},
}

func treeSources(v *treeValue) starlark.Value { return trace.Strings(v.names) }

func treeFiles(v *treeValue) starlark.Value {
	var ps []string
	for _, f := range v.t.Files() {
		ps = append(ps, f.Path)
	}
	return trace.Strings(ps)
}

func treePackages(v *treeValue) starlark.Value { return trace.Strings(v.t.Packages()) }

func treePermissions(v *treeValue) starlark.Value {
	var l []starlark.Value
	for _, p := range v.t.Perms() {
		l = append(l, starlarkstruct.FromStringDict(starlark.String("permission"), starlark.StringDict{
			"path": starlark.String(p.Path), "owner": starlark.String(p.User), "group": starlark.String(p.Group),
			"mode": starlark.String(p.ModeString()), "where": starlark.String(p.Where),
		}))
	}
	return starlark.NewList(l)
}

func treePostInstall(v *treeValue) starlark.Value {
	var l []starlark.Value
	for _, s := range v.t.PostInstall() {
		l = append(l, starlarkstruct.FromStringDict(starlark.String("script"), starlark.StringDict{
			"source": starlark.String(s.Source), "script": starlark.String(s.Text),
		}))
	}
	return starlark.NewList(l)
}

func treeTar(v *treeValue, _ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var extra *starlark.Dict
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "extra?", &extra); err != nil {
		return nil, err
	}
	ex := map[string]string{}
	if extra != nil {
		for _, it := range extra.Items() {
			k, ok1 := starlark.AsString(it[0])
			val, ok2 := starlark.AsString(it[1])
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("extra wants {path: text} strings, got %s: %s", it[0].Type(), it[1].Type())
			}
			ex[k] = val
		}
	}
	data, err := v.t.Tar(time.Now().Truncate(time.Second), ex)
	if err != nil {
		return nil, err
	}
	return starlark.Bytes(data), nil
}

func treePermScript(v *treeValue, _ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 0); err != nil {
		return nil, err
	}
	return starlark.String(v.t.PermScript()), nil
}

func treeMode(v *treeValue, _ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var p string
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &p); err != nil {
		return nil, err
	}
	for _, f := range v.t.Files() {
		if f.Path == p {
			return starlark.String(fmt.Sprintf("%04o", uint32(f.Mode.Perm())|specialBits(f.Mode))), nil
		}
	}
	return nil, fmt.Errorf("%s is not a file of %s", p, v)
}
