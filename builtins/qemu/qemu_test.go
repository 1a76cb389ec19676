package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	starlarkjson "go.starlark.net/lib/json"
	"go.starlark.net/starlark"
	"go.starlark.net/starlarktest"
	"go.starlark.net/syntax"
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

func TestStartStatusQuit(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 1)
	in, out := testInstances(t, f, false)
	defer stopAll(t, in)
	n, _ := f.Resolve("enone")
	if st := in.Status(n); st.Running || st.PID != 0 || st.Stale != "" {
		t.Fatalf("before start: %+v", st)
	}
	st, err := in.Start(n, Options{Paused: true})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Running || st.Already || st.State != "prelaunch" || st.PID == 0 {
		t.Fatalf("after start: %+v", st)
	}
	if ok, why := in.Ours(st.PID, 1); !ok {
		t.Fatalf("started QEMU not recognised: %s", why)
	}
	if ok, _ := in.Ours(st.PID, 2); ok {
		t.Fatal("instance 1's QEMU taken for instance 2's")
	}
	if pids := qemusOf(f, 1); len(pids) != 1 || pids[0] != st.PID {
		t.Fatalf("QEMU processes %v, status pid %d", pids, st.PID)
	}
	if !strings.Contains(st.Line, "-drive media=disk,if=sd,format=qcow2,file="+f.Disk(1)) {
		t.Errorf("line %s", st.Line)
	}
	// The display and console ports are there.
	for _, port := range []int{20201, 20301} {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err != nil {
			t.Errorf("port %d: %v", port, err)
			continue
		}
		c.Close()
	}
	st2 := in.Status(n)
	if !st2.Running || st2.PID != st.PID || st2.State != "prelaunch" {
		t.Fatalf("status: %+v", st2)
	}
	again, err := in.Start(n, Options{Paused: true})
	if err != nil || !again.Already || again.PID != st.PID {
		t.Fatalf("second start: %+v %v", again, err)
	}
	if r, err := in.QMPCommand(n, "cont", nil); err != nil || r != "{}" {
		t.Fatalf("qmp cont: %q %v", r, err)
	}
	if st3 := in.Status(n); st3.State != "running" {
		t.Fatalf("after cont: %+v", st3)
	}
	was, err := in.Quit(n, 10*time.Second)
	if err != nil || !was {
		t.Fatalf("quit: %v %v", was, err)
	}
	if _, alive := procArgs(st.PID); alive {
		t.Fatal("QEMU still alive after quit returned")
	}
	if _, err := os.Stat(f.Pidfile(1)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pidfile left: %v", err)
	}
	if st := in.Status(n); st.Running || st.PID != 0 {
		t.Fatalf("after quit: %+v", st)
	}
	if was, err := in.Quit(n, time.Second); was || err != nil {
		t.Fatalf("quit of a stopped instance: %v %v", was, err)
	}
	if w := strings.Split(strings.TrimSpace(out.String()), "\n"); len(w) != 2 || !strings.HasPrefix(w[0], "# warning: instance 1 starts without its LAN NIC: TAP device q0tap1 does not exist") {
		t.Errorf("live, non-verbose run printed %q; want the two TAP warnings of the first start", out.String())
	}
}

func TestStartFailsWithQEMUsMessage(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 2)
	os.WriteFile(f.DTB(2), []byte("not a device tree"), 0o644)
	in, _ := testInstances(t, f, false)
	n, _ := f.Resolve("2")
	_, err := in.Start(n, Options{Paused: true})
	if err == nil || !strings.Contains(err.Error(), "instance 2") || !strings.Contains(err.Error(), "dtb") {
		t.Fatalf("error %v", err)
	}
	os.Remove(f.Kernel(2))
	_, err = in.Start(n, Options{Paused: true})
	if err == nil || !strings.Contains(err.Error(), "kernel "+f.Kernel(2)+" is missing") {
		t.Fatalf("missing kernel: %v", err)
	}
}

