#!/bin/bash
# cycle-libvirt.sh - pifarm's guests on libvirt hosts, end to end, on this
# machine: instance 0 enrolled as a plain QEMU, then clone 1 placed on
# qemu:///system and clone 2 on qemu+ssh://root@127.0.0.1:20924/system (a real
# sshd on loopback standing for another host: pifarm's key authorised in a
# temporary authorized_keys of its own), both booted and reached (console,
# SSH as root by key, through the host's SSH connection for clone 2), their
# LANs on two network namespaces standing for two hosts whose bridges are
# joined by pifarm's VXLAN, pinging each other, shut down. Clone 2's disk is
# uploaded into the remote storage pool: the first upload is interrupted and
# the next command completes it. Removing the clones removes clone 2's volumes
# on its host.
#
# usage: cycle-libvirt.sh [PIFARM_BINARY]   (as root; starts libvirtd when none runs)
#
# The guests' QEMUs are libvirtd's children and live in this machine's network
# namespace, so this cycle runs there, on ports of its own (SSH 21700+N,
# console 21800+N, VNC 21900+N, all on 127.0.0.1) and TAPs of its own names
# (lvtapN, lwtapN); each LAN TAP moves into its "host" namespace once QEMU
# holds it. Everything it made is removed on exit.
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$SRC/cycle-lib.sh"

cycle_outer cycle-libvirt "${1:-}"
command -v libvirtd >/dev/null && command -v virsh >/dev/null ||
  { echo "cycle-libvirt: libvirtd and virsh are missing (apt-get install libvirt-daemon-system libvirt-clients)" >&2; exit 2; }
"$SRC/build.sh" "$W/build-pi.img"
stage "build guest"

SSHD_PORT=20924
NSA=pifarm-lv-hosta NSB=pifarm-lv-hostb
REMOTE="qemu+ssh://root@127.0.0.1:$SSHD_PORT/system"
export HOME=$W/home
rm -rf "$HOME" "$W/cache" "$W/sshd"
mkdir -p "$HOME/.ssh" "$W/sshd"
ssh-keygen -q -t ed25519 -N '' -f "$HOME/.ssh/id_ed25519" -C pifarm-cycle
KEY=$HOME/.ssh/id_ed25519
FARM=""   # the farm's tag in domain and volume names, known after the first start

