package virt

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/xml"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	xssh "golang.org/x/crypto/ssh"
	"pifarm/builtins/trace"
)

// Domain is one instance as a libvirt domain: the same model as the local
// QEMU command line (machine, memory, CPUs, kernel, device tree, kernel
// command line, the SD card, the serial console on TCP, VNC, the NICs).
type Domain struct {
	Name    string
	Machine string // raspi3b
	// MemoryMiB and CPUs size the guest.
	MemoryMiB int
	CPUs      int
	Emulator  string // the QEMU binary (a path, or a name found on the host's PATH by libvirt)
	Kernel    string
	DTB       string
	Cmdline   string
	// Disk is the SD card's file on the host, DiskFormat raw or qcow2.
	Disk       string
	DiskFormat string
	// ConsolePort is the serial console's TCP port on the host's
	// loopback.
	ConsolePort int
	// QEMUArgs are passed through <qemu:commandline>: what libvirt has no
	// element for on this machine (usb-net NICs on the board's own USB
	// controller, -accel options, VNC without a video device of
	// libvirt's).
	QEMUArgs []string
	// TAPs are NICs on existing TAP devices of the host (the LAN and
	// WLAN), see TAP.
	TAPs []TAP
	// Env is the QEMU's environment (<qemu:env>): AccelEnv for the
	// wrapper.
	Env map[string]string
	// Label, when set, is the static DAC label "+UID:+GID" the QEMU runs
	// as, files left unrelabelled (the user's own cache on this machine);
	// empty: libvirt's default user, files relabelled (a storage pool).
	Label string
}

// TAP is a NIC of the guest on an existing TAP device of the host.
//
// libvirt opens the device itself (as root, outside the QEMU's private
// /dev, which has no /dev/net/tun) and hands QEMU the descriptor as netdev
// "hostua-NAME" (<interface type='ethernet'> with <target managed='no'>);
// with the model usb-net libvirt makes no device of its own on raspi3b, so
// the domain adds the board's usb-net NIC on that netdev (QEMUArgs).
type TAP struct {
	Name string // netdev's name: "lan", "wlan"
	Dev  string // the TAP device: q0tap1
	MAC  string
}

// Netdev is the QEMU netdev id libvirt gives the TAP's descriptor.
func (t TAP) Netdev() string { return "hostua-" + t.Name }

// XML is the domain's XML, as `virsh create` takes it.
//
// Two things are worked around: raspi3b has no PCI bus and no USB
// controller libvirt knows, so libvirt's defaults (a USB controller, a
// memory balloon) are turned off and the NICs are QEMU arguments; and
// libvirt 9 passes -no-acpi for every aarch64 machine, which raspi3b
// rejects ("Property 'raspi3b-machine.acpi' not found"), while
// <features><acpi/> is refused without UEFI: the domain removes QEMU's
// no-acpi capability from libvirt's view (<qemu:capabilities>), so no
// wrapper of the emulator is needed. libvirt marks such a domain
// "tainted: custom-hypervisor-feature" in its log; that is all.
func (d Domain) XML() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n")
	w("  <name>%s</name>\n", esc(d.Name))
	w("  <memory unit='MiB'>%d</memory>\n", d.MemoryMiB)
	w("  <vcpu>%d</vcpu>\n", d.CPUs)
	w("  <os>\n    <type arch='aarch64' machine='%s'>hvm</type>\n", esc(d.Machine))
	w("    <kernel>%s</kernel>\n    <dtb>%s</dtb>\n    <cmdline>%s</cmdline>\n  </os>\n", esc(d.Kernel), esc(d.DTB), esc(d.Cmdline))
	w("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n")
	w("  <devices>\n")
	w("    <emulator>%s</emulator>\n", esc(d.Emulator))
	w("    <disk type='file' device='disk'>\n      <driver name='qemu' type='%s'/>\n      <source file='%s'/>\n      <target dev='sda' bus='sd'/>\n    </disk>\n", esc(d.DiskFormat), esc(d.Disk))
	w("    <serial type='tcp'>\n      <source mode='bind' host='127.0.0.1' service='%d'/>\n      <protocol type='raw'/>\n    </serial>\n", d.ConsolePort)
	for _, t := range d.TAPs {
		w("    <interface type='ethernet'>\n      <target dev='%s' managed='no'/>\n      <mac address='%s'/>\n      <model type='usb-net'/>\n      <alias name='ua-%s'/>\n    </interface>\n", esc(t.Dev), esc(t.MAC), esc(t.Name))
	}
	w("    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n")
	w("  </devices>\n")
	if d.Label != "" {
		w("  <seclabel type='static' model='dac' relabel='no'>\n    <label>%s</label>\n  </seclabel>\n", esc(d.Label))
	}
	if len(d.QEMUArgs) > 0 || len(d.Env) > 0 {
		w("  <qemu:commandline>\n")
		for _, a := range d.QEMUArgs {
			w("    <qemu:arg value='%s'/>\n", esc(a))
		}
		keys := make([]string, 0, len(d.Env))
		for k := range d.Env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			w("    <qemu:env name='%s' value='%s'/>\n", esc(k), esc(d.Env[k]))
		}
		w("  </qemu:commandline>\n")
	}
	w("  <qemu:capabilities>\n    <qemu:del capability='no-acpi'/>\n  </qemu:capabilities>\n")
	w("</domain>\n")
	return b.String()
}

