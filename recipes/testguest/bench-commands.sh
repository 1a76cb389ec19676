#!/usr/bin/env bash
# bench-commands.sh - times whole pifarm commands as a user types them (process
# start to exit, hyperfine), on the test guest in a scratch cache: the figures
# of the README's speed table.
#
# usage: recipes/testguest/bench-commands.sh [PIFARM_BINARY] [RUNS]
#
# Needs hyperfine (Debian package) and root only for the guest build's first
# run (build.sh). QEMU runs without network devices (no TAPs, no VNC viewer).
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SRC/../.." && pwd)
PF=${1:-$ROOT/pifarm}
RUNS=${2:-20}
[ -x "$PF" ] || { echo "bench-commands: no pifarm binary at $PF (go build -o pifarm . first)" >&2; exit 2; }
command -v hyperfine >/dev/null || { echo "bench-commands: needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }
PF=$(cd "$(dirname "$PF")" && pwd)/$(basename "$PF")
W=${PIFARM_BENCH_WORK:-$HOME/.cache/pifarm/bench-commands}
mkdir -p "$W"
"$SRC/build.sh" "$W/build-pi.img" >/dev/null
export PIFARM_CACHE=$W/cache PIFARM_CONFIG=$W/config.star
C=$PIFARM_CACHE/clones/raspi-clone-0
stop() { "$PF" run box --terminate 0 >/dev/null 2>&1 || true; }
trap stop EXIT
stop
rm -rf "$PIFARM_CACHE"
printf 'cache = "%s"\n' "$PIFARM_CACHE" > "$PIFARM_CONFIG"
cp --sparse=always "$W/build-pi.img" "$W/disk.img"
"$PF" run image --disk-image="$W/disk.img" --expand-image --provide-qboot >/dev/null
cd "$W"
h() { hyperfine -r "$RUNS" "$@" 2>&1 | grep -E '^Benchmark|Time \(mean|Range'; }
h -N "$PF --help" "$PF -n run box --run 1"
h --prepare "rm -f $C/clone-0.ker $C/clone-0.dtb $C/clone-0.sig" "$PF run image --provide-qboot"
h --prepare "$PF run box --flush-clone 2 >/dev/null 2>&1; true" "$PF run box --force-clone -l 2"
h --prepare "$PF run box --flush-clone 1 >/dev/null 2>&1; true" "$PF run box --force-clone 1"
h --prepare "$PF run box --terminate 0 >/dev/null 2>&1; true" "$PF run box --run --no-start-vnc 0"
h -N "$PF run box"
