#!/bin/bash
# build.sh - build pifarm's test guest: a small RaspiOS-shaped SD card image for
# qemu-system-aarch64 -M raspi3b, made from Debian bookworm arm64 packages.
#
# usage: build.sh [--no-pi-password] [--refresh] OUT.img
#
#   --no-pi-password  user pi (uid 1000) exists but its password is locked, so
#                     only offline seeding (/boot/userconf.txt, /boot/ssh) gives
#                     access, as on a stock RaspiOS Bullseye 2022-04+ image.
#                     Default: pi / raspberry, as on RaspiOS Buster and older.
#   --refresh         refresh the cached apt lists (newer package versions).
#
# environment:
#   PIFARM_TESTGUEST_CACHE   cache and work folder
#                            (default: $HOME/.cache/pifarm/testguest)
#   PIFARM_DEBIAN_MIRROR     Debian archive to fetch from (default: the one this
#                            host's apt configuration uses for bookworm)
#   PIFARM_DEBIAN_SECURITY   security archive (default: the host's for
#                            bookworm-security; left out when it has none)
#   SOURCE_DATE_EPOCH        timestamp for all files (default: the kernel
#                            package's build time, so the guest clock starts there)
#
# Runs as root on Debian 12 (amd64). Host tools that are missing are installed
# with apt-get. The arm64 packages are fetched with `apt-get download` against
# private apt lists in the cache folder and unpacked with dpkg-deb: nothing is
# installed on the host for arm64. No loop devices, no mounts.
#
# Image layout (512 MiB, a power of two as QEMU's SD card needs):
#   MBR, disk id 0x7069666d
#   p1  FAT32 (type 0x0c) at sector 8192, 256 MiB: kernel8.img,
#       bcm2710-rpi-3-b-plus.dtb, cmdline.txt, config.txt
#   p2  ext4 (type 0x83) right after p1, filling the rest
# kernel8.img is Debian's arm64 Image with the initramfs appended at a fixed
# offset; the dtb's /chosen points linux,initrd-start/end at it (QEMU loads the
# Image at RAM base + 2 MiB), so the original QEMU command line (no -initrd)
# boots it.
set -euo pipefail
export LC_ALL=C
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umask 022

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TG_NAME=build.sh TG_T0=$(date +%s%N)
. "$SRC/lib.sh"
usage() { tg_usage "${BASH_SOURCE[0]}"; }
die() { tg_die "$@"; }
log() { tg_log "$@"; }

NOPW=0 REFRESH=0 OUT=
while [ $# -gt 0 ]; do
  case $1 in
    --no-pi-password) NOPW=1 ;;
    --refresh) REFRESH=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$OUT" ] || die "only one output file, please"; OUT=$1 ;;
  esac
  shift
