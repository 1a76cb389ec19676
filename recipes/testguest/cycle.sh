#!/usr/bin/env bash
# cycle.sh - the whole pifarm development cycle on the test guest, end to end,
# with nothing but pifarm commands, checking what the guests and the host
# really show (files, keys, df, ip addr, the process table).
#
# usage: recipes/testguest/cycle.sh [PIFARM_BINARY]
#
#   build the test guest -> register + expand (4 GiB sparse) + boot files ->
#   run instance 0 -> enrol (console login, ssh, keys for pi and root,
#   resize2fs) -> base system + a user with sudo -> shutdown -> clone 1 (full)
#   and 2 (linked) -> user-owned TAPs + bridge -> run 1 and 2 -> guest 1 pings
#   guest 2 over lan0 -> shutdown both -> remove the clones.
#   Then the offline-seeding path: a guest without a pi password, seeded with
#   `ssh` + userconf.txt, enrolled over SSH.
#
# Everything after the guest build runs in a private network namespace (the
# bridge, the TAPs, QEMU's forwarded ports): nothing touches the host's
# network. Needs root (namespaces, TAPs). Prints the time of every stage.
#
# environment:
#   PIFARM_CYCLE_WORK        work folder (default $HOME/.cache/pifarm/cycle)
#   PIFARM_TESTGUEST_CACHE   the guest builder's cache (see build.sh)
#   PIFARM_CYCLE_ACCEL       QEMU acceleration for the run (default: config's)
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SRC/../.." && pwd)

if [ -z "${PIFARM_CYCLE_INNER:-}" ]; then
  PIFARM=${1:-$ROOT/pifarm}
  [ -x "$PIFARM" ] || { echo "cycle: no pifarm binary at $PIFARM (go build -o pifarm . first)" >&2; exit 2; }
  [ "$(id -u)" = 0 ] || { echo "cycle: run as root (network namespace, TAP devices)" >&2; exit 2; }
  export PIFARM=$(cd "$(dirname "$PIFARM")" && pwd)/$(basename "$PIFARM")
  export PIFARM_TESTGUEST_CACHE=${PIFARM_TESTGUEST_CACHE:-$HOME/.cache/pifarm/testguest}
  export PIFARM_CYCLE_WORK=${PIFARM_CYCLE_WORK:-$HOME/.cache/pifarm/cycle}
  W=$PIFARM_CYCLE_WORK
  mkdir -p "$W"
  t0=$(date +%s.%N)
  echo "== build the test guests (Debian arm64 packages, cached)"
  "$SRC/build.sh" "$W/build-pi.img"
  "$SRC/build.sh" --no-pi-password "$W/build-seed.img"
  awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "stage %-28s %6.1fs\n", "build guests", a - b }' | tee "$W/times"
  echo "== entering a private network namespace"
  PIFARM_CYCLE_INNER=1 exec unshare --net --mount --fork "${BASH_SOURCE[0]}"
fi

# ---------------------------------------------------------------- inner part
W=$PIFARM_CYCLE_WORK
ip link set lo up
mount -t sysfs sysfs /sys           # /sys/class/net of this namespace, as `ip netns exec` does
export HOME=$W/home                 # the user's key lives here, not in ~root
rm -rf "$HOME" "$W/cache"
mkdir -p "$HOME/.ssh"
ssh-keygen -q -t ed25519 -N '' -f "$HOME/.ssh/id_ed25519" -C pifarm-cycle
KEY=$HOME/.ssh/id_ed25519
echo "cache = \"$W/cache\"" > "$W/config.star"
if [ -n "${PIFARM_CYCLE_ACCEL+set}" ]; then
  echo "qemu = {\"accel\": \"$PIFARM_CYCLE_ACCEL\"}" >> "$W/config.star"
fi
export PIFARM_CONFIG=$W/config.star
IMG=$W/raspios-test.img
cp --sparse=always "$W/build-pi.img" "$IMG"

pf() { echo "+ pifarm $*"; "$PIFARM" "$@"; }
cleanup() { # on any exit: no QEMU of this cycle outlives it
  local f p
  for f in "$W"/cache/clones/raspi-clone-*/qemu.pid; do
    [ -f "$f" ] || continue
    p=$(cat "$f")
    if [ -d "/proc/$p" ] && tr '\0' ' ' < "/proc/$p/cmdline" | grep -q -- "$W/cache"; then
      echo "cycle: cleaning up QEMU $p ($f)" >&2
      kill "$p" 2>/dev/null || true
    fi
  done
}
trap cleanup EXIT
stage_t=$(date +%s.%N)
stage() { # stage NAME: closes the previous stage's clock
  local now; now=$(date +%s.%N)
  awk -v n="$1" -v a="$now" -v b="$stage_t" 'BEGIN { printf "stage %-28s %6.1fs\n", n, a - b }' | tee -a "$W/times"
  stage_t=$now
}
fail() { echo "cycle: FAILED: $*" >&2; exit 1; }
gssh() { # gssh PORT USER CMD: independent check with OpenSSH and the user's key
  ssh -q -i "$KEY" -p "$1" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
      -o ConnectTimeout=20 "$2@127.0.0.1" "$3"
}
qpid() { # the live QEMU pid of instance N, or nothing
  local f=$W/cache/clones/raspi-clone-$1/qemu.pid p
  [ -f "$f" ] || return 0
  p=$(cat "$f")
  [ -d "/proc/$p" ] && tr '\0' ' ' < "/proc/$p/cmdline" | grep -q raspi3b && echo "$p"
  return 0
}

