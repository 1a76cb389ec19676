# /usr/local/lib/pifarm/boot-lib.sh - functions shared by pifarm's boot scripts.
# Sourced (". file") by /etc/boot.d/* under any POSIX sh (dash, busybox ash, bash).
#
# Environment (for tests; unset on a real boot):
#   ROOT              prefix of every file path read or written (a temp root)
#   SYSFS             where sysfs is mounted (default /sys)
#   PIFARM_BOOT_DRY   when set, commands that change the system are printed
#                     ("+ ip link set ...") instead of run
#
# The node tables come from pifarm (`pifarm run guest --base-system N`):
#   /etc/hosts    "<lan-ip> nN.lan <alias>" and "<wan-ip> nN.wan" per node
#   /etc/iftab    "lanN mac xx:xx:xx:xx:xx:xx" per hardware box
#   /etc/wifitab  "<alias> <channel> <ssid>"
#   /etc/pifarm/farm.conf  WLAN_ADDR=..., LAN_PREFIX=... (sourced when present)

ROOT=${ROOT:-}
SYSFS=${SYSFS:-/sys}
LC_ALL=C
export LC_ALL
WLAN_ADDR=172.19.111.1/24
LAN_PREFIX=24
# shellcheck disable=SC1090
[ -r "$ROOT/etc/pifarm/farm.conf" ] && . "$ROOT/etc/pifarm/farm.conf"

# pf_say TEXT: one line of boot log, prefixed with the script's name.
pf_say() { echo "boot.d/${PF_NAME:-pifarm}: $*"; }

# pf_run CMD ARGS: run a command that changes the system (printed when dry).
pf_run() {
	if [ -n "${PIFARM_BOOT_DRY:-}" ]; then
		echo "+ $*"
	else
		"$@"
	fi
}

# pf_runq CMD ARGS: pf_run with the command's own output discarded.
pf_runq() {
	if [ -n "${PIFARM_BOOT_DRY:-}" ]; then
		echo "+ $*"
	else
		"$@" >/dev/null 2>&1
	fi
}

# pf_read FILE: its first line in PF_LINE (the shell's read: no process;
# boot scripts fork as little as they can, each fork is slow on an emulated
# CPU and the login prompt waits for rc.local). Fails when FILE is unreadable.
pf_read() {
	PF_LINE=
	[ -r "$1" ] && read -r PF_LINE <"$1" 2>/dev/null
	[ -r "$1" ]
}

# pf_have PROG: whether PROG is on PATH.
pf_have() { command -v "$1" >/dev/null 2>&1; }

# pf_write FILE TEXT: write TEXT (plus a newline) to $ROOT/FILE when it differs;
# the old file is kept as FILE~. Returns 0 when it wrote, 1 when unchanged.
# One-line texts are compared without a process.
pf_write() {
	pf_w_file=$ROOT$1
	if [ -f "$pf_w_file" ]; then
		case $2 in
		*"
"*) [ "$(cat "$pf_w_file")" = "$2" ] && return 1 ;;
		*) pf_read "$pf_w_file" && [ "$PF_LINE" = "$2" ] && [ "$(wc -l <"$pf_w_file")" -le 1 ] && return 1 ;;
		esac
	fi
	if [ -n "${PIFARM_BOOT_DRY:-}" ]; then
		echo "+ write $1"
		return 0
	fi
	[ -f "$pf_w_file" ] && cp -p "$pf_w_file" "$pf_w_file~"
	printf '%s\n' "$2" >"$pf_w_file.pifarm-new" && mv "$pf_w_file.pifarm-new" "$pf_w_file"
}

# pf_table FILE: FILE under ROOT without comments and blank lines.
pf_table() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$ROOT$1" 2>/dev/null; }

# pf_node_of_wan IP: the node id N of the line "<IP> nN.wan" in /etc/hosts.
pf_node_of_wan() {
	pf_table /etc/hosts | awk -v ip="$1" '$1 == ip {
		for (i = 2; i <= NF; i++) if ($i ~ /^n[0-9]+\.wan$/) { s = $i; sub(/^n/, "", s); sub(/\.wan$/, "", s); print s; exit }
	}'
}

