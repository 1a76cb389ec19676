package qemu

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"pifarm/builtins/farm"
)

// Display says how the guest's screen is shown.
type Display string

// Displays.
const (
	// DisplayVNC serves the framebuffer as VNC display N (port - 5900).
	DisplayVNC Display = "vnc"
	// DisplayGUI opens QEMU's own window (-display gtk).
	DisplayGUI Display = "gui"
	// DisplayNone shows the screen nowhere.
	DisplayNone Display = "none"
)

// Options are the per-start choices of qemu.start.
type Options struct {
	// Console puts the serial console on stdio in the foreground instead of
	// TCP port 5800+N in the background.
	Console bool
	// Display is vnc (default), gui or none.
	Display Display
	// GlobalBind binds console, VNC and the SSH forward on all addresses
	// instead of 127.0.0.1.
	GlobalBind bool
	// Paused starts the guest CPUs stopped (-S), for tests.
	Paused bool
	// NoTAP leaves out the LAN and WLAN NICs.
	NoTAP bool
	// Extra arguments appended to the command line.
	Extra []string
}

// Plan is a QEMU command line for one instance and what was decided on the way.
type Plan struct {
	Argv []string
	// LAN and WLAN report whether the TAP NICs are in the command line.
	LAN, WLAN bool
	// Warnings explain what was left out, and what listens beyond
	// loopback.
	Warnings []string
	// Line, when set, is the command as a shell line where Argv alone
	// is not all of it (virsh create with the domain XML as its input).
	Line string
	// VNCPassword: VNC listens beyond loopback with password=on; the start
	// sets a password over QMP (see setVNCPassword).
	VNCPassword bool
}

// tapUsable reports whether the TAP device name exists and can be attached
// by this process without privileges: it must be a tun/tap device whose
// owner is this user or whose group is one of ours, or we run as root.
// The reason is empty when it is usable.
func tapUsable(name string) (bool, string) {
	base := "/sys/class/net/" + name
	if _, err := os.Stat(base); err != nil {
		if inNetDev(name) {
			return false, fmt.Sprintf("TAP device %s exists in this network namespace, but /sys shows another one (mount sysfs for this namespace, as `ip netns exec` does)", name)
		}
		return false, fmt.Sprintf("TAP device %s does not exist", name)
	}
	flags, err := os.ReadFile(base + "/tun_flags")
	if err != nil {
		return false, fmt.Sprintf("%s is not a TAP device", name)
	}
	if fl, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(string(flags), "0x")), 16, 32); err == nil && fl&0x0002 == 0 {
		return false, fmt.Sprintf("%s is a TUN, not a TAP device", name)
	}
	if os.Geteuid() == 0 {
		return true, ""
	}
	owner := readInt(base + "/owner")
	group := readInt(base + "/group")
	if owner == os.Getuid() || owner == os.Geteuid() {
		return true, ""
	}
	if group >= 0 {
		gs, _ := os.Getgroups()
		for _, g := range append(gs, os.Getgid(), os.Getegid()) {
			if g == group {
				return true, ""
			}
		}
	}
	who := "root only"
	if owner >= 0 {
		who = fmt.Sprintf("owned by uid %d", owner)
	}
	return false, fmt.Sprintf("TAP device %s is %s, not usable by uid %d", name, who, os.Getuid())
}

// inNetDev reports whether /proc/self/net/dev, which always shows this
// process's network namespace, lists the interface.
func inNetDev(name string) bool {
	b, err := os.ReadFile("/proc/self/net/dev")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if n, _, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(n) == name {
			return true
		}
	}
	return false
}

