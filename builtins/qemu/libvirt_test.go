package qemu

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"pifarm/builtins/farm"
	"pifarm/builtins/virt/virttest"
)

// libvirtFarm is the test farm with every node on host.
func libvirtFarm(t *testing.T, host string) *farm.Farm {
	t.Helper()
	dir, err := os.MkdirTemp("", "pl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c, err := farm.Load("test-config.star", []byte(fmt.Sprintf(testConfig, dir)+fmt.Sprintf("host = %q\n", host)))
	if err != nil {
		t.Fatal(err)
	}
	return farm.New(c)
}

// TestLibvirtDryRun: a node on a libvirt host starts as a transient domain,
// shown as the virsh command with its XML; qemu.command shows the same.
func TestLibvirtDryRun(t *testing.T) {
	f := libvirtFarm(t, "qemu+ssh://root@farm2.invalid/system")
	in, out := testInstances(t, f, true)
	n, _ := f.Resolve("2")
	p, err := in.plan(n, Options{NoTAP: true})
	if err != nil {
		t.Fatal(err)
	}
	name := in.DomainName(n)
	for _, want := range []string{
		"virsh -c qemu+ssh://root@farm2.invalid/system create /dev/stdin <<'EOF'\n<domain type='qemu'",
		"<name>" + name + "</name>", "<source file='" + f.Disk(2) + "'/>", "<kernel>" + f.Kernel(2) + "</kernel>",
		"service='20202'", "hostfwd=tcp:127.0.0.1:20102-:22", "<qemu:arg value='127.0.0.1:14402'/>",
		"<qemu:env name='PIFARM_ACCEL' value='tcg,thread=single'/>", "<qemu:del capability='no-acpi'/>",
	} {
		if !strings.Contains(p.Line, want) {
			t.Errorf("qemu.command line lacks %q:\n%s", want, p.Line)
		}
	}
	if strings.Contains(p.Line, "<seclabel") {
		t.Errorf("a remote domain runs as libvirt's QEMU user, not with this user's label:\n%s", p.Line)
	}
	for _, o := range []Options{{Console: true}, {GlobalBind: true}, {Display: DisplayGUI}} {
		if _, err := in.plan(n, o); err == nil || !strings.Contains(err.Error(), "libvirt host") {
			t.Errorf("%+v on a libvirt host: %v", o, err)
		}
	}
	// The host does not exist: a dry start still shows what it would do.
	st, err := in.Start(n, Options{NoTAP: true})
	if err != nil || !st.Running || st.Host == "" || st.Domain != name {
		t.Fatalf("dry start: %+v %v", st, err)
	}
	if !strings.Contains(out.String(), "create /dev/stdin <<'EOF'") {
		t.Errorf("dry start trace:\n%s", out)
	}
}

// TestLibvirtLocal places an instance on this machine's libvirtd: start
// (paused), found running with its pid and run state, a second start finds
// it, QMP passes through libvirt, terminate destroys the domain.
func TestLibvirtLocal(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a domain on the system libvirtd")
	}
	virttest.Daemon(t)
	f := libvirtFarm(t, "qemu:///system")
	provide(t, f, 1)
	in, _ := testInstances(t, f, false)
	defer in.CloseHosts()
	n, _ := f.Resolve("1")
	t.Cleanup(func() { in.Quit(n, 10*time.Second) })
	t0 := time.Now()
	st, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("domain %s started in %s", st.Domain, time.Since(t0))
	if !st.Running || st.State != "paused" || st.PID == 0 {
		t.Fatalf("started: %+v", st)
	}
	// The QEMU runs as this user, reading the user's own cache.
	if fi, err := os.Stat(fmt.Sprintf("/proc/%d", st.PID)); err != nil || fi.Sys() == nil {
		t.Fatalf("QEMU pid %d: %v", st.PID, err)
	}
	again, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone})
	if err != nil || !again.Already {
		t.Fatalf("second start: %+v %v", again, err)
	}
	js, err := in.QMPCommand(n, "query-status", nil)
	if err != nil || !strings.Contains(js, `"running":false`) {
		t.Fatalf("query-status through libvirt: %s %v", js, err)
	}
	if _, err := in.QMPCommand(n, "cont", nil); err != nil {
		t.Fatal(err)
	}
	if s := in.Status(n); s.State != "running" {
		t.Fatalf("after cont: %+v", s)
	}
	ok, err := in.Quit(n, 10*time.Second)
	if err != nil || !ok {
		t.Fatalf("quit: %v %v", ok, err)
	}
	if err := in.WaitExit(n, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if s := in.Status(n); s.Running {
		t.Fatalf("after quit: %+v", s)
	}
	if ok, err := in.Quit(n, 10*time.Second); ok || err != nil {
		t.Fatalf("second quit: %v %v", ok, err)
	}
}
