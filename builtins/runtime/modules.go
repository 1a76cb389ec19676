package runtime

import (
	"io"

	"pifarm/builtins/card"
	"pifarm/builtins/chroot"
	"pifarm/builtins/console"
	"pifarm/builtins/farm"
	"pifarm/builtins/guest"
	"pifarm/builtins/host"
	"pifarm/builtins/image"
	"pifarm/builtins/net"
	"pifarm/builtins/pkgcache"
	"pifarm/builtins/power"
	"pifarm/builtins/qemu"
	"pifarm/builtins/ssh"
	"pifarm/builtins/trace"
)

// registry is the one registration of pifarm's builtin modules, in the
// order `pifarm doc`, `pifarm --help` and the README list them. Each module
// package exports New(*trace.Door, *farm.Farm) *trace.Module: adding a
// module is adding its line here.
var registry = []func(*trace.Door, *farm.Farm) *trace.Module{
	farm.NewModule,
	host.New,
	guest.New,
	net.New,
	image.New,
	card.New,
	chroot.New,
	pkgcache.New,
	qemu.New,
	ssh.New,
	console.New,
	power.New,
	argsModule,
}

// buildModules builds every registered module for one run.
func buildModules(d *trace.Door, f *farm.Farm) []*trace.Module {
	mods := make([]*trace.Module, len(registry))
	for i, mk := range registry {
		mods[i] = mk(d, f)
	}
	return mods
}

// moduleIndex is the module list of `pifarm --help` and of the README, one
// line per module with its summary, rendered from the registration (modules
// built on a dry door and the default configuration: nothing runs).
func moduleIndex() string {
	d := trace.New(nil, true, false, io.Discard)
	return trace.Index(buildModules(d, farm.New(farm.Default())))
}