done
[ -n "$OUT" ] || { usage >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (installs host tools, writes root-owned files)"
OUT=$(realpath -m "$OUT")

# ---- layout constants --------------------------------------------------------
IMG_MIB=512
P1_START=8192
P1_SECTORS=$((256 * 2048))
P2_START=$((P1_START + P1_SECTORS))
DISK_ID=0x7069666d                       # "pifm"
ROOT_UUID=7069666d-7465-7374-6775-657374000002
LOAD_BASE=$((0x200000))                  # QEMU puts an arm64 Image at RAM base + 2 MiB
HOSTNAME_=raspberrypi
PI_PASSWORD=raspberry
PW_SALT=pifarmtestguest0                 # fixed salt: same image bytes every build

CACHE=${PIFARM_TESTGUEST_CACHE:-$HOME/.cache/pifarm/testguest}
# the archives this host's apt configuration names (read at run time)
MIRROR=${PIFARM_DEBIAN_MIRROR:-$(tg_host_archive bookworm)}
SECURITY=${PIFARM_DEBIAN_SECURITY:-$(tg_host_archive bookworm-security)}
[ -n "$MIRROR" ] || die "this host's apt configuration names no Debian bookworm archive (see /etc/apt/sources.list.d); set PIFARM_DEBIAN_MIRROR"
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -w 600 9 || die "another build holds $CACHE/lock"

# ---- 1. host tools (installed only when missing) ------------------------------
tg_host_tools dpkg-deb:dpkg apt-get:apt mkfs.vfat:dosfstools mcopy:mtools mkfs.ext4:e2fsprogs \
  sfdisk:fdisk fdtput:device-tree-compiler cpio:cpio depmod:kmod modprobe:kmod \
  openssl:openssl gzip:gzip flock:util-linux qemu-aarch64-static:qemu-user-static \
  aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu aarch64-linux-gnu-readelf:binutils-aarch64-linux-gnu \
  /usr/aarch64-linux-gnu/lib/libc.a:libc6-dev-arm64-cross \
  /usr/share/keyrings/debian-archive-keyring.gpg:debian-archive-keyring

# ---- 2. arm64 packages: private apt lists and a .deb cache ---------------------
APTDIR=$CACHE/apt
DEBS=$CACHE/debs
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/sources.list.d" "$DEBS"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
cat > "$APTDIR/sources.list.new" <<EOF
deb [arch=arm64 signed-by=$KEYRING] $MIRROR bookworm main
deb [arch=arm64 signed-by=$KEYRING] $MIRROR bookworm-updates main
EOF
[ -z "$SECURITY" ] || echo "deb [arch=arm64 signed-by=$KEYRING] $SECURITY bookworm-security main" >> "$APTDIR/sources.list.new"
if ! cmp -s "$APTDIR/sources.list.new" "$APTDIR/sources.list"; then
  mv "$APTDIR/sources.list.new" "$APTDIR/sources.list"; REFRESH=1
else
  rm -f "$APTDIR/sources.list.new"
fi
APT=(-q -o APT::Architecture=arm64 -o APT::Architectures=arm64
     -o Dir::Etc::SourceList="$APTDIR/sources.list" -o Dir::Etc::SourceParts="$APTDIR/sources.list.d"
     -o Dir::State::Lists="$APTDIR/lists" -o Dir::Cache="$APTDIR/cache" -o Dir::State::status=/dev/null
     -o Acquire::Languages=none -o APT::Sandbox::User=root
     -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
     -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
     -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
     -o Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false)
apt_update() { log "apt-get update (arm64, private lists)"; apt-get "${APT[@]}" update >/dev/null; }
if [ $REFRESH = 1 ] || ! ls "$APTDIR"/lists/*_Packages* >/dev/null 2>&1; then apt_update; fi

# Packages unpacked into the root file system. Shared libraries are checked
# after unpacking: a missing one fails the build with its name.
ROOT_PKGS=(
  libc6 libgcc-s1 libcrypt1 busybox-static
  bash libtinfo6 ncurses-base
  coreutils libacl1 libattr1 libgmp10 libselinux1 libpcre2-8-0
  dash tar grep sed findutils gzip hostname iputils-ping libidn2-0 libunistring2
  dropbear-bin libtomcrypt1 libtommath1 zlib1g
  openssh-client openssh-sftp-server libedit2 libbsd0 libmd0 libfido2-1 libcbor0.8 libudev1
    libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2 libssl3
  iproute2 libbpf1 libelf1 libcap2 libdb5.3 libmnl0 libtirpc3 libtirpc-common libxtables12
  e2fsprogs libext2fs2 libblkid1 libuuid1 libss2
)
PARTIAL_PKGS=(libc-bin)   # only usr/bin/getent is taken from it

# name -> exact .deb file name of the candidate version (as apt-get download names
# it); the answer is kept until the lists or the package set change
declare -A DEBFILE
RESOLVED=$CACHE/resolved
resolve_key() {
  { cat "$APTDIR/sources.list"; stat -c '%n %s %Y' "$APTDIR"/lists/*_Packages*
    echo "${ROOT_PKGS[*]} / ${PARTIAL_PKGS[*]}"; } | md5sum | cut -d' ' -f1
}
resolve() {
  local p v a key
  key=$(resolve_key)
  DEBFILE=()
  if [ -s "$RESOLVED" ] && [ "$(head -n 1 "$RESOLVED")" = "$key" ]; then
    while read -r p v; do DEBFILE[$p]=$v; done < <(tail -n +2 "$RESOLVED")
    KPKG=${DEBFILE[kernel]}
  else
    KPKG=$(apt-cache "${APT[@]}" depends linux-image-arm64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$KPKG" ] || die "cannot resolve linux-image-arm64 from the apt lists in $APTDIR"
    while read -r p v a; do
      DEBFILE[$p]="${p}_${v//:/%3a}_${a}.deb"
    done < <(apt-cache "${APT[@]}" show --no-all-versions "$KPKG" "${ROOT_PKGS[@]}" "${PARTIAL_PKGS[@]}" |
             awk '/^Package:/{p=$2} /^Version:/{v=$2} /^Architecture:/{a=$2} /^$/{if(p)print p, v, a; p=""} END{if(p)print p, v, a}')
    for p in "$KPKG" "${ROOT_PKGS[@]}" "${PARTIAL_PKGS[@]}"; do
      [ -n "${DEBFILE[$p]:-}" ] || die "package $p not found in the arm64 lists"
    done
    { echo "$key"; echo "kernel $KPKG"; for p in "${!DEBFILE[@]}"; do echo "$p ${DEBFILE[$p]}"; done; } > "$RESOLVED"
  fi
  KVER=${KPKG#linux-image-}
  ALL_PKGS=("$KPKG" "${ROOT_PKGS[@]}" "${PARTIAL_PKGS[@]}")
}
resolve
fetch() {
  local missing=() p
  for p in "${ALL_PKGS[@]}"; do [ -s "$DEBS/${DEBFILE[$p]}" ] || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return 0
  log "downloading ${#missing[@]} arm64 packages"
  local spec=() v f
  for p in "${missing[@]}"; do f=${DEBFILE[$p]#"${p}_"}; v=${f%_*}; spec+=("$p=${v//%3a/:}"); done
  (cd "$DEBS" && apt-get "${APT[@]}" download "${spec[@]}" >/dev/null)
}
if ! fetch; then apt_update; resolve; fetch || die "apt-get download failed"; fi
# drop other versions of our packages from the cache
for p in "${ALL_PKGS[@]}"; do
  for f in "$DEBS/${p}"_*.deb; do
    [ -e "$f" ] && [ "${f##*/}" != "${DEBFILE[$p]}" ] && rm -f "$f"
  done
