#!/bin/bash
# bench-libvirt.sh - what placing guests on libvirt hosts costs, as whole
# commands, on this machine (as root; libvirtd running or startable):
#
#  1. start: `pifarm run box --run N` of a node on qemu:///system until the
#     domain runs, against `virsh create` of the same domain XML (libvirt's
#     own time); pifarm's own time is the difference.
#  2. upload: the first start of instance 0 on
#     qemu+ssh://root@127.0.0.1:20925/system (a real sshd on loopback) with a
#     4 GiB image holding 1.5 GB, which uploads the image (its data only),
#     the boot files, checks them by sha256 there and starts the domain,
#     against `scp` of the image's allocated bytes (a 1.5 GB file) to the
#     same host over the same sshd; URUNS rounds (3), each leg after a sync,
#     medians.
#
# usage: [URUNS=N] bench-libvirt.sh [PIFARM_BINARY] [RUNS]
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${1:-$SRC/../../pifarm}
RUNS=${2:-5}
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
W=${PIFARM_BENCH_WORK:-$HOME/.cache/pifarm/bench-libvirt}
PORT=20925
rm -rf "$W"; mkdir -p "$W/sshd" "$W/home/.ssh"
export HOME=$W/home
ssh-keygen -q -t ed25519 -N '' -f "$HOME/.ssh/id_ed25519"
ssh-keygen -q -t ed25519 -N '' -f "$W/sshd/host"
cp "$HOME/.ssh/id_ed25519.pub" "$W/sshd/authorized_keys"
echo "[127.0.0.1]:$PORT $(cat "$W/sshd/host.pub")" > "$HOME/.ssh/known_hosts"
cat > "$W/sshd/config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $W/sshd/host
AuthorizedKeysFile $W/sshd/authorized_keys
PidFile $W/sshd/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel ERROR
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -f "$W/sshd/config"
FARM=
cleanup() {
  set +e
  for d in $(virsh -c qemu:///system list --name | grep '^pifarm-\(enone\|loner\)-\|^pfbench$'); do virsh -c qemu:///system destroy "$d" >/dev/null; done
  for v in $(virsh -c qemu:///system vol-list pifarm 2>/dev/null | awk -v t="pifarm-$FARM-" '$1 ~ "^"t {print $1}'); do
    [ -n "$FARM" ] && virsh -c qemu:///system vol-delete --pool pifarm "$v" >/dev/null
  done
  rm -f /var/lib/libvirt/images/pifarm-bench.data
  kill "$(cat "$W/sshd/sshd.pid")" 2>/dev/null
}
trap cleanup EXIT
if ! virsh -c qemu:///system list >/dev/null 2>&1; then
  mkdir -p /var/log/libvirt /var/run/libvirt; virtlogd -d 2>/dev/null || true; libvirtd -d; sleep 2
fi
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

"$SRC/build.sh" "$W/guest.img" >/dev/null
IMG=$W/image.img
cp --sparse=always "$W/guest.img" "$IMG"
cat > "$W/config.star" <<EOF
cache = "$W/cache"
ports = {"ssh": 22700, "console": 22800, "vnc": 22900}
nodes = [
    node(id = 0, alias = "loner", lan = "192.168.66.63", wan = "100.65.63.15", host = "qemu+ssh://root@127.0.0.1:$PORT/system"),
    node(id = 1, alias = "enone", lan = "192.168.66.7",  wan = "100.65.4.15", host = "qemu:///system"),
]
EOF
export PIFARM_CONFIG=$W/config.star
"$BIN" run image --disk-image="$IMG" --expand-image --provide-qboot >/dev/null
# 1.35 GB more data in partition 2's free blocks (after the expanded file
# system's own), in three runs: the image then holds about 1.5 GB.
for off in 1024 1600 2200; do
  dd if=/dev/urandom of="$IMG" bs=1M seek=$off count=450 conv=notrunc,fsync status=none
done
alloc=$(du -B1 "$IMG" | cut -f1)
echo "image: $(stat -c %s "$IMG") bytes, $alloc allocated"

if [ "${SKIP_START:-}" = "" ]; then
echo "== 1. start on qemu:///system: pifarm run box --run vs virsh create (runs: $RUNS)"
"$BIN" run box --force-clone --linked 1 >/dev/null
"$BIN" -n run box --run --no-start-vnc 1 2>&1 | sed -n "/^virsh -c qemu:\/\/\/system create/,/^EOF$/p" | sed '1d;$d' |
  sed "s|<name>pifarm-enone-[0-9a-f]*</name>|<name>pfbench</name>|" > "$W/domain.xml"
p=0; v=0
for i in $(seq "$RUNS"); do
  a=$(now); "$BIN" run box --run --no-start-vnc 1 >/dev/null 2>&1; b=$(now)
  "$BIN" run box --terminate 1 >/dev/null
  c=$(now); virsh -q -c qemu:///system create "$W/domain.xml" >/dev/null; d=$(now)
  virsh -q -c qemu:///system destroy pfbench >/dev/null
  echo "run $i: pifarm $(secs "$a" "$b") s, virsh create $(secs "$c" "$d") s"
  p=$(awk -v x="$p" -v y="$(secs "$a" "$b")" 'BEGIN { print x + y }')
  v=$(awk -v x="$v" -v y="$(secs "$c" "$d")" 'BEGIN { print x + y }')
done
awk -v p="$p" -v v="$v" -v n="$RUNS" 'BEGIN { printf "mean: pifarm %.3f s, virsh create %.3f s, pifarm'\''s own %.3f s (ratio %.2f)\n", p/n, v/n, (p-v)/n, p/v }'

fi
echo "== 2. upload: first start of instance 0 on qemu+ssh:// vs scp of the allocated bytes"
# the allocated bytes as one file, in the page cache like the image
"$BIN" -n run box --run 0 >/dev/null 2>&1 || true
python3 - "$IMG" "$W/data" <<'PY' 2>/dev/null || { echo "python3 is needed to extract the data extents" >&2; exit 2; }
import os, sys
src, dst = sys.argv[1], sys.argv[2]
fd = os.open(src, os.O_RDONLY); out = open(dst, "wb"); off = 0; size = os.fstat(fd).st_size
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    os.lseek(fd, d, os.SEEK_SET)
    n = h - d
    while n > 0:
        b = os.read(fd, min(n, 8 << 20)); out.write(b); n -= len(b)
    off = h
out.close()
PY
cat "$IMG" "$W/data" > /dev/null
# Alternately, each after a sync (so that neither pays for the other's
# dirty pages): scp, then pifarm's first start, whose volumes and records
# are then removed for the next round. Medians of the rounds.
URUNS=${URUNS:-3}
: > "$W/scp.t"; : > "$W/up.t"
for i in $(seq "$URUNS"); do
  sync
  a=$(now); scp -q -P $PORT -i "$HOME/.ssh/id_ed25519" -o UserKnownHostsFile="$HOME/.ssh/known_hosts" -o BatchMode=yes "$W/data" root@127.0.0.1:/var/lib/libvirt/images/pifarm-bench.data; b=$(now)
  secs "$a" "$b" >> "$W/scp.t"; echo >> "$W/scp.t"
  rm -f /var/lib/libvirt/images/pifarm-bench.data; sync
  a=$(now); "$BIN" run box --run --no-start-vnc 0 2>&1 | grep -i 'upload.*raw.*100%\|runs:' || true; b=$(now)
  secs "$a" "$b" >> "$W/up.t"; echo >> "$W/up.t"
  echo "round $i: scp $(tail -1 "$W/scp.t") s, pifarm $(tail -1 "$W/up.t") s"
  FARM=$(virsh -c qemu:///system list --name | sed -n 's/^pifarm-loner-//p')
  "$BIN" run box --terminate 0 >/dev/null 2>&1 || true
  for v in $(virsh -c qemu:///system vol-list pifarm 2>/dev/null | awk -v t="pifarm-$FARM-0" '$1 ~ "^"t {print $1}'); do
    virsh -c qemu:///system vol-delete --pool pifarm "$v" >/dev/null
  done
  rm -rf "$W/cache/hosts"
done
median() { sort -n "$1" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
scp_s=$(median "$W/scp.t"); up_s=$(median "$W/up.t")
echo "scp of $(stat -c %s "$W/data") allocated bytes: $scp_s s (median of $URUNS)"
echo "pifarm run box --run 0 (upload, boot files, sha256 there, domain start): $up_s s (median of $URUNS)"
awk -v u="$up_s" -v s="$scp_s" 'BEGIN { printf "ratio pifarm / scp: %.2f\n", u/s }'