# pf_node_info WAN-IP: "N LAN-IP ALIAS" of the node whose "nN.wan" line holds
# WAN-IP, read from /etc/hosts in one pass (nothing when it has none; LAN-IP
# and ALIAS are "-" when the node has no LAN line). pf_node_info -n N: the
# same for node N (nothing when /etc/hosts has no "nN.lan" line).
pf_node_info() {
	pf_ni_ip=$1 pf_ni_id=
	[ "$1" = -n ] && pf_ni_ip= pf_ni_id=$2
	awk -v ip="$pf_ni_ip" -v id="$pf_ni_id" '
		{ sub(/#.*/, "") }
		$1 == ip { for (i = 2; i <= NF; i++) if ($i ~ /^n[0-9]+\.wan$/) { n = $i; sub(/^n/, "", n); sub(/\.wan$/, "", n) } }
		{ for (i = 2; i <= NF; i++) if ($i ~ /^n[0-9]+\.lan$/) {
			k = $i; sub(/\.lan$/, "", k); lan[k] = $1; a = ""
			for (j = 2; j <= NF; j++) if ($j != $i) { a = $j; break }
			alias[k] = a == "" ? k : a
		} }
		END {
			if (id != "") n = (("n" id) in lan) ? id : ""
			if (n != "") print n, ("n" n in lan ? lan["n" n] : "-"), ("n" n in alias ? alias["n" n] : "-")
		}
	' "$ROOT/etc/hosts" 2>/dev/null
}

# pf_lan_of_node N: the LAN address of node N ("<ip> nN.lan ...").
pf_lan_of_node() {
	pf_table /etc/hosts | awk -v n="n$1.lan" '{ for (i = 2; i <= NF; i++) if ($i == n) { print $1; exit } }'
}

# pf_alias_of_node N: the alias of node N (the first other name on its LAN
# line), or nN when it has none.
pf_alias_of_node() {
	pf_table /etc/hosts | awk -v n="n$1.lan" '{
		for (i = 2; i <= NF; i++) if ($i == n) {
			a = "n'"$1"'"
			for (j = 2; j <= NF; j++) if ($j != n) { a = $j; break }
			print a; exit
		}
	}'
}

# pf_wifi ALIAS: "<channel> <ssid>" of ALIAS from /etc/wifitab.
pf_wifi() { awk -v a="$1" '{ sub(/#.*/, "") } $1 == a && NF >= 3 { print $2, $3; exit }' "$ROOT/etc/wifitab" 2>/dev/null; }

# pf_iftab_name MAC: the interface name /etc/iftab gives to MAC ("lan3").
pf_iftab_name() {
	pf_table /etc/iftab | awk -v m="$1" '$2 == "mac" && tolower($3) == tolower(m) { print $1; exit }'
}

# pf_render_hostapd ALIAS IFACE: /etc/hostapd/hostapd.conf.in with @INTERFACE@,
# @SSID@, @CHANNEL@ and @HW_MODE@ (g up to channel 14, else a) filled in from
# /etc/wifitab, on stdout. Fails when ALIAS has no wifitab line.
pf_render_hostapd() {
	pf_rh_wifi=$(pf_wifi "$1")
	[ -n "$pf_rh_wifi" ] || return 1
	pf_rh_channel=${pf_rh_wifi%% *}
	pf_rh_ssid=${pf_rh_wifi#* }
	pf_rh_mode=g
	[ "$pf_rh_channel" -gt 14 ] 2>/dev/null && pf_rh_mode=a
	# values through the environment: awk -v would interpret backslashes
	PF_IFC=$2 PF_SSID=$pf_rh_ssid PF_CH=$pf_rh_channel PF_MODE=$pf_rh_mode awk '
		BEGIN { ifc = ENVIRON["PF_IFC"]; ssid = ENVIRON["PF_SSID"]; ch = ENVIRON["PF_CH"]; mode = ENVIRON["PF_MODE"] }
		function subst(s, key, val,   out, i) {
			out = ""
			while ((i = index(s, key)) > 0) { out = out substr(s, 1, i - 1) val; s = substr(s, i + length(key)) }
			return out s
		}
		{ l = subst($0, "@INTERFACE@", ifc); l = subst(l, "@SSID@", ssid)
		  l = subst(l, "@CHANNEL@", ch); l = subst(l, "@HW_MODE@", mode); print l }' "$ROOT/etc/hostapd/hostapd.conf.in"
}

# pf_is_qemu: whether a USB device's manufacturer says QEMU - unless the
# kernel command line holds pifarm.board=1: a QEMU machine that stands in
# for a hardware box (a simulated board: its NIC named by /etc/iftab, as on
# a real Pi) takes the hardware path.
pf_is_qemu() {
	pf_read "$ROOT/proc/cmdline"
	case " $PF_LINE " in *" pifarm.board=1 "*) return 1 ;; esac
	grep -qs QEMU "$SYSFS"/bus/usb/devices/*/manufacturer
}

# pf_netifs [usb]: network interfaces backed by a device (no lo, bridges,
# TAPs), in device order (ifindex: the order the kernel found them); with
# "usb", only those on USB (QEMU's usb-net: the interface's device is a USB
# interface, whose parent holds idVendor).
pf_netifs() {
	for pf_n in "$SYSFS"/class/net/*; do
		[ -e "$pf_n/device" ] || continue
		[ "$1" = usb ] && ! [ -e "$pf_n/device/../idVendor" ] && continue
		pf_read "$pf_n/ifindex" || PF_LINE=0
		echo "$PF_LINE ${pf_n##*/}"
	done | sort -n | while read -r _ pf_n; do echo "$pf_n"; done
}

