// Package testguest holds pifarm's test guest builders (build.sh: busybox,
// build-debian.sh: a real Debian system with systemd) and the end-to-end
// tests of the whole farm cycle on them (cycle.sh, cycle-debian.sh), run here
// with real QEMU, real netlink, real SSH.
package testguest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// needCycle skips (or, in CI, fails) where an end-to-end cycle cannot run:
// -short, or not root.
func needCycle(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("the end-to-end cycle takes minutes; not in -short mode")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the end-to-end cycle needs root, and CI runs as root")
		}
		t.Skip("the end-to-end cycle needs root (network namespace, TAP devices)")
	}
}

// buildPifarm builds the pifarm binary into a temporary folder.
func buildPifarm(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pifarm")
	build := exec.Command("go", "build", "-o", bin, "../..")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	return bin
}

// runCycle runs a cycle script with args in the work folder
// PIFARM_CYCLE_WORK (default: a temporary one) and adds its stage times, headed
// by name, to os.TempDir()/pifarm-cycle-times.txt, which outlives the
// test's folders for the CI log.
func runCycle(t *testing.T, name, script string, args ...string) {
	t.Helper()
	work := os.Getenv("PIFARM_CYCLE_WORK")
	if work == "" {
		work = t.TempDir()
	}
	cmd := exec.Command(script, args...)
	cmd.Env = append(os.Environ(), "PIFARM_CYCLE_WORK="+work)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err := cmd.Run()
	if times, rerr := os.ReadFile(filepath.Join(work, "times")); rerr == nil {
		if f, ferr := os.OpenFile(filepath.Join(os.TempDir(), "pifarm-cycle-times.txt"),
			os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); ferr == nil {
			fmt.Fprintf(f, "%s:\n%s", name, times)
			f.Close()
		}
		t.Logf("stage times:\n%s", times)
	}
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
}

// TestCycle builds pifarm and the busybox test guests, then runs cycle.sh:
// the whole development cycle with pifarm commands only, asserting on what
// the guests and the host show. It needs root (namespaces, TAPs) and takes
// minutes.
func TestCycle(t *testing.T) {
	needCycle(t)
	runCycle(t, "busybox guest", "./cycle.sh", buildPifarm(t))
}

// TestFanOut runs fanout.sh: three busybox guests booted, enrolled and
// provisioned by one command each (node sets, -j 3), one of them refusing
// the configured password: that node fails with its cause in one line, the
// other two finish, the exit status is 1, and the run records (pifarm runs,
// summary.json, each node's log) hold exactly that. About 2.5 minutes on two
// idle cores, 4-6 under a load of 12.
func TestFanOut(t *testing.T) {
	needCycle(t)
	runCycle(t, "fan-out, busybox guests", "./fanout.sh", buildPifarm(t))
}

// TestCycleDebian runs cycle-debian.sh on each variant of the systemd test
// guest (a real Debian bookworm arm64 system built with debootstrap, the
// build cached): dhcpcd (RaspiOS Bullseye-like) and NetworkManager (Bookworm-
// like). Enrolment, base system, a sudo user, clones with the right node
// identity, bridge and ping, shutdown. Root only, like TestCycle; the first
// build takes several minutes.
func TestCycleDebian(t *testing.T) {
	needCycle(t)
	bin := buildPifarm(t)
	for _, v := range []string{"dhcpcd", "nm"} {
		t.Run(v, func(t *testing.T) {
			runCycle(t, "systemd guest, "+v, "./cycle-debian.sh", v, bin)
		})
	}
}

// TestCycleBoard runs cycle-board.sh: a hardware node end to end on a
// simulated board (a QEMU raspi3b whose serial port is a pseudo-terminal the
// node table names, whose only NIC is on the LAN bridge with the board's
// MAC, whose card is the file pifarm run flash wrote, and whose power
// commands start and kill it): flash, power on, enrol over the serial
// console, SSH at its LAN address, a clone pings it, shutdown waits for
// "reboot: Power down" before the power is cut. Root only, like TestCycle.
func TestCycleBoard(t *testing.T) {
	needCycle(t)
	runCycle(t, "simulated board", "./cycle-board.sh", buildPifarm(t))
}
