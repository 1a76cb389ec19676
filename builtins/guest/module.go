package guest

import (
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
	builtin := func(name string, fn func(args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error)) func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error) {
		return func(_ *starlark.Thread, _ *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			return fn(args, kwargs)
		}
	}
	return &trace.Module{
		Name: "guest",
		Doc: `Guest software trees (base, local and the user's guest_software folder), read and checked on the host.
A tree is files/ (rooted at the guest's /), permissions ("<abs-path> <user>:<group> <octal>"),
packages (Debian names, one per line) and post-install (a sh script run as root). Every
function is a query: nothing is sent anywhere; recipes ship the results with the ssh module.`,
		Funcs: []trace.Func{
			{Name: "tree", Args: "*sources",
				Doc: `Read and merge guest trees into one tree value.
Each source is a bundled tree name ("base", "local") or a host folder (a path with a '/',
~ and $VARS expanded, e.g. config.guest_software); "" and None are skipped. A later
source's file replaces an earlier one with the same guest path; its permission lines
override; package lists are united; post-install scripts run in source order.
Errors (before anything is sent): a permissions line that is not
"<abs-path> <user>:<group> <octal>" or a bad package name, named as tree/file:line.

The tree has: sources (list of names), files (sorted guest paths), packages (united
names), permissions (list of struct(path, owner, group, mode "0755", where "file:line")),
post_install (list of struct(source, script)), tar(extra={}) -> bytes (the files as a tar
stream: paths relative to /, uid/gid 0, modes from permissions or the source: for bundled
trees 0755 when the file starts with "#!", else 0644; extra adds {"/abs/path": text} files
with mode 0644, e.g. rendered tables), perm_script() -> the permissions as
"chown u:g path && chmod mode path" lines, and mode(path) -> "0644" for a file of the tree.`,
				Fn: builtin("tree", func(args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					if len(kwargs) > 0 {
						return nil, fmt.Errorf("unexpected keyword argument %s", kwargs[0][0])
					}
					t := &Tree{}
					var names []string
					for i, a := range args {
						if a == starlark.None {
							continue
						}
						s, ok := starlark.AsString(a)
						if !ok {
							return nil, fmt.Errorf("source %d: want a tree name or folder, got %s", i+1, a.Type())
						}
						if s == "" {
							continue
						}
						l, err := OpenSource(bundled, s, farm.ExpandPath)
						if err != nil {
							return nil, err
						}
						t.Layers = append(t.Layers, l)
						names = append(names, l.Name)
					}
					return &treeValue{t: t, names: names}, nil
				})},
			{Name: "packages", Args: "*lists",
				Doc: `Check and unite package lists (lists of names, or trees): order of first appearance,
no duplicates. A name that is not Debian package syntax ([a-z0-9][a-z0-9+.-]+, optional
:arch) is an error naming it; nothing is silently dropped.`,
				Fn: builtin("packages", func(args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					if len(kwargs) > 0 {
						return nil, fmt.Errorf("unexpected keyword argument %s", kwargs[0][0])
					}
					seen := map[string]bool{}
					var out []starlark.Value
					add := func(p string) error {
						if err := CheckPackage(p); err != nil {
							return err
						}
						if !seen[p] {
							seen[p] = true
							out = append(out, starlark.String(p))
						}
						return nil
					}
					for i, a := range args {
						switch x := a.(type) {
						case *treeValue:
							for _, p := range x.t.Packages() {
								if err := add(p); err != nil {
									return nil, err
								}
							}
						case starlark.NoneType:
						case starlark.Iterable:
							it := x.Iterate()
							var v starlark.Value
							for it.Next(&v) {
								s, ok := starlark.AsString(v)
								if !ok {
									it.Done()
									return nil, fmt.Errorf("list %d: %s is not a string", i+1, v)
								}
								if err := add(s); err != nil {
									it.Done()
									return nil, fmt.Errorf("list %d: %v", i+1, err)
								}
							}
							it.Done()
						default:
							return nil, fmt.Errorf("argument %d: want a list of names or a tree, got %s", i+1, a.Type())
						}
					}
					return starlark.NewList(out), nil
				})},
			{Name: "check_user", Args: "name",
				Doc: "name, when it is a valid account name ([a-z_][a-z0-9_.-]*, at most 32 characters); else an error.",
				Fn: builtin("check_user", func(args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					var name string
					if err := starlark.UnpackPositionalArgs("check_user", args, kwargs, 1, &name); err != nil {
						return nil, err
					}
					if !LoginRE.MatchString(name) {
						return nil, fmt.Errorf("%q is not a user name (lower case letter or _, then letters, digits, '_', '.', '-'; at most 32)", name)
					}
					return starlark.String(name), nil
				})},
			{Name: "sudoers", Args: "name",
				Doc: `The sudoers drop-in for passwordless sudo of user name, as struct(path, text):
path is /etc/sudoers.d/NAME ('.' replaced by '_', since sudo skips drop-ins whose names
hold a '.'), text is "NAME ALL=(ALL:ALL) NOPASSWD: ALL\n". Install it with mode 0440.`,
				Fn: builtin("sudoers", func(args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					var name string
					if err := starlark.UnpackPositionalArgs("sudoers", args, kwargs, 1, &name); err != nil {
						return nil, err
					}
					if !LoginRE.MatchString(name) {
						return nil, fmt.Errorf("%q is not a user name", name)
					}
					return starlarkstruct.FromStringDict(starlark.String("sudoers"), starlark.StringDict{
						"path": starlark.String("/etc/sudoers.d/" + strings.ReplaceAll(name, ".", "_")),
						"text": starlark.String(name + " ALL=(ALL:ALL) NOPASSWD: ALL\n"),
					}), nil
				})},
			{Name: "quote", Args: "s",
				Doc: "s quoted for a POSIX shell (unchanged when it holds only safe characters).",
				Fn: builtin("quote", func(args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					var s string
					if err := starlark.UnpackPositionalArgs("quote", args, kwargs, 1, &s); err != nil {
						return nil, err
					}
					return starlark.String(trace.Quote(s)), nil
				})},
		},
	}
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

