#!/bin/sh
# board.sh on|off|state DIR - the power switch of a simulated Raspberry Pi 3 B+
# for pifarm's end-to-end test of hardware nodes (cycle-board.sh). The board is
# a QEMU raspi3b machine whose
#   SD card      is DIR/card.img (the file `pifarm run flash` wrote),
#   firmware     is DIR/kernel8.img and DIR/board.dtb (what a Pi's firmware
#                would load from the card's boot partition),
#   serial port  is a pseudo-terminal, linked as DIR/ttyUSB0 (what the node
#                table names, as it names a USB-UART), every byte also kept
#                in DIR/console.log,
#   only NIC     is a TAP (DIR/tap holds its name) on the LAN bridge (DIR/bridge)
#                with the MAC in DIR/mac - no user-net, no port forward,
#   kernel command line says pifarm.board=1 (the boot scripts take the
#                hardware path: the NIC is named from /etc/iftab).
# on starts it (nothing when it runs), off kills it at once - as pulling the
# plug does - and logs whether the board had said "reboot: Power down" by
# then; state prints on or off. Every switch is logged to DIR/power.log.
set -eu
action=${1:-} dir=${2:-}
[ -n "$action" ] && [ -d "$dir" ] || { echo "usage: $0 on|off|state DIR" >&2; exit 2; }
pid() {
	p=$(cat "$dir/qemu.pid" 2>/dev/null) || return 1
	[ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo "$p"
}
case $action in
state)
	if pid >/dev/null; then echo on; else echo off; fi
	;;
on)
	pid >/dev/null && { echo on >>"$dir/power.log"; exit 0; }
	tap=$(cat "$dir/tap") bridge=$(cat "$dir/bridge") mac=$(cat "$dir/mac")
	ip link show "$tap" >/dev/null 2>&1 || ip tuntap add dev "$tap" mode tap
	ip link set dev "$tap" master "$bridge" up
	rm -f "$dir/ttyUSB0" "$dir/qemu.pid"
	: >"$dir/console.log"
	qemu-system-aarch64 -name board -M raspi3b -m 1G -smp 4 -accel tcg,thread=single \
		-kernel "$dir/kernel8.img" -dtb "$dir/board.dtb" \
		-append "rw earlyprintk loglevel=8 console=ttyAMA0,115200 dwc_otg.lpm_enable=0 root=/dev/mmcblk0p2 rootdelay=1 pifarm.board=1" \
		-drive "media=disk,if=sd,format=raw,file=$dir/card.img" \
		-display none -chardev "pty,id=uart,logfile=$dir/console.log" -serial chardev:uart \
		-netdev "tap,id=lan,ifname=$tap,script=no,downscript=no" -device "usb-net,netdev=lan,mac=$mac" \
		-no-shutdown -pidfile "$dir/qemu.pid" -daemonize >"$dir/qemu.err" 2>&1
	# QEMU names the pty on its standard output
	pts=$(sed -n 's|.*char device redirected to \(/dev/pts/[0-9]*\).*|\1|p' "$dir/qemu.err")
	[ -n "$pts" ] || { cat "$dir/qemu.err" >&2; exit 1; }
	ln -s "$pts" "$dir/ttyUSB0"
	echo on >>"$dir/power.log"
	;;
off)
	if p=$(pid); then
		if grep -q 'reboot: Power down' "$dir/console.log"; then
			said="after the board said reboot: Power down"
		else
			said="while the board was running"
		fi
		kill -9 "$p"
		while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
		echo "off $said" >>"$dir/power.log"
	else
		echo "off (was off)" >>"$dir/power.log"
	fi
	rm -f "$dir/ttyUSB0"
	;;
*)
	echo "usage: $0 on|off|state DIR" >&2
	exit 2
	;;
esac