// esc escapes text and attribute values (both quote kinds).
func esc(s string) string {
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(s))
	return strings.ReplaceAll(b.String(), "'", "&#39;")
}

// UserLabel is the static DAC label of this process's user and group,
// "+UID:+GID": a domain on this machine's libvirtd then runs its QEMU as
// the user who runs pifarm (as a plain local QEMU does), reading the
// disk and boot files in the user's own cache, which libvirt leaves
// unrelabelled.
func UserLabel() string { return fmt.Sprintf("+%d:+%d", os.Geteuid(), os.Getegid()) }

// DomainName is the libvirt name of an instance: "pifarm-ALIAS-" and six
// hex digits of the farm (this machine's name and the cache folder), so
// that farms sharing a libvirt host never take each other's domains.
func DomainName(alias, farmID string) string {
	return "pifarm-" + alias + "-" + shortHash(farmID)
}

// FarmID is what DomainName hashes for the farm whose cache is cacheDir.
func FarmID(cacheDir string) string {
	host, _ := os.Hostname()
	return host + ":" + cacheDir
}

// Virsh is the trace line of a virsh command on host uri.
func Virsh(uri string, args ...string) trace.Cmd {
	return trace.Cmd{Argv: append([]string{"virsh", "-c", uri}, args...)}
}

// ParseMemory turns QEMU's -m size ("1G", "512M", "512", "1.5G") into MiB.
func ParseMemory(s string) (int, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("memory %q is empty", s)
	}
	mult := 1.0
	switch strings.ToUpper(t[len(t)-1:]) {
	case "K":
		mult, t = 1.0/1024, t[:len(t)-1]
	case "M":
		t = t[:len(t)-1]
	case "G":
		mult, t = 1024, t[:len(t)-1]
	case "T":
		mult, t = 1024*1024, t[:len(t)-1]
	}
	if strings.HasSuffix(strings.ToUpper(t), "I") || strings.HasSuffix(strings.ToUpper(t), "B") {
		return 0, fmt.Errorf("memory %q: want a number with an optional K, M, G or T (QEMU's -m)", s)
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 || v*mult < 1 || v*mult > 1<<30 {
		return 0, fmt.Errorf("memory %q: want a positive number with an optional K, M, G or T (QEMU's -m)", s)
	}
	return int(v*mult + 0.5), nil
}

// ed25519Key is a fresh key, for asking known_hosts what it holds.
func ed25519Key() (ed25519.PrivateKey, xssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	pk, err := xssh.NewPublicKey(pub)
	return priv, pk, err
}

// WrapperPath is where pifarm installs the emulator wrapper of its
// domains on each libvirt host (see Wrapper).
const WrapperPath = "/usr/local/libexec/pifarm/qemu-system-aarch64"

// AccelEnv is the environment variable through which a domain tells the
// wrapper its acceleration.
const AccelEnv = "PIFARM_ACCEL"

// Wrapper is the emulator wrapper script for the QEMU binary qemu.
//
// libvirt puts "-accel tcg" on every command line of a domain of type
// qemu, ahead of the domain's own arguments, and QEMU takes the first
// -accel it is given: a domain could not ask for single-threaded TCG
// (qemu.accel "tcg,thread=single", 3-4x sooner at the login prompt on a
// small host), and libvirt has no element for it. The wrapper replaces the
// value of the first -accel by $PIFARM_ACCEL when the domain sets it
// (<qemu:env>); without it (libvirt probing the binary's capabilities) it
// runs QEMU unchanged.
func Wrapper(qemu string) string {
	return `#!/bin/sh
# pifarm's emulator for its libvirt domains (installed by pifarm; see its
# README, "More than one host"). libvirt passes "-accel tcg" before the
# domain's own arguments and QEMU takes the first -accel: the first one's
# value becomes $` + AccelEnv + ` when the domain sets it.
q=` + trace.Quote(qemu) + `
[ -n "${` + AccelEnv + `:-}" ] || exec "$q" "$@"
n=$#
done=
while [ "$n" -gt 0 ]; do
  a=$1
  shift
  n=$((n - 1))
  if [ -z "$done" ] && [ "$a" = -accel ] && [ "$n" -gt 0 ]; then
    shift
    n=$((n - 1))
    set -- "$@" -accel "$` + AccelEnv + `"
    done=1
  else
    set -- "$@" "$a"
  fi
done
exec "$q" "$@"
`
}
