#!/usr/bin/env bash
# cycle-board.sh - a hardware node end to end, on a simulated board: pifarm
# flashes instance 0's image to the board's "SD card", switches its power on,
# enrols it over its serial console, reaches it by SSH at its LAN address,
# a QEMU clone pings it over the LAN bridge, and shutdown waits for the
# board's "reboot: Power down" on the serial console before it cuts the power.
#
# usage: recipes/testguest/cycle-board.sh [PIFARM_BINARY]
#
# The board is a QEMU raspi3b machine run by testdata/board.sh, which the
# node table names as the board's power_on/power_off/power_state commands: its
# serial port is a pseudo-terminal the node table names as serial (as it names
# /dev/ttyUSB0), its only NIC is on the LAN bridge with the board's hardware
# MAC (no user-net, no port forward), its card is the file `pifarm run flash`
# wrote, and pifarm.board=1 on its kernel command line makes the boot scripts
# take the hardware path (the NIC named lan5 by /etc/iftab).
#
#   build the test guest -> instance 0: register, boot, enrol, base system,
#   shutdown -> linked clone 1 (host keys of its own), flashed to the card file
#   (which gets other keys of its own) -> clone 1 on the bridge ->
#   power the board on, run clone 1 -> enrol the board over the pty console ->
#   checks: its NIC and address, host keys read over the console, SSH at
#   192.168.66.12:22, a user made over LAN SSH, clone 1 pings it over lan0,
#   status shows power, console, ping, SSH -> shutdown: Power down seen, then
#   the power cut -> power --state says off.
#
# Runs in a private network namespace like cycle.sh; needs root.
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$SRC/cycle-lib.sh"

if [ -z "${PIFARM_CYCLE_INNER:-}" ]; then
  cycle_outer cycle-board "${1:-}"
  echo "== build the test guest (Debian arm64 packages, cached)"
  "$SRC/build.sh" "$W/build-pi.img"
  stage "build guest"
  cycle_enter "${BASH_SOURCE[0]}"
fi

# ---------------------------------------------------------------- inner part
cycle_inner
B=$W/board                            # the board: card, firmware, pty link, logs
rm -rf "$B"
mkdir -p "$B"
POWER=$SRC/testdata/board.sh
board_cleanup() { "$POWER" off "$B" 2>/dev/null || true; cleanup; }
trap board_cleanup EXIT
echo b8:27:eb:00:00:05 >"$B/mac"
echo board5 >"$B/tap"
echo q0br >"$B/bridge"
cat >>"$W/config.star" <<EOF
nodes = [
    node(id = 0, alias = "loner", lan = "192.168.66.63", wan = "100.65.63.15"),
    node(id = 1, alias = "enone", lan = "192.168.66.7", wan = "100.65.4.15"),
    node(id = 5, alias = "enfive", lan = "192.168.66.12", wan = "100.65.10.15", lan_mac = "b8:27:eb:00:00:05",
         serial = "$B/ttyUSB0", power_on = ["$POWER", "on", "$B"], power_off = ["$POWER", "off", "$B"],
         power_state = ["$POWER", "state", "$B"]),
]
EOF
IMG=$W/raspios-test.img
cp --sparse=always "$W/build-pi.img" "$IMG"

echo "== instance 0: register, enrol, base system (the boot scripts the board runs)"
pf run image --disk-image="$IMG" --expand-image --provide-qboot
pf run box --run --no-start-vnc 0
pf run enrol 0
pf run guest --base-system 0
pf run shutdown 0
stage "instance 0"

echo "== clone 1 (host keys of its own), flashed to the board's card"
pf run box --force-clone --linked 1
pf run flash --device "$B/card.img" --yes 1    # the card gets host keys of its own again
[ "$(stat -c %s "$B/card.img")" = "$(stat -c %s "$IMG")" ] || fail "the card is not the image's size"
cp "$W/cache/clones/raspi-clone-0/clone-0.ker" "$B/kernel8.img"
cp "$W/cache/clones/raspi-clone-0/clone-0.dtb" "$B/board.dtb"
stage "clone+flash"