func TestDryRunStartsNothing(t *testing.T) {
	f := testFarm(t)
	in, out := testInstances(t, f, true)
	n, _ := f.Resolve("2")
	st, err := in.Start(n, Options{NoTAP: true})
	if err != nil || !st.Running {
		t.Fatalf("%+v %v", st, err)
	}
	line := strings.TrimSpace(out.String())
	if !strings.HasPrefix(line, "qemu-system-aarch64 -name entwo -M raspi3b") || !strings.HasSuffix(line, " -daemonize") || strings.Contains(line, "\n") {
		t.Fatalf("trace %q", out.String())
	}
	if _, err := os.Stat(f.InstanceDir(2)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("dry run created the instance folder")
	}
	if len(qemusOf(f, 2)) != 0 {
		t.Fatal("dry run started QEMU")
	}
}

func TestStalePidfiles(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 3)
	n, _ := f.Resolve("3")
	dead := exec.Command("true")
	dead.Run()
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	for _, tc := range []struct {
		name, content, why string
	}{
		{"process gone", strconv.Itoa(dead.Process.Pid) + "\n", "is gone"},
		{"garbage", "hello\n", "not a process id"},
		{"pid reused by another program", strconv.Itoa(sleeper.Process.Pid) + "\n", "not QEMU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.WriteFile(f.Pidfile(3), []byte(tc.content), 0o644)
			os.WriteFile(f.QMP(3), nil, 0o644)
			// Dry, the stale files are reported and left alone.
			dry, out := testInstances(t, f, true)
			st := dry.Status(n)
			if st.Running || !strings.Contains(st.Stale, tc.why) {
				t.Fatalf("dry status %+v", st)
			}
			if _, err := os.Stat(f.Pidfile(3)); err != nil || !strings.Contains(out.String(), "rm -f "+f.Pidfile(3)+" "+f.QMP(3)) {
				t.Fatalf("dry run: %v %q", err, out.String())
			}
			in, _ := testInstances(t, f, false)
			st = in.Status(n)
			if st.Running || !strings.Contains(st.Stale, tc.why) {
				t.Fatalf("status %+v", st)
			}
			for _, p := range []string{f.Pidfile(3), f.QMP(3)} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("stale %s not removed", p)
				}
			}
		})
	}
	// A stale pidfile does not stop a start.
	os.WriteFile(f.Pidfile(3), []byte(strconv.Itoa(dead.Process.Pid)), 0o644)
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	st, err := in.Start(n, Options{Paused: true, NoTAP: true})
	if err != nil || !st.Running || st.Already {
		t.Fatalf("start over a stale pidfile: %+v %v", st, err)
	}
}

func TestQuitRefusesForeignPid(t *testing.T) {
	f := testFarm(t)
	n, _ := f.Resolve("2")
	os.MkdirAll(f.InstanceDir(2), 0o755)
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	os.WriteFile(f.Pidfile(2), []byte(strconv.Itoa(sleeper.Process.Pid)+"\n"), 0o644)
	in, out := testInstances(t, f, false)
	in.D.Verbose = true
	was, err := in.Quit(n, time.Second)
	if err == nil || was || !strings.Contains(err.Error(), "refusing to terminate pid "+strconv.Itoa(sleeper.Process.Pid)) || !strings.Contains(err.Error(), "sleep") {
		t.Fatalf("quit of a foreign pid: %v %v", was, err)
	}
	if _, alive := procArgs(sleeper.Process.Pid); !alive {
		t.Fatal("the foreign process was hit")
	}
	if strings.Contains(out.String(), "kill") || strings.Contains(out.String(), "quit") {
		t.Fatalf("trace shows an action: %q", out.String())
	}
	// Another instance's QEMU is refused as well.
	provide(t, f, 1)
	n1, _ := f.Resolve("1")
	defer stopAll(t, in)
	st, err := in.Start(n1, Options{Paused: true, NoTAP: true})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(f.Pidfile(2), []byte(strconv.Itoa(st.PID)), 0o644)
	if _, err := in.Quit(n, time.Second); err == nil || !strings.Contains(err.Error(), "not the one of instance 2") {
		t.Fatalf("quit of instance 1's QEMU as 2's: %v", err)
	}
	if s := in.Status(n1); !s.Running {
		t.Fatal("instance 1 was stopped")
	}
}

