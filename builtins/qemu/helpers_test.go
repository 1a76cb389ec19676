package qemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// Tests use TCP ports 20000-20999 only: ssh 20100+N, console 20200+N, VNC
// 20300+N (display 14400+N).
const testConfig = `
cache = %q
qemu = {"timeout": 10}
ports = {"ssh": 20100, "console": 20200, "vnc": 20300}
nodes = [
    node(id = 0, alias = "loner",   lan = "192.168.66.63", wan = "100.65.63.15"),
    node(id = 1, alias = "enone",   lan = "192.168.66.7",  wan = "100.65.4.15"),
    node(id = 2, alias = "entwo",   lan = "192.168.66.8",  wan = "100.65.5.15"),
    node(id = 3, alias = "enthree", lan = "192.168.66.9",  wan = "100.65.6.15"),
    node(id = 4, alias = "enfour",  lan = "192.168.66.11", wan = "100.65.9.15"),
]
`

// testFarm returns a farm whose cache is a fresh, short temporary folder
// (QMP socket paths must stay under 108 bytes).
func testFarm(t testing.TB) *farm.Farm {
	t.Helper()
	dir, err := os.MkdirTemp("", "pq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return farmAt(t, dir)
}

// farmAt is the test farm with its cache at dir.
func farmAt(t testing.TB, dir string) *farm.Farm {
	t.Helper()
	c, err := farm.Load("test-config.star", []byte(fmt.Sprintf(testConfig, dir)))
	if err != nil {
		t.Fatal(err)
	}
	return farm.New(c)
}

// testInstances returns a live (or dry) Instances writing its trace to out.
func testInstances(t testing.TB, f *farm.Farm, dry bool) (*Instances, *bytes.Buffer) {
	var out bytes.Buffer
	d := trace.New(context.Background(), dry, false, &out)
	return &Instances{D: d, F: f}, &out
}

// minimalDTB is the smallest flattened device tree QEMU's raspi3b loader
// accepts: a root node with #address-cells and #size-cells.
func minimalDTB() []byte {
	be := binary.BigEndian
	var st bytes.Buffer
	w := func(v ...uint32) {
		for _, x := range v {
			binary.Write(&st, be, x)
		}
	}
	strs := []byte("#address-cells\x00#size-cells\x00")
	w(1, 0)        // FDT_BEGIN_NODE "" (padded to 4 bytes)
	w(3, 4, 0, 1)  // FDT_PROP #address-cells = <1>
	w(3, 4, 15, 1) // FDT_PROP #size-cells = <1>
	w(2, 9)        // FDT_END_NODE, FDT_END
	const hdr, rsv = 40, 16
	offStruct := hdr + rsv
	offStrings := offStruct + st.Len()
	total := offStrings + len(strs)
	var b bytes.Buffer
	for _, x := range []uint32{0xd00dfeed, uint32(total), uint32(offStruct), uint32(offStrings), hdr, 17, 16, 0, uint32(len(strs)), uint32(st.Len())} {
		binary.Write(&b, be, x)
	}
	b.Write(make([]byte, rsv))
	b.Write(st.Bytes())
	b.Write(strs)
	return b.Bytes()
}

// provide gives instance id a dummy kernel, a minimal device tree and a
// disk: a 64 MiB sparse raw image for 0, a qcow2 clone of instance 0's made
// by qemu-img for the others. QEMU starts and QMP answers; the guest does
// nothing (tests start it paused).
func provide(t testing.TB, f *farm.Farm, id int) {
	t.Helper()
	if id != 0 {
		if _, err := os.Stat(f.Disk(0)); err != nil {
			provide(t, f, 0)
		}
	}
	if err := os.MkdirAll(f.InstanceDir(id), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Kernel(id), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.DTB(id), minimalDTB(), 0o644); err != nil {
		t.Fatal(err)
	}
	if id == 0 {
		img := filepath.Join(filepath.Dir(f.InstanceDir(0)), "..", "raspios.img")
		fd, err := os.Create(img)
		if err != nil {
			t.Fatal(err)
		}
		fd.Truncate(64 << 20)
		fd.Close()
		abs, _ := filepath.Abs(img)
		if err := os.Symlink(abs, f.Disk(0)); err != nil {
			t.Fatal(err)
		}
		return
	}
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", f.Disk(0), f.Disk(id)).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
}

// qemusOf counts the live processes whose command line names instance id's
// pidfile (a test-side cross-check; pifarm itself never scans processes).
func qemusOf(f *farm.Farm, id int) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		args, alive := procArgs(pid)
		if alive && strings.Contains(strings.Join(args, " "), "-pidfile "+f.Pidfile(id)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// stopAll quits every instance a test left running.
func stopAll(t testing.TB, in *Instances) {
	for _, n := range in.F.Nodes() {
		if _, err := in.Quit(n, 10e9); err != nil {
			t.Logf("cleanup quit %d: %v", n.ID, err)
		}
	}
}

func syscallMkfifo(path string) error { return unix.Mkfifo(path, 0o600) }
