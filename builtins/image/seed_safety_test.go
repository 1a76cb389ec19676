package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func init() {
	// seed:STEP stops at the step, for the test to kill the helper there
	helperOps["seed"] = func(m *mod, dir, step string) error {
		m.fault = func(s string) error {
			if s == step {
				os.WriteFile(filepath.Join(dir, "at-step"), nil, 0o644)
				time.Sleep(time.Hour)
			}
			return nil
		}
		_, err := m.Seed(m.f.Disk(0), seedBoth)
		return err
	}
}

// TestSeedOnFullCacheKeepsLinkedClones: when the cache is full (ENOSPC,
// a real tmpfs), the records of the linked clones cannot be prepared, so
// seeding fails before the image is touched: every clone stays valid and
// the image byte for byte as it was. Once there is space, seeding again
// succeeds and keeps clone 1.
func TestSeedOnFullCacheKeepsLinkedClones(t *testing.T) {
	dir := t.TempDir()
	m, fx := linkedSetup(t, dir, 16<<20)
	before := imageSum(t, fx.path)
	filler := fillUp(t, m.f.Config.CacheDir())
	_, err := m.Seed(m.f.Disk(0), seedPi)
	if err == nil || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("seed on a full cache: %v", err)
	}
	if !strings.Contains(err.Error(), m.baseFile(1)) {
		t.Errorf("the error does not name the record: %v", err)
	}
	if after := imageSum(t, fx.path); after != before {
		t.Error("the failed seed wrote the image")
	}
	wantClones(t, m, "after the failed seed", true, true)
	os.Remove(filler)
	res, err := m.Seed(m.f.Disk(0), seedPi)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.ClonesKept, res.ClonesInvalid) != "[1] [2]" {
		t.Fatalf("kept %v invalid %v", res.ClonesKept, res.ClonesInvalid)
	}
	wantClones(t, m, "after seeding again", true, false)
	wantSeeded(t, m, fx)
}

// seedSteps are the points between the steps of a seed of ssh and
// userconf.txt with clone 1 kept (see seeding), and what is true right
// after a failure there: the image written or not, clone 1 valid.
var seedSteps = []struct {
	step          string
	written, kept bool
}{
	{"prepare 1", false, true},
	{"write ssh", false, true},
	{"write userconf.txt", true, true},
	{"commit 1", true, false},
}

// TestSeedFailureAtEachStepIsRepaired: a seed that fails at any step
// leaves clone 1 valid, or (a failed commit) leaves its prepared record,
// which the same seed run again completes; clone 2, whose guest wrote
// partition 1, is invalid once the image was written.
func TestSeedFailureAtEachStepIsRepaired(t *testing.T) {
	for i, st := range seedSteps {
		t.Run(st.step, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), fmt.Sprint(i))
			os.MkdirAll(dir, 0o755)
			m, fx := linkedSetup(t, dir, 0)
			before := imageSum(t, fx.path)
			m.fault = func(step string) error {
				if step == st.step {
					return fmt.Errorf("injected failure at %q", step)
				}
				return nil
			}
			_, err := m.Seed(m.f.Disk(0), seedBoth)
			if err == nil || !strings.Contains(err.Error(), "injected failure") {
				t.Fatalf("seed: %v", err)
			}
			if written := imageSum(t, fx.path) != before; written != st.written {
				t.Errorf("image written: %v, want %v", written, st.written)
			}
			wantClones(t, m, "after the failure", st.kept, !st.written)
			m.fault = nil
			res, err := m.Seed(m.f.Disk(0), seedBoth)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(res.ClonesKept) != "[1]" {
				t.Errorf("kept %v", res.ClonesKept)
			}
			if repaired := fmt.Sprint(res.ClonesRepaired); repaired != map[bool]string{true: "[]", false: "[1]"}[st.kept] {
				t.Errorf("repaired %s", repaired)
			}
			wantClones(t, m, "after seeding again", true, false)
			wantSeeded(t, m, fx)
		})
	}
}

// TestSeedKilledAtEachStepIsRepaired: a pifarm killed (SIGKILL, a real
// process) between any two steps of a seed leaves nothing that the same
// seed run again does not repair: clone 1 valid, clone 2 invalid, the
// files written, no temporary file.
func TestSeedKilledAtEachStepIsRepaired(t *testing.T) {
	for i, st := range seedSteps {
		t.Run(st.step, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), fmt.Sprint(i))
			os.MkdirAll(dir, 0o755)
			m, fx := linkedSetup(t, dir, 0)
			at := filepath.Join(dir, "at-step")
			c := helperCmd(dir, "seed:"+st.step)
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				if _, err := os.Stat(at); err == nil {
					break
				}
				if time.Now().After(deadline) {
					c.Process.Kill()
					c.Wait()
					t.Fatal("the helper never reached the step")
				}
				time.Sleep(time.Millisecond)
			}
			c.Process.Kill()
			c.Wait()
			res, err := m.Seed(m.f.Disk(0), seedBoth)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(res.ClonesKept) != "[1]" {
				t.Errorf("kept %v", res.ClonesKept)
			}
			// killed after the image was written: the prepared record is
			// what keeps clone 1
			if repaired := fmt.Sprint(res.ClonesRepaired); repaired != map[bool]string{true: "[1]", false: "[]"}[st.written] {
				t.Errorf("repaired %s", repaired)
			}
			wantClones(t, m, "after seeding again", true, false)
			wantSeeded(t, m, fx)
		})
	}
}

// TestSeedPlantedRecordLink: a symbolic link planted at the fixed
// temporary name of a linked clone's record (.clone-N.base.tmp, where a
// seed prepares the record) is dropped as no prepared record and replaced,
// not written through, and the clone stays valid.
func TestSeedPlantedRecordLink(t *testing.T) {
	dir := t.TempDir()
	m, _ := linkedSetup(t, dir, 0)
	victim, state := victimDir(t, dir)
	before := state()
	if err := os.Symlink(filepath.Join(victim, "precious"), tmpName(m.baseFile(1))); err != nil {
		t.Fatal(err)
	}
	res, err := m.Seed(m.f.Disk(0), seedPi)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.ClonesKept) != "[1]" {
		t.Errorf("kept %v", res.ClonesKept)
	}
	if fi, err := os.Lstat(m.baseFile(1)); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
		t.Errorf("%s: %v %v", m.baseFile(1), fi, err)
	}
	wantClones(t, m, "after seeding", true, false)
	if tmp := tempsIn(t, m); len(tmp) > 0 {
		t.Errorf("temporary files left: %q", tmp)
	}
	if got := state(); got != before {
		t.Fatalf("the seed wrote through a planted link:\n%s", got)
	}
}
