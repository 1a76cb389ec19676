#!/bin/sh
# binfmt.sh - make this host run arm64 programs through qemu-user, as
# debootstrap's second stage and every chroot into an arm64 root need:
# mount binfmt_misc when it is not mounted (a host or container without
# systemd, such as CI, has nobody who does it) and register qemu-aarch64 with
# the F flag (the kernel opens the interpreter now, so it works inside a chroot
# that lacks it). Idempotent: an entry already registered is left alone (one
# that is disabled is enabled). Needs root and qemu-user-static.
#
# usage: binfmt.sh        (exits 0 when arm64 programs run, else says why)
set -eu
D=/proc/sys/fs/binfmt_misc
die() { echo "binfmt.sh: $*" >&2; exit 1; }

if [ ! -e "$D/register" ]; then
	mount -t binfmt_misc binfmt_misc "$D" ||
		die "cannot mount binfmt_misc on $D (needs root, and a kernel with CONFIG_BINFMT_MISC)"
fi
if [ -e "$D/qemu-aarch64" ]; then
	grep -qx enabled "$D/qemu-aarch64" || echo 1 >"$D/qemu-aarch64"
else
	# the rule of qemu-user-static (magic and mask of an arm64 ELF executable),
	# taken from the package when it ships one, with the F flag either way
	interp=/usr/libexec/qemu-binfmt/aarch64-binfmt-P flags=OCF
	conf=/usr/lib/binfmt.d/qemu-aarch64.conf
	if [ -r "$conf" ] && [ -x "$interp" ]; then
		line=$(grep '^:qemu-aarch64:' "$conf")
		flags=${line##*:}
		case $flags in *F*) ;; *) line=${line}F ;; esac
	else
		interp=$(command -v qemu-aarch64-static) ||
			die "no qemu-aarch64-static (apt-get install qemu-user-static)"
		line=':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'$interp:$flags
	fi
	# the kernel reads the \x escapes itself: the line goes in as it is
	printf '%s\n' "$line" >"$D/register" 2>/dev/null || [ -e "$D/qemu-aarch64" ] ||
		die "the kernel refused the qemu-aarch64 rule: $line"
fi
grep -qx enabled "$D/status" || echo 1 >"$D/status"
grep -q '^flags: .*F' "$D/qemu-aarch64" ||
	echo "binfmt.sh: note: qemu-aarch64 is registered without the F flag; a chroot needs its interpreter inside" >&2
exit 0
