#!/usr/bin/env bash
# cycle-debian.sh - pifarm's development cycle on the systemd test guest (a
# real Debian arm64 system, build-debian.sh) of one variant, end to end, with
# nothing but pifarm commands, checking what the guests really show.
#
# usage: recipes/testguest/cycle-debian.sh VARIANT [PIFARM_BINARY]
#
#   VARIANT  dhcpcd (Bullseye-like) or nm (Bookworm-like, NetworkManager)
#
#   build the guest -> register + expand (4 GiB sparse) + boot files -> run
#   instance 0 to its login prompt -> enrol (console login pi/raspberry, ssh
#   enabled, keys for pi and root, resize2fs) -> base system + a user with
#   sudo -> shutdown -> clone 1 (full) and 2 (linked) -> TAPs + bridge -> run
#   1 and 2 -> node identity of each (host name, LAN and WAN address, no IPv4
#   link-local address, a default route on wan0, a clean boot log) -> guest 1
#   pings guest 2 over lan0 -> shutdown both -> remove the clones.
#   The boot times (systemd-analyze) of instance 0's first boot and of clone
#   1 and the slowest units are printed.
#
# Runs in a private network namespace like cycle.sh (cycle-lib.sh); needs
# root. Prints the time of every stage (also into $PIFARM_CYCLE_WORK/times).
#
# environment: as cycle.sh (PIFARM_CYCLE_WORK, default
# $HOME/.cache/pifarm/cycle-debian-VARIANT; PIFARM_TESTGUEST_CACHE;
# PIFARM_CYCLE_ACCEL).
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$SRC/cycle-lib.sh"

VARIANT=${1:-}
case $VARIANT in
  dhcpcd|nm) ;;
  *) echo "usage: cycle-debian.sh dhcpcd|nm [PIFARM_BINARY]" >&2; exit 2 ;;
esac
if [ -z "${PIFARM_CYCLE_INNER:-}" ]; then
  export PIFARM_CYCLE_WORK=${PIFARM_CYCLE_WORK:-$HOME/.cache/pifarm/cycle-debian-$VARIANT}
  cycle_outer "cycle-debian $VARIANT" "${2:-}"
  echo "== build the systemd test guest ($VARIANT; Debian arm64, cached)"
  nice -n 10 "$SRC/build-debian.sh" "$VARIANT" "$W/build.img"
  stage "build guest"
  cycle_enter "${BASH_SOURCE[0]}" "$VARIANT"
fi

# ---------------------------------------------------------------- inner part
cycle_inner
IMG=$W/raspios-test.img
cp --sparse=always "$W/build.img" "$IMG"

# boot_times PORT WHAT [CMD]: systemd's own account of a boot: the time, the
# slowest units, what the console's login prompt waited for (and the output of
# CMD, run as root in the same SSH session)
boot_times() {
  echo "-- boot of $2 (systemd-analyze)"
  gssh "$1" root "systemd-analyze time | head -n 1; systemd-analyze blame | head -n 12;
    systemd-analyze critical-chain serial-getty@ttyAMA0.service | tail -n +4 | head -n 14;
    systemctl --failed --no-legend --plain | sed 's/^/failed unit: /'; ${3:-}" | tee -a "$W/boot-times"
}
# node_check PORT ALIAS LAN WAN: what a clone's boot scripts made of it
node_check() {
  local port=$1 alias=$2 lan=$3 wan=$4 out
  out=$(gssh "$port" root 'hostname; echo "--"; ip -4 -o addr show; echo "--"; ip -4 route show default;
    echo "--"; cat /run/pifarm-boot.log; echo "--"; su -s /bin/sh -c "sudo -n true" dev 2>&1') ||
    fail "$alias: cannot look at the guest over SSH"
  echo "$out" | sed "s/^/$alias| /"
  local host addrs routes log sudo
  host=$(echo "$out" | awk '/^--$/ { exit } { print }')
  addrs=$(echo "$out" | awk '/^--$/ { n++; next } n == 1')
  routes=$(echo "$out" | awk '/^--$/ { n++; next } n == 2')
  log=$(echo "$out" | awk '/^--$/ { n++; next } n == 3')
  sudo=$(echo "$out" | awk '/^--$/ { n++; next } n == 4')
  [ "$host" = "$alias" ] || fail "$alias: host name is '$host'"
  echo "$addrs" | grep -q " lan0 .*inet $lan/24 " || fail "$alias: lan0 lacks $lan/24"
  echo "$addrs" | grep -q " wan0 .*inet $wan/" || fail "$alias: wan0 lacks its WAN address $wan"
  ! echo "$addrs" | grep -q "inet 169\.254\." || fail "$alias: an IPv4 link-local address is there"
  echo "$routes" | grep -q "^default via .* dev wan0" || fail "$alias: no default route on wan0"
  ! echo "$log" | grep -Eq "node id unknown|Nexthop|Error|exited with status|cannot rename" ||
    fail "$alias: the boot scripts complained"
  [ -z "$sudo" ] || fail "$alias: sudo said: $sudo"
}

echo "== image: register, expand to 4 GiB, boot files"
pf run image --disk-image="$IMG" --expand-image --provide-qboot
[ -s "$W/cache/clones/raspi-clone-0/clone-0.ker" ] || fail "no kernel extracted"
stage "register+expand+qboot"

echo "== run instance 0 (first boot: host keys are made now) and enrol it"
pf run box --run --no-start-vnc 0
[ -n "$(qpid 0)" ] || fail "no QEMU process for instance 0"
pf run status --wait-console 0
stage "first boot to login prompt"
pf run enrol 0
stage "enrol"
cycle_enrolled
out=$(boot_times 5700 "instance 0 (first boot)" 'echo "ssh $(systemctl is-enabled ssh)";
  test -s /etc/ssh/ssh_host_ed25519_key && echo "host keys";
  echo "keygen $(systemctl is-enabled regenerate_ssh_host_keys)"')
echo "$out"
echo "$out" | grep -qx "ssh enabled" || fail "ssh is not enabled after enrol"
echo "$out" | grep -qx "host keys" && echo "$out" | grep -qx "keygen disabled" ||
  fail "the host keys were not made at the first boot"
stage "checks (ssh)"

echo "== base system and a user with sudo"
pf run guest --base-system --useradd=dev --sudo-user-ok 0
stage "base-system+useradd"
deny=true
[ "$VARIANT" = dhcpcd ] && deny='grep -q "^denyinterfaces lan\* wlan0" /etc/dhcpcd.conf'
gssh 5700 root "test -x /etc/rc.local && test -f /etc/udev/rules.d/70-pifarm-qemu-nics.rules &&
  grep -q n2.lan /etc/hosts && $deny" || fail "base system not installed (or dhcpcd.conf lacks pifarm's denyinterfaces)"
out=$(gssh 5700 dev 'sudo -n id -u' 2>&1)
[ "$out" = 0 ] || fail "user dev: sudo -n id -u said: $out"
stage "checks (ssh)"

cycle_clones "$IMG"
node_check 5701 enone 192.168.66.7 100.65.4.15
node_check 5702 entwo 192.168.66.8 100.65.5.15
gssh 5701 root 'ping -c 3 -W 5 -I lan0 192.168.66.8' || fail "guest 1 cannot ping guest 2 over lan0"
stage "node identity+bridge+ping"
boot_times 5701 "clone 1 (boot scripts at work)"
stage "checks (ssh)"

cycle_clones_end

echo "== all stages passed ($VARIANT)"
cat "$W/times"
