package guest

// The temp guest root the boot-script tests run the scripts in.

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"pifarm/builtins/farm"
)

// guestRoot is a temp root holding the base and local trees' files and the
// node tables of cfg.
type guestRoot struct {
	t           *testing.T
	root, sysfs string
	bin         string // fake commands
	log         string // fake command log
}

const testConfig = `
cache = "/tmp/pifarm-guest-test"
ports = {"ssh": 5700, "console": 6100, "vnc": 6500}  # apart enough for node 300
nodes = [
    node(id = 0, alias = "loner", lan = "192.168.66.63", wan = "100.65.63.15", wifi_channel = 1, ssid = "loner"),
    node(id = 2, alias = "entwo", lan = "192.168.66.8", wan = "100.65.5.15", wifi_channel = 11, ssid = "entwo"),
    node(id = 5, alias = "enfive", lan = "192.168.66.12", wan = "100.65.10.15",
         lan_mac = "B8:27:EB:00:00:05", wan_mac = "00:e0:4c:00:00:05", wifi_channel = 36, ssid = "five&five/5"),
    node(id = 300, alias = "big", lan = "192.168.66.200", wan = "100.66.1.15"),
]
`

func newGuestRoot(t *testing.T) *guestRoot {
	t.Helper()
	g := &guestRoot{t: t, root: t.TempDir(), sysfs: t.TempDir(), bin: t.TempDir()}
	g.log = filepath.Join(g.bin, "calls.log")
	for _, tree := range []string{"base", "local"} {
		src := filepath.Join(treesDir, tree, "files")
		filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, _ := os.ReadFile(p)
			g.write(strings.TrimPrefix(p, src), string(b))
			return nil
		})
	}
	cfg, err := farm.Load("config.star", []byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	f := farm.New(cfg)
	g.write("/etc/hosts", f.Hosts())
	g.write("/etc/iftab", f.IfTab())
	g.write("/etc/wifitab", f.WifiTab())
	g.write("/etc/hostname", "raspberrypi\n")
	os.MkdirAll(filepath.Join(g.root, "run"), 0o755)
	g.fake("ip", `echo "ip $*" >> "$FAKE_LOG"
case "$*" in
"-4 -o addr show dev "*)
	dev=${*##* }
	eval "a=\${FAKE_ADDR_$dev:-}"
	[ -n "$a" ] && echo "3: $dev    inet $a brd 100.65.5.255 scope global $dev\       valid_lft forever preferred_lft forever" ;;
"-4 route show default")
	[ -n "$FAKE_GW" ] && echo "default via $FAKE_GW dev usb0" ;;
esac
exit 0`)
	g.fake("hostname", `[ $# -eq 0 ] && { echo "${FAKE_HOSTNAME:-raspberrypi}"; exit 0; }; echo "hostname $*" >> "$FAKE_LOG"`)
	return g
}

func (g *guestRoot) write(rel, data string) {
	p := filepath.Join(g.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		g.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o755); err != nil {
		g.t.Fatal(err)
	}
}

func (g *guestRoot) read(rel string) string {
	b, _ := os.ReadFile(filepath.Join(g.root, rel))
	return string(b)
}

func (g *guestRoot) fake(name, body string) {
	if err := os.WriteFile(filepath.Join(g.bin, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		g.t.Fatal(err)
	}
}

// nic adds a network interface to the fake sysfs; usb puts its device under
// a USB host controller.
func (g *guestRoot) nic(name, mac string, ifindex int, usb bool) {
	dev := filepath.Join(g.sysfs, "devices/platform/soc/3f300000.mmc/eth", name)
	if usb {
		dev = filepath.Join(g.sysfs, fmt.Sprintf("devices/platform/soc/3f980000.usb/usb1/1-1/1-1.%d/1-1.%d:1.0", ifindex, ifindex))
	}
	n := filepath.Join(g.sysfs, "class/net", name)
	os.MkdirAll(dev, 0o755)
	if usb {
		os.WriteFile(filepath.Join(dev, "../idVendor"), []byte("0525\n"), 0o644)
	}
	os.MkdirAll(n, 0o755)
	os.WriteFile(filepath.Join(n, "address"), []byte(mac+"\n"), 0o644)
	os.WriteFile(filepath.Join(n, "ifindex"), []byte(fmt.Sprintf("%d\n", ifindex)), 0o644)
	if err := os.Symlink(dev, filepath.Join(n, "device")); err != nil {
		g.t.Fatal(err)
	}
}

func (g *guestRoot) usbManufacturer(m string) {
	d := filepath.Join(g.sysfs, "bus/usb/devices/1-1")
	os.MkdirAll(d, 0o755)
	os.WriteFile(filepath.Join(d, "manufacturer"), []byte(m+"\n"), 0o644)
}

// run runs a shell command line in the root with shell sh ("dash" or
// "busybox"), env added; it returns the output and the fake command log.
func (g *guestRoot) run(sh, script string, env ...string) (string, string) {
	g.t.Helper()
	os.Remove(g.log)
	argv := []string{"dash", "-c", script}
	path := g.bin + ":/usr/sbin:/usr/bin:/sbin:/bin"
	if sh == "busybox" {
		argv = []string{"busybox", "sh", "-c", script}
		path = g.bin + ":" + busyboxBin(g.t)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append([]string{"PATH=" + path, "ROOT=" + g.root, "SYSFS=" + g.sysfs, "FAKE_LOG=" + g.log, "LC_ALL=C"}, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		g.t.Fatalf("%s -c %q: %v\n%s", sh, script, err, out)
	}
	calls, _ := os.ReadFile(g.log)
	return string(out), string(calls)
}