cleanup() {
  set +e
  for d in $(virsh -c qemu:///system list --name 2>/dev/null | grep "^pifarm-en\(one\|two\)-" ); do
    virsh -c qemu:///system destroy "$d" >/dev/null
  done
  for v in $(virsh -c qemu:///system vol-list pifarm 2>/dev/null | awk -v t="pifarm-$FARM-" '$1 ~ "^"t {print $1}'); do
    [ -n "$FARM" ] && virsh -c qemu:///system vol-delete --pool pifarm "$v" >/dev/null
  done
  [ -f "$W/sshd/sshd.pid" ] && kill "$(cat "$W/sshd/sshd.pid")" 2>/dev/null
  for t in lvtap1 lvtap2 lwtap1 lwtap2; do ip link del "$t" 2>/dev/null; done
  ip netns del $NSA 2>/dev/null; ip netns del $NSB 2>/dev/null
  local p; p=$(qpid 0); [ -n "$p" ] && kill "$p"
}
trap cleanup EXIT

echo "== libvirtd (started when none runs) and an sshd on 127.0.0.1:$SSHD_PORT"
if ! virsh -c qemu:///system list >/dev/null 2>&1; then
  mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt
  virtlogd -d 2>/dev/null || true
  libvirtd -d
  for _ in $(seq 100); do virsh -c qemu:///system list >/dev/null 2>&1 && break; sleep 0.1; done
fi
ssh-keygen -q -t ed25519 -N '' -f "$W/sshd/host" -C cycle-host
cp "$KEY.pub" "$W/sshd/authorized_keys"      # this farm's key, for this sshd only
echo "[127.0.0.1]:$SSHD_PORT $(cat "$W/sshd/host.pub")" > "$HOME/.ssh/known_hosts"
cat > "$W/sshd/config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $W/sshd/host
AuthorizedKeysFile $W/sshd/authorized_keys
PidFile $W/sshd/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
LogLevel ERROR
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -f "$W/sshd/config"

cat > "$W/config.star" <<EOF
cache = "$W/cache"
ports = {"ssh": 21700, "console": 21800, "vnc": 21900}
net = {"bridge": "q0br", "lan_tap": "lvtap", "wlan_tap": "lwtap"}
nodes = [
    node(id = 0, alias = "loner", lan = "192.168.66.63", wan = "100.65.63.15"),
    node(id = 1, alias = "enone", lan = "192.168.66.7",  wan = "100.65.4.15", host = "qemu:///system"),
    node(id = 2, alias = "entwo", lan = "192.168.66.8",  wan = "100.65.5.15", host = "$REMOTE"),
]
EOF
if [ -n "${PIFARM_CYCLE_ACCEL+set}" ]; then
  echo "qemu = {\"accel\": \"$PIFARM_CYCLE_ACCEL\"}" >> "$W/config.star"
fi
export PIFARM_CONFIG=$W/config.star
stage "libvirtd+sshd"

IMG=$W/raspios-test.img
cp --sparse=always "$W/build-pi.img" "$IMG"
pf run image --disk-image="$IMG" --expand-image --provide-qboot
pf run box --run --no-start-vnc 0
pf run enrol 0
pf run guest --base-system 0
pf run shutdown 0
[ -z "$(qpid 0)" ] || fail "QEMU of instance 0 still running"
stage "instance 0: boot+enrol+base"

echo "== two hosts: namespaces joined by a wire, each with the LAN bridge and a VXLAN to the other"
ip netns add $NSA; ip netns add $NSB
ip -n $NSA link add eth7 type veth peer name eth1 netns $NSB
ip -n $NSA addr add 10.99.0.1/24 dev eth7; ip -n $NSA link set eth7 up; ip -n $NSA link set lo up
ip -n $NSB addr add 10.99.0.2/24 dev eth1; ip -n $NSB link set eth1 up; ip -n $NSB link set lo up
pf run bridge --add-bridge --vxlan=10.99.0.2 --netns $NSA
pf run bridge --add-bridge --vxlan=10.99.0.1 --netns $NSB

echo "== TAPs for the QEMUs (libvirtd opens them and hands QEMU the descriptor)"
pf run bridge --taps 1 2

echo "== clones: 1 on qemu:///system, 2 on $REMOTE"
pf run box --force-clone --linked 1
pf run box --force-clone --linked 2
stage "clones"
pf -n run box --run 2 > "$W/dry.log" 2>&1
grep -q "vol-upload --pool pifarm --sparse" "$W/dry.log" || fail "the dry run shows no upload: $(cat "$W/dry.log")"
"$PIFARM" run box --run --no-start-vnc 2 > "$W/upload1.log" 2>&1 &
up=$!
for _ in $(seq 600); do grep -q "raw: [0-9]*%" "$W/upload1.log" && break; sleep 0.1; done
kill -INT $up; wait $up && fail "the interrupted start succeeded"
cat "$W/upload1.log"
grep -q "raw: [0-9]*%" "$W/upload1.log" || fail "no upload progress before the interruption"
stage "upload (interrupted)"
pf run box --run --no-start-vnc 2 2>&1 | tee "$W/upload2.log"
grep -q "resuming at byte" "$W/upload2.log" || fail "the second start did not resume the upload"
FARM=$(virsh -c qemu:///system list --name | sed -n 's/^pifarm-entwo-//p')
stage "upload (resumed)+start 2"
pf run box --run --no-start-vnc 1
virsh -c "$REMOTE" list 2>/dev/null || virsh -c qemu:///system list
for n in 1 2; do ip link set lvtap$n netns "$([ $n = 1 ] && echo $NSA || echo $NSB)"; done
pf run bridge --add-bridge --netns $NSA            # the TAPs QEMU holds join each host's bridge
pf run bridge --add-bridge --netns $NSB
pf run status --wait --wait-console 1
pf run status --wait --wait-console 2              # console and SSH through the host's SSH connection
stage "boot clones"

pf run status 2 | tee "$W/status2.log"
grep -q "domain pifarm-entwo-.* on root@127.0.0.1:$SSHD_PORT" "$W/status2.log" || fail "status does not say where clone 2 runs"
pf run status --json 1,2 > "$W/status.json"
[ "$(grep -o '"root_login": *true' "$W/status.json" | wc -l)" = 2 ] || fail "root does not log in by key on both: $(cat "$W/status.json")"
gssh 21701 root 'ip -4 addr show lan0' | grep -q 'inet 192.168.66.7/' || fail "guest 1 lan0 lacks 192.168.66.7"
gssh 21701 root 'ping -c 3 -W 5 -I lan0 192.168.66.8' || fail "guest 1 (host A) cannot ping guest 2 (host B) over the VXLAN-joined LAN"
stage "enrolled+ping across hosts"
# box --attach: a terminal (the pseudo-terminal script(1) makes) joined to
# clone 2's console through its host's SSH connection; Enter, then Ctrl-]
echo "+ pifarm run box --attach 2   (in script(1): Enter, then Ctrl-])"
{ sleep 5; printf '\r'; sleep 5; printf '\035'; } |
  script -qefc "$PIFARM run box --attach 2" "$W/attach.log" > /dev/null || fail "box --attach 2 failed: $(cat "$W/attach.log")"
grep -q "entwo login:" "$W/attach.log" || fail "no login prompt of clone 2 through box --attach 2: $(cat "$W/attach.log")"
grep -q "console 21802 on root@127.0.0.1:$SSHD_PORT: left" "$W/attach.log" || fail "box --attach 2 did not end by Ctrl-]: $(cat "$W/attach.log")"
stage "attach to clone 2's console"

pf run shutdown 1,2
virsh -c qemu:///system list --name | grep -q "^pifarm-en\(one\|two\)-" && fail "a domain still runs"
stage "shutdown"
pf run box --remove-all-clones                     # clone 2's volumes go from its host too
virsh -c qemu:///system vol-list pifarm | grep -q "pifarm-$FARM-2\." && fail "clone 2's volumes are still on its host"
stage "remove clones"
echo "== all stages passed"
cat "$W/times"
