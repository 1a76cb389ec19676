// Package testguest holds pifarm's test guest builder (build.sh) and the
// end-to-end test of the whole farm cycle on it (cycle.sh), run here with
// real QEMU, real netlink, real SSH.
package testguest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestCycle builds pifarm and the test guests, then runs cycle.sh: the whole
// development cycle with pifarm commands only, asserting on what the guests
// and the host show. It needs root (namespaces, TAPs) and takes minutes.
func TestCycle(t *testing.T) {
	if testing.Short() {
		t.Skip("the end-to-end cycle takes minutes; not in -short mode")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the end-to-end cycle needs root, and CI runs as root")
		}
		t.Skip("the end-to-end cycle needs root (network namespace, TAP devices)")
	}
	bin := filepath.Join(t.TempDir(), "pifarm")
	build := exec.Command("go", "build", "-o", bin, "../..")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	work := os.Getenv("PIFARM_CYCLE_WORK")
	if work == "" {
		work = t.TempDir()
	}
	cmd := exec.Command("./cycle.sh", bin)
	cmd.Env = append(os.Environ(), "PIFARM_CYCLE_WORK="+work)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err := cmd.Run()
	// The stage times outlive the test's temporary folder, for the CI log.
	if times, rerr := os.ReadFile(filepath.Join(work, "times")); rerr == nil {
		os.WriteFile(filepath.Join(os.TempDir(), "pifarm-cycle-times.txt"), times, 0o644)
		t.Logf("stage times:\n%s", times)
	}
	if err != nil {
		t.Fatalf("cycle.sh: %v", err)
	}
}