func TestConcurrentStartsGiveOneQEMU(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 3)
	n, _ := f.Resolve("3")
	const k = 4
	var wg sync.WaitGroup
	res := make([]Status, k)
	errs := make([]error, k)
	for i := 0; i < k; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in, _ := testInstances(t, f, false)
			res[i], errs[i] = in.Start(n, Options{Paused: true, NoTAP: true})
		}()
	}
	wg.Wait()
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	started := 0
	for i := range res {
		if errs[i] != nil {
			t.Fatalf("start %d: %v", i, errs[i])
		}
		if !res[i].Already {
			started++
		}
		if res[i].PID != res[0].PID || res[i].PID == 0 {
			t.Errorf("start %d reports pid %d, start 0 pid %d", i, res[i].PID, res[0].PID)
		}
	}
	if started != 1 {
		t.Errorf("%d starts claim to have started QEMU", started)
	}
	if pids := qemusOf(f, 3); len(pids) != 1 {
		t.Fatalf("%d QEMUs run for instance 3: %v", len(pids), pids)
	}
}

// TestStartWaitsForALockHeldLongerThanQMPTimeout: the instance lock held
// by another pifarm (the image module cloning a large image holds every
// instance's lock for as long as qemu-img takes) is waited for beyond the
// QMP timeout, and the start then succeeds.
func TestStartWaitsForALockHeldLongerThanQMPTimeout(t *testing.T) {
	f := testFarm(t)
	f.Config.QEMU.Timeout = 3 // QMP answers well within it, also on a busy CI machine
	provide(t, f, 4)
	n, _ := f.Resolve("4")
	holder := exec.Command("flock", f.Lock(4), "sleep", "4")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Wait()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		l, err := farm.TryLock(f.Lock(4))
		if err != nil {
			t.Fatal(err)
		}
		if l == nil {
			break
		}
		l.Close()
		if time.Now().After(deadline) {
			t.Fatal("flock never took the lock")
		}
	}
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	st, err := in.Start(n, Options{Paused: true, NoTAP: true})
	if err != nil || !st.Running {
		t.Fatalf("start while another pifarm held the lock for longer than the QMP timeout: %+v %v", st, err)
	}
}

func TestRunningAndRemoveFiles(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 1)
	provide(t, f, 2)
	in, out := testInstances(t, f, false)
	defer stopAll(t, in)
	n1, _ := f.Resolve("1")
	n2, _ := f.Resolve("2")
	st, err := in.Start(n2, Options{Paused: true, NoTAP: true})
	if err != nil {
		t.Fatal(err)
	}
	var running []int
	for _, s := range in.All() {
		if s.Running {
			running = append(running, s.ID)
		}
	}
	if len(running) != 1 || running[0] != 2 {
		t.Fatalf("running %v", running)
	}
	if _, err := in.RemoveFiles(n2); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("while QEMU runs (pid %d)", st.PID)) {
		t.Fatalf("remove while running: %v", err)
	}
	n0, _ := f.Resolve("0")
	if _, err := in.RemoveFiles(n0); err == nil || !strings.Contains(err.Error(), "primary") {
		t.Fatalf("remove 0: %v", err)
	}
	os.WriteFile(f.Disk(1)+"~", []byte("old"), 0o644)
	dry, dout := testInstances(t, f, true)
	if _, err := dry.RemoveFiles(n1); err != nil || dout.String() != "rm -rf "+f.InstanceDir(1)+"\n" {
		t.Fatalf("dry remove: %v %q", err, dout.String())
	}
	if _, err := os.Stat(f.Disk(1)); err != nil {
		t.Fatal("dry run removed the clone")
	}
	if ids, err := in.RemoveFiles(n1); err != nil || len(ids) != 1 {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.InstanceDir(1)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("clone folder still there")
	}
	if _, err := os.Stat(f.Disk(0)); err != nil {
		t.Fatal("instance 0's disk went with the clone")
	}
	_ = out
}

