package guest

// Tests of the guest's boot scripts (recipes/guest/*/files), run for real by
// dash and by busybox sh (with busybox's own applets first on PATH, as on
// pifarm's test guest) in a temp root: ROOT prefixes their files, SYSFS points
// at a fake sysfs, PIFARM_BOOT_DRY prints what would change the system, and
// fake ip/hostname commands answer queries and log calls.

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"pifarm/builtins/farm"
)

const treesDir = "../../recipes/guest"

// shells are the interpreters every script must work with.
var shells = []string{"dash", "busybox"}

func needShells(t *testing.T) {
	t.Helper()
	for _, s := range shells {
		if _, err := exec.LookPath(s); err != nil {
			t.Fatalf("%s is needed (apt-get install %s): %v", s, s, err)
		}
	}
}

// bbPath is a folder of busybox applet links (once per test binary).
var bbPath string

func busyboxBin(t *testing.T) string {
	t.Helper()
	if bbPath != "" {
		return bbPath
	}
	dir, err := os.MkdirTemp("", "pifarm-bb-")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("busybox", "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	bb, _ := exec.LookPath("busybox")
	for _, a := range strings.Fields(string(out)) {
		os.Symlink(bb, filepath.Join(dir, a))
	}
	bbPath = dir
	return dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bbPath != "" {
		os.RemoveAll(bbPath)
	}
	os.Exit(code)
}

// scripts lists every sh script of the bundled trees.
func scripts(t *testing.T) []string {
	var out []string
	filepath.WalkDir(treesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		if strings.HasPrefix(string(b), "#!/bin/sh") || strings.HasSuffix(p, ".sh") || filepath.Base(p) == "post-install" {
			out = append(out, p)
		}
		return nil
	})
	if len(out) < 10 {
		t.Fatalf("only %d scripts found under %s", len(out), treesDir)
	}
	return out
}

func TestScriptsParse(t *testing.T) {
	needShells(t)
	for _, p := range scripts(t) {
		for _, argv := range [][]string{{"dash", "-n", p}, {"busybox", "sh", "-n", p}} {
			if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
				t.Errorf("%s: %v\n%s", strings.Join(argv, " "), err, out)
			}
		}
	}
}