# pf_mac IFACE: the interface's MAC address (pf_mac_v: in PF_MAC, no process).
pf_mac() { pf_mac_v "$1" && echo "$PF_MAC"; }
pf_mac_v() {
	pf_read "$SYSFS/class/net/$1/address"
	PF_MAC=$PF_LINE
}

# pf_guest_mac N NIC: the MAC pifarm's QEMU gives NIC (0 WAN, 1 LAN, 2 WLAN)
# of instance N: 52:54:5<NIC>:<id as three bytes>.
pf_guest_mac() {
	printf '52:54:%02x:%02x:%02x:%02x\n' $((80 + $2)) $((($1 >> 16) & 255)) $((($1 >> 8) & 255)) $(($1 & 255))
}

# pf_role_of_mac MAC: wan0, lan0 or wlan0 for a pifarm guest MAC, else
# nothing (pf_role_v: in PF_ROLE, no process).
pf_role_of_mac() {
	pf_role_v "$1"
	echo "$PF_ROLE"
}
pf_role_v() {
	case $1 in
	52:54:50:*) PF_ROLE=wan0 ;;
	52:54:51:*) PF_ROLE=lan0 ;;
	52:54:52:*) PF_ROLE=wlan0 ;;
	*) PF_ROLE= ;;
	esac
	[ -n "$PF_ROLE" ]
}