func TestQMPClient(t *testing.T) {
	dir, _ := os.MkdirTemp("", "pqmp")
	defer os.RemoveAll(dir)
	sock := dir + "/q.sock"
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	big := strings.Repeat("x", 200<<10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": []}}`+"\r\n")
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					var req struct {
						Execute string
						ID      json.RawMessage
					}
					json.Unmarshal([]byte(line), &req)
					// Events before every reply must be skipped.
					fmt.Fprintf(c, `{"event": "RTC_CHANGE", "data": {"offset": 1}}`+"\r\n")
					switch req.Execute {
					case "qmp_capabilities":
						fmt.Fprintf(c, `{"return": {}, "id": %s}`+"\r\n", req.ID)
					case "big":
						fmt.Fprintf(c, `{"return": {"s": %q}, "id": %s}`+"\r\n", big, req.ID)
					case "hang":
					default:
						fmt.Fprintf(c, `{"error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}, "id": %s}`+"\r\n", req.Execute, req.ID)
					}
				}
			}()
		}
	}()
	ctx := context.Background()
	q, err := DialQMP(ctx, sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.Version != "7.2.22" {
		t.Errorf("version %q", q.Version)
	}
	raw, err := q.Execute(ctx, time.Second, "big", nil)
	var r struct{ S string }
	if err != nil || json.Unmarshal(raw, &r) != nil || r.S != big {
		t.Fatalf("200 KiB reply: %v (%d bytes)", err, len(raw))
	}
	if _, err := q.Execute(ctx, time.Second, "nope", nil); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Fatalf("error reply: %v", err)
	}
	t0 := time.Now()
	if _, err := q.Execute(ctx, 200*time.Millisecond, "hang", nil); err == nil || !strings.Contains(err.Error(), "no answer in time") || time.Since(t0) > 2*time.Second {
		t.Fatalf("timeout: %v after %s", err, time.Since(t0))
	}
	q2, err := DialQMP(ctx, sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if _, err := q2.Execute(cctx, time.Minute, "hang", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancel: %v", err)
	}
	if len(q.Events) == 0 || q.Events[0].Name != "RTC_CHANGE" {
		t.Errorf("events %+v", q.Events)
	}
	if _, err := DialQMP(ctx, dir+"/none.sock", time.Second); err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("missing socket: %v", err)
	}
}

// TestQMPGreetingAfterStaleMessages: an event or a late reply left over
// from an earlier client ahead of the greeting is skipped; a socket that
// speaks something else is still refused at once.
func TestQMPGreetingAfterStaleMessages(t *testing.T) {
	dir, _ := os.MkdirTemp("", "pqmp")
	defer os.RemoveAll(dir)
	for _, tc := range []struct{ first, want string }{
		{`{"event": "RESUME", "data": {}}` + "\r\n" + `{"return": {"status": "running"}, "id": "pifarm-1"}`, ""},
		{`{"hello": "world"}`, "no QMP greeting"},
	} {
		sock := dir + "/q.sock"
		os.Remove(sock)
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			fmt.Fprintf(c, "%s\r\n", tc.first)
			fmt.Fprintf(c, `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}`+"\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			var req struct{ ID json.RawMessage }
			json.Unmarshal([]byte(line), &req)
			fmt.Fprintf(c, `{"return": {}, "id": %s}`+"\r\n", req.ID)
			time.Sleep(100 * time.Millisecond)
		}()
		q, err := DialQMP(context.Background(), sock, 2*time.Second)
		l.Close()
		if tc.want == "" {
			if err != nil || q.Version != "7.2.0" {
				t.Fatalf("greeting after %s: %v", tc.first, err)
			}
			q.Close()
		} else if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("after %s: err %v, want %q", tc.first, err, tc.want)
		}
	}
}

func TestQMPLargeReplyFromRealQEMU(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 4)
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	n, _ := f.Resolve("4")
	if _, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone}); err != nil {
		t.Fatal(err)
	}
	out, err := in.QMPCommand(n, "query-qmp-schema", nil)
	if err != nil || len(out) < 64<<10 {
		t.Fatalf("query-qmp-schema: %d bytes, %v", len(out), err)
	}
	out, err = in.QMPCommand(n, "query-chardev", nil)
	if err != nil || !strings.Contains(out, "tcp:127.0.0.1:20204") {
		t.Fatalf("query-chardev: %s %v", out, err)
	}
}

// fakeServer listens on 127.0.0.1:port and runs serve for each connection.
func fakeServer(t *testing.T, port int, serve func(c net.Conn, i int)) {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for i := 0; ; i++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serve(c, i)
		}
	}()
}

