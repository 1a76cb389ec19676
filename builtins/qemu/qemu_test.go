package qemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"pifarm/builtins/farm"
)

func TestStartStatusQuit(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 1)
	in, out := testInstances(t, f, false)
	defer stopAll(t, in)
	n, _ := f.Resolve("enone")
	if st := in.Status(n); st.Running || st.PID != 0 || st.StaleReason != "" {
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
			if st.Running || !strings.Contains(st.StaleReason, tc.why) {
				t.Fatalf("dry status %+v", st)
			}
			if _, err := os.Stat(f.Pidfile(3)); err != nil || !strings.Contains(out.String(), "rm -f "+f.Pidfile(3)+" "+f.QMP(3)) {
				t.Fatalf("dry run: %v %q", err, out.String())
			}
			in, _ := testInstances(t, f, false)
			st = in.Status(n)
			if st.Running || !strings.Contains(st.StaleReason, tc.why) {
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
	if _, err := dry.RemoveFiles(n1); err != nil || dout.String() != "mv -f "+f.InstanceDir(1)+" "+filepath.Dir(f.InstanceDir(1))+"/.raspi-clone-1.removing\nrm -rf "+filepath.Dir(f.InstanceDir(1))+"/.raspi-clone-1.removing\n" {
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
