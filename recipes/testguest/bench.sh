#!/usr/bin/env bash
# bench.sh - times the core of the farm cycle with pifarm on the test guest:
# `box --run` -> login prompt -> `enrol` -> `shutdown` (QEMU gone), for each
# QEMU acceleration, ROUNDS times, on a fresh copy of the image each round.
#
# usage: recipes/testguest/bench.sh [PIFARM_BINARY] [ROUNDS]
#
# Prints one line per round and the median of each column:
#   start   box --run until it returned (QEMU's QMP answered)
#   login   from the start until the console showed the login prompt
#   enrol   enrol from the login prompt until root key log-in was verified
#           and resize2fs done
#   stop    shutdown until QEMU was gone
#   total   box --run through enrol and shutdown until QEMU was gone
# Runs in a private network namespace; needs root. The baseline of the
# original shell tools on this kind of machine was about 53 s for the total
# (boot to login 17 s, enrol 15 s, shutdown 19 s).
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SRC/../.." && pwd)
if [ -z "${PIFARM_BENCH_INNER:-}" ]; then
  PIFARM=${1:-$ROOT/pifarm}
  [ -x "$PIFARM" ] || { echo "bench: no pifarm binary at $PIFARM (go build -o pifarm . first)" >&2; exit 2; }
  [ "$(id -u)" = 0 ] || { echo "bench: run as root (network namespace)" >&2; exit 2; }
  export PIFARM=$(cd "$(dirname "$PIFARM")" && pwd)/$(basename "$PIFARM")
  export ROUNDS=${2:-3}
  export W=${PIFARM_BENCH_WORK:-$HOME/.cache/pifarm/bench}
  mkdir -p "$W"
  "$SRC/build.sh" "$W/build-pi.img" >/dev/null
  PIFARM_BENCH_INNER=1 exec unshare --net --mount --fork "${BASH_SOURCE[0]}"
fi
ip link set lo up
mount -t sysfs sysfs /sys
export HOME=$W/home
rm -rf "$HOME"; mkdir -p "$HOME/.ssh"
ssh-keygen -q -t ed25519 -N '' -f "$HOME/.ssh/id_ed25519"
export PIFARM_CONFIG=$W/config.star
now() { date +%s.%N; }
d() { awk -v a="$2" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
q() { "$PIFARM" "$@" >>"$W/log" 2>&1 || { echo "bench: pifarm $* failed, see $W/log" >&2; tail -20 "$W/log" >&2; exit 1; }; }
cleanup() { [ -f "$W/cache/clones/raspi-clone-0/qemu.pid" ] && kill "$(cat "$W/cache/clones/raspi-clone-0/qemu.pid")" 2>/dev/null; return 0; }
trap cleanup EXIT
: > "$W/log"
printf '%-18s %6s %6s %6s %6s %6s\n' accel start login enrol stop total | tee "$W/results"
for accel in "tcg,thread=single" ""; do
  for r in $(seq "$ROUNDS"); do
    rm -rf "$W/cache"
    printf 'cache = "%s"\nqemu = {"accel": "%s"}\n' "$W/cache" "$accel" > "$PIFARM_CONFIG"
    cp --sparse=always "$W/build-pi.img" "$W/disk.img"
    q run image --disk-image="$W/disk.img" --expand-image --provide-qboot
    t0=$(now); q run box --run --no-start-vnc 0
    t1=$(now); q run status --wait-console --timeout=300 0
    t2=$(now); q run enrol 0
    t3=$(now); q run shutdown 0
    t4=$(now)
    printf '%-18s %6s %6s %6s %6s %6s\n' "${accel:-default}" "$(d "$t0" "$t1")" "$(d "$t1" "$t2")" \
      "$(d "$t2" "$t3")" "$(d "$t3" "$t4")" "$(d "$t0" "$t4")" | tee -a "$W/results"
  done
done
echo "medians:"
awk 'NR > 1 { k = $1; for (i = 2; i <= 6; i++) v[k, i, ++n[k, i]] = $i; keys[k] = 1 }
     END { for (k in keys) { printf "%-18s", k
             for (i = 2; i <= 6; i++) { m = n[k, i]
               # sort the column (few values: insertion sort)
               for (a = 1; a <= m; a++) s[a] = v[k, i, a]
               for (a = 2; a <= m; a++) { x = s[a]; b = a - 1; while (b > 0 && s[b] > x) { s[b + 1] = s[b]; b-- } s[b + 1] = x }
               printf " %6s", (m % 2) ? s[(m + 1) / 2] : sprintf("%.1f", (s[m / 2] + s[m / 2 + 1]) / 2) }
             printf "\n" } }' "$W/results"
