#!/bin/bash
# build-debian.sh - build pifarm's systemd test guest: a real Debian bookworm
# arm64 system (debootstrap) laid out like a RaspiOS SD card, for
# qemu-system-aarch64 -M raspi3b, in one of two flavours.
#
# usage: build-debian.sh [--refresh] VARIANT OUT.img
#
#   VARIANT   dhcpcd  Bullseye-like: dhcpcd on every NIC, ifupdown with
#                     /etc/network/interfaces, boot partition on /boot
#             nm      Bookworm-like: NetworkManager, no dhcpcd, no ifupdown, no
#                     /etc/network/interfaces, boot partition on /boot/firmware
#   --refresh  debootstrap the common root file system again (newer packages)
#
# Both: systemd as init, OpenSSH installed but disabled until enabled (the
# `ssh` file on the boot partition or `systemctl enable --now ssh`), host keys
# made at the first boot, pi / raspberry with passwordless sudo, adduser, sudo,
# apt, fake-hwclock, kernel names for the NICs (usb0, usb1, ... as RaspiOS's
# eth0, wlan0). The boot partition (kernel8.img with its initramfs, the dtb,
# cmdline.txt, config.txt) and the kernel modules are those of the busybox test
# guest (build.sh), which this builds first.
#
# environment:
#   PIFARM_TESTGUEST_CACHE  cache and work folder (default:
#                           $HOME/.cache/pifarm/testguest); this builder keeps
#                           its part in debian/ below it
#   PIFARM_DEBIAN_MIRROR    Debian archive (default: the one this host's apt
#                           configuration uses for bookworm)
#
# Runs as root on Debian 12 (amd64): debootstrap --foreign for arm64, its second
# stage and the variant's apt-get in a chroot through qemu-aarch64-static's
# binfmt handler (registered by binfmt.sh when missing), in a private mount
# namespace. Cached: the common root file system until the package list or the
# code between its markers changes; each variant's image until anything of the
# builder (this file, debian/, binfmt.sh, lib.sh, the busybox guest's boot
# partition) changes. Image: 1 GiB sparse (about 300 MB allocated), MBR disk id
# 0x7069666d, p1 FAT32 at sector 8192 (256 MiB), p2 ext4 to the end.
set -euo pipefail
export LC_ALL=C
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umask 022

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TG_NAME=build-debian.sh TG_T0=$(date +%s%N)
. "$SRC/lib.sh"

REFRESH=0 VARIANT= OUT=
while [ $# -gt 0 ]; do
  case $1 in
    --refresh) REFRESH=1 ;;
    -h|--help) tg_usage "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) tg_die "unknown option $1 (see --help)" ;;
    *) if [ -z "$VARIANT" ]; then VARIANT=$1; elif [ -z "$OUT" ]; then OUT=$1; else tg_die "too many arguments (see --help)"; fi ;;
  esac
  shift
done
[ -n "$OUT" ] || { tg_usage "${BASH_SOURCE[0]}" >&2; exit 2; }
case $VARIANT in
  dhcpcd) VARIANT_PKGS=(dhcpcd ifupdown) BOOT=/boot ;;
  nm) VARIANT_PKGS=(network-manager) BOOT=/boot/firmware ;;
  *) tg_die "unknown variant $VARIANT: dhcpcd or nm" ;;
esac
[ "$(id -u)" = 0 ] || tg_die "must run as root (debootstrap, chroot, mounts in a private namespace)"
OUT=$(realpath -m "$OUT")

CACHE=${PIFARM_TESTGUEST_CACHE:-$HOME/.cache/pifarm/testguest}
D=$CACHE/debian
MIRROR=${PIFARM_DEBIAN_MIRROR:-$(tg_host_archive bookworm)}
[ -n "$MIRROR" ] || tg_die "this host's apt configuration names no Debian bookworm archive (see /etc/apt/sources.list.d); set PIFARM_DEBIAN_MIRROR"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
IMG_MIB=1024
HOSTNAME_=raspberrypi
PI_PASSWORD=raspberry

tg_host_tools debootstrap:debootstrap qemu-aarch64-static:qemu-user-static mkfs.ext4:e2fsprogs \
  debugfs:e2fsprogs sfdisk:fdisk openssl:openssl depmod:kmod unshare:util-linux flock:util-linux \
  "$KEYRING:debian-archive-keyring"