func TestWaitConsole(t *testing.T) {
	f := testFarm(t)
	n, _ := f.Resolve("4")
	in, _ := testInstances(t, f, false)
	closed := make(chan bool, 4)
	started := time.Now()
	// A console that is not listening at first, then shows boot noise and,
	// once it gets a carriage return, a login prompt.
	time.AfterFunc(150*time.Millisecond, func() {
		fakeServer(t, 20204, func(c net.Conn, i int) {
			defer c.Close()
			fmt.Fprintf(c, "[    1.0] booting\r\n")
			r := bufio.NewReader(c)
			if s, _ := r.ReadString('\n'); s == "\r\n" {
				fmt.Fprintf(c, "\r\nRaspbian GNU/Linux 10 raspberrypi ttyAMA0\r\n\r\nraspberrypi login: ")
			}
			_, err := r.ReadByte()
			closed <- err != nil
		})
	})
	r, err := in.WaitConsole(n, regexp.MustCompile(`login: `), 5*time.Second)
	if err != nil || !r.OK || !strings.Contains(r.Seen, "raspberrypi login: ") {
		t.Fatalf("%+v %v", r, err)
	}
	if time.Since(started) > 2*time.Second {
		t.Errorf("took %s", time.Since(started))
	}
	select {
	case ok := <-closed:
		if !ok {
			t.Fatal("wait did not disconnect")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("wait did not disconnect")
	}
	// A console that shows a shell prompt, not a login prompt: the timeout
	// quotes what it saw.
	fakeServer(t, 20203, func(c net.Conn, i int) {
		defer c.Close()
		fmt.Fprintf(c, "pi@raspberrypi:~$ ")
		bufio.NewReader(c).ReadString('x')
	})
	n3, _ := f.Resolve("3")
	_, err = in.WaitConsole(n3, regexp.MustCompile(`login: `), 500*time.Millisecond)
	var te *TimeoutError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "pi@raspberrypi:~$") || !strings.Contains(err.Error(), "127.0.0.1:20203") {
		t.Fatalf("timeout error %v", err)
	}
	dry, out := testInstances(t, f, true)
	if r, err := dry.WaitConsole(n3, regexp.MustCompile(`login: `), time.Second); err != nil || !r.OK || !strings.HasPrefix(out.String(), "# wait until the console (nc localhost 20203)") {
		t.Fatalf("dry: %v %q", err, out.String())
	}
}

func TestWaitConsoleOnRealQEMU(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 1)
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	n, _ := f.Resolve("1")
	if _, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone}); err != nil {
		t.Fatal(err)
	}
	_, err := in.WaitConsole(n, regexp.MustCompile(`login: `), 400*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "connected, but no output") {
		t.Fatalf("paused guest: %v", err)
	}
	// The wait let go of the console: a new client is served at once.
	c, err := net.Dial("tcp", "127.0.0.1:20201")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	_, err = in.WaitSSH(n, 400*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "connected, then") {
		t.Fatalf("ssh forward to a paused guest: %v", err)
	}
}

func TestWaitSSH(t *testing.T) {
	f := testFarm(t)
	n, _ := f.Resolve("4")
	in, _ := testInstances(t, f, false)
	// Like QEMU's forward while the guest's sshd is down: accepted and
	// closed, twice; then a banner.
	fakeServer(t, 20104, func(c net.Conn, i int) {
		defer c.Close()
		if i >= 2 {
			fmt.Fprintf(c, "SSH-2.0-OpenSSH_7.9p1 Raspbian-10\r\n")
		}
	})
	r, err := in.WaitSSH(n, 5*time.Second)
	if err != nil || r.Seen != "SSH-2.0-OpenSSH_7.9p1 Raspbian-10" {
		t.Fatalf("%+v %v", r, err)
	}
	n2, _ := f.Resolve("2")
	_, err = in.WaitSSH(n2, 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("nobody listening: %v", err)
	}
}

// TestStarlark runs testdata/lifecycle.star against real QEMU through the
// module as recipes see it.
func TestStarlark(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 2)
	var out bytes.Buffer
	d := trace.New(context.Background(), false, false, &out)
	in := &Instances{D: d, F: f}
	defer stopAll(t, in)
	thread := &starlark.Thread{Name: "test", Load: func(th *starlark.Thread, module string) (starlark.StringDict, error) {
		if module == "assert.star" {
			return starlarktest.LoadAssertModule()
		}
		return nil, fmt.Errorf("load %s: not available", module)
	}}
	starlarktest.SetReporter(thread, t)
	pre := starlark.StringDict{"qemu": in.Module().Struct(), "farm": f.Module(d).Struct(), "json": starlarkjson.Module}
	opts := &syntax.FileOptions{Set: true, While: true, TopLevelControl: true, GlobalReassign: true, Recursion: true}
	if _, err := starlark.ExecFileOptions(opts, thread, "testdata/lifecycle.star", nil, pre); err != nil {
		var ee *starlark.EvalError
		if errors.As(err, &ee) {
			t.Fatal(ee.Backtrace())
		}
		t.Fatal(err)
	}
}

