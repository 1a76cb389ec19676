#!/usr/bin/env bash
# bench-fanout.sh - three test-guest clones at once against one after another,
# whole commands as a user types them, on this machine's cores:
#
#   boot        to the login prompt on the console:
#                 seq   for n in 1 2 3; do pifarm run box --run --wait $n; done
#                 j3    pifarm -j 3 run box --run --wait 1-3
#                 jdef  pifarm run box --run --wait 1-3   (the default -j)
#   boot+enrol  the same, then enrol (console log-in, SSH, keys, resize2fs):
#                 seq   for n in 1 2 3; do box --run --wait $n; enrol $n; done
#                 j3    pifarm -j 3 run box --run --wait 1-3; pifarm -j 3 run enrol 1-3
#                 jdef  the same with the default -j
#
# usage: recipes/testguest/bench-fanout.sh [PIFARM_BINARY] [ROUNDS]
#
# Every measurement starts from three fresh linked clones of the test guest
# (made, not timed), all stopped; the variants of a round run one after
# another, so a busy machine weighs on all of them alike. Prints each round's
# seconds, then the medians and the ratios to seq. Runs in a private network
# namespace (cycle-lib.sh); needs root.
#
# On the 2-core development machine under a load of 11-22 from other work
# (one boot to the login prompt took 30-80 s instead of 8), 2 rounds, medians:
# boot seq 189 s, -j 3 69 s (0.36x), default -j (2) 84 s (0.44x); boot+enrol
# seq 261 s, -j 3 121 s (0.46x), default -j 181 s (0.69x). Part of the gain
# is the scheduler's: three QEMUs get three shares of a busy machine.
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$SRC/cycle-lib.sh"

if [ -z "${PIFARM_CYCLE_INNER:-}" ]; then
  export PIFARM_CYCLE_WORK=${PIFARM_CYCLE_WORK:-$HOME/.cache/pifarm/bench-fanout}
  export ROUNDS=${2:-2}
  cycle_outer bench-fanout "${1:-}"
  "$SRC/build.sh" "$W/build-pi.img" > /dev/null
  cycle_enter "${BASH_SOURCE[0]}"
fi

# ---------------------------------------------------------------- inner part
cycle_inner
q() { "$PIFARM" "$@" >> "$W/log" 2>&1 || { echo "bench-fanout: pifarm $* failed, see $W/log" >&2; tail -n 30 "$W/log" >&2; exit 1; }; }
now() { date +%s.%N; }
fresh() { # three new stopped linked clones
  q run box --terminate 1-3
  q run box --remove-all-clones
  for n in 1 2 3; do q run box --force-clone --linked $n; done
}
boot() { # boot VARIANT
  case $1 in
    seq) for n in 1 2 3; do q run box --run --no-start-vnc --wait $n; done ;;
    j3) q -j 3 run box --run --no-start-vnc --wait 1-3 ;;
    jdef) q run box --run --no-start-vnc --wait 1-3 ;;
  esac
}
enrol() { # boot+enrol VARIANT
  case $1 in
    seq) for n in 1 2 3; do q run box --run --no-start-vnc --wait $n; q run enrol $n; done ;;
    j3) q -j 3 run box --run --no-start-vnc --wait 1-3; q -j 3 run enrol 1-3 ;;
    jdef) q run box --run --no-start-vnc --wait 1-3; q run enrol 1-3 ;;
  esac
}
: > "$W/log"
cp --sparse=always "$W/build-pi.img" "$W/disk.img"
q run image --disk-image="$W/disk.img" --expand-image --provide-qboot
cols="boot-seq boot-j3 boot-jdef enrol-seq enrol-j3 enrol-jdef"
printf '%-6s' round | tee "$W/results"; for c in $cols; do printf ' %10s' "$c"; done | tee -a "$W/results"; echo | tee -a "$W/results"
for r in $(seq "$ROUNDS"); do
  printf '%-6s' "$r" | tee -a "$W/results"
  for c in $cols; do
    fresh
    t0=$(now)
    ${c%%-*} "${c#*-}"
    t1=$(now)
    awk -v a="$t1" -v b="$t0" 'BEGIN { printf " %10.1f", a - b }' | tee -a "$W/results"
  done
  echo | tee -a "$W/results"
done
q run box --terminate 1-3
awk 'NR > 1 { for (i = 2; i <= NF; i++) v[i, NR] = $i; n = NR } NR == 1 { for (i = 2; i <= NF; i++) h[i] = $i; nf = NF }
  END {
    for (i = 2; i <= nf; i++) {
      k = 0
      for (r = 2; r <= n; r++) { x = v[i, r] + 0; j = ++k; while (j > 1 && a[j - 1] > x) { a[j] = a[j - 1]; j-- } a[j] = x }
      m[i] = (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
    }
    printf "%-6s", "median"; for (i = 2; i <= nf; i++) printf " %10.1f", m[i]; print ""
    printf "%-6s", "ratio"; for (i = 2; i <= nf; i++) printf " %10.2f", m[i] / m[(i <= 4) ? 2 : 5]; print ""
  }' "$W/results" | tee -a "$W/results"
echo "cores: $(nproc); the default -j is the smaller of the cores and the guests of qemu.memory that fit in MemAvailable"