"$SRC/binfmt.sh"
mkdir -p "$D"
exec 8>"$D/lock"
flock -w 1200 8 || tg_die "another build holds $D/lock"

# in_root DIR CMD...: CMD in a chroot into DIR (arm64, through binfmt) with
# /proc, /sys and /dev mounted in a private mount namespace (gone with it)
in_root() {
  local r=$1; shift
  nice -n 10 unshare --mount --propagation private /bin/sh -euc '
    r=$1; shift
    mount -t proc proc "$r/proc"; mount -t sysfs sysfs "$r/sys"; mount --rbind /dev "$r/dev"
    exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C HOME=/root \
      DEBIAN_FRONTEND=noninteractive "$@"' sh "$r" "$@"
}
APT=(apt-get -q -y -o Acquire::Languages=none -o Dpkg::Use-Pty=0 --no-install-recommends)

# ---- 1. the boot partition and kernel modules: the busybox guest's --------------
"$SRC/build.sh" "$D/boot.img" | sed 's/^/build.sh: /'
read -r P1_START P1_SIZE < <(sfdisk -d "$D/boot.img" | awk -F'[=,]' '/boot.img1 :/ { print $2 + 0, $4 + 0 }')
read -r P2_START P2_SIZE < <(sfdisk -d "$D/boot.img" | awk -F'[=,]' '/boot.img2 :/ { print $2 + 0, $4 + 0 }')
DISK_ID=$(sfdisk -d "$D/boot.img" | awk '/^label-id:/ { sub(/^0x/, "", $2); print $2 }')
[ -n "$P1_START" ] && [ -n "$P2_START" ] && [ -n "$DISK_ID" ] || tg_die "cannot read the partitions of $D/boot.img"

# ---- 2. the common root file system (debootstrap, kept until the list changes) ---
# >>> base
# (ca-certificates: RaspiOS has it preinstalled, so a package set that pulls it
# in does not pay its first update-ca-certificates run on a real card either)
BASE_PKGS=(systemd-sysv udev dbus openssh-server sudo adduser iproute2 iputils-ping kmod procps
           netbase fake-hwclock dosfstools ca-certificates)
BASE=$D/base
base_key() {
  { echo "$MIRROR ${BASE_PKGS[*]}"; sed -n '/^# >>> base/,/^# <<< base/p' "${BASH_SOURCE[0]}"; } | md5sum | cut -c1-16
}
BKEY=$(base_key)
if [ $REFRESH = 1 ] || [ "$(cat "$BASE.key" 2>/dev/null)" != "$BKEY" ]; then
  rm -rf "$BASE" "$BASE.key" "$BASE.new"
  mkdir -p "$D/debs"
  tg_log "debootstrap, first stage (arm64 packages of bookworm from $MIRROR)"
  nice -n 10 debootstrap --arch=arm64 --variant=minbase --foreign --keyring="$KEYRING" \
    --cache-dir="$D/debs" --include="$(IFS=,; echo "${BASE_PKGS[*]}")" \
    bookworm "$BASE.new" "$MIRROR" > "$D/debootstrap.log" 2>&1 ||
    tg_die "debootstrap failed: $(tail -n 5 "$D/debootstrap.log")"
  # build-time only: dpkg without fsync, and no SSH host keys made by
  # openssh-server's postinst (placeholders, removed below: the guest makes
  # its own at the first boot)
  echo force-unsafe-io > "$BASE.new/etc/dpkg/dpkg.cfg.d/pifarm-build"
  mkdir -p "$BASE.new/etc/ssh"
  for t in rsa ecdsa ed25519; do : > "$BASE.new/etc/ssh/ssh_host_${t}_key"; done
  tg_log "debootstrap, second stage (dpkg under qemu-aarch64)"
  nice -n 10 unshare --mount --propagation private chroot "$BASE.new" /debootstrap/debootstrap --second-stage \
    >> "$D/debootstrap.log" 2>&1 || tg_die "debootstrap --second-stage failed: $(tail -n 5 "$D/debootstrap.log")"
  rm -f "$BASE.new"/etc/ssh/ssh_host_*
  tg_log "apt-get update in the new root"
  in_root "$BASE.new" "${APT[@]}" update >> "$D/debootstrap.log" 2>&1 || tg_die "apt-get update failed: $(tail -n 5 "$D/debootstrap.log")"
  mv "$BASE.new" "$BASE"
  echo "$BKEY" > "$BASE.key"