func TestConsoleInTheForeground(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 2)
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	n, _ := f.Resolve("2")
	type result struct {
		st  Status
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := in.Start(n, Options{Console: true, Paused: true, NoTAP: true, Display: DisplayNone})
		done <- result{st, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !in.Status(n).Running {
		select {
		case r := <-done:
			t.Fatalf("foreground start returned early: %+v %v", r.st, r.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("foreground QEMU never answered QMP")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The lock is free while QEMU runs in the foreground: a second start
	// finds it running instead of waiting.
	again, err := in.Start(n, Options{Paused: true, NoTAP: true})
	if err != nil || !again.Already {
		t.Fatalf("second start: %+v %v", again, err)
	}
	if was, err := in.Quit(n, 10*time.Second); !was || err != nil {
		t.Fatalf("quit: %v %v", was, err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.st.State != "exited" {
			t.Fatalf("foreground start: %+v %v", r.st, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("foreground start did not return after QEMU quit")
	}
}

func TestCommasInPathsAreEscaped(t *testing.T) {
	dir, _ := os.MkdirTemp("", "pq,c")
	defer os.RemoveAll(dir)
	c, err := farm.Load("c.star", []byte(fmt.Sprintf(testConfig, dir)))
	if err != nil {
		t.Fatal(err)
	}
	f := farm.New(c)
	provide(t, f, 1)
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	n, _ := f.Resolve("1")
	st, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone})
	if err != nil || !strings.Contains(st.Line, "file="+strings.ReplaceAll(f.Disk(1), ",", ",,")) {
		t.Fatalf("%+v %v", st, err)
	}
	if s := in.Status(n); !s.Running || s.State != "prelaunch" {
		t.Fatalf("status %+v", s)
	}
}

func TestWaitEndsWhenQEMUExits(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 3)
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	n, _ := f.Resolve("3")
	if _, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone}); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(300*time.Millisecond, func() { in.Quit(n, 5*time.Second) })
	t0 := time.Now()
	_, err := in.WaitSSH(n, 30*time.Second)
	if err == nil || !strings.Contains(err.Error(), "QEMU exited") || time.Since(t0) > 10*time.Second {
		t.Fatalf("ssh wait after QEMU exit: %v after %s", err, time.Since(t0))
	}
	if _, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone}); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(300*time.Millisecond, func() { in.Quit(n, 5*time.Second) })
	t0 = time.Now()
	_, err = in.WaitConsole(n, regexp.MustCompile("login: "), 30*time.Second)
	if err == nil || !strings.Contains(err.Error(), "QEMU exited") || time.Since(t0) > 10*time.Second {
		t.Fatalf("console wait after QEMU exit: %v after %s", err, time.Since(t0))
	}
}

func TestDryRunViewerAndQMPActions(t *testing.T) {
	f := testFarm(t)
	in, out := testInstances(t, f, true)
	thread := &starlark.Thread{Name: "dry"}
	m := in.Module().Struct()
	v, err := starlark.Call(thread, mustAttr(t, m, "viewer"), starlark.Tuple{starlark.MakeInt(2)}, nil)
	if err != nil || v != starlark.None {
		t.Fatalf("viewer: %v %v", v, err)
	}
	if got := out.String(); got != "remote-viewer vnc://localhost:20302 &\n" {
		t.Fatalf("viewer trace %q", got)
	}
	// Not running: a QMP command is refused, nothing printed.
	out.Reset()
	if _, err := starlark.Call(thread, mustAttr(t, m, "qmp"), starlark.Tuple{starlark.MakeInt(2), starlark.String("stop")}, nil); err == nil || !strings.Contains(err.Error(), "instance 2 is not running") {
		t.Fatalf("qmp on a stopped instance: %v", err)
	}
}

func mustAttr(t *testing.T, m interface {
	Attr(string) (starlark.Value, error)
}, name string) starlark.Value {
	v, err := m.Attr(name)
	if err != nil || v == nil {
		t.Fatalf("no %s: %v", name, err)
	}
	return v
}
