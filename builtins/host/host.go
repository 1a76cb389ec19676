// Package host is the Starlark module `host`: commands and files on the
// machine pifarm runs on, for recipes that need a step no other module
// covers (start a viewer, write a report, run a build script). Every action
// passes the tracing door; host.query runs read-only commands in every mode.
package host

import (
	"fmt"
	"os"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// New returns the host module.
func New(d *trace.Door, f *farm.Farm) *trace.Module {
	return &trace.Module{
		Name: "host",
		Doc:  "Commands and files on the host, each action through the tracing door.",
		Funcs: []trace.Func{
			{Name: "run", Args: "argv, sudo=False, stdin=None, check=True, stream=False",
				Doc: "Run a host command (an action): argv is a list of words, never a shell string.\n" +
					"sudo=True prefixes the configured privilege command (unless pifarm runs as root).\n" +
					"stdin: text fed to the command (shown as a here-document in the trace).\n" +
					"check=True makes a non-zero exit an error; stream=True copies output to the terminal.\n" +
					"Returns struct(stdout, stderr, exit_code). Dry run: prints the command, returns\n" +
					"empty output and exit_code 0.",
				Fn: func(th *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					return run(d, false, args, kwargs)
				}},
			{Name: "query", Args: "argv, check=True",
				Doc: "Run a read-only host command in every mode (also in a dry run).\nReturns struct(stdout, stderr, exit_code).",
				Fn: func(th *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					return run(d, true, args, kwargs)
				}},
			{Name: "write", Args: "path, content, mode=0o644, backup=True",
				Doc: "Write content to a host file atomically (temporary file, then rename), keeping the\nreplaced file as path~ when backup is set. Dry run: prints the equivalent shell.",
				Fn: func(th *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					var path, content string
					mode, backup := 0o644, true
					if err := starlark.UnpackArgs("write", args, kwargs, "path", &path, "content", &content, "mode?", &mode, "backup?", &backup); err != nil {
						return nil, err
					}
					path = farm.ExpandPath(path)
					return starlark.None, d.WriteFile(path, []byte(content), os.FileMode(mode), backup)
				}},
			{Name: "mkdir", Args: "path, mode=0o755",
				Doc: "Create a host folder and its parents (mkdir -p); existing is fine.",
				Fn: func(th *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					var path string
					mode := 0o755
					if err := starlark.UnpackArgs("mkdir", args, kwargs, "path", &path, "mode?", &mode); err != nil {
						return nil, err
					}
					path = farm.ExpandPath(path)
					if fi, err := os.Stat(path); err == nil && fi.IsDir() {
						return starlark.None, nil
					}
					return starlark.None, d.Do(fmt.Sprintf("mkdir -p -m %o %s", mode, trace.Quote(path)), func() error {
						return os.MkdirAll(path, os.FileMode(mode))
					})
				}},
			{Name: "remove", Args: "path",
				Doc: "Remove a host file (rm -f); a missing file is fine. Folders are refused.",
				Fn: func(th *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
					var path string
					if err := starlark.UnpackPositionalArgs("remove", args, kwargs, 1, &path); err != nil {
						return nil, err
					}
					path = farm.ExpandPath(path)
					fi, err := os.Lstat(path)
					if os.IsNotExist(err) {
						return starlark.None, nil
					}
					if err == nil && fi.IsDir() {
						return nil, fmt.Errorf("%s is a folder; host.remove only removes files", path)
					}
					return starlark.None, d.Do("rm -f "+trace.Quote(path), func() error { return os.Remove(path) })
				}},
		},
	}
}

func run(d *trace.Door, query bool, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var argvV *starlark.List
	var stdin starlark.Value = starlark.None
	sudo, check, stream := false, true, false
	var err error
	if query {
		err = starlark.UnpackArgs("query", args, kwargs, "argv", &argvV, "check?", &check)
	} else {
		err = starlark.UnpackArgs("run", args, kwargs, "argv", &argvV, "sudo?", &sudo, "stdin?", &stdin, "check?", &check, "stream?", &stream)
	}
	if err != nil {
		return nil, err
	}
	var argv []string
	for i := 0; i < argvV.Len(); i++ {
		s, ok := starlark.AsString(argvV.Index(i))
		if !ok {
			return nil, fmt.Errorf("argv[%d] is %s, want a string", i, argvV.Index(i).Type())
		}
		argv = append(argv, s)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("empty argv")
	}
	c := trace.Cmd{Argv: argv, Sudo: sudo}
	if s, ok := starlark.AsString(stdin); ok {
		c.Heredoc = s
	}
	if stream {
		c.Stdout, c.Stderr = os.Stdout, os.Stderr
	}
	var res trace.Result
	if query {
		res, err = d.Query(c)
	} else {
		res, err = d.Exec(c)
	}
	if err != nil && (check || res.ExitCode == -1 || d.Context().Err() != nil) {
		return nil, err
	}
	return starlarkstruct.FromStringDict(starlark.String("result"), starlark.StringDict{
		"stdout":    starlark.String(res.Stdout),
		"stderr":    starlark.String(res.Stderr),
		"exit_code": starlark.MakeInt(res.ExitCode),
	}), nil
}