var treeAttrs = []string{"files", "mode", "packages", "perm_script", "permissions", "post_install", "sources", "tar"}

func (v *treeValue) AttrNames() []string { return treeAttrs }

func (v *treeValue) Attr(name string) (starlark.Value, error) {
	strList := func(ss []string) *starlark.List {
		l := make([]starlark.Value, len(ss))
		for i, s := range ss {
			l[i] = starlark.String(s)
		}
		return starlark.NewList(l)
	}
	method := func(fn func(args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error)) starlark.Value {
		return starlark.NewBuiltin("guest.tree."+name, func(_ *starlark.Thread, _ *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			return fn(args, kwargs)
		})
	}
	switch name {
	case "sources":
		return strList(v.names), nil
	case "files":
		var ps []string
		for _, f := range v.t.Files() {
			ps = append(ps, f.Path)
		}
		return strList(ps), nil
	case "packages":
		return strList(v.t.Packages()), nil
	case "permissions":
		var l []starlark.Value
		for _, p := range v.t.Perms() {
			l = append(l, starlarkstruct.FromStringDict(starlark.String("permission"), starlark.StringDict{
				"path": starlark.String(p.Path), "owner": starlark.String(p.User), "group": starlark.String(p.Group),
				"mode": starlark.String(p.ModeString()), "where": starlark.String(p.Where),
			}))
		}
		return starlark.NewList(l), nil
	case "post_install":
		var l []starlark.Value
		for _, s := range v.t.PostInstall() {
			l = append(l, starlarkstruct.FromStringDict(starlark.String("script"), starlark.StringDict{
				"source": starlark.String(s.Source), "script": starlark.String(s.Text),
			}))
		}
		return starlark.NewList(l), nil
	case "tar":
		return method(func(args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			var extra *starlark.Dict
			if err := starlark.UnpackArgs("tar", args, kwargs, "extra?", &extra); err != nil {
				return nil, err
			}
			ex := map[string]string{}
			if extra != nil {
				for _, it := range extra.Items() {
					k, ok1 := starlark.AsString(it[0])
					val, ok2 := starlark.AsString(it[1])
					if !ok1 || !ok2 {
						return nil, fmt.Errorf("tar: extra wants {path: text} strings, got %s: %s", it[0].Type(), it[1].Type())
					}
					ex[k] = val
				}
			}
			b, err := v.t.Tar(time.Now().Truncate(time.Second), ex)
			if err != nil {
				return nil, err
			}
			return starlark.Bytes(b), nil
		}), nil
	case "perm_script":
		return method(func(args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			if err := starlark.UnpackPositionalArgs("perm_script", args, kwargs, 0); err != nil {
				return nil, err
			}
			return starlark.String(v.t.PermScript()), nil
		}), nil
	case "mode":
		return method(func(args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
			var p string
			if err := starlark.UnpackPositionalArgs("mode", args, kwargs, 1, &p); err != nil {
				return nil, err
			}
			for _, f := range v.t.Files() {
				if f.Path == p {
					return starlark.String(fmt.Sprintf("%04o", uint32(f.Mode.Perm())|specialBits(f.Mode))), nil
				}
			}
			return nil, fmt.Errorf("%s is not a file of %s", p, v)
		}), nil
	}
	return nil, nil
}
