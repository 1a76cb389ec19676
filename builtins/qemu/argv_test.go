package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

func TestCommandLine(t *testing.T) {
	f := testFarm(t)
	c := f.Config.CacheDir() + "/clones"
	n2, _ := f.Resolve("entwo")
	n0, _ := f.Resolve("0")
	tail := func(id int) string {
		return fmt.Sprintf("-qmp unix:%s/raspi-clone-%d/qmp.sock,server=on,wait=off -pidfile %s/raspi-clone-%d/qemu.pid", c, id, c, id)
	}
	head := func(alias string, id int, format string) string {
		return fmt.Sprintf("qemu-system-aarch64 -name %s -M raspi3b -m 1G -smp 4 -accel tcg,thread=single "+
			"-kernel %s/raspi-clone-%d/clone-%d.ker -dtb %s/raspi-clone-%d/clone-%d.dtb "+
			"-append 'rw earlyprintk loglevel=8 console=ttyAMA0,115200 dwc_otg.lpm_enable=0 root=/dev/mmcblk0p2 rootdelay=1' "+
			"-drive media=disk,if=sd,format=%s,file=%s/raspi-clone-%d/clone-%d.%s",
			alias, c, id, id, c, id, id, format, c, id, id, map[string]string{"raw": "raw", "qcow2": "qcow2"}[format])
	}
	usb := "-device usb-mouse -device usb-kbd"
	// What a global bind exposes is named in a warning.
	exposes := func(id int, what ...string) []string {
		return append([]string{fmt.Sprintf("instance %d listens on all addresses (global bind), not only on 127.0.0.1: ", id)}, what...)
	}
	console := func(id int) string {
		return fmt.Sprintf("the serial console on TCP port %d with no password at all", 20200+id)
	}
	vncPw := func(id int) string {
		return fmt.Sprintf("VNC port %d (with a fresh password, kept in %s/raspi-clone-%d/vnc-password)", 20300+id, c, id)
	}
	sshd := func(id int) string { return fmt.Sprintf("the guest's SSH server on port %d", 20100+id) }
	for _, tc := range []struct {
		name     string
		n        *farm.Node
		o        Options
		want     string
		warning  []string // substrings of the one warning, nil for none
		password bool
	}{
		{"clone in the background", n2, Options{NoTAP: true},
			head("entwo", 2, "qcow2") + " -display none -vnc 127.0.0.1:14402 -serial tcp:127.0.0.1:20202,server=on,wait=off " + usb +
				" -netdev user,id=wan,ipv6=off,net=100.65.5.0/24,hostfwd=tcp:127.0.0.1:20102-:22 -device usb-net,netdev=wan,mac=52:54:50:00:00:02 " +
				tail(2) + " -daemonize", nil, false},
		{"primary, global bind, gui", n0, Options{NoTAP: true, GlobalBind: true, Display: DisplayGUI},
			head("loner", 0, "raw") + " -display gtk -serial tcp:0.0.0.0:20200,server=on,wait=off " + usb +
				" -netdev user,id=wan,ipv6=off,net=100.65.63.0/24,hostfwd=tcp:0.0.0.0:20100-:22 -device usb-net,netdev=wan,mac=52:54:50:00:00:00 " +
				tail(0) + " -daemonize", exposes(0, console(0), sshd(0)), false},
		{"clone, global bind, VNC with a password", n2, Options{NoTAP: true, GlobalBind: true},
			head("entwo", 2, "qcow2") + " -display none -vnc 0.0.0.0:14402,password=on -serial tcp:0.0.0.0:20202,server=on,wait=off " + usb +
				" -netdev user,id=wan,ipv6=off,net=100.65.5.0/24,hostfwd=tcp:0.0.0.0:20102-:22 -device usb-net,netdev=wan,mac=52:54:50:00:00:02 " +
				tail(2) + " -daemonize", exposes(2, console(2), vncPw(2), sshd(2)), true},
		{"global bind, console on this terminal, no screen", n2, Options{NoTAP: true, GlobalBind: true, Console: true, Display: DisplayNone},
			head("entwo", 2, "qcow2") + " -display none -serial mon:stdio " + usb +
				" -netdev user,id=wan,ipv6=off,net=100.65.5.0/24,hostfwd=tcp:0.0.0.0:20102-:22 -device usb-net,netdev=wan,mac=52:54:50:00:00:02 " +
				tail(2), exposes(2, sshd(2)), false},
		{"console in the foreground, no screen, paused", n2, Options{NoTAP: true, Console: true, Display: DisplayNone, Paused: true},
			head("entwo", 2, "qcow2") + " -S -display none -serial mon:stdio " + usb +
				" -netdev user,id=wan,ipv6=off,net=100.65.5.0/24,hostfwd=tcp:127.0.0.1:20102-:22 -device usb-net,netdev=wan,mac=52:54:50:00:00:02 " +
				tail(2), nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Command(f, tc.n, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if got := trace.Join(p.Argv); got != tc.want {
				t.Errorf("command line\n got %s\nwant %s", got, tc.want)
			}
			if p.LAN || p.WLAN {
				t.Errorf("taps=False still planned TAPs: %+v", p)
			}
			if p.VNCPassword != tc.password {
				t.Errorf("VNC password %v, want %v", p.VNCPassword, tc.password)
			}
			if tc.warning == nil {
				if len(p.Warnings) != 0 {
					t.Errorf("warnings %q", p.Warnings)
				}
				return
			}
			if len(p.Warnings) != 1 {
				t.Fatalf("warnings %q, want one", p.Warnings)
			}
			for _, w := range tc.warning {
				if !strings.Contains(p.Warnings[0], w) {
					t.Errorf("warning %q lacks %q", p.Warnings[0], w)
				}
			}
			for _, w := range []string{"console", "VNC"} {
				if !slices.ContainsFunc(tc.warning, func(s string) bool { return strings.Contains(s, w) }) && strings.Contains(p.Warnings[0], w) {
					t.Errorf("warning %q names %s, which is not exposed", p.Warnings[0], w)
				}
			}
		})
	}
}