func TestBootLibLookups(t *testing.T) {
	needShells(t)
	for _, sh := range shells {
		t.Run(sh, func(t *testing.T) {
			g := newGuestRoot(t)
			g.write("/etc/wifitab", "# alias channel ssid\nentwo 11 entwo\nodd 36 a&b/c\\d@SSID@\n")
			lib := `. "$ROOT/usr/local/lib/pifarm/boot-lib.sh"; `
			for _, tc := range []struct{ expr, want string }{
				{`pf_node_of_wan 100.65.5.15`, "2"},
				{`pf_node_of_wan 100.65.10.15`, "5"},
				{`pf_node_of_wan 100.65.5.1`, ""},
				{`pf_node_of_wan 100.65.5.15X`, ""},
				{`pf_node_info 100.65.5.15`, "2 192.168.66.8 entwo"},
				{`pf_node_info 100.65.10.15`, "5 192.168.66.12 enfive"},
				{`pf_node_info 100.66.1.15`, "300 192.168.66.200 big"},
				{`pf_node_info 100.65.5.16`, ""},
				{`pf_node_info -n 5`, "5 192.168.66.12 enfive"},
				{`pf_node_info -n 7`, ""},
				{`pf_id_of_mac 52:54:50:00:00:05 && echo $PF_ID`, "5"},
				{`pf_id_of_mac 52:54:52:01:00:2c && echo $PF_ID`, "65580"},
				{`pf_id_of_mac 52:54:53:00:00:05 || echo no`, "no"},
				{`pf_lan_of_node 2`, "192.168.66.8"},
				{`pf_lan_of_node 20`, ""},
				{`pf_alias_of_node 5`, "enfive"},
				{`pf_alias_of_node 0`, "loner"},
				{`pf_wifi entwo`, "11 entwo"},
				{`pf_wifi nosuch`, ""},
				{`pf_iftab_name b8:27:eb:00:00:05`, "lan5"},
				{`pf_iftab_name 00:E0:4C:00:00:05`, "wan5"},
				{`pf_iftab_name 00:00:00:00:00:05`, ""},
				{`pf_guest_mac 2 1`, farm.GuestMAC(2, farm.NICLAN)},
				{`pf_guest_mac 300 0`, farm.GuestMAC(300, farm.NICWAN)},
				{`pf_guest_mac 70000 2`, farm.GuestMAC(70000, farm.NICWLAN)},
				{`pf_role_of_mac 52:54:51:00:01:2c`, "lan0"},
				{`pf_role_of_mac b8:27:eb:00:00:05`, ""},
				{`pf_is_qemu && echo yes || echo no`, "no"},
				{`echo $WLAN_ADDR`, "172.19.111.1/24"},
			} {
				out, _ := g.run(sh, lib+tc.expr)
				if got := strings.TrimSpace(out); got != tc.want {
					t.Errorf("%s = %q, want %q", tc.expr, got, tc.want)
				}
			}
			out, _ := g.run(sh, lib+`pf_render_hostapd entwo wlan0`)
			for _, want := range []string{"\ninterface=wlan0\n", "\nssid=entwo\n", "\nchannel=11\n", "\nhw_mode=g\n"} {
				if !strings.Contains(out, want) {
					t.Errorf("hostapd.conf lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "@") {
				t.Errorf("unrendered placeholder:\n%s", out)
			}
			// an SSID with sed/awk metacharacters is taken literally
			out, _ = g.run(sh, lib+`pf_render_hostapd odd wlan0`)
			if !strings.Contains(out, "\nssid=a&b/c\\d@SSID@\n") || !strings.Contains(out, "\nhw_mode=a\n") {
				t.Errorf("odd ssid:\n%s", out)
			}
			out, _ = g.run(sh, lib+`pf_render_hostapd nosuch wlan0 || echo failed`)
			if strings.TrimSpace(out) != "failed" {
				t.Errorf("unknown alias: %q", out)
			}
			g.usbManufacturer("QEMU")
			g.nic("usb1", "52:54:51:00:00:02", 4, true)
			g.nic("usb0", "52:54:50:00:00:02", 3, true)
			g.nic("eth9", "b8:27:eb:00:00:09", 2, false)
			out, _ = g.run(sh, lib+`pf_is_qemu && echo yes; pf_netifs usb | tr '\n' ' '; echo; pf_netifs | tr '\n' ' '`)
			if out != "yes\nusb0 usb1 \neth9 usb0 usb1 " {
				t.Errorf("qemu/netifs: %q", out)
			}
			// a QEMU machine standing in for a board takes the hardware path
			g.write("/proc/cmdline", "rw console=ttyAMA0,115200 root=/dev/mmcblk0p2 pifarm.board=1\n")
			if out, _ = g.run(sh, lib+`pf_is_qemu && echo yes || echo no`); strings.TrimSpace(out) != "no" {
				t.Errorf("pf_is_qemu with pifarm.board=1: %q", out)
			}
			g.write("/proc/cmdline", "rw console=ttyAMA0,115200 pifarm.board=0\n")
			if out, _ = g.run(sh, lib+`pf_is_qemu && echo yes || echo no`); strings.TrimSpace(out) != "yes" {
				t.Errorf("pf_is_qemu with pifarm.board=0: %q", out)
			}
		})
	}
}

func TestNetworkUnderQEMU(t *testing.T) {
	needShells(t)
	for _, sh := range shells {
		t.Run(sh, func(t *testing.T) {
			g := newGuestRoot(t)
			g.usbManufacturer("QEMU")
			// device order is ifindex order, not the kernel's names
			g.nic("usb1", "52:54:50:00:00:02", 3, true)
			g.nic("usb0", "52:54:51:00:00:02", 4, true)
			g.nic("usb2", "52:54:52:00:00:02", 5, true)
			g.fake("udhcpc", "exit 1")
			g.fake("nmcli", "exit 1")
			env := []string{"PIFARM_BOOT_DRY=1", "FAKE_ADDR_usb1=100.65.5.15/24", "FAKE_GW=100.65.5.2"}
			out, _ := g.run(sh, `sh "$ROOT/etc/boot.d/30-network"`, env...)
			for _, want := range []string{
				"+ ip link set dev usb1 down\n+ ip link set dev usb1 name wan0 up\n",
				"+ ip link set dev usb0 name lan0 up\n",
				"+ ip link set dev usb2 name wlan0 up\n",
				"+ ip addr replace 100.65.5.15/24 dev wan0\n+ ip route replace default via 100.65.5.2 dev wan0\n",
				"+ udhcpc -i wan0 -b",
				"+ nmcli device set lan0 managed no\n+ ip addr replace 192.168.66.8/24 dev lan0\n+ ip link set dev lan0 up\n",
				"+ hostname entwo\n+ write /etc/hostname\n",
				"qemu node 2 (entwo), LAN 192.168.66.8 on lan0",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "address") {
				t.Errorf("lan0 has the right MAC, yet:\n%s", out)
			}

			// No pifarm MACs: device order decides, and lan0 gets node 2's MAC.
			g = newGuestRoot(t)
			g.usbManufacturer("QEMU")
			g.nic("usb0", "52:54:00:12:34:56", 3, true)
			g.nic("usb1", "52:54:00:12:34:57", 4, true)
			g.nic("usb2", "52:54:00:12:34:58", 5, true)
			out, _ = g.run(sh, `sh "$ROOT/etc/boot.d/30-network"`, "PIFARM_BOOT_DRY=1", "FAKE_ADDR_usb0=100.65.5.15/24")
			for _, want := range []string{
				"rename usb0 -> wan0", "rename usb1 -> lan0", "rename usb2 -> wlan0",
				"+ ip link set dev lan0 address 52:54:51:00:00:02\n",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}

			// Second boot (or second run): names and host name already right.
			g = newGuestRoot(t)
			g.usbManufacturer("QEMU")
			g.nic("wan0", "52:54:50:00:00:02", 3, true)
			g.nic("lan0", "52:54:51:00:00:02", 4, true)
			g.nic("wlan0", "52:54:52:00:00:02", 5, true)
			g.write("/etc/hostname", "entwo\n")
			out, _ = g.run(sh, `sh "$ROOT/etc/boot.d/30-network"`, "PIFARM_BOOT_DRY=1", "FAKE_ADDR_wan0=100.65.5.15/24", "FAKE_HOSTNAME=entwo")
			for _, bad := range []string{"name", "hostname", "write"} {
				if strings.Contains(out, "+ ip link set dev wan0 "+bad) || strings.Contains(out, "+ "+bad) {
					t.Errorf("second run changes %s:\n%s", bad, out)
				}
			}
			if !strings.Contains(out, "qemu node 2 (entwo)") {
				t.Errorf("second run:\n%s", out)
			}

			// No lease yet (a later boot: no DHCP client ran): pifarm's WAN MAC
			// names the node, the lease comes in the background.
			g = newGuestRoot(t)
			g.usbManufacturer("QEMU")
			g.nic("usb0", "52:54:50:00:00:02", 3, true)
			g.nic("usb1", "52:54:51:00:00:02", 4, true)
			out, _ = g.run(sh, `sh "$ROOT/etc/boot.d/30-network"`, "PIFARM_BOOT_DRY=1")
			if !strings.Contains(out, "+ ip addr replace 192.168.66.8/24 dev lan0\n") || !strings.Contains(out, "qemu node 2 (entwo)") {
				t.Errorf("node from the MAC:\n%s", out)
			}

			// No address at all: rename, start a client, say the node id is unknown.
			g = newGuestRoot(t)
			g.usbManufacturer("QEMU")
			g.nic("usb0", "52:54:50:00:00:07", 3, true)
			out, _ = g.run(sh, `sh "$ROOT/etc/boot.d/30-network"`, "PIFARM_BOOT_DRY=1")
			if !strings.Contains(out, "rename usb0 -> wan0") || !strings.Contains(out, "no address on the WAN side: node id unknown") {
				t.Errorf("no WAN address:\n%s", out)
			}

			// A WAN address the table does not know: say so, rename anyway, no hostname.
			g = newGuestRoot(t)
			g.usbManufacturer("QEMU")
			g.nic("usb0", "52:54:50:00:00:07", 3, true)
			out, _ = g.run(sh, `sh "$ROOT/etc/boot.d/30-network"`, "PIFARM_BOOT_DRY=1", "FAKE_ADDR_usb0=10.0.2.15/24")
			if !strings.Contains(out, `WAN address 10.0.2.15 has no "nN.wan" line in /etc/hosts`) || strings.Contains(out, "+ hostname") {
				t.Errorf("unknown WAN:\n%s", out)
			}
		})
	}
}

func TestNetworkOnHardware(t *testing.T) {
	needShells(t)
	for _, sh := range shells {
		t.Run(sh, func(t *testing.T) {
			g := newGuestRoot(t)
			g.usbManufacturer("Microchip Technology Inc.")
			g.nic("eth0", "b8:27:eb:00:00:05", 2, true)
			g.nic("eth1", "00:e0:4c:00:00:05", 3, true)
			g.nic("wlan0", "b8:27:eb:aa:bb:cc", 4, false)
			out, _ := g.run(sh, `sh "$ROOT/etc/boot.d/30-network"`, "PIFARM_BOOT_DRY=1")
			for _, want := range []string{
				"+ ip link set dev eth0 name lan5 up\n", "+ ip link set dev eth1 name wan5 up\n",
				"+ ip addr replace 192.168.66.12/24 dev lan5\n", "+ hostname enfive\n",
				"hardware node 5 (enfive)",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "wlan0 name") || strings.Contains(out, "udhcpc") || strings.Contains(out, "dhcpcd") {
				t.Errorf("hardware run touched wlan0 or DHCP:\n%s", out)
			}
		})
	}
}

// TestNetworkOnHardwareNamedByCard: a board whose MACs /etc/iftab does not
// know, booted from a card written with pifarm run flash --node 5: the boot
// partition's pifarm-node names the node, its first wired NIC becomes lan5.
func TestNetworkOnHardwareNamedByCard(t *testing.T) {
	needShells(t)
	for _, sh := range shells {
		t.Run(sh, func(t *testing.T) {
			g := newGuestRoot(t)
			g.usbManufacturer("Microchip Technology Inc.")
			g.nic("eth0", "b8:27:eb:12:34:56", 2, true)
			g.nic("wlan0", "b8:27:eb:aa:bb:cc", 3, false)
			g.write("/boot/firmware/pifarm-node", "5\n")
			out, _ := g.run(sh, `sh "$ROOT/etc/boot.d/30-network"`, "PIFARM_BOOT_DRY=1")
			for _, want := range []string{
				"+ ip link set dev eth0 name lan5 up\n", "+ ip addr replace 192.168.66.12/24 dev lan5\n",
				"+ hostname enfive\n", "node 5 named by /boot/firmware/pifarm-node", "hardware node 5 (enfive)",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "wlan0 name") {
				t.Errorf("wlan0 renamed:\n%s", out)
			}
			g.write("/boot/firmware/pifarm-node", "77\n") // not in the node table
			out, _ = g.run(sh, `sh "$ROOT/etc/boot.d/30-network"`, "PIFARM_BOOT_DRY=1")
			if !strings.Contains(out, `names node 77, which has no "nN.lan" line`) || strings.Contains(out, "name lan77") {
				t.Errorf("an unknown node on the card:\n%s", out)
			}
		})
	}
}

func TestWLANAndHostapd(t *testing.T) {
	needShells(t)
	for _, sh := range shells {
		t.Run(sh, func(t *testing.T) {
			g := newGuestRoot(t)
			g.usbManufacturer("QEMU")
			g.nic("wlan0", "52:54:52:00:00:05", 5, true)
			g.write("/etc/hostname", "enfive\n")
			out, calls := g.run(sh, `sh "$ROOT/etc/boot.d/40-wlan"`)
			if !strings.Contains(calls, "ip addr replace 172.19.111.1/24 dev wlan0\n") {
				t.Errorf("calls:\n%s", calls)
			}
			conf := g.read("/etc/hostapd/hostapd.conf")
			for _, want := range []string{"ssid=five&five/5\n", "channel=36\n", "hw_mode=a\n", "interface=wlan0\n"} {
				if !strings.Contains(conf, want) {
					t.Errorf("hostapd.conf lacks %q:\n%s", want, conf)
				}
			}
			if !strings.Contains(out, "hostapd.conf for enfive") {
				t.Errorf("first run: %s", out)
			}
			fi1, _ := os.Stat(filepath.Join(g.root, "etc/hostapd/hostapd.conf"))
			time.Sleep(10 * time.Millisecond)
			out, _ = g.run(sh, `sh "$ROOT/etc/boot.d/40-wlan"`)
			fi2, _ := os.Stat(filepath.Join(g.root, "etc/hostapd/hostapd.conf"))
			if strings.Contains(out, "hostapd.conf for") || !fi1.ModTime().Equal(fi2.ModTime()) {
				t.Errorf("second run rewrote hostapd.conf: %s", out)
			}
			if _, err := os.Stat(filepath.Join(g.root, "etc/hostapd/hostapd.conf~")); err == nil {
				t.Error("a backup appeared although nothing changed")
			}
			g.write("/etc/hostname", "nosuch\n")
			out, _ = g.run(sh, `sh "$ROOT/etc/boot.d/40-wlan"`)
			if !strings.Contains(out, "no /etc/wifitab line for nosuch") {
				t.Errorf("unknown host: %s", out)
			}
		})
	}
}

func TestRCLocalOrderAndTimeout(t *testing.T) {
	needShells(t)
	for _, sh := range shells {
		t.Run(sh, func(t *testing.T) {
			g := newGuestRoot(t)
			os.RemoveAll(filepath.Join(g.root, "etc/boot.d"))
			os.RemoveAll(filepath.Join(g.root, "usr/local/etc/boot.d"))
			g.write("/etc/boot.d/20-b", "echo b\n")
			g.write("/etc/boot.d/10-a", "echo a $ROOT\n")
			g.write("/etc/boot.d/15-hang", "echo hang; sleep 30; echo never\n")
			g.write("/etc/boot.d/30-c~", "echo backup\n")
			g.write("/etc/boot.d/40-d.disabled", "echo disabled\n")
			g.write("/etc/boot.d/README", "echo readme\n")
			g.write("/usr/local/etc/boot.d/05-z", "echo z; exit 3\n")
			start := time.Now()
			out, _ := g.run(sh, `sh "$ROOT/etc/rc.local"; echo "rc=$?"`, "PIFARM_BOOT_LIMIT=1")
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("rc.local took %v with a 1 s limit", d)
			}
			// scripts that take a second or more are timed; the time varies
			if !strings.Contains(out, "rc.local: 15-hang took 1.") && !strings.Contains(out, "rc.local: 15-hang took 2.") {
				t.Errorf("no time for 15-hang (killed after 1 s):\n%s", out)
			}
			var lines []string
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if !strings.Contains(l, " took ") {
					lines = append(lines, l)
				}
			}
			want := []string{"a " + g.root, "hang", "", "b", "z", "", "rc=0"}
			if len(lines) != len(want) {
				t.Fatalf("output:\n%s", out)
			}
			for i, w := range want {
				if w != "" && lines[i] != w {
					t.Errorf("line %d = %q, want %q\n%s", i, lines[i], w, out)
				}
			}
			if !strings.Contains(lines[2], "15-hang exited with status") || !strings.Contains(lines[5], "05-z exited with status 3") {
				t.Errorf("status lines:\n%s", out)
			}
			if log := g.read("/run/pifarm-boot.log"); !strings.Contains(log, "a "+g.root+"\n") {
				t.Errorf("boot log: %q", log)
			}
		})
	}
}

