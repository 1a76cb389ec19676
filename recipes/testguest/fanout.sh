#!/usr/bin/env bash
# fanout.sh - pifarm's node sets end to end: three busybox test guests
# booted, enrolled and provisioned by one command each, one of them with a
# password pifarm is not given, checking the exit status, what the terminal
# shows, and the run records (pifarm runs, summary.json, each node's log).
#
# usage: recipes/testguest/fanout.sh [PIFARM_BINARY]
#
#   build the test guest -> register + expand + boot files -> full clone 3
#   (pi's password: raspberry) -> seed instance 0 with pi's password
#   fanout-secret, the only one config.star's pi_passwords holds ->
#   box --run --linked --wait 1-3 (clones 1 and 2 made, seeded, all three
#   booted to the login prompt) -> enrol 1-3 (3 fails: its console refuses
#   pi; 1 and 2 finish) -> guest --useradd dev --sudo-user-ok 1-3 (3 fails:
#   its SSH does not answer)
#   -> shutdown 1,2, terminate 3, remove the clones.
#
# Runs in a private network namespace like cycle.sh (cycle-lib.sh); needs
# root. Prints the time of every stage (also into $PIFARM_CYCLE_WORK/times).
#
# environment: as cycle.sh (PIFARM_CYCLE_WORK, default
# $HOME/.cache/pifarm/fanout; PIFARM_TESTGUEST_CACHE; PIFARM_CYCLE_ACCEL).
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$SRC/cycle-lib.sh"

if [ -z "${PIFARM_CYCLE_INNER:-}" ]; then
  export PIFARM_CYCLE_WORK=${PIFARM_CYCLE_WORK:-$HOME/.cache/pifarm/fanout}
  cycle_outer fanout "${1:-}"
  echo "== build the test guest (Debian arm64 packages, cached)"
  "$SRC/build.sh" "$W/build-pi.img"
  stage "build guest"
  cycle_enter "${BASH_SOURCE[0]}"
fi

# ---------------------------------------------------------------- inner part
cycle_inner
IMG=$W/raspios-test.img
cp --sparse=always "$W/build-pi.img" "$IMG"

