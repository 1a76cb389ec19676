#!/usr/bin/env bash
# bench-offline.sh - the base package set (hostapd i2c-tools rfkill git
# build-essential autoconf automake libtool pkg-config) installed on the
# systemd test guest (build-debian.sh dhcpcd) three ways, each a whole pifarm
# command as a user types it:
#
#   offline-1  guest --apt-install --offline 1, the farm's package cache empty
#   offline-2  guest --apt-install --offline 2, the cache filled by node 1
#   in-guest   guest --apt-install 3 in the running QEMU guest (full-system
#              emulation), the cache empty again: the way it is done today
#
# and prints the seconds and the ratios. Offline steps include making the
# clone and growing its root file system; in-guest excludes the boot and the
# enrolment (timed, printed apart).
#
# usage: recipes/testguest/bench-offline.sh [--no-in-guest] [PIFARM_BINARY]
#
# Needs root (loop devices, the guest build), network to this host's Debian
# mirror, and about 25 minutes with the in-guest run (2 cores).
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SRC/../.." && pwd)
in_guest=1
if [ "${1:-}" = --no-in-guest ]; then in_guest=; shift; fi
PF=${1:-$ROOT/pifarm}
[ -x "$PF" ] || { echo "bench-offline: no pifarm binary at $PF (go build -o pifarm . first)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench-offline: run as root (loop devices)" >&2; exit 2; }
PF=$(cd "$(dirname "$PF")" && pwd)/$(basename "$PF")
W=${PIFARM_BENCH_WORK:-$HOME/.cache/pifarm/bench-offline}
mkdir -p "$W"
"$SRC/build-debian.sh" dhcpcd "$W/build.img" >/dev/null
export PIFARM_CACHE=$W/cache PIFARM_CONFIG=$W/config.star
stop() { "$PF" run box --terminate 3 >/dev/null 2>&1 || true; }
trap stop EXIT
stop
rm -rf "$PIFARM_CACHE"
printf 'cache = "%s"\n' "$PIFARM_CACHE" > "$PIFARM_CONFIG"
cp --sparse=always "$W/build.img" "$W/disk.img"
"$PF" run image --disk-image="$W/disk.img" --expand-image --provide-qboot >/dev/null
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
q() { "$PF" "$@" >>"$W/log" 2>&1 || { echo "bench-offline: pifarm $* failed, see $W/log" >&2; tail -20 "$W/log" >&2; exit 1; }; }
: > "$W/log"
rm -rf "$PIFARM_CACHE/packages"
t0=$(now); q run guest --apt-install --offline 1; t1=$(now)
q run guest --apt-install --offline 2; t2=$(now)
off1=$(secs "$t0" "$t1"); off2=$(secs "$t1" "$t2")
echo "offline-1 (empty package cache)  ${off1} s"
echo "offline-2 (cache filled)         ${off2} s   node 1 / node 2: $(awk -v a="$off1" -v b="$off2" 'BEGIN { printf "%.2f", a / b }')x"
[ -n "$in_guest" ] || exit 0
rm -rf "$PIFARM_CACHE/packages"
t0=$(now)
q run box --run --no-start-vnc --wait --timeout=600 3
q run enrol 3
t1=$(now)
q run guest --apt-install 3
t2=$(now)
q run shutdown 3
boot=$(secs "$t0" "$t1"); ing=$(secs "$t1" "$t2")
echo "in-guest (empty package cache)   ${ing} s   (boot + enrol before it: ${boot} s)"
echo "in-guest / offline-1: $(awk -v a="$ing" -v b="$off1" 'BEGIN { printf "%.1f", a / b }')x"
