package image

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

func init() {
	helperOps["provide-qboot"] = func(m *mod, _, _ string) error {
		_, err := m.ProvideQboot(0, "")
		return err
	}
}

// killWhenSeen starts the helper doing op and kills it with SIGKILL as soon
// as a file whose name matches re appears in watch. It reports whether the
// kill came before the helper was done.
func killWhenSeen(t *testing.T, dir, op, watch string, re *regexp.Regexp) bool {
	t.Helper()
	c := helperCmd(dir, op)
	var errb bytes.Buffer
	c.Stderr = &errb
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Logf("the helper finished before it was killed: %v %s", err, errb.String())
			return false
		default:
		}
		ents, _ := os.ReadDir(watch)
		for _, e := range ents {
			if re.MatchString(e.Name()) {
				c.Process.Kill()
				<-done
				return true
			}
		}
		time.Sleep(100 * time.Microsecond)
	}
	c.Process.Kill()
	<-done
	t.Fatalf("no file like %s appeared in %s", re, watch)
	return false
}

// TestProvideQbootKilledLeavesNoTemp: a pifarm killed (SIGKILL) while it
// writes a large kernel into the cache leaves a temporary file; the next
// --provide-qboot finds and removes it (and those of the same kind that
// older versions left under random names), and writes the boot files.
func TestProvideQbootKilledLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 300 << 20, bootMiB: 128, kernelBytes: 52 << 20, clusterSectrs: 2})
	m, _ := testMod(t, dir, false)
	if _, err := m.Register(fx.path); err != nil {
		t.Fatal(err)
	}
	inst := m.f.InstanceDir(0)
	kerTmp := regexp.MustCompile(`^\.clone-0\.ker\.tmp`)
	killed := false
	for try := 0; try < 5 && !killed; try++ {
		killed = killWhenSeen(t, dir, "provide-qboot", inst, kerTmp)
		os.Remove(m.f.Kernel(0))
	}
	if !killed {
		t.Fatal("could not kill the helper while it wrote the kernel")
	}
	left := tempsIn(t, m)
	if len(left) == 0 {
		t.Fatal("the killed pifarm left no temporary file: the test proves nothing")
	}
	t.Logf("left by the killed pifarm: %q", left)
	// what older versions left behind, under random names
	for _, n := range []string{".clone-0.ker.tmp2741901", ".clone-0.dtb.tmp11", ".clone-0.sig.tmp93"} {
		os.WriteFile(filepath.Join(inst, n), []byte("x"), 0o600)
	}
	keep := filepath.Join(inst, "notes.tmp.txt")
	os.WriteFile(keep, []byte("mine"), 0o600)
	q, err := m.ProvideQboot(0, "")
	if err != nil {
		t.Fatal(err)
	}
	if tmp := tempsIn(t, m); len(tmp) > 0 {
		t.Errorf("temporary files left after providing again: %q", tmp)
	}
	if b, _ := os.ReadFile(q.Kernel); !bytes.Equal(b, fx.kernel) {
		t.Error("the kernel differs from kernel8.img")
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a file that is not pifarm's was removed: %v", err)
	}
}
