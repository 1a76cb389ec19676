#!/usr/bin/env bash
# bench-history.sh - times a clone's disk history as whole pifarm commands
# (process start to exit, hyperfine): snapshot, rollback and promotion of a
# 4 GiB clone holding about 1.5 GB, and, in the same run, what a user does
# today to get the promotion's raw image: qemu-img convert -O raw of the
# clone (alone, and followed by sync, as a promotion syncs before it
# renames the file over the image). Prints hyperfine's means and ranges and
# the ratios of promotion to conversion.
#
# usage: recipes/testguest/bench-history.sh [PIFARM_BINARY] [RUNS]
#
# Needs hyperfine and root (the busybox test guest's build, the chroot
# module filling the disk, promotion's new identity). Work folder:
# PIFARM_BENCH_WORK (default $HOME/.cache/pifarm/bench-history).
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SRC/../.." && pwd)
PF=${1:-$ROOT/pifarm}
RUNS=${2:-10}
[ -x "$PF" ] || { echo "bench-history: no pifarm binary at $PF (go build -o pifarm . first)" >&2; exit 2; }
command -v hyperfine >/dev/null || { echo "bench-history: needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench-history: run as root (the disk is filled through the chroot module)" >&2; exit 2; }
PF=$(cd "$(dirname "$PF")" && pwd)/$(basename "$PF")
W=${PIFARM_BENCH_WORK:-$HOME/.cache/pifarm/bench-history}
mkdir -p "$W"
"$SRC/build.sh" "$W/build-pi.img" >/dev/null
export PIFARM_CACHE=$W/cache PIFARM_CONFIG=$W/config.star
rm -rf "$PIFARM_CACHE" "$W"/disk.img* "$W/plain.raw"
printf 'cache = "%s"\n' "$PIFARM_CACHE" > "$PIFARM_CONFIG"
cp --sparse=always "$W/build-pi.img" "$W/disk.img"
"$PF" run image --disk-image="$W/disk.img" --expand-image --provide-qboot >/dev/null
echo "== instance 0 filled with 1.4 GB of files (random data: nothing compresses)"
"$PF" run "$SRC/offline.star" --grow --command 'set -e; for i in 1 2 3 4 5 6 7; do head -c 200000000 /dev/urandom > /var/fill-$i; done; sync; df -k /' 0
"$PF" run box --force-clone 1 >/dev/null
CLONE=$PIFARM_CACHE/clones/raspi-clone-1/clone-1.qcow2
qemu-img info "$CLONE" | grep -E '^(virtual size|disk size)'
cd "$W"
h() { hyperfine "$@" 2>&1 | grep -E '^Benchmark|Time \(mean|Range'; }
mean() { jq -r ".results[$1].mean" "$W/promote.json"; }
# a change for the rollback to undo: 16 MiB written into the root partition
change="qemu-io -f qcow2 -c 'write -P 0x77 300M 16M' $CLONE >/dev/null"
h -r "$RUNS" --prepare "$PF run box --delete-snapshot 1 bench >/dev/null 2>&1 || true; sync" "$PF run box --snapshot 1 bench"
h -r "$RUNS" --prepare "$change; sync" "$PF run box --rollback 1 bench"
"$PF" run box --delete-snapshot 1 bench >/dev/null
PR=$(( RUNS < 5 ? RUNS : 5 ))
hyperfine -r "$PR" --export-json "$W/promote.json" \
  --prepare "rm -f $W/plain.raw $W/disk.img.~*~; sync" \
  -n "pifarm run image --promote 1" "$PF run image --promote 1" \
  -n "qemu-img convert -O raw" "qemu-img convert -f qcow2 -O raw $CLONE $W/plain.raw" \
  -n "qemu-img convert -O raw; sync" "qemu-img convert -f qcow2 -O raw $CLONE $W/plain.raw && sync $W/plain.raw" 2>&1 |
  grep -E '^Benchmark|Time \(mean|Range'
rm -f "$W/plain.raw" "$W"/disk.img.~*~
awk -v p="$(mean 0)" -v c="$(mean 1)" -v s="$(mean 2)" 'BEGIN {
  printf "promotion %.2f s, qemu-img convert -O raw %.2f s (%.2fx), with sync %.2f s (%.2fx)\n", p, c, p / c, s, p / s }'