func TestMissingTAPsAreLeftOutWithAWarning(t *testing.T) {
	f := testFarm(t)
	n, _ := f.Resolve("3")
	f.Config.Net.LANTap, f.Config.Net.WLANTap = "pfxnone", "pfynone"
	p, err := Command(f, n, Options{})
	if err != nil {
		t.Fatal(err)
	}
	line := trace.Join(p.Argv)
	if p.LAN || p.WLAN || strings.Contains(line, "tap") || len(p.Warnings) != 2 {
		t.Fatalf("missing TAPs not left out: %s %+v", line, p)
	}
	if !strings.Contains(p.Warnings[0], "pfxnone3 does not exist") || !strings.Contains(p.Warnings[1], "WLAN") {
		t.Errorf("warnings %q", p.Warnings)
	}
	// An existing device that is no TAP (loopback) is not usable either.
	f.Config.Net.LANTap = "l"
	n0, _ := f.Resolve("0")
	f.Config.Nodes[0].ID = 0
	if ok, why := tapUsable("lo"); ok || !strings.Contains(why, "not a TAP") {
		t.Errorf("lo usable=%v %s", ok, why)
	}
	_ = n0
}

func TestTAPsOwnedByUserAreUsed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating a TAP device needs root (CI runs as root)")
	}
	// A private network namespace keeps the host's links untouched; a
	// private mount namespace lets it see its own /sys/class/net.
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare missing")
	}
	if os.Getenv("PIFARM_QEMU_NETNS") == "" {
		cmd := exec.Command("unshare", "-n", "-m", os.Args[0], "-test.run=^TestTAPsOwnedByUserAreUsed$", "-test.count=1")
		cmd.Env = append(os.Environ(), "PIFARM_QEMU_NETNS=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "PASS") {
			t.Fatalf("in a network namespace: %v\n%s", err, out)
		}
		return
	}
	if out, err := exec.Command("mount", "-t", "sysfs", "sysfs", "/sys").CombinedOutput(); err != nil {
		t.Fatalf("mount sysfs: %v %s", err, out)
	}
	for _, tap := range []string{"q0tap4", "q1tap4"} {
		if out, err := exec.Command("ip", "tuntap", "add", "dev", tap, "mode", "tap", "user", "0").CombinedOutput(); err != nil {
			t.Skipf("ip tuntap: %v %s", err, out)
		}
	}
	f := testFarm(t)
	n, _ := f.Resolve("4")
	p, err := Command(f, n, Options{})
	if err != nil {
		t.Fatal(err)
	}
	line := trace.Join(p.Argv)
	want := "-netdev tap,id=lan,ifname=q0tap4,script=no,downscript=no -device usb-net,netdev=lan,mac=52:54:51:00:00:04 " +
		"-netdev tap,id=wlan,ifname=q1tap4,script=no,downscript=no -device usb-net,netdev=wlan,mac=52:54:52:00:00:04"
	if !p.LAN || !p.WLAN || !strings.Contains(line, want) || len(p.Warnings) != 0 {
		t.Fatalf("TAPs not used: %s %+v", line, p)
	}
	// And QEMU really opens them.
	provide(t, f, 4)
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	st, err := in.Start(n, Options{Paused: true, Display: DisplayNone})
	if err != nil || !st.Running || !st.LAN || !st.WLAN {
		t.Fatalf("start with TAPs: %+v %v", st, err)
	}
}