done
deb() { echo "$DEBS/${DEBFILE[$1]}"; }
log "packages ready (kernel $KVER)"

# ---- 3. kernel: Image, dtb, modules (extracted once per kernel package) ------------
KDIR=$CACHE/kernel/${DEBFILE[$KPKG]%.deb}
if [ ! -e "$KDIR/.done" ]; then
  log "unpacking $KPKG"
  rm -rf "$KDIR"; mkdir -p "$KDIR/x"
  M=./lib/modules/$KVER
  dpkg-deb --fsys-tarfile "$(deb "$KPKG")" | tar -x -C "$KDIR/x" --wildcards \
    "./boot/vmlinuz-$KVER" "./usr/lib/linux-image-$KVER/broadcom/bcm2837-rpi-3-b-plus.dtb" \
    "$M/modules.order" "$M/modules.builtin" "$M/modules.builtin.modinfo" \
    "$M/kernel/arch" "$M/kernel/crypto" "$M/kernel/lib" "$M/kernel/net" "$M/kernel/drivers/net" \
    "$M/kernel/drivers/mmc" "$M/kernel/drivers/usb" "$M/kernel/drivers/hid" \
    "$M/kernel/drivers/watchdog/bcm2835_wdt.ko" "$M/kernel/drivers/char/hw_random" \
    "$M/kernel/fs/ext4" "$M/kernel/fs/jbd2" "$M/kernel/fs/mbcache.ko" "$M/kernel/fs/fat" \
    "$M/kernel/fs/nls" "$M/kernel/fs/fuse" "$M/kernel/fs/overlayfs" "$M/kernel/fs/squashfs"
  # hardware drivers a Pi 3 guest never sees
  rm -rf "$KDIR/x/$M/kernel/drivers/net/"{wireless,ethernet,wwan,can,hamradio,ieee802154,fddi,appletalk,hyperv}
  stat -c %Y "$KDIR/x/boot/vmlinuz-$KVER" > "$KDIR/epoch"
  depmod -b "$KDIR/x" "$KVER"
  touch "$KDIR/.done"
