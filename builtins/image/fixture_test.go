package image

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"pifarm/builtins/disk/disktest"
	"pifarm/builtins/farm"
	"pifarm/builtins/startest"
)

// fixture is a RaspiOS-like image made by the real tools: sfdisk,
// mkfs.vfat -F 32, mcopy, mkfs.ext4.
type fixture struct {
	path              string
	bootStart, bootN  uint64 // sectors
	rootStart, rootN  uint64
	kernel, dtb       []byte
	diskID            uint32
	extraName, extra  string // a long-named file in a sub folder
	extraPath         string
	longRoot, longTxt string
}

type fixtureOpts struct {
	size          int64  // file size in bytes
	bootMiB       uint64 // partition 1 size
	rootMiB       uint64 // partition 2 size (0: to the end)
	ext4MiB       uint64 // ext4 size (0: the whole partition)
	kernelBytes   int
	clusterSectrs int // mkfs.vfat -s (0: its default)
	otherKernels  int // how many further 10 MB kernels/initramfs files (a real boot partition's fill)
}

// run runs a fixture-making or checking tool (see disktest.Run).
var run = disktest.Run

// randBytes is reproducible random content (see disktest.RandBytes).
var randBytes = disktest.RandBytes

func makeFixture(t testing.TB, dir string, o fixtureOpts) *fixture {
	t.Helper()
	if o.kernelBytes == 0 {
		o.kernelBytes = 300_000
	}
	fx := &fixture{path: filepath.Join(dir, "raspios.img"), diskID: 0x5a17c0de,
		bootStart: 8192, bootN: o.bootMiB * 2048}
	fx.rootStart = fx.bootStart + fx.bootN
	if o.rootMiB > 0 {
		fx.rootN = o.rootMiB * 2048
	} else {
		fx.rootN = uint64(o.size/512) - fx.rootStart
	}
	run(t, "", "truncate", "-s", fmt.Sprint(o.size), fx.path)
	script := fmt.Sprintf("label: dos\nlabel-id: 0x%08x\nunit: sectors\n\nstart=%d, size=%d, type=c\nstart=%d, size=%d, type=83\n",
		fx.diskID, fx.bootStart, fx.bootN, fx.rootStart, fx.rootN)
	run(t, script, "sfdisk", "-q", fx.path)
	args := []string{"-F", "32", "-n", "BOOTFS", "--offset", fmt.Sprint(fx.bootStart)}
	if o.clusterSectrs > 0 {
		args = append(args, "-s", fmt.Sprint(o.clusterSectrs))
	}
	args = append(args, fx.path, fmt.Sprint(fx.bootN/2))
	run(t, "", "mkfs.vfat", args...)
	ext4 := o.ext4MiB
	if ext4 == 0 {
		ext4 = fx.rootN / 2048
	}
	run(t, "", "mkfs.ext4", "-q", "-F", "-L", "rootfs", "-E", fmt.Sprintf("offset=%d", fx.rootStart*512), fx.path, fmt.Sprintf("%dM", ext4))
	fx.kernel = randBytes(1, o.kernelBytes)
	fx.dtb = randBytes(2, 31_337)
	src := t.TempDir()
	files := map[string][]byte{
		"kernel8.img":                       fx.kernel,
		"bcm2710-rpi-3-b-plus.dtb":          fx.dtb,
		"bcm2710-rpi-3-b.dtb":               randBytes(3, 30_000),
		"cmdline.txt":                       []byte("console=serial0,115200 root=PARTUUID=5a17c0de-02 rootfstype=ext4\n"),
		"config.txt":                        []byte("arm_64bit=1\n"),
		"A Long File Name With Spaces.text": randBytes(4, 5000),
	}
	for i, n := range []string{"kernel.img", "kernel7.img", "kernel7l.img", "kernel_2712.img", "initramfs8", "initramfs7", "initramfs7l", "initramfs_2712"} {
		if i < o.otherKernels {
			files[n] = randBytes(int64(10+i), 10_000_000)
		}
	}
	fx.longRoot = "A Long File Name With Spaces.text"
	fx.longTxt = string(files[fx.longRoot])
	var names []string
	for n, b := range files {
		p := filepath.Join(src, n)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, p)
	}
	img := fmt.Sprintf("%s@@%d", fx.path, fx.bootStart*512)
	run(t, "", "mcopy", append([]string{"-i", img}, append(names, "::")...)...)
	run(t, "", "mmd", "-i", img, "::overlays")
	fx.extraName, fx.extra = "overlays/disable-bt-overlay.dtbo", string(randBytes(5, 7777))
	p := filepath.Join(src, "disable-bt-overlay.dtbo")
	os.WriteFile(p, []byte(fx.extra), 0o644)
	run(t, "", "mcopy", "-i", img, p, "::overlays/")
	fx.extraPath = p
	return fx
}

// testFarm is a farm whose cache lives in dir.
func testFarm(t testing.TB, dir string) *farm.Farm {
	t.Helper()
	src := fmt.Sprintf(`cache = %q
image_sizes_gib = [4, 8, 16]
margin_percent = 6
nodes = [
    node(id = 0, alias = "loner", lan = "192.168.66.63", wan = "100.65.63.15"),
    node(id = 1, alias = "enone", lan = "192.168.66.7", wan = "100.65.4.15"),
    node(id = 2, alias = "entwo", lan = "192.168.66.8", wan = "100.65.5.15"),
]
tools = {"guestmount": False}
`, filepath.Join(dir, "cache"))
	c, err := farm.Load(filepath.Join(dir, "config.star"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return farm.New(c)
}

// testMod returns a module state with a live (or dry) door acting as root
// (no sudo in the trace) and the farm of testFarm; the fixture's Output is
// its trace.
func testMod(t testing.TB, dir string, dry bool) (*mod, *startest.Fixture) {
	fx := startest.New(t, startest.Options{Dry: dry, Root: true, Farm: testFarm(t, dir)})
	return &mod{d: fx.Door, f: fx.Farm}, fx
}

var fixedTime = time.Date(2024, 3, 15, 12, 30, 44, 0, time.UTC)

// age sets a file's times d into the past, as if it had been written then
// (a record made right after a write is "racy" and is re-hashed).
func age(t testing.TB, p string, d time.Duration) {
	t.Helper()
	past := time.Now().Add(-d)
	if err := os.Chtimes(p, past, past); err != nil {
		t.Fatal(err)
	}
}