echo "== the LAN: clone 1 on the bridge, the host at .1"
pf run bridge --taps 1
pf run bridge --add-bridge --router-interface
pf run power --state 5 | grep -q 'power off' || fail "the board is on before power_on"

echo "== power the board on, run clone 1 meanwhile"
pf run power --on 5
[ -L "$B/ttyUSB0" ] || fail "the board has no serial port"
pf run power --state 5 | grep -q 'power on (on)' || fail "power --state does not say on"
pf run box --run --no-start-vnc 1
pf run bridge --add-bridge            # enslave the TAP QEMU now holds open
stage "power on"

echo "== enrol the board over its serial console"
# (its console log, kept by the board, shows the boot: wait for the login
# prompt there, a loaded CI host may take minutes, then enrol, which sends
# Enter for a fresh prompt itself)
for i in $(seq 900); do grep -q 'login: ' "$B/console.log" && break; sleep 1; done
stage "board boot"
pf run enrol 5 | tee "$W/enrol5.out"
grep -q 'SSH host keys read over the console and recorded' "$W/enrol5.out" || fail "the board's host keys were not read over its console"
grep -q 'enrolled' "$W/enrol5.out" || fail "the board was not enrolled"
stage "enrol board"

echo "== the board on the LAN"
bssh() { ssh -q -i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$W/cache/clones/raspi-clone-5/known_hosts" \
           -o ConnectTimeout=20 "root@192.168.66.12" "$@"; }
out=$(bssh '. /run/pifarm/node; echo "$KIND $NODE $LANIF"; ip -4 -o addr show dev lan5; ls /sys/class/net') || fail "no SSH at the board's LAN address (its host key as read over the console)"
echo "$out"
echo "$out" | sed -n 1p | grep -qx 'hardware 5 lan5' || fail "the boot scripts did not take the hardware path (want: hardware 5 lan5)"
echo "$out" | grep -q 'inet 192.168.66.12/24' || fail "lan5 lacks 192.168.66.12/24"
keys() { awk '{print $2, $3}' "$W/cache/clones/raspi-clone-$1/known_hosts" | sort; }
[ -n "$(keys 5)" ] && [ -z "$(comm -12 <(keys 1) <(keys 5))" ] || fail "the board shares a host key with clone 1, the image flashed"
pf run guest --useradd=dev 5          # provisioning over LAN SSH
bssh 'id -un dev' | grep -qx dev || fail "user dev was not made on the board"
pf run status --wait --wait-console 1
gssh 5701 root 'ping -c 3 -W 5 -I lan0 192.168.66.12' || fail "clone 1 cannot ping the board over lan0"
pf run status 5 | tee "$W/status5.out"
for want in 'power    on' "console  $B/ttyUSB0 is free" 'ping     192.168.66.12 answers' 'key log-in as root works'; do
  grep -qF "$want" "$W/status5.out" || fail "status 5 lacks '$want'"
done
stage "lan+ssh+ping+status"

if pf run power --off 5 >"$W/off5.out" 2>&1; then fail "power --off cut a running board's power"; fi
grep -q 'its SSH answers at 192.168.66.12:22: the system runs' "$W/off5.out" || fail "power --off did not say why it refused: $(cat "$W/off5.out")"
pf run power --state 5 | grep -q 'power on' || fail "the refused power --off switched the board"

echo "== shutdown: poweroff, Power down on the console, then the power cut"
pf run shutdown 5 | tee "$W/shutdown5.out"
grep -q "stopped (reboot: Power down), power off ($POWER off $B)" "$W/shutdown5.out" || fail "shutdown did not report the board's power down and the cut"
tail -1 "$B/power.log" | grep -qx 'off after the board said reboot: Power down' || fail "the power was cut before the board said it stopped: $(tail -1 "$B/power.log")"
pf run power --state 5 | grep -q 'power off' || fail "power --state does not say off"
stage "shutdown board"

pf run shutdown 1
[ -z "$(qpid 1)" ] || fail "clone 1's QEMU still runs"
stage "shutdown clone"

echo "== all stages passed"
cat "$W/times"
