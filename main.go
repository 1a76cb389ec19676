// Command pifarm develops software on a farm of Raspberry Pi 3 B+ nodes:
// QEMU guests and hardware boxes running copies of one RaspiOS image.
// Go builtins do every side effect; bundled Starlark recipes compose them.
// See README.md, `pifarm -hv` and `pifarm doc`.
package main

import (
	"context"
	_ "embed"
	"os"
	"os/signal"
	"syscall"

	pnet "pifarm/builtins/net"
	"pifarm/builtins/runtime"
)

//go:embed config.star
var defaultConfig []byte

func main() {
	// The hidden `pifarm net STEP ...` performs one privileged netlink step
	// for an unprivileged pifarm that re-invokes itself through sudo.
	if len(os.Args) > 1 && os.Args[1] == "net" {
		os.Exit(pnet.Main(os.Args[2:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	code := runtime.Main(runtime.Options{Args: os.Args[1:], Ctx: ctx, DefaultConfig: defaultConfig})
	stop()
	os.Exit(code)
}