echo "== image: register, expand to 4 GiB, boot files"
pf run image --disk-image="$IMG" --expand-image --provide-qboot
size=$(stat -c %s "$IMG")
[ "$size" = $((4 << 30)) ] || fail "image is $size bytes, want 4 GiB"
p2end=$(sfdisk -d "$IMG" | awk -F'[=,]' '/img2/ {print $2 + $4}')
want=$(( (4 << 30) / 512 * 94 / 100 ))
[ $(( p2end - want )) -le 8192 ] && [ $(( want - p2end )) -le 8192 ] || fail "partition 2 ends at sector $p2end, want about $want (6 % margin)"
[ -s "$W/cache/clones/raspi-clone-0/clone-0.ker" ] || fail "no kernel extracted"
stage "register+expand+qboot"

echo "== run instance 0 and enrol it"
pf run box --run --no-start-vnc 0
[ -n "$(qpid 0)" ] || fail "no QEMU process for instance 0"
stage "start qemu"
pf run enrol 0
stage "boot+enrol"
gssh 5700 root 'id -u' | grep -qx 0 || fail "no key login as root"
gssh 5700 pi 'id -un' | grep -qx pi || fail "no key login as pi"
n=$(gssh 5700 root 'cat /root/.ssh/authorized_keys /home/pi/.ssh/authorized_keys' | grep -c pifarm-cycle)
[ "$n" = 2 ] || fail "the key is authorised $n times for root+pi, want once each"
kb=$(gssh 5700 root 'df -k / | tail -1' | awk '{print $2}')
[ "$kb" -gt $((3 << 20)) ] || fail "root file system is $kb KiB after resize2fs, want > 3 GiB"
echo "root file system: $kb KiB"

echo "== base system and a user with sudo"
pf run guest --base-system --useradd=dev --sudo-user-ok 0
stage "base-system+useradd"
gssh 5700 root 'test -x /etc/rc.local && ls /etc/boot.d && grep -q "n2.lan" /etc/hosts' || fail "base system not installed"
gssh 5700 dev 'sudo -n id -u' | grep -qx 0 || fail "user dev cannot sudo"

echo "== shutdown instance 0"
pf run shutdown 0
stage "shutdown"
[ -z "$(qpid 0)" ] || fail "QEMU of instance 0 still running"

echo "== clones: 1 full, 2 linked"
pf run box --force-clone 1
stage "clone full"
pf run box --force-clone --linked 2
stage "clone linked"
qemu-img info "$W/cache/clones/raspi-clone-1/clone-1.qcow2" | grep -q 'backing file' && fail "clone 1 has a backing file"
qemu-img info "$W/cache/clones/raspi-clone-2/clone-2.qcow2" | grep -q "backing file: $IMG" || fail "clone 2 is not linked to $IMG"

echo "== LAN: user-owned TAPs and the bridge"
pf run bridge --taps 1 2
pf run bridge --add-bridge
ip -br link show master q0br

echo "== run clones 1 and 2"
pf run box --run --no-start-vnc 1
pf run box --run --no-start-vnc 2
pf run status --wait --wait-console 1   # the login prompt comes after rc.local
pf run status --wait --wait-console 2
stage "boot clones"
pf run bridge --add-bridge          # enslave the TAPs QEMU now holds open
gssh 5701 root 'ip -4 addr show lan0' | grep -q 'inet 192.168.66.7/' || fail "guest 1 lan0 lacks 192.168.66.7"
gssh 5701 root 'ping -c 3 -W 5 -I lan0 192.168.66.8' || fail "guest 1 cannot ping guest 2 over lan0"
stage "bridge+ping"

echo "== shutdown both, remove the clones"
pf run shutdown 1
pf run shutdown 2
[ -z "$(qpid 1)$(qpid 2)" ] || fail "a clone's QEMU still runs"
pf run box --remove-all-clones
[ ! -e "$W/cache/clones/raspi-clone-1/clone-1.qcow2" ] && [ ! -e "$W/cache/clones/raspi-clone-2/clone-2.qcow2" ] || fail "clones not removed"
stage "shutdown clones+remove"

echo "== offline seeding: a guest without a pi password"
cp --sparse=always "$W/build-seed.img" "$IMG"
pf run image --disk-image="$IMG" --expand-image --seed-ssh --seed-user=pi --seed-password=cycle-secret --provide-qboot
pf run box --run --no-start-vnc 0
echo 'pi_passwords = ["cycle-secret"]' >> "$W/config.star"
pf run status --wait 0              # the seeded ssh file started sshd at first boot
pf run enrol 0                      # so enrolment goes over SSH with the seeded password
gssh 5700 root 'id -u' | grep -qx 0 || fail "seeded guest: no key login as root"
pf run shutdown 0
stage "seeded guest enrol"

echo "== all stages passed"
cat "$W/times"
