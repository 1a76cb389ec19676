#!/bin/bash
# smoke.sh - build pifarm's test guest images (when missing) and check them under
# qemu-system-aarch64 -M raspi3b with the original pibox command line.
#
# usage: smoke.sh [--rebuild] [--timing N] [--only boot|seeded]
#
#   boot     standard image, grown to 1 GiB on the host first: console login
#            (wrong and right password), sudo, systemctl, DHCP on usb0 of three
#            usb-net NICs, rc.local, ssh with password and keys (pi and root),
#            tar upload, useradd/usermod/ssh-keygen, ip rename/MAC/address,
#            online resize2fs, poweroff (QEMU exits by itself)
#   seeded   --no-pi-password image with /boot/ssh and /boot/userconf.txt
#            (pi:<hash of "secret">) written by mcopy: console login refused,
#            ssh login with the seeded password, halt (QEMU keeps running,
#            QMP quit ends it)
#   --timing N  boot N times each with default TCG and with
#            "-accel tcg,thread=single" and report the login prompt times
#
# environment: PIFARM_TESTGUEST_CACHE (as build.sh), SMOKE_DIR (default
# $PIFARM_TESTGUEST_CACHE/smoke), SMOKE_SSH_PORT (6700), SMOKE_SERIAL_PORT (6701),
# SMOKE_QEMU_EXTRA (extra QEMU arguments for boot and seeded).
# The guest reaches nothing but QEMU's user-net services: ssh is forwarded from
# 127.0.0.1, the two other NICs hang on empty QEMU hubs.
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${PIFARM_TESTGUEST_CACHE:-$HOME/.cache/pifarm/testguest}
W=${SMOKE_DIR:-$CACHE/smoke}
REBUILD=0 TIMING=0 ONLY=
while [ $# -gt 0 ]; do
  case $1 in
    --rebuild) REBUILD=1 ;;
    --timing) TIMING=${2:?}; shift ;;
    --only) ONLY=${2:?}; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "smoke.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

want=()
for t in qemu-system-aarch64:qemu-system-arm mcopy:mtools ssh:openssh-client ssh-keygen:openssh-client \
         sfdisk:fdisk openssl:openssl python3:python3; do
  command -v "${t%%:*}" >/dev/null || want+=("${t#*:}")
done
if [ ${#want[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null
fi

mkdir -p "$W"
IMG=$W/testguest.img
NOPW=$W/testguest-nopw.img
build() { # OUT [options]
  local out=$1 t0
  shift
  t0=$(date +%s%N)
  "$SRC/build.sh" "$@" "$out"
  echo "build of ${out##*/}: $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}
if [ $REBUILD = 1 ] || [ ! -s "$IMG" ]; then build "$IMG"; fi
if [ $REBUILD = 1 ] || [ ! -s "$NOPW" ]; then build "$NOPW" --no-pi-password; fi

P1=$((8192 * 512))
fresh() { # SRC DEST: a sparse copy
  rm -f "$2"
  cp --sparse=always "$1" "$2"
}
rc=0

if [ "$TIMING" -gt 0 ]; then
  for mode in default single; do
    times=()
    for i in $(seq 1 "$TIMING"); do
      fresh "$IMG" "$W/run-timing.img"
      if [ $mode = single ]; then extra="-accel tcg,thread=single"; else extra=""; fi
      t=$(SMOKE_QEMU_EXTRA="$extra" python3 "$SRC/smoke.py" timing "$W/run-timing.img" "$W/logs" |
          awk '/^LOGIN_PROMPT_SECONDS/{print $2}')
      times+=("${t:-fail}")
    done
    echo "login prompt ($mode TCG${extra:+, $extra}): ${times[*]} s"
  done
  rm -f "$W/run-timing.img"
  exit 0
fi

if [ -z "$ONLY" ] || [ "$ONLY" = boot ]; then
  # grown as pimage --expand-image would: bigger file, partition 2 to the end
  fresh "$IMG" "$W/run-boot.img"
  truncate -s 1G "$W/run-boot.img"
  echo ', +' | sfdisk -q --no-reread --no-tell-kernel -N 2 "$W/run-boot.img"
  python3 "$SRC/smoke.py" boot "$W/run-boot.img" "$W/logs" || rc=1
fi

if [ -z "$ONLY" ] || [ "$ONLY" = seeded ]; then
  fresh "$NOPW" "$W/run-seeded.img"
  : > "$W/ssh"
  printf 'pi:%s\n' "$(openssl passwd -6 secret)" > "$W/userconf.txt"
  mcopy -o -i "$W/run-seeded.img@@$P1" "$W/ssh" "$W/userconf.txt" ::
  rm -f "$W/ssh" "$W/userconf.txt"
  python3 "$SRC/smoke.py" seeded "$W/run-seeded.img" "$W/logs" || rc=1
fi

echo "logs: $W/logs"
[ $rc = 0 ] && echo "smoke test passed" || echo "smoke test FAILED"
exit $rc