func readInt(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

// Command builds the QEMU command line for node n: the original pibox
// device set adapted to QEMU 7 and to running without root.
//
// The original passed -vga std; QEMU 7.2's raspi3b ignores it with a warning
// ("this machine type does not use that option; No VGA device has been
// created"): the board has its own BCM2835 framebuffer, which is what VNC
// shows. pifarm therefore leaves -vga out.
//
// TAP NICs whose device is missing or not usable by this user are left out
// with a warning (see tapUsable); QEMU never runs through sudo.
func Command(f *farm.Farm, n *farm.Node, o Options) (*Plan, error) {
	c := f.Config.QEMU
	id := n.ID
	bind := "127.0.0.1"
	if o.GlobalBind {
		bind = "0.0.0.0"
	}
	disk := f.Disk(id)
	format := "qcow2"
	if id == 0 {
		format = "raw"
	}
	a := []string{c.Binary, "-name", n.Alias, "-M", c.Machine, "-m", c.Memory, "-smp", strconv.Itoa(c.CPUs)}
	if c.Accel != "" {
		a = append(a, "-accel", c.Accel)
	}
	a = append(a,
		"-kernel", f.Kernel(id),
		"-dtb", f.DTB(id),
		"-append", c.Append,
		"-drive", "media=disk,if=sd,format="+format+",file="+optEscape(disk))
	if o.Paused {
		a = append(a, "-S")
	}
	switch o.Display {
	case DisplayVNC, "":
		vnc := f.VNCPort(n)
		if vnc < 5900 {
			return nil, fmt.Errorf("VNC port %d of instance %d is below 5900: VNC display numbers start at 5900 (fix ports.vnc in %s or start without VNC)", vnc, id, f.Config.Path)
		}
		v := fmt.Sprintf("%s:%d", bind, vnc-5900)
		if o.GlobalBind {
			v += ",password=on"
		}
		a = append(a, "-display", "none", "-vnc", v)
	case DisplayGUI:
		// Named explicitly: without a GUI module (Debian's qemu-system-gui)
		// QEMU's default display would silently be VNC on 127.0.0.1:5900,
		// instance 0's port.
		a = append(a, "-display", "gtk")
	case DisplayNone:
		a = append(a, "-display", "none")
	default:
		return nil, fmt.Errorf("unknown display %q (want vnc, gui or none)", o.Display)
	}
	if o.Console {
		a = append(a, "-serial", "mon:stdio")
	} else {
		a = append(a, "-serial", fmt.Sprintf("tcp:%s:%d,server=on,wait=off", bind, f.ConsolePort(n)))
	}
	a = append(a, "-device", "usb-mouse", "-device", "usb-kbd",
		"-netdev", fmt.Sprintf("user,id=wan,ipv6=off,net=%s,hostfwd=tcp:%s:%d-:22", f.WANNet(n), bind, f.SSHPort(n)),
		"-device", "usb-net,netdev=wan,mac="+farm.GuestMAC(id, farm.NICWAN))
	p := &Plan{VNCPassword: o.GlobalBind && (o.Display == DisplayVNC || o.Display == "")}
	if o.GlobalBind {
		p.Warnings = append(p.Warnings, exposed(f, n, o))
	}
	for _, t := range []struct {
		netdev, tap string
		nic         int
		on          *bool
	}{{"lan", f.LANTap(n), farm.NICLAN, &p.LAN}, {"wlan", f.WLANTap(n), farm.NICWLAN, &p.WLAN}} {
		if o.NoTAP {
			continue
		}
		if ok, why := tapUsable(t.tap); !ok {
			p.Warnings = append(p.Warnings, fmt.Sprintf("instance %d starts without its %s NIC: %s (create them owned by you: `pifarm run bridge --taps %d`)", id, strings.ToUpper(t.netdev), why, id))
			continue
		}
		*t.on = true
		a = append(a, "-netdev", fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no", t.netdev, t.tap),
			"-device", fmt.Sprintf("usb-net,netdev=%s,mac=%s", t.netdev, farm.GuestMAC(id, t.nic)))
	}
	a = append(a, "-qmp", qmpArg(f, id), "-pidfile", f.Pidfile(id))
	if !o.Console {
		a = append(a, "-daemonize")
	}
	a = append(a, o.Extra...)
	p.Argv = a
	return p, nil
}

// exposed is the warning of a start with global_bind: what listens on all
// addresses, and how it is protected.
func exposed(f *farm.Farm, n *farm.Node, o Options) string {
	var what []string
	if !o.Console {
		what = append(what, fmt.Sprintf("the serial console on TCP port %d with no password at all (whoever connects types into the guest's console: its login prompt, or a shell left logged in)", f.ConsolePort(n)))
	}
	if o.Display == DisplayVNC || o.Display == "" {
		what = append(what, fmt.Sprintf("the screen, keyboard and mouse on VNC port %d (with a fresh password, kept in %s)", f.VNCPort(n), vncPasswordPath(f, n.ID)))
	}
	what = append(what, fmt.Sprintf("the guest's SSH server on port %d", f.SSHPort(n)))
	return fmt.Sprintf("instance %d listens on all addresses (global bind), not only on 127.0.0.1: %s are open to every host that can reach this one; use a firewall, or start without --global-ip-bind and tunnel (ssh -L)", n.ID, strings.Join(what, ", "))
}

// optEscape doubles the commas of a value inside a QEMU option list
// (-drive file=..., -qmp unix:...), as QEMU's option parser wants it.
func optEscape(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// qmpArg is the -qmp value of instance id: a unix socket server in its
// cache folder.
func qmpArg(f *farm.Farm, id int) string {
	return "unix:" + optEscape(f.QMP(id)) + ",server=on,wait=off"
}
