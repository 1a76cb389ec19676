package trace

import (
	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
)

// ResultStruct is what a builtin that runs a command returns to Starlark:
// struct(stdout, stderr, exit_code), the one shape of host.run, an SSH
// connection's run and a chroot's run.
func ResultStruct(stdout, stderr string, exitCode int) starlark.Value {
	return starlarkstruct.FromStringDict(starlark.String("result"), starlark.StringDict{
		"stdout":    starlark.String(stdout),
		"stderr":    starlark.String(stderr),
		"exit_code": starlark.MakeInt(exitCode),
	})
}