fi
KX=$KDIR/x
KMOD=$KX/lib/modules/$KVER
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(cat "$KDIR/epoch")}

# modules the initramfs loads, in dependency order: USB first (the usb-net NICs
# enumerate slowly), then the SD card host, file systems, watchdog (poweroff), rng
BOOT_MODULES="phy-generic dwc2 usbnet cdc_ether rndis_host usbhid hid-generic
  sdhci-iproc bcm2835 crc32c_generic ext4 vfat nls_cp437 nls_ascii nls_utf8 bcm2835_wdt bcm2835-rng"
boot_module_list() {
  local m
  for m in $BOOT_MODULES; do
    modprobe -d "$KX" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
  done | sed "s#^.*/lib/modules/$KVER/##" | awk '!seen[$0]++'
}

# ---- 4. root file system -------------------------------------------------------
# The unpacked packages are kept in $CACHE/pkgroot until a package version or
# the code between the pkgroot markers changes.
# >>> pkgroot
PKGROOT=$CACHE/pkgroot
pkgroot_key() {
  { for p in "${ROOT_PKGS[@]}" "${PARTIAL_PKGS[@]}"; do echo "${DEBFILE[$p]}"; done
    sed -n '/^# >>> pkgroot/,/^# <<< pkgroot/p' "${BASH_SOURCE[0]}"
    (cd "$SRC/rootfs" && ls usr/bin usr/sbin); echo addgroup delgroup; } | md5sum | cut -d' ' -f1
}
PKEY=$(pkgroot_key)
if [ "$(cat "$PKGROOT.key" 2>/dev/null)" != "$PKEY" ]; then
  log "unpacking ${#ROOT_PKGS[@]} packages"
  rm -rf "$PKGROOT" "$PKGROOT.key"
  # merged /usr, as on bookworm: bin, sbin, lib are links into usr
  mkdir -p "$PKGROOT"/usr/{bin,sbin,lib}
  ln -s usr/bin "$PKGROOT/bin"; ln -s usr/sbin "$PKGROOT/sbin"; ln -s usr/lib "$PKGROOT/lib"
  for p in "${ROOT_PKGS[@]}"; do
    dpkg-deb --fsys-tarfile "$(deb "$p")" | tar -x -C "$PKGROOT" --keep-directory-symlink
  done
  dpkg-deb --fsys-tarfile "$(deb libc-bin)" | tar -x -C "$PKGROOT" --keep-directory-symlink ./usr/bin/getent
  [ -e "$PKGROOT/usr/lib/sftp-server" ] || ln -s openssh/sftp-server "$PKGROOT/usr/lib/sftp-server"  # dropbear's path
  rm -rf "$PKGROOT"/usr/share/{doc,man,info,locale,lintian,bug,bash-completion,zsh,common-licenses} \
         "$PKGROOT"/usr/lib/aarch64-linux-gnu/gconv "$PKGROOT"/usr/lib/aarch64-linux-gnu/tc/q_atm.so \
         "$PKGROOT"/etc/init.d "$PKGROOT"/etc/default/dropbear "$PKGROOT"/etc/cron.*
  # every shared library a binary needs must be there
  find "$PKGROOT" -xdev -type f \( -perm -u+x -o -name '*.so*' \) -print0 |
    { xargs -0 aarch64-linux-gnu-readelf -d 2>/dev/null || true; } |   # scripts are no ELF files
    awk '/\(NEEDED\)/ { gsub(/[][]/, "", $NF); print $NF }' | sort -u > "$CACHE/needed"
  find "$PKGROOT/usr/lib" -maxdepth 2 \( -type f -o -type l \) -name '*.so*' -printf '%f\n' | sort -u > "$CACHE/provided"
  MISSING=$(comm -23 "$CACHE/needed" "$CACHE/provided" | tr '\n' ' ')
  rm -f "$CACHE/needed" "$CACHE/provided"
  [ -z "$MISSING" ] || die "shared libraries missing from the root file system: $MISSING"
  # /bin/sh is dash, as on Debian and RaspiOS: a busybox sh would run its own
  # applets (ip, tar, hostname, ...) before the real programs in PATH
  ln -sfn dash "$PKGROOT/usr/bin/sh"
  # busybox for every command that neither the packages nor pifarm's files provide
  qemu-aarch64-static "$PKGROOT/usr/bin/busybox" --list-full | while read -r a; do
    n=${a##*/}
    case $n in linuxrc|dpkg|dpkg-deb|rpm|rpm2cpio|busybox) continue ;; esac
    for d in usr/bin usr/sbin; do
      [ -e "$PKGROOT/$d/$n" ] || [ -L "$PKGROOT/$d/$n" ] || [ -e "$SRC/rootfs/$d/$n" ] && continue 2
      case $n in addgroup|delgroup) continue 2 ;; esac
    done
    case $a in sbin/*|usr/sbin/*) d=usr/sbin ;; *) d=usr/bin ;; esac
    ln -s /usr/bin/busybox "$PKGROOT/$d/$n"
  done
  echo "$PKEY" > "$PKGROOT.key"
fi
# <<< pkgroot

W=$CACHE/work
R=$W/root
I=$W/initramfs
rm -rf "$W"; mkdir -p "$W/boot" "$W/out"
log "assembling the root file system"
# R shares file inodes with the caches (hard links): files in R are replaced,
# never changed in place
cp -al "$PKGROOT" "$R"
# pifarm's guest files (init scripts, shims, configuration); the tree holds no
# symbolic links (go:embed cannot carry them), those are made here
cp -a --remove-destination "$SRC/rootfs/." "$R/"
ln -sfn ../usr/lib/os-release "$R/etc/os-release"
ln -sfn adduser "$R/usr/sbin/addgroup"
ln -sfn deluser "$R/usr/sbin/delgroup"

# sudo: a small setuid helper (files/sudo.c), compiled once per source version
SUDO_BIN=$CACHE/sudo-$(sha256sum "$SRC/files/sudo.c" | cut -c1-16)
if [ ! -s "$SUDO_BIN" ]; then
  rm -f "$CACHE"/sudo-*
  aarch64-linux-gnu-gcc -static -Os -s -Wall -Wextra -Werror -o "$SUDO_BIN.new" "$SRC/files/sudo.c"
  mv "$SUDO_BIN.new" "$SUDO_BIN"
fi
install -m 4755 "$SUDO_BIN" "$R/usr/bin/sudo"

# accounts: pi (uid 1000) with password "raspberry", or locked with --no-pi-password
if [ $NOPW = 1 ]; then PI_HASH='*'; else PI_HASH=$(openssl passwd -6 -salt "$PW_SALT" "$PI_PASSWORD"); fi
DAYS=$((SOURCE_DATE_EPOCH / 86400))
awk -F: -v days="$DAYS" -v pihash="$PI_HASH" 'BEGIN{OFS=":"}
  { h = ($1 == "pi") ? pihash : "*"; print $1, h, days, 0, 99999, 7, "", "", "" }' "$R/etc/passwd" > "$R/etc/shadow"
awk -F: 'BEGIN{OFS=":"} { print $1, "*", "", $4 }' "$R/etc/group" > "$R/etc/gshadow"
chgrp 42 "$R/etc/shadow" "$R/etc/gshadow"; chmod 640 "$R/etc/shadow" "$R/etc/gshadow"
echo "$HOSTNAME_" > "$R/etc/hostname"
echo "$SOURCE_DATE_EPOCH" > "$R/etc/fake-hwclock.data"
mkdir -p "$R"/{boot,dev,proc,sys,run,tmp,mnt,media,srv,opt,root,home,var/{tmp,log,cache,lib,spool,mail}} \
         "$R"/etc/{dropbear,sudoers.d,profile.d} "$R"/etc/network/{interfaces.d,if-{pre-up,up,down,post-down}.d} \
         "$R/usr/local/"{bin,sbin,src,etc,lib}
ln -sfn /proc/self/mounts "$R/etc/mtab"
ln -sfn /run "$R/var/run"; ln -sfn /run/lock "$R/var/lock"
chmod 1777 "$R/tmp" "$R/var/tmp"; chmod 700 "$R/root"; chmod 750 "$R/etc/sudoers.d"
chmod 440 "$R/etc/sudoers" "$R"/etc/sudoers.d/*
mkdir -p "$R/home/pi"; cp -a "$R/etc/skel/." "$R/home/pi/"; chown -R 1000:1000 "$R/home/pi"

# systemd-style unit state that the systemctl shim reads and writes (enabled =
# a link in multi-user.target.wants), also inspectable offline on the image
WANTS=$R/etc/systemd/system/multi-user.target.wants
mkdir -p "$WANTS"
for u in networking dhcpcd bluetooth hciuart avahi-daemon triggerhappy wpa_supplicant cron rsyslog systemd-timesyncd; do
  ln -s "/lib/systemd/system/$u.service" "$WANTS/$u.service"
done

# dropbear host keys: generated once, kept in the cache so every build has the same
HK=$CACHE/hostkeys
if [ ! -s "$HK/dropbear_ed25519_host_key" ]; then
  log "generating ssh host keys (once)"
  rm -rf "$HK.new"; mkdir -p "$HK.new"
  for t in rsa ecdsa ed25519; do
    QEMU_LD_PREFIX=$R qemu-aarch64-static "$R/usr/bin/dropbearkey" -t "$t" -f "$HK.new/dropbear_${t}_host_key" \
      >/dev/null 2>&1 || die "dropbearkey -t $t failed"
  done
  rm -rf "$HK"; mv "$HK.new" "$HK"
fi
install -m 600 "$HK"/dropbear_*_host_key "$R/etc/dropbear/"

# kernel modules: the boot set plus networking and file systems for modprobe
# (the same tree that depmod indexed in the kernel cache)
mkdir -p "$R/lib/modules"
cp -al "$KMOD" "$R/lib/modules/"

# ---- 5. initramfs ---------------------------------------------------------------
# kept in the cache until its inputs or the code between the markers change
# >>> initramfs
INITRD=$CACHE/initrd-$( { sed -n '/^# >>> initramfs/,/^# <<< initramfs/p' "${BASH_SOURCE[0]}"
  cat "$SRC/initramfs/init"; echo "${DEBFILE[busybox-static]} ${DEBFILE[$KPKG]} $BOOT_MODULES $SOURCE_DATE_EPOCH"
  } | md5sum | cut -c1-16).img
if [ ! -s "$INITRD" ]; then
  log "initramfs"
  rm -f "$CACHE"/initrd-*.img
  mkdir -p "$I"/{bin,dev,proc,sys,newroot,lib/modules/$KVER}
  cp "$R/usr/bin/busybox" "$I/bin/"
  for a in sh mount umount insmod sleep cat mkdir switch_root echo ls findfs; do ln -s busybox "$I/bin/$a"; done
  install -m 755 "$SRC/initramfs/init" "$I/init"
  boot_module_list > "$I/lib/modules/$KVER/modules.load"
  while read -r f; do
    install -D -m 644 "$KMOD/$f" "$I/lib/modules/$KVER/$f"
  done < "$I/lib/modules/$KVER/modules.load"
  mknod -m 600 "$I/dev/console" c 5 1     # init's stdin/stdout before devtmpfs is mounted
  find "$I" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  (cd "$I" && find . -mindepth 1 | sort | cpio -o -H newc -R 0:0 --reproducible --quiet |
     gzip -9 -n) > "$INITRD.new"
  mv "$INITRD.new" "$INITRD"
fi
# <<< initramfs
cp "$INITRD" "$W/out/initrd.img"

# ---- 6. kernel8.img and dtb ---------------------------------------------------------
log "kernel8.img and dtb"
IMAGE=$KX/boot/vmlinuz-$KVER
head -c 64 "$IMAGE" | tail -c 8 | od -An -tx4 | grep -q 644d5241 || die "$IMAGE is not an arm64 Image"
IMAGE_SIZE=$(od -An -t u8 -j 16 -N 8 "$IMAGE" | tr -d ' ')   # includes bss
FILE_SIZE=$(stat -c %s "$IMAGE")
MIB=$((1024 * 1024))
INITRD_OFF=$((48 * MIB))
END=$(( (IMAGE_SIZE > FILE_SIZE ? IMAGE_SIZE : FILE_SIZE) + 4 * MIB ))
[ $END -le $INITRD_OFF ] || INITRD_OFF=$(( (END + 2 * MIB - 1) / (2 * MIB) * 2 * MIB ))
RD_SIZE=$(stat -c %s "$W/out/initrd.img")
cp "$IMAGE" "$W/boot/kernel8.img"
truncate -s "$INITRD_OFF" "$W/boot/kernel8.img"
cat "$W/out/initrd.img" >> "$W/boot/kernel8.img"
DTB=$W/boot/bcm2710-rpi-3-b-plus.dtb
cp "$KX/usr/lib/linux-image-$KVER/broadcom/bcm2837-rpi-3-b-plus.dtb" "$DTB"
# the 3B+ tree hangs a bluetooth device under the PL011; the kernel then makes
# the UART a serdev bus and /dev/ttyAMA0 never appears
fdtput -r "$DTB" /soc/serial@7e201000/bluetooth
fdtput -t x "$DTB" /chosen linux,initrd-start "$(printf %x $((LOAD_BASE + INITRD_OFF)))"
fdtput -t x "$DTB" /chosen linux,initrd-end "$(printf %x $((LOAD_BASE + INITRD_OFF + RD_SIZE)))"
echo "console=serial0,115200 console=tty1 root=PARTUUID=${DISK_ID#0x}-02 rootfstype=ext4 fsck.repair=yes rootwait" \
  > "$W/boot/cmdline.txt"
cat > "$W/boot/config.txt" <<'EOF'
# pifarm test guest. QEMU ignores this file; it matches what a Pi 3 B+ would need.
[all]
arm_64bit=1
enable_uart=1
kernel=kernel8.img
device_tree=bcm2710-rpi-3-b-plus.dtb
EOF

# ---- 7. partitions and disk image -------------------------------------------------
log "file systems"
find "$R" "$W/boot" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
TOTAL=$((IMG_MIB * 2048))
BOOTFS=$W/out/boot.vfat ROOTFS=$W/out/root.ext4
mkfs.vfat -F 32 -n BOOTFS -i "${DISK_ID#0x}" --invariant -C "$BOOTFS" $((P1_SECTORS / 2)) >/dev/null
(cd "$W/boot" && mcopy -m -i "$BOOTFS" kernel8.img bcm2710-rpi-3-b-plus.dtb cmdline.txt config.txt ::)
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -b 4096 -L rootfs -U "$ROOT_UUID" \
  -E "hash_seed=$ROOT_UUID,root_owner=0:0" -d "$R" "$ROOTFS" $(( (TOTAL - P2_START) / 2 ))k >/dev/null
# mke2fs copies each file's ctime, which touch cannot set: fix it up to SOURCE_DATE_EPOCH
(cd "$R" && find . -printf '%P\n') | awk -v t="$SOURCE_DATE_EPOCH" '{ printf "sif \"/%s\" ctime @%s\n", $0, t }' > "$W/ctime.cmds"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$W/ctime.cmds" "$ROOTFS" >/dev/null 2>"$W/ctime.err" || die "debugfs: $(tail -n 3 "$W/ctime.err")"
grep -v '^debugfs ' "$W/ctime.err" | grep -q . && die "debugfs: $(head -n 3 "$W/ctime.err")"
rm -f "$OUT.tmp"
truncate -s "${IMG_MIB}M" "$OUT.tmp"
printf 'label: dos\nlabel-id: %s\nunit: sectors\n\n%s,%s,c\n%s,,83\n' \
  "$DISK_ID" "$P1_START" "$P1_SECTORS" "$P2_START" | sfdisk -q "$OUT.tmp"
dd if="$BOOTFS" of="$OUT.tmp" bs=1M seek=$((P1_START / 2048)) conv=notrunc,sparse status=none
dd if="$ROOTFS" of="$OUT.tmp" bs=1M seek=$((P2_START / 2048)) conv=notrunc,sparse status=none
mv -f "$OUT.tmp" "$OUT"
rm -f "$BOOTFS" "$ROOTFS"

log "wrote $OUT ($(du -h --apparent-size "$OUT" | cut -f1), $(du -h "$OUT" | cut -f1) allocated)" \
    "kernel $KVER, initramfs $RD_SIZE bytes at +$((INITRD_OFF / MIB)) MiB," \
    "pi password: $([ $NOPW = 1 ] && echo locked || echo "$PI_PASSWORD")"
