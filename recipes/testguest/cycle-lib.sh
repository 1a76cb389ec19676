# cycle-lib.sh - what the end-to-end cycle scripts (cycle.sh, cycle-debian.sh)
# share. Sourced by bash after `set -euo pipefail`; SRC is the script's folder.
#
# A cycle runs in two parts: the outer one (cycle_outer) checks the pifarm
# binary and root, builds the guests, and cycle_enter re-runs the script in a
# private network and mount namespace (the bridge, the TAPs and QEMU's
# forwarded ports touch nothing of the host's network); the inner one
# (cycle_inner) sets up a home folder with a fresh key and a config.star with
# its own cache, then uses the helpers below.
#
# environment: PIFARM_CYCLE_WORK (work folder), PIFARM_TESTGUEST_CACHE (the
# builders' cache), PIFARM_CYCLE_ACCEL (QEMU acceleration, default config's).

# cycle_outer NAME [PIFARM_BINARY]: the outer part's checks and settings.
cycle_outer() {
  local name=$1 bin=${2:-$SRC/../../pifarm}
  [ -x "$bin" ] || { echo "$name: no pifarm binary at $bin (go build -o pifarm . first)" >&2; exit 2; }
  [ "$(id -u)" = 0 ] || { echo "$name: run as root (network namespace, TAP devices)" >&2; exit 2; }
  PIFARM=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
  export PIFARM
  export PIFARM_TESTGUEST_CACHE=${PIFARM_TESTGUEST_CACHE:-$HOME/.cache/pifarm/testguest}
  export PIFARM_CYCLE_WORK=${PIFARM_CYCLE_WORK:-$HOME/.cache/pifarm/cycle}
  W=$PIFARM_CYCLE_WORK
  mkdir -p "$W"
  : > "$W/times"
  stage_t=$(date +%s.%N)
}

# cycle_enter SCRIPT ARGS...: run SCRIPT again inside the namespaces.
cycle_enter() {
  echo "== entering a private network namespace"
  PIFARM_CYCLE_INNER=1 exec unshare --net --mount --fork "$@"
}

# cycle_inner: loopback up, this namespace's sysfs, HOME with a fresh key
# (KEY), a config.star with the cache in W/cache (PIFARM_CONFIG); cleanup of
# this cycle's QEMUs on exit.
cycle_inner() {
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
  trap cleanup EXIT
  stage_t=$(date +%s.%N)
}

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

# cycle_clones IMG [BEFORE_RUN]: shut instance 0 (disk IMG) down, clone it
# (1 full, 2 linked), run the function BEFORE_RUN when given, give the
# clones user-owned TAPs on the bridge and run them to their login prompts
# (the prompt comes after rc.local, so the boot scripts have run), the TAPs
# QEMU now holds enslaved.
cycle_clones() {
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
  qemu-img info "$W/cache/clones/raspi-clone-2/clone-2.qcow2" | grep -q "backing file: $1" || fail "clone 2 is not linked to $1"
  if [ -n "${2:-}" ]; then "$2"; fi

  echo "== LAN: user-owned TAPs and the bridge"
  pf run bridge --taps 1 2
  pf run bridge --add-bridge
  ip -br link show master q0br

  echo "== run clones 1 and 2"
  pf run box --run --no-start-vnc 1
  pf run box --run --no-start-vnc 2
  pf run status --wait --wait-console 1
  pf run status --wait --wait-console 2
  stage "boot clones"
  pf run bridge --add-bridge          # enslave the TAPs QEMU now holds open
}

# cycle_clones_end [AFTER_SHUTDOWN]: shut clones 1 and 2 down, run the
# function AFTER_SHUTDOWN when given, and remove the clones.
cycle_clones_end() {
  echo "== shutdown both, remove the clones"
  pf run shutdown 1,2                 # both at once
  [ -z "$(qpid 1)$(qpid 2)" ] || fail "a clone's QEMU still runs"
  if [ -n "${1:-}" ]; then stage "shutdown clones"; "$1"; fi
  pf run box --remove-all-clones
  [ ! -e "$W/cache/clones/raspi-clone-1/clone-1.qcow2" ] && [ ! -e "$W/cache/clones/raspi-clone-2/clone-2.qcow2" ] || fail "clones not removed"
  stage "shutdown clones+remove"
}

# cycle_enrolled: instance 0 is enrolled: key log-in as root and as pi, the
# key authorised once each, the root file system grown past 3 GiB.
cycle_enrolled() {
  local out n kb
  # one SSH session each: a log-in costs seconds on an emulated guest
  out=$(gssh 5700 root 'id -u; cat /root/.ssh/authorized_keys /home/pi/.ssh/authorized_keys | grep -c pifarm-cycle;
    df -k / | tail -1') || fail "no key login as root"
  [ "$(echo "$out" | sed -n 1p)" = 0 ] || fail "no key login as root"
  n=$(echo "$out" | sed -n 2p)
  [ "$n" = 2 ] || fail "the key is authorised $n times for root+pi, want once each"
  kb=$(echo "$out" | sed -n 3p | awk '{print $2}')
  [ "$kb" -gt $((3 << 20)) ] || fail "root file system is $kb KiB after resize2fs, want > 3 GiB"
  gssh 5700 pi 'id -un' | grep -qx pi || fail "no key login as pi"
  echo "root file system: $kb KiB"
}
