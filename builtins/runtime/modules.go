package runtime

import (
	"pifarm/builtins/console"
	"pifarm/builtins/farm"
	"pifarm/builtins/guest"
	"pifarm/builtins/host"
	"pifarm/builtins/image"
	"pifarm/builtins/net"
	"pifarm/builtins/qemu"
	"pifarm/builtins/ssh"
	"pifarm/builtins/trace"
)

// modules lists the constructors of pifarm's builtin modules, in the order
// `pifarm doc` shows them. Each module package exports
// New(*trace.Door, *farm.Farm) *trace.Module; add one line per module.
var modules = []func(*trace.Door, *farm.Farm) *trace.Module{
	host.New,
	guest.New,
	net.New,
	image.New,
	qemu.New,
	ssh.New,
	console.New,
}
