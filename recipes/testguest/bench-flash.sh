#!/usr/bin/env bash
# bench-flash.sh - writing a 4 GiB RaspiOS-like image that holds about
# 1.5 GB of data (FAT32 boot partition, ext4 root filled with files, made by
# sfdisk, mkfs.vfat and mkfs.ext4 -d) to a card three ways, each a whole
# command as a user types it:
#
#   pifarm    pifarm run flash --yes --device TARGET (data extents only,
#             holes zeroed, every written range read back with O_DIRECT
#             and compared)
#   dd        dd if=IMG of=TARGET bs=4M conv=fsync (no verification)
#   bmaptool  bmaptool copy --bmap IMG.bmap IMG TARGET (the .bmap made
#             beforehand, as images ship it; checks the source's checksums
#             while it reads, does not read the target back)
#
# to two targets: a loop device (over a fresh sparse 4 GiB file, --force: a
# loop device is not removable) and an image file (removed before each run).
# The page cache is dropped before every run (echo 3 >
# /proc/sys/vm/drop_caches; where that is refused the script says so and
# the source stays cached for every tool alike). Prints each run's seconds,
# the medians and the ratios dd/pifarm and bmaptool/pifarm.
#
# usage: recipes/testguest/bench-flash.sh [RUNS] [PIFARM_BINARY]
#
# Needs root (loop devices), bmap-tools, about 12 GB free in the work folder
# ($PIFARM_BENCH_WORK, default ~/.cache/pifarm/bench-flash) and about 5
# minutes with 3 runs on 2 cores.
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SRC/../.." && pwd)
RUNS=${1:-3}
PF=${2:-$ROOT/pifarm}
[ -x "$PF" ] || { echo "bench-flash: no pifarm binary at $PF (go build -o pifarm . first)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench-flash: run as root (loop devices)" >&2; exit 2; }
command -v bmaptool >/dev/null || { echo "bench-flash: bmaptool is missing (apt-get install bmap-tools)" >&2; exit 2; }
PF=$(cd "$(dirname "$PF")" && pwd)/$(basename "$PF")
W=${PIFARM_BENCH_WORK:-$HOME/.cache/pifarm/bench-flash}
mkdir -p "$W"
export PIFARM_CACHE=$W/cache PIFARM_CONFIG=$W/config.star
printf 'cache = "%s"\n' "$PIFARM_CACHE" > "$PIFARM_CONFIG"
IMG=$W/image.raw
LOOP=
cleanup() { [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null || true; }
trap cleanup EXIT

if [ ! -s "$W/image.done" ]; then
	echo "bench-flash: making the 4 GiB image with 1.5 GB of data (once)" >&2
	rm -f "$IMG"
	truncate -s 4G "$IMG"
	# boot 256 MiB at 4 MiB; root to 94 % of the image, as pifarm's expansion leaves it
	root_start=$(((4 + 256) * 2048))
	root_sectors=$((4 * 1024 * 1024 * 2 * 94 / 100 - root_start))
	printf 'label: dos\nstart=8192, size=524288, type=c\nstart=%d, size=%d, type=83\n' "$root_start" "$root_sectors" | sfdisk -q "$IMG"
	mkfs.vfat -F 32 --offset 8192 -n bootfs "$IMG" $((524288 / 2)) >/dev/null
	tree=$W/rootfs
	rm -rf "$tree"
	mkdir -p "$tree/usr/lib" "$tree/etc"
	echo loner > "$tree/etc/hostname"
	# 1.5 GB of files of mixed sizes, incompressible
	for i in $(seq 1 24); do
		head -c $((60 * 1024 * 1024)) /dev/urandom > "$tree/usr/lib/blob$i"
	done
	for i in $(seq 1 3000); do
		head -c $((RANDOM * 2)) /dev/urandom > "$tree/usr/lib/small$i"
	done
	mkfs.ext4 -q -F -L rootfs -E offset=$((root_start * 512)) -d "$tree" "$IMG" $((root_sectors / 2))k
	rm -rf "$tree"
	bmaptool create -o "$IMG.bmap" "$IMG"
	echo ok > "$W/image.done"
fi
mkdir -p "$PIFARM_CACHE/clones/raspi-clone-0"
ln -sfn "$IMG" "$PIFARM_CACHE/clones/raspi-clone-0/clone-0.raw"
echo "bench-flash: image $(du -h --apparent-size "$IMG" | cut -f1), data $(du -h "$IMG" | cut -f1)" >&2

dropped=yes
drop() {
	sync
	if ! echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
		dropped=no
	fi
}

# fresh TARGET: a new sparse 4 GiB loop device (loop) or no file (file)
fresh() {
	case $1 in
	loop)
		cleanup
		rm -f "$W/card"
		truncate -s 4G "$W/card"
		LOOP=$(losetup -f --show "$W/card")
		T=$LOOP ;;
	file)
		rm -f "$W/card.img" "$W/card.img~" "$W/card.img.partial"
		T=$W/card.img ;;
	esac
}

# timed NAME TARGET-KIND: one whole command, its seconds appended to
# $W/times (tool kind seconds)
timed() {
	local tool=$1 kind=$2 t0 t1
	fresh "$kind"
	drop
	t0=$(date +%s.%N)
	case $tool in
	pifarm)
		if [ "$kind" = loop ]; then
			"$PF" run flash --yes --device "$T" --force "$T" >/dev/null
		else
			"$PF" run flash --yes --device "$T" >/dev/null
		fi ;;
	dd) dd if="$IMG" of="$T" bs=4M conv=fsync status=none ;;
	bmaptool) bmaptool -q copy --bmap "$IMG.bmap" "$IMG" "$T" ;;
	esac
	t1=$(date +%s.%N)
	case $kind in
	loop) cmp -n "$(stat -c %s "$IMG")" "$IMG" "$T" >/dev/null 2>&1 && same=same || same=DIFFERS ;;
	file) cmp "$IMG" "$T" >/dev/null 2>&1 && same=same || same=DIFFERS ;;
	esac
	printf '%s %s %.2f %s\n' "$tool" "$kind" "$(echo "$t1 - $t0" | bc)" "$same" | tee -a "$W/times" >&2
}

: > "$W/times"
for r in $(seq 1 "$RUNS"); do
	for kind in loop file; do
		for tool in pifarm dd bmaptool; do
			timed "$tool" "$kind"
		done
	done
done
cleanup
LOOP=
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "page cache dropped before each run: $dropped"
printf '%-8s %10s %10s %10s %14s %16s\n' target pifarm dd bmaptool dd/pifarm bmaptool/pifarm
for kind in loop file; do
	p=$(awk -v k=$kind '$1=="pifarm" && $2==k {print $3}' "$W/times" | median)
	d=$(awk -v k=$kind '$1=="dd" && $2==k {print $3}' "$W/times" | median)
	b=$(awk -v k=$kind '$1=="bmaptool" && $2==k {print $3}' "$W/times" | median)
	printf '%-8s %9ss %9ss %9ss %13sx %15sx\n' "$kind" "$p" "$d" "$b" "$(echo "scale=2; $d / $p" | bc)" "$(echo "scale=2; $b / $p" | bc)"
done