# pfx WANT ARGS...: pifarm ARGS must exit with status WANT; its standard
# output and error are kept in $W/out and $W/err (and shown).
pfx() {
  local want=$1 rc=0
  shift
  echo "+ pifarm $*"
  "$PIFARM" "$@" > "$W/out" 2> "$W/err" || rc=$?
  cat "$W/out" "$W/err"
  [ "$rc" = "$want" ] || fail "pifarm $*: exit status $rc, want $want"
}
# has FILE TEXT: FILE holds the fixed string TEXT
has() { grep -qF -- "$2" "$1" || fail "$1 lacks: $2"; }
# summary RECIPE: the newest run folder of RECIPE
rundir() { ls -d "$W"/cache/runs/*-"$1" | tail -n 1; }
# outcome RUN NODE: exit status and error of NODE in RUN's summary.json
outcome() { jq -r --argjson n "$2" '.nodes[] | select(.node == $n) | "\(.exit) \(.error)"' "$1/summary.json"; }

echo "== image; clone 3 keeps the build's password, 1 and 2 get a seeded one"
pf run image --disk-image="$IMG" --expand-image --provide-qboot
pf run box --force-clone 3
pf run image --seed-user=pi --seed-password=fanout-secret
echo 'pi_passwords = ["fanout-secret"]' >> "$W/config.star"
stage "image+clone 3+seed"

echo "== one command boots clones 1-3 (1 and 2 made as linked clones)"
pfx 0 -j 3 run box --run --linked --no-start-vnc --wait 1-3
for n in 1 2 3; do [ -n "$(qpid $n)" ] || fail "no QEMU for instance $n"; done
[ "$(ls -d "$W"/cache/runs/*-box | wc -l)" = 1 ] || fail "not one run record of box"
run=$(rundir box)
jq -e '.exit == 0 and .finished and ([.nodes[].exit] == [0, 0, 0]) and .set == "1-3"' "$run/summary.json" > /dev/null ||
  fail "box's summary.json: $(cat "$run/summary.json")"
stage "boot 1-3"

echo "== one command enrols all three: 3 refuses pi's password"
pfx 1 -j 3 run enrol 1-3
has "$W/err" "node         result  seconds  cause"
grep -E '^<1> enone +ok ' "$W/err" > /dev/null || fail "no ok line for node 1"
grep -E '^<2> entwo +ok ' "$W/err" > /dev/null || fail "no ok line for node 2"
grep -E "^<3> enthree +failed +[0-9.]+ +<3> enthree: the console refused user pi with every password of config.star's pi_passwords" "$W/err" > /dev/null ||
  fail "node 3's cause is not the refused password"
has "$W/err" "pifarm: enrol 1-3: 1 of 3 nodes failed: <3> enthree"
grep -E '^<(1|2)> .*\| .*enrolled: root key log-in verified' "$W/out" "$W/err" | wc -l | grep -qx 2 || fail "not both of 1 and 2 say they were enrolled"
run=$(rundir enrol)
jq -e '.recipe == "enrol" and .set == "1-3" and .finished and .exit == 1 and ([.nodes[].node] == [1, 2, 3])' "$run/summary.json" > /dev/null ||
  fail "enrol's summary.json: $(cat "$run/summary.json")"
for n in 1 2; do
  [ "$(outcome "$run" $n)" = "0 " ] || fail "node $n in summary.json: $(outcome "$run" $n)"
  has "$run/$n.log" "enrolled: root key log-in verified"
  has "$run/$n.log" "ssh -p 570$n root@localhost"           # the trace of every action
  grep -q "refused" "$run/$n.log" && fail "node $n's log tells of a refusal"
done
case $(outcome "$run" 3) in
  "1 <3> enthree: the console refused user pi with every password of config.star's pi_passwords."*) ;;
  *) fail "node 3 in summary.json: $(outcome "$run" 3)" ;;
esac
has "$run/3.log" "the console refused user pi with every password"
grep -q "enrolled" "$run/3.log" && fail "node 3's log says it was enrolled"
grep -rq fanout-secret "$W/cache/runs" && fail "the password is in a run record"
gssh 5701 root 'id -u' | grep -qx 0 || fail "node 1: no key log-in as root"
gssh 5702 root 'id -u' | grep -qx 0 || fail "node 2: no key log-in as root"
pfx 0 runs last 3
has "$W/out" "the console refused user pi with every password"
pfx 0 runs
head -n 2 "$W/out" | grep -E "enrol +1-3 .*1 of 3 failed|enrol .*failed" > /dev/null || fail "pifarm runs does not show enrol's failure first"
stage "enrol 1-3"

echo "== one command provisions them: a user with sudo (3 is not enrolled)"
pfx 1 -j 3 run guest --useradd=dev --sudo-user-ok 1-3
grep -E '^<3> enthree +failed +[0-9.]+ +<3> enthree: SSH does not answer on port 5703; enable it: pifarm run guest --enrol 3$' "$W/err" > /dev/null ||
  fail "node 3 did not fail saying its SSH does not answer"
grep -E '^<(1|2)> [a-z]+ +ok ' "$W/err" | wc -l | grep -qx 2 || fail "nodes 1 and 2 did not finish"
run=$(rundir guest)
jq -e '.exit == 1 and ([.nodes[].exit] == [0, 0, 1])' "$run/summary.json" > /dev/null || fail "guest's summary.json: $(cat "$run/summary.json")"
for n in 1 2; do
  gssh 570$n dev 'sudo -n id -u' | grep -qx 0 || fail "node $n: user dev cannot sudo"
done
stage "useradd 1-3"

echo "== shut down 1 and 2, stop 3, remove the clones"
pfx 0 run shutdown 1,2
pf run box --terminate 3
[ -z "$(qpid 1)$(qpid 2)$(qpid 3)" ] || fail "a clone's QEMU still runs"
pf run box --remove-all-clones
stage "shutdown+remove"

echo "== all stages passed"
cat "$W/times"
