package net

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// EnvNetns names the environment variable that sets the default network
// namespace of every net function (a name under /run/netns, or a path).
const EnvNetns = "PIFARM_NETNS"

// capNetAdmin is CAP_NET_ADMIN's bit in the capability sets.
const capNetAdmin = 12

// HasNetAdmin reports whether this process holds CAP_NET_ADMIN in its
// effective capability set (CapEff in /proc/self/status). Being uid 0 is
// neither needed (a binary with file capabilities has it) nor enough (root
// in a container may lack it).
func HasNetAdmin() bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	return capEffHas(bufio.NewScanner(f), capNetAdmin)
}

// capEffHas scans a /proc/PID/status text for the CapEff line and reports
// whether bit is set in it.
func capEffHas(sc *bufio.Scanner, bit uint) bool {
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "CapEff:") {
			continue
		}
		v, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(line, "CapEff:")), 16, 64)
		if err != nil {
			return false
		}
		return v&(1<<bit) != 0
	}
	return false
}

// nsPath turns a namespace reference into the file that holds it: a bare
// name is /run/netns/NAME (as `ip netns add NAME` makes it), anything with a
// slash is a path (e.g. /proc/PID/ns/net).
func nsPath(ns string) string {
	if strings.Contains(ns, "/") {
		return ns
	}
	return "/run/netns/" + ns
}

// inNS runs fn with a netlink handle on an OS thread that sits in the
// network namespace ns ("" is the namespace pifarm runs in). TAP devices are
// created by opening /dev/net/tun, which binds them to the namespace of the
// calling thread, so every step runs on that thread, not only the netlink
// socket. The thread is returned to the runtime only when it could be moved
// back into its original namespace; otherwise it dies with the goroutine.
func inNS(ns string, fn func(h *netlink.Handle) error) error {
	if ns == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		return fn(h)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			orig, err := netns.Get()
			if err != nil {
				return fmt.Errorf("current network namespace: %w", err)
			}
			defer orig.Close()
			target, err := netns.GetFromPath(nsPath(ns))
			if err != nil {
				return fmt.Errorf("network namespace %s: %w", ns, err)
			}
			defer target.Close()
			if err := netns.Set(target); err != nil {
				if errors.Is(err, os.ErrPermission) {
					return fmt.Errorf("enter network namespace %s: %w (needs CAP_SYS_ADMIN)", ns, err)
				}
				return fmt.Errorf("enter network namespace %s: %w", ns, err)
			}
			defer func() {
				if netns.Set(orig) == nil {
					runtime.UnlockOSThread()
				}
			}()
			h, err := netlink.NewHandle()
			if err != nil {
				return fmt.Errorf("netlink in %s: %w", ns, err)
			}
			defer h.Close()
			return fn(h)
		}()
	}()
	return <-errc
}
