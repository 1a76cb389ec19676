// Package disktest is the test support that the disk format packages and
// the modules using them (image, card) share: running the real tools (sfdisk, mkfs.vfat,
// mkfs.ext4, mcopy, qemu-img) that make and check their fixtures, a paused
// QEMU, and reproducible random content. Only tests import it.
package disktest

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Run runs the command name with args (and stdin when not empty) and
// returns its standard output; a failure ends the test with the command,
// its error and its output.
func Run(t testing.TB, stdin string, name string, args ...string) string {
	t.Helper()
	c := exec.Command(name, args...)
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// RandBytes is n bytes of the random sequence seed gives: the same bytes
// in every run.
func RandBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// FsckClean runs fsck.vfat -n on a copy of the n sectors of the FAT file
// system at sector start of img and fails the test when fsck finds
// anything to fix.
func FsckClean(t testing.TB, img string, start, n uint64) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "boot.part")
	Run(t, "", "dd", "if="+img, "of="+p, "bs=512", fmt.Sprintf("skip=%d", start), fmt.Sprintf("count=%d", n), "status=none")
	out := Run(t, "", "fsck.vfat", "-n", p)
	if strings.Contains(out, "\n  ") || strings.Contains(strings.ToLower(out), "wrong") || strings.Contains(out, "Free cluster") {
		t.Errorf("fsck.vfat -n:\n%s", out)
	}
}

// QEMU starts qemu-system-aarch64 with args, paused before its first
// instruction (-S) and daemonized, writing its pid to pidfile, and
// returns the pid; the QEMU is killed when the test ends. No guest runs:
// it is a QEMU process that holds what args give it (a disk open, a
// pidfile).
func QEMU(t testing.TB, pidfile string, args ...string) int {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-aarch64"); err != nil {
		t.Fatal("qemu-system-aarch64 is needed (apt-get install qemu-system-arm)")
	}
	args = append(args, "-S", "-display", "none", "-nodefaults", "-pidfile", pidfile, "-daemonize")
	Run(t, "", "qemu-system-aarch64", args...)
	b, _ := os.ReadFile(pidfile)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("qemu pidfile %q", b)
	}
	t.Cleanup(func() {
		if p, err := os.FindProcess(pid); err == nil {
			p.Kill()
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
				return
			}
		}
	})
	return pid
}