func TestPackagesAndServices(t *testing.T) {
	needShells(t)
	for _, sh := range shells {
		t.Run(sh, func(t *testing.T) {
			g := newGuestRoot(t)
			out, _ := g.run(sh, `sh "$ROOT/etc/boot.d/10-packages"`)
			if out != "" {
				t.Errorf("no list, yet: %q", out)
			}
			g.write("/etc/pifarm/packages", "hostapd\nrfkill\ngit\n")
			out, _ = g.run(sh, `sh "$ROOT/etc/boot.d/10-packages"`)
			if _, err := exec.LookPath("dpkg-query"); sh == "busybox" && !strings.Contains(out, "no dpkg-query on this system") || err != nil && sh == "dash" {
				t.Errorf("without dpkg: %q", out)
			}
			g.fake("dpkg-query", `shift 2; rc=0; for p; do case $p in hostapd) echo "hostapd ii ";; git) echo "git rc ";; *) echo "dpkg-query: no packages found matching $p" >&2; rc=1;; esac; done; exit $rc`)
			out, _ = g.run(sh, `sh "$ROOT/etc/boot.d/10-packages"`)
			if !strings.Contains(out, "missing packages: rfkill git (install them with") {
				t.Errorf("missing: %q", out)
			}

			// services: enabled units are read from the .wants links, not
			// asked of systemctl (slow on an emulated CPU)
			g.fake("systemctl", `echo "systemctl $*" >> "$FAKE_LOG"`)
			g.write("/etc/systemd/system/multi-user.target.wants/hciuart.service", "")
			_, calls := g.run(sh, `sh "$ROOT/etc/boot.d/20-services"`)
			if calls != "systemctl disable --now hciuart\nsystemctl enable --now ssh\n" {
				t.Errorf("calls:\n%s", calls)
			}
			os.Remove(filepath.Join(g.root, "etc/systemd/system/multi-user.target.wants/hciuart.service"))
			g.write("/etc/systemd/system/multi-user.target.wants/ssh.service", "")
			_, calls = g.run(sh, `sh "$ROOT/etc/boot.d/20-services"`)
			if calls != "" {
				t.Errorf("nothing to change, yet:\n%s", calls)
			}
		})
	}
}