fi
# <<< base

# ---- 3. the variant's image (kept until the builder changes) ----------------------
vkey() {
  { echo "$BKEY $VARIANT"; md5sum "$D/boot.img"
    cd "$SRC" && cat build-debian.sh binfmt.sh lib.sh rootfs/etc/hosts rootfs/etc/rc.local \
      rootfs/etc/sudoers.d/010_pi-nopasswd rootfs/usr/lib/pifarm-testguest/firstboot
    find debian -type f | sort | xargs cat; } | md5sum | cut -c1-16
}
VKEY=$(vkey)
IMG=$D/$VARIANT.img
if [ "$(cat "$IMG.key" 2>/dev/null)" != "$VKEY" ]; then
  R=$D/work-$VARIANT
  rm -rf "$R" "$IMG" "$IMG.key"
  cp -a "$BASE" "$R"
  tg_log "$VARIANT: installing ${VARIANT_PKGS[*]}"
  if ! in_root "$R" "${APT[@]}" install "${VARIANT_PKGS[@]}" > "$D/$VARIANT.log" 2>&1; then
    # the lists may be older than the mirror: update once and retry
    in_root "$R" "${APT[@]}" update >> "$D/$VARIANT.log" 2>&1 &&
      in_root "$R" "${APT[@]}" install "${VARIANT_PKGS[@]}" >> "$D/$VARIANT.log" 2>&1 ||
      tg_die "apt-get install ${VARIANT_PKGS[*]} failed: $(tail -n 5 "$D/$VARIANT.log")"
  fi

  tg_log "$VARIANT: configuring"
  # the busybox guest's files that hold for a RaspiOS-like Debian too
  install -m 644 "$SRC/rootfs/etc/hosts" "$R/etc/hosts"
  install -m 755 "$SRC/rootfs/etc/rc.local" "$R/etc/rc.local"
  install -m 440 "$SRC/rootfs/etc/sudoers.d/010_pi-nopasswd" "$R/etc/sudoers.d/010_pi-nopasswd"
  install -D -m 755 "$SRC/rootfs/usr/lib/pifarm-testguest/firstboot" "$R/usr/lib/pifarm-testguest/firstboot"
  cp -a "$SRC/debian/rootfs/." "$R/"
  grep -rl '@BOOT@\|@DISKID@' "$R/etc/fstab" "$R/usr/lib/systemd/system" |
    xargs sed -i -e "s#@BOOT@#$BOOT#g" -e "s#@DISKID@#$DISK_ID#g"
  mkdir -p "$R$BOOT"
  echo "$HOSTNAME_" > "$R/etc/hostname"
  date -u '+%Y-%m-%d %H:%M:%S' > "$R/etc/fake-hwclock.data"   # the clock starts at the build
  # RaspiOS keeps the kernel's NIC names (eth0, wlan0; here usb0, usb1, usb2):
  # predictable names off, as raspi-config leaves them by default
  mkdir -p "$R/etc/systemd/network"
  ln -sfn /dev/null "$R/etc/systemd/network/99-default.link"
  ln -sfn /dev/null "$R/etc/systemd/network/73-usb-net-by-mac.link"
  # units that only cost boot time on the emulated board, with nothing to do
  # on a Raspberry Pi either: no EFI pstore, no DRM driver or device mapper in
  # use, no LVM snapshots to reap, no hugetlbfs in RaspiOS's kernel
  for u in systemd-pstore.service modprobe@efi_pstore.service modprobe@drm.service \
           modprobe@dm_mod.service e2scrub_reap.service dev-hugepages.mount; do
    ln -sfn /dev/null "$R/etc/systemd/system/$u"
  done
  # an empty machine-id: made at the first boot and kept (no first-boot presets)
  : > "$R/etc/machine-id"
  rm -f "$R/var/lib/dbus/machine-id"; ln -s /etc/machine-id "$R/var/lib/dbus/machine-id"
  PI_HASH=$(openssl passwd -6 "$PI_PASSWORD")
  groups=adm,dialout,cdrom,sudo,audio,video,plugdev,games,users,input
  [ "$VARIANT" = nm ] && groups=$groups,netdev
  in_root "$R" /bin/sh -euc '
    useradd -m -u 1000 -U -s /bin/bash -G "$1" pi
    printf "pi:%s\n" "$2" | chpasswd -e
    systemctl -q disable ssh.service
    systemctl -q enable regenerate_ssh_host_keys.service sshswitch.service userconfig.service
    rm -f /etc/ssh/ssh_host_*
    ' sh "$groups" "$PI_HASH" >> "$D/$VARIANT.log" 2>&1 || tg_die "configuring the guest failed: $(tail -n 5 "$D/$VARIANT.log")"

  # kernel modules: the busybox guest's, plus what systemd loads for itself
  dd if="$D/boot.img" of="$D/boot-p2.ext4" bs=1M iflag=skip_bytes,count_bytes \
    skip=$((P2_START * 512)) count=$((P2_SIZE * 512)) conv=sparse status=none
  rm -rf "$D/modules"; mkdir -p "$D/modules"
  debugfs -R "rdump /usr/lib/modules $D/modules" "$D/boot-p2.ext4" >/dev/null 2>&1
  rm -f "$D/boot-p2.ext4"
  KVER=$(ls "$D/modules/modules")
  [ -n "$KVER" ] && [ -d "$D/modules/modules/$KVER/kernel" ] || tg_die "no kernel modules in $D/boot.img"
  KDEB=$(ls "$CACHE"/debs/linux-image-"$KVER"_*.deb 2>/dev/null | head -n 1)
  [ -n "$KDEB" ] || tg_die "no linux-image-$KVER package in $CACHE/debs (build.sh fetches it)"
  M=./lib/modules/$KVER/kernel
  dpkg-deb --fsys-tarfile "$KDEB" | tar -x -C "$D/modules/modules" --strip-components=3 --wildcards \
    "$M/fs/autofs" "$M/fs/configfs" "$M/fs/binfmt_misc.ko" "$M/drivers/block/loop.ko"
  mkdir -p "$R/usr/lib/modules"
  mv "$D/modules/modules/$KVER" "$R/usr/lib/modules/"
  depmod -b "$R" "$KVER"

  # what a card needs no copy of
  rm -f "$R/etc/dpkg/dpkg.cfg.d/pifarm-build"
  : > "$R/etc/resolv.conf"   # not the host's: the guest's DHCP client writes it (dhcpcd.service needs it to exist)
  rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb \
         "$R"/usr/share/{doc,man,info,locale,lintian} "$R"/var/log/*.log "$R"/var/log/apt/* "$R/debootstrap"
  mkdir -p "$R/var/lib/apt/lists/partial"

  tg_log "$VARIANT: file systems"
  ROOTFS=$D/$VARIANT-root.ext4
  rm -f "$ROOTFS"; : > "$ROOTFS"
  P2_NEW=$(( IMG_MIB * 2048 - P2_START ))
  mkfs.ext4 -q -F -b 4096 -L rootfs -E root_owner=0:0 -d "$R" "$ROOTFS" $(( P2_NEW / 2 ))k
  rm -f "$IMG.tmp"
  truncate -s "${IMG_MIB}M" "$IMG.tmp"
  printf 'label: dos\nlabel-id: 0x%s\nunit: sectors\n\n%s,%s,c\n%s,,83\n' \
    "$DISK_ID" "$P1_START" "$P1_SIZE" "$P2_START" | sfdisk -q "$IMG.tmp"
  dd if="$D/boot.img" of="$IMG.tmp" bs=1M iflag=skip_bytes,count_bytes oflag=seek_bytes \
    skip=$((P1_START * 512)) seek=$((P1_START * 512)) count=$((P1_SIZE * 512)) conv=notrunc,sparse status=none
  dd if="$ROOTFS" of="$IMG.tmp" bs=1M seek=$((P2_START / 2048)) conv=notrunc,sparse status=none
  rm -f "$ROOTFS"
  rm -rf "$R"
  mv "$IMG.tmp" "$IMG"
  echo "$VKEY" > "$IMG.key"
fi
cp --sparse=always "$IMG" "$OUT.tmp"
mv -f "$OUT.tmp" "$OUT"
tg_log "wrote $OUT ($VARIANT; $(du -h --apparent-size "$OUT" | cut -f1), $(du -h "$OUT" | cut -f1) allocated)," \
  "pi password: $PI_PASSWORD"