# pf_id_of_mac MAC: the instance id a pifarm guest MAC carries (its last
# three bytes), in PF_ID; fails for other MACs.
pf_id_of_mac() {
	PF_ID=
	case $1 in 52:54:5[0-2]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]) ;; *) return 1 ;; esac
	pf_im=${1#52:54:5?:}
	pf_im1=${pf_im%%:*}
	pf_im=${pf_im#*:}
	PF_ID=$((0x$pf_im1${pf_im%%:*}${pf_im#*:}))
}

# pf_if_addr IFACE: its first global IPv4 address with prefix (1.2.3.4/24).
# A link-local one (169.254.0.0/16, which dhcpcd gives a NIC before or
# without a lease) is no address of the node.
pf_if_addr() {
	ip -4 -o addr show dev "$1" 2>/dev/null | awk '/ scope (link|host) / { next }
		{ for (i = 1; i < NF; i++) if ($i == "inet" && $(i + 1) !~ /^169\.254\./) { print $(i + 1); exit } }'
}

# pf_net_of ADDR/LEN: the network of an address (100.65.5.15/24 -> 100.65.5.0/24).
pf_net_of() {
	pf_no_len=${1#*/}
	pf_no_ifs=$IFS
	IFS=.
	# shellcheck disable=SC2086
	set -- ${1%/*}
	IFS=$pf_no_ifs
	pf_no=$((($1 << 24) | ($2 << 16) | ($3 << 8) | $4))
	pf_no=$((pf_no & ((0xffffffff << (32 - pf_no_len)) & 0xffffffff)))
	echo "$((pf_no >> 24 & 255)).$((pf_no >> 16 & 255)).$((pf_no >> 8 & 255)).$((pf_no & 255))/$pf_no_len"
}

# pf_default_gw: the IPv4 default gateway.
pf_default_gw() { ip -4 route show default 2>/dev/null | awk '$1 == "default" { for (i = 2; i < NF; i++) if ($i == "via") { print $(i + 1); exit } }'; }

# pf_wait_addr IFACE SECONDS: wait (bounded) for an IPv4 address on IFACE and
# print it; prints nothing after SECONDS.
pf_wait_addr() {
	pf_wa_n=$(($2 * 5))
	while :; do
		pf_wa=$(pf_if_addr "$1")
		if [ -n "$pf_wa" ] || [ "$pf_wa_n" -le 0 ]; then
			echo "$pf_wa"
			return
		fi
		pf_wa_n=$((pf_wa_n - 1))
		sleep 0.2 2>/dev/null || sleep 1
	done
}

# pf_rename FROM TO: rename an interface (down; rename and up); no-op when equal.
pf_rename() {
	[ "$1" = "$2" ] && return 0
	if [ -e "$SYSFS/class/net/$2" ]; then
		pf_say "cannot rename $1 to $2: $2 exists"
		return 1
	fi
	pf_say "rename $1 -> $2"
	# the new name applies before the up flag within one ip call
	pf_run ip link set dev "$1" down &&
		pf_run ip link set dev "$1" name "$2" up
}

# pf_unmanaged IFACE: keep NetworkManager (RaspiOS Bookworm) off an interface
# that gets a static address here; nothing where NetworkManager is absent or
# udev marked the interface NM_UNMANAGED already (pifarm's QEMU NICs, by the
# rule in /etc/udev/rules.d/70-pifarm-qemu-nics.rules: no nmcli, which is slow
# on an emulated CPU). dhcpcd is kept off them by pf_dhcpcd_deny.
pf_unmanaged() {
	pf_have nmcli || return 0
	pf_read "$SYSFS/class/net/$1/ifindex" && pf_udev_unmanaged "$PF_LINE" && return 0
	pf_runq nmcli device set "$1" managed no || true
}

# pf_udev_unmanaged IFINDEX: whether udev's database marks the interface
# NM_UNMANAGED (read without a process).
pf_udev_unmanaged() {
	[ -r "$ROOT/run/udev/data/n$1" ] || return 1
	while IFS= read -r pf_uu; do
		[ "$pf_uu" = E:NM_UNMANAGED=1 ] && return 0
	done <"$ROOT/run/udev/data/n$1"
	return 1
}

# pf_dhcpcd_deny: where dhcpcd is installed (RaspiOS Bullseye), /etc/dhcpcd.conf
# gets, once, the lines that keep it off the LAN and WLAN NICs (lan*, wlan0):
# they have static addresses from the boot scripts, and dhcpcd would give them
# IPv4 link-local ones (and ask for a lease nobody serves) besides. Returns 0
# when it changed the file (dhcpcd reads it when it starts).
pf_dhcpcd_deny() {
	[ -f "$ROOT/etc/dhcpcd.conf" ] || return 1
	while IFS= read -r pf_dd; do
		[ "$pf_dd" = "$PF_DHCPCD_MARK" ] && return 1
	done <"$ROOT/etc/dhcpcd.conf"
	pf_write /etc/dhcpcd.conf "$(cat "$ROOT/etc/dhcpcd.conf")

$PF_DHCPCD_MARK
denyinterfaces lan* wlan0"
}
PF_DHCPCD_MARK="# pifarm: lan* and wlan0 have static addresses (/etc/boot.d/30-network, 40-wlan)"

# pf_netmgr: the network manager that serves the WAN NIC, in PF_NETMGR:
# "nm" (NetworkManager enabled, RaspiOS Bookworm), "dhcpcd" (its systemd unit
# installed, RaspiOS Bullseye; it may have been disabled by an older pifarm),
# else "" (no systemd: the boot scripts run a DHCP client on wan0 themselves).
pf_netmgr() {
	PF_NETMGR=
	[ -d "$ROOT/run/systemd/system" ] || return 0
	if pf_unit_enabled NetworkManager; then
		PF_NETMGR=nm
	elif [ -f "$ROOT/lib/systemd/system/dhcpcd.service" ] || [ -f "$ROOT/usr/lib/systemd/system/dhcpcd.service" ]; then
		PF_NETMGR=dhcpcd
	fi
}

# pf_wan_dhcp: make sure a DHCP client serves wan0 (it keeps, or finally
# gets, the lease), after pf_netmgr: NetworkManager and dhcpcd under systemd
# do it themselves (a dhcpcd unit that an older pifarm disabled is enabled
# again); without systemd udhcpc (with the guest's own event script) or a
# dhcpcd for wan0 alone starts in the background.
pf_wan_dhcp() {
	case $PF_NETMGR in
	nm) return 0 ;;
	dhcpcd)
		pf_unit_enabled dhcpcd && return 0
		pf_say "dhcpcd enabled again: it serves wan0"
		pf_runq systemctl enable --now dhcpcd || pf_say "could not enable dhcpcd"
		return 0
		;;
	esac
	pf_wd=$ROOT/run/udhcpc.wan0.pid
	if [ -f "$pf_wd" ] && kill -0 "$(cat "$pf_wd")" 2>/dev/null; then
		return 0
	elif pf_have udhcpc; then
		set -- -i wan0 -b -t 20 -T 2 -p /run/udhcpc.wan0.pid
		for pf_wd in /etc/udhcpc/default.script /etc/udhcpc.script /usr/share/udhcpc/default.script; do
			if [ -x "$ROOT$pf_wd" ]; then
				set -- "$@" -s "$pf_wd"
				break
			fi
		done
		# in the background: udhcpc -b only detaches once it has a lease
		if [ -n "${PIFARM_BOOT_DRY:-}" ]; then
			pf_run udhcpc "$@"
		else
			udhcpc "$@" </dev/null >/dev/null 2>&1 &
		fi
	elif pf_have dhcpcd; then
		pf_runq dhcpcd -b -4 wan0
	fi
}

# pf_node_v: this machine's node id as the node tables give it, in PF_NODE
# (empty when unknown): under QEMU from pifarm's MAC of a NIC (52:54:5x:<id>),
# else from a NIC's address on an "nN.wan" line of /etc/hosts; on hardware
# from a NIC named lanN by /etc/iftab. It only reads.
pf_node_v() {
	PF_NODE=
	for pf_nv in $(pf_netifs); do
		pf_mac_v "$pf_nv"
		if pf_id_of_mac "$PF_MAC"; then
			[ -n "$(pf_node_info -n "$PF_ID")" ] && PF_NODE=$PF_ID && return 0
		fi
		pf_nv=$(pf_iftab_name "$PF_MAC")
		case $pf_nv in lan[0-9]*) PF_NODE=${pf_nv#lan} && return 0 ;; esac
	done
	for pf_nv in $(pf_netifs); do
		pf_nv=$(pf_if_addr "$pf_nv")
		[ -n "$pf_nv" ] || continue
		pf_nv=$(pf_node_of_wan "${pf_nv%/*}")
		[ -n "$pf_nv" ] && PF_NODE=$pf_nv && return 0
	done
	return 0
}

# pf_set_hostname NAME: the running host name and /etc/hostname. Under
# systemd through hostnamed (hostnamectl): NetworkManager follows it, where a
# host name set behind its back would be put back to the one it started with.
pf_set_hostname() {
	pf_read "$ROOT/proc/sys/kernel/hostname" || PF_LINE=$(hostname 2>/dev/null)
	pf_sh_changed=
	if [ "$PF_LINE" != "$1" ]; then
		pf_sh_changed=yes
		if [ -d "$ROOT/run/systemd/system" ] && pf_have hostnamectl; then
			pf_run hostnamectl set-hostname "$1" || pf_run hostname "$1"
		else
			pf_run hostname "$1"
		fi
	fi
	# (hostnamectl wrote it already)
	pf_write /etc/hostname "$1" && pf_sh_changed=yes
	[ -n "$pf_sh_changed" ] && pf_say "host name $1"
	return 0
}

# pf_unit_enabled UNIT: whether systemd starts UNIT at boot, read from the
# /etc/systemd/system/*.wants links (no systemctl: it is slow on an emulated CPU).
pf_unit_enabled() {
	for pf_ue in "$ROOT"/etc/systemd/system/*.wants/"$1".service; do
		[ -e "$pf_ue" ] || [ -L "$pf_ue" ] && return 0
	done
	return 1
}

# pf_disable UNIT...: systemctl disable --now for the units that are enabled,
# in one call; nothing when none is (the usual case after the first boot).
pf_disable() {
	pf_have systemctl || return 0
	pf_di=
	for pf_d in "$@"; do
		pf_unit_enabled "$pf_d" && pf_di="$pf_di $pf_d"
	done
	[ -n "$pf_di" ] || return 0
	# shellcheck disable=SC2086
	pf_runq systemctl disable --now $pf_di || true
}

# pf_service "ACTION [FLAGS]" UNIT...: systemctl ACTION for each unit, quietly
# (units that do not exist are no error).
pf_service() {
	pf_have systemctl || return 0
	pf_sv_action=$1
	shift
	for pf_sv in "$@"; do
		# shellcheck disable=SC2086
		pf_runq systemctl $pf_sv_action "$pf_sv" || true
	done
}
