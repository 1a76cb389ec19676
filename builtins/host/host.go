// Package host is the Starlark module `host`: commands and files on the
// machine pifarm runs on, for recipes that need a step no other module
// covers (start a viewer, write a report, run a build script). Every action
// passes the tracing door; host.query runs read-only commands in every mode.
package host

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"go.starlark.net/starlark"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// New returns the host module.
func New(d *trace.Door, f *farm.Farm) *trace.Module {
	m := &module{d: d}
	return &trace.Module{
		Name: "host",
		Doc:  "Commands and files on the host, each action through the tracing door.",
		Funcs: []trace.Func{
			{Name: "run", Args: "argv, sudo=False, stdin=None, check=True, stream=False", Fn: m.run,
				Doc: "Run a host command (an action): argv is a list of words, never a shell string.\n" +
					"sudo=True prefixes the configured privilege command (unless pifarm runs as root).\n" +
					"stdin: text fed to the command (shown as a here-document in the trace).\n" +
					"check=True makes a non-zero exit an error; stream=True copies output to the terminal.\n" +
					"Returns struct(stdout, stderr, exit_code). Dry run: prints the command, returns\n" +
					"empty output and exit_code 0."},
			{Name: "query", Args: "argv, check=True", Fn: m.query,
				Doc: "Run a read-only host command in every mode (also in a dry run).\nReturns struct(stdout, stderr, exit_code)."},
			{Name: "write", Args: "path, content, mode=0o644, backup=True", Fn: m.write,
				Doc: "Write content to a host file atomically (temporary file, then rename), keeping the\nreplaced file as path~ when backup is set. Dry run: prints the equivalent shell."},
			{Name: "mkdir", Args: "path, mode=0o755", Fn: m.mkdir,
				Doc: "Create a host folder and its parents (mkdir -p); existing is fine."},
			{Name: "remove", Args: "path", Fn: m.remove,
				Doc: "Remove a host file (rm -f); a missing file is fine. Folders are refused."},
		},
	}
}

// module holds the door the host module acts through.
type module struct{ d *trace.Door }

func (m *module) run(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var argv trace.StringList
	var stdin trace.OptString
	sudo, check, stream := false, true, false
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "argv", &argv, "sudo?", &sudo, "stdin?", &stdin, "check?", &check, "stream?", &stream); err != nil {
		return nil, err
	}
	c := trace.Cmd{Argv: argv.Strings, Sudo: sudo, Heredoc: stdin.S}
	if stream {
		c.Stdout, c.Stderr = m.d.StreamOut(), m.d.StreamErr()
	}
	return m.command(c, false, check)
}

func (m *module) query(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var argv trace.StringList
	check := true
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "argv", &argv, "check?", &check); err != nil {
		return nil, err
	}
	return m.command(trace.Cmd{Argv: argv.Strings}, true, check)
}

// command runs c through the door, as a query or an action, and returns
// its result; a failure is an error with check, and always when the
// command could not run or the run was interrupted.
func (m *module) command(c trace.Cmd, query, check bool) (starlark.Value, error) {
	if len(c.Argv) == 0 {
		return nil, errors.New("empty argv (give the command as a list of words)")
	}
	var res trace.Result
	var err error
	if query {
		res, err = m.d.Query(c)
	} else {
		res, err = m.d.Exec(c)
	}
	if err != nil && (check || res.ExitCode == -1 || m.d.Context().Err() != nil) {
		return nil, err
	}
	return trace.ResultStruct(string(res.Stdout), string(res.Stderr), res.ExitCode), nil
}

func (m *module) write(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var path, content string
	mode, backup := 0o644, true
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "path", &path, "content", &content, "mode?", &mode, "backup?", &backup); err != nil {
		return nil, err
	}
	return nil, m.d.WriteFile(farm.ExpandPath(path), []byte(content), os.FileMode(mode), backup)
}

func (m *module) mkdir(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var path string
	mode := 0o755
	if err := starlark.UnpackArgs(b.Name(), args, kwargs, "path", &path, "mode?", &mode); err != nil {
		return nil, err
	}
	return nil, m.d.MkdirAll(farm.ExpandPath(path), os.FileMode(mode))
}

func (m *module) remove(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var path string
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &path); err != nil {
		return nil, err
	}
	path = farm.ExpandPath(path)
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil // nothing to remove, nothing to print
	case err == nil && fi.IsDir():
		return nil, fmt.Errorf("%s is a folder; host.remove only removes files", path)
	}
	return nil, m.d.Remove(path)
}