func TestLogClean(t *testing.T) {
	needShells(t)
	for _, sh := range shells {
		t.Run(sh, func(t *testing.T) {
			g := newGuestRoot(t)
			old := time.Now().Add(-10 * 24 * time.Hour)
			for _, f := range []string{"/var/log/syslog.2.gz", "/var/log/syslog.1", "/var/log/apt/history.log.3.gz", "/var/log/x.old"} {
				g.write(f, "old\n")
				os.Chtimes(filepath.Join(g.root, f), old, old)
			}
			g.write("/var/log/syslog", "current\n")
			g.write("/var/log/messages.1", "recent\n")
			out, _ := g.run(sh, `sh "$ROOT/usr/local/etc/boot.d/90-logclean"`)
			var left []string
			filepath.WalkDir(filepath.Join(g.root, "var/log"), func(p string, d fs.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					left = append(left, strings.TrimPrefix(p, g.root))
				}
				return nil
			})
			sort.Strings(left)
			if strings.Join(left, " ") != "/var/log/messages.1 /var/log/syslog" {
				t.Errorf("left %v\n%s", left, out)
			}
			if !strings.Contains(out, "logclean: removed /var/log/syslog.2.gz") {
				t.Errorf("output %q", out)
			}
		})
	}
}

// The installer scripts' update-lib rebuilds only when the source changed
// (a local git repository stands in for GitHub).
func TestUpdateLibRebuildsOnlyOnChange(t *testing.T) {
	needShells(t)
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("git is needed: %v", err)
	}
	lib, _ := filepath.Abs(filepath.Join(treesDir, "local/files/usr/local/src/update-lib.sh"))
	up := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", up, "-c", "user.name=t", "-c", "user.email=t@t"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(up, "src.c"), []byte("int main(){return 0;}\n"), 0o644)
	git("add", "src.c")
	git("commit", "-q", "-m", "one")
	for _, sh := range shells {
		t.Run(sh, func(t *testing.T) {
			src := t.TempDir()
			run := func(url string, args ...string) (string, error) {
				script := `. "$LIB"; src_fetch proj "$URL" main; if [ -n "$SRC_BUILD" ]; then echo BUILD; src_built proj; fi`
				argv := append([]string{"-c", script, "proj-update.sh"}, args...)
				if sh == "busybox" {
					argv = append([]string{"sh"}, argv...)
				}
				cmd := exec.Command(sh, argv...)
				cmd.Env = append(os.Environ(), "LIB="+lib, "SRC="+src, "URL="+url)
				out, err := cmd.CombinedOutput()
				return string(out), err
			}
			url := "file://" + up
			for i, want := range []struct {
				args  []string
				build bool
				say   string
			}{
				{nil, true, "building proj at "},
				{nil, false, "proj is up to date at "},
				{[]string{"--force"}, true, "building proj at "},
			} {
				out, err := run(url, want.args...)
				if err != nil || strings.Contains(out, "BUILD") != want.build || !strings.Contains(out, want.say) {
					t.Fatalf("run %d %v: %v\n%s", i+1, want.args, err, out)
				}
			}
			os.WriteFile(filepath.Join(up, "src.c"), []byte("int main(){return 1;}\n"), 0o644)
			git("commit", "-q", "-a", "-m", "two")
			if out, err := run(url); err != nil || !strings.Contains(out, "BUILD") {
				t.Fatalf("after a new commit: %v\n%s", err, out)
			}
			git("reset", "-q", "--hard", "HEAD~1") // leave the repository as the next shell expects
			if out, err := run("file://" + up + "-gone"); err == nil || !strings.Contains(out, "failed") || strings.Contains(out, "BUILD") {
				t.Fatalf("a bad URL: %v\n%s", err, out)
			}
		})
	}
}
