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
#   Each clone a machine of its own: clone 1 is snapshotted before its first
#   boot; 1 and 2 boot with host names enone and entwo, machine-ids and host
#   keys of their own (the guests' own files, and pifarm's status), pifarm's
#   SSH verifies the keys it recorded when it made them (nothing trusted on
#   first use); rm -rf /usr/local on clone 1, shutdown, rollback: it is back.
#   dhcpcd only (one more boot): a program installed on clone 2, which is
#   promoted to instance 0's image; instance 0 boots as loner with the
#   program, and a new clone 3 holds it too, as entwo's twin no more.
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

# the known_hosts of the clones as pifarm recorded them when it made them,
# and a snapshot of clone 1 before its first boot
known_sum() { cat "$W"/cache/clones/raspi-clone-[12]/known_hosts | md5sum; }
before_run() {
  KNOWN=$(known_sum)
  pf run box --snapshot 1 clean
  stage "snapshot clone 1"
  pf run box --snapshots 1 | grep -q "^clean " || fail "box --snapshots 1 does not list clean"
}
# identity_check: clones 1 and 2, and instance 0's disk, are three machines:
# the host names, machine-ids and host keys the guests themselves show
# differ and are what pifarm's status says (status N logged in over SSH,
# verifying the key pifarm recorded when it made the clone; the fleet
# table's short log-in deadline may leave an emulated guest's identity to
# its disk), and known_hosts is unchanged since: nothing was trusted on
# first use.
identity_check() {
  local json i port name g mid fp
  json=$("$PIFARM" run status --json 0,1,2) || fail "pifarm run status --json 0,1,2 failed"
  echo "$json" | jq -c '.[] | {id, identity}'
  for i in 1 2; do
    port=$((5700 + i)) name=$(echo "$json" | jq -r ".[$i].alias")
    g=$(gssh "$port" root 'hostname; cat /etc/machine-id; cat /etc/ssh/ssh_host_ed25519_key.pub') ||
      fail "$name: cannot read its identity over SSH"
    mid=$(echo "$g" | sed -n 2p)
    fp=$(echo "$g" | sed -n 3p | ssh-keygen -lf - | awk '{print $2}')
    [ "$(echo "$g" | sed -n 1p)" = "$name" ] || fail "$name: its host name is $(echo "$g" | sed -n 1p)"
    [ "${#mid}" = 32 ] || fail "$name: machine-id '$mid'"
    echo "$json" | jq -e --arg mid "$mid" --arg fp "$fp" --arg name "$name" ".[$i].identity |
      .hostname == \$name and .machine_id == \$mid and .host_keys[0] == \$fp and .same_as == [] and
      (.source == \"disk\" or .host_key_check == \"verified\")" >/dev/null ||
      fail "$name: pifarm's status --json says otherwise: $(echo "$json" | jq -c ".[$i].identity")"
    "$PIFARM" run status "$i" | grep -F "  identity hostname $name, machine-id ${mid:0:8}, host key $fp; SSH presented $fp, verified against the recorded one" ||
      fail "$name: pifarm run status $i does not show its identity read over SSH with the recorded key verified"
    grep -qF "$(echo "$g" | sed -n 3p | cut -d' ' -f1,2)" "$W/cache/clones/raspi-clone-$i/known_hosts" ||
      fail "$name: its host key is not the one pifarm recorded"
  done
  echo "$json" | jq -e '.[0].identity.source == "disk" and .[0].identity.same_as == [] and
    ([.[].identity.machine_id] | unique | length) == 3 and ([.[].identity.host_keys[]] | unique | length) == ([.[].identity.host_keys[]] | length)' >/dev/null ||
    fail "instance 0 and the clones share a machine-id or a host key"
  [ "$(known_sum)" = "$KNOWN" ] || fail "a clone's known_hosts changed after it was made (a key trusted on first use?)"
}
# offline N CMD: CMD's output in stopped instance N's root, read on the host
offline() { "$PIFARM" run "$SRC/offline.star" --command "$2" "$1"; }
# after_shutdown: clone 1 lost /usr/local, its rollback brings it back;
# dhcpcd: clone 2 promoted, instance 0 booted from it, a new clone 3
after_shutdown() {
  [ "$(offline 1 'test -e /usr/local && echo present || echo gone')" = gone ] || fail "clone 1 still has /usr/local"
  pf run box --rollback 1 clean
  stage "rollback clone 1"
  [ "$(offline 1 'test -d /usr/local/bin && echo present || echo gone')" = present ] || fail "clone 1's /usr/local is not back after the rollback"
  stage "checks (offline)"
  [ "$VARIANT" = dhcpcd ] || return 0
  promote_check
}
# promote_check: clone 2 (with a program installed on it) becomes instance
# 0's image; instance 0 boots as loner with that program, known to pifarm by
# the keys it gave it; a new clone 3 of it holds the program too
promote_check() {
  local out json
  echo "== promote clone 2 to instance 0's image"
  pf run image --promote 2
  stage "promote clone 2"
  [ -e "$IMG.~1~" ] || fail "the old image was not kept as $IMG.~1~"
  pf run box --run --no-start-vnc 0
  pf run status --wait --wait-console 0
  stage "boot promoted instance 0"
  out=$(gssh 5700 root 'hostname; pifarm-cycle-mark') || fail "instance 0: the program installed on clone 2 does not run"
  echo "$out"
  [ "$out" = "$(printf 'loner\ninstalled on entwo')" ] || fail "instance 0 after the promotion: $out"
  "$PIFARM" run status 0 | grep -E "^  identity hostname loner, machine-id [0-9a-f]{8}, host key .*, verified against the recorded one" ||
    fail "instance 0: pifarm run status 0 does not show its identity read over SSH with the recorded key verified"
  pf run shutdown 0
  pf run box --force-clone --linked 3
  out=$(offline 3 'cat /etc/hostname; /usr/local/bin/pifarm-cycle-mark')
  [ "$out" = "$(printf 'enthree\ninstalled on entwo')" ] || fail "clone 3 of the promoted image: $out"
  json=$("$PIFARM" run status --json 0-3) || fail "pifarm run status --json 0-3 failed"
  echo "$json" | jq -c '.[] | {id, identity}'
  echo "$json" | jq -e '[.[].identity.same_as == []] | all' >/dev/null || fail "instance 0 and its clones share an identity"
  stage "checks (promotion)"
}

cycle_clones "$IMG" before_run
node_check 5701 enone 192.168.66.7 100.65.4.15
node_check 5702 entwo 192.168.66.8 100.65.5.15
gssh 5701 root 'ping -c 3 -W 5 -I lan0 192.168.66.8' || fail "guest 1 cannot ping guest 2 over lan0"
stage "node identity+bridge+ping"
boot_times 5701 "clone 1 (boot scripts at work)"
stage "checks (ssh)"
identity_check
gssh 5701 root 'rm -rf /usr/local && test ! -e /usr/local' || fail "clone 1: rm -rf /usr/local failed"
gssh 5702 root 'printf "#!/bin/sh\necho installed on entwo\n" > /usr/local/bin/pifarm-cycle-mark &&
  chmod 755 /usr/local/bin/pifarm-cycle-mark && sync' || fail "clone 2: cannot install a program"
stage "checks (identity)"

cycle_clones_end after_shutdown

echo "== all stages passed ($VARIANT)"
cat "$W/times"
