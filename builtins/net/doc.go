// Package net is pifarm's `net` module: the host side of the guests'
// networks, done with netlink (github.com/vishvananda/netlink), never with
// the ip binary. It creates and deletes the LAN bridge and the persistent
// TAP devices QEMU attaches to, sets bridge ports, brings links up and down,
// replaces and flushes addresses, and lists links with their state.
//
// # Idempotence
//
// Every change first looks at the link (a query, also in dry-run): adding
// what exists, bringing up what is up, giving an address a link holds, do
// nothing and return False; deleting what is absent returns False and says
// nothing is there to delete. A TAP is created persistent and owned by the
// invoking user (SUDO_USER behind sudo) and that user's primary group, so
// an unprivileged QEMU opens it with -netdev tap,ifname=q0tapN.
//
// # Privilege
//
// Netlink changes need CAP_NET_ADMIN, read from the effective capability
// set (CapEff in /proc/self/status), not guessed from the uid. With it,
// pifarm applies each change in-process. Without it, pifarm re-invokes
// itself through the configured privilege command, one step per call:
// `sudo /path/to/pifarm net tap-add q0tap1 --user alice --group alice`, the
// hidden subcommand served by Main.
//
// The trace line of every change is its iproute2 equivalent with the
// privilege prefix: `sudo ip tuntap add dev q0tap1 mode tap user alice
// group alice`. That is the honest description of what happens to the
// host (the re-invoked pifarm performs exactly that one change and nothing
// else), it is what an administrator audits and can paste into a root shell
// on a machine without pifarm, and unlike the path of the pifarm binary it
// is the same on every machine, so dry-run output stays stable. With -v a
// live run also prints the exact re-invocation ("# as: sudo /usr/bin/pifarm
// net ..."). When neither the capability nor a usable privilege command is
// there (no sudo installed, or sudo wants a password while stdin is not a
// terminal, as under CI=true) the change is refused with that reason before
// anything is touched.
//
// The subcommand deletes only bridges and TAPs, but like ip it changes any
// link it is told to: a sudoers rule for `pifarm net` grants what one for
// `ip` would.
//
// # Network namespaces
//
// Every function takes netns=NAME (a name under /run/netns, or a path such
// as /proc/PID/ns/net); $PIFARM_NETNS sets the default. The work then runs
// on an OS thread locked into that namespace, because a TAP is created by
// opening /dev/net/tun, which binds it to the namespace of the calling
// thread, not of the netlink socket. The trace line becomes
// `sudo ip -n NAME link ...`.
//
// # Dry-run
//
// Dry-run prints the lines and changes nothing. Queries still run; the
// module remembers what the printed steps would have done, so a later step
// of the same run (up, master, address) sees the bridge an earlier printed
// step would have made.
package net
