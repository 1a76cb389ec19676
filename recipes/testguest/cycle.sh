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
. "$SRC/cycle-lib.sh"

if [ -z "${PIFARM_CYCLE_INNER:-}" ]; then
  cycle_outer cycle "${1:-}"
  echo "== build the test guests (Debian arm64 packages, cached)"
  "$SRC/build.sh" "$W/build-pi.img"
  "$SRC/build.sh" --no-pi-password "$W/build-seed.img"
  stage "build guests"
  cycle_enter "${BASH_SOURCE[0]}"
fi

# ---------------------------------------------------------------- inner part
cycle_inner
IMG=$W/raspios-test.img
cp --sparse=always "$W/build-pi.img" "$IMG"

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
cycle_enrolled

echo "== base system and a user with sudo"
pf run guest --base-system --useradd=dev --sudo-user-ok 0
stage "base-system+useradd"
gssh 5700 root 'test -x /etc/rc.local && ls /etc/boot.d && grep -q "n2.lan" /etc/hosts' || fail "base system not installed"
gssh 5700 dev 'sudo -n id -u' | grep -qx 0 || fail "user dev cannot sudo"

cycle_clones "$IMG"
gssh 5701 root 'ip -4 addr show lan0' | grep -q 'inet 192.168.66.7/' || fail "guest 1 lan0 lacks 192.168.66.7"
gssh 5701 root 'ping -c 3 -W 5 -I lan0 192.168.66.8' || fail "guest 1 cannot ping guest 2 over lan0"
stage "bridge+ping"

cycle_clones_end

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
