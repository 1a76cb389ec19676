package image

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// imageSum is what any write to a file changes: size, mtime, ctime (which
// no program sets back) and a hash of every byte.
func imageSum(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d %d %d.%d %s", fi.Size(), fi.ModTime().UnixNano(), st.Ctim.Sec, st.Ctim.Nsec, hex.EncodeToString(h.Sum(nil)))
}

// mountTmpfs mounts a tmpfs of size bytes on dir (made first); it is
// unmounted when the test ends, before its temporary folder goes.
func mountTmpfs(t testing.TB, dir string, size int64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "", "mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir)
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
}

// fillUp writes a file into dir until its file system is full (ENOSPC)
// and returns its path: removing it frees the space again.
func fillUp(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return p
			}
			t.Fatal(err)
		}
	}
}

// tempRE matches the temporary files pifarm's image module writes next to
// a file of the cache, of any version: .NAME.tmp, or with random digits.
var tempRE = regexp.MustCompile(`^\..*\.tmp[0-9]*$`)

// tempsIn lists the temporary files in the instance folders of m's cache.
func tempsIn(t testing.TB, m *mod) []string {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(m.f.Config.CacheDir(), "clones", "*"))
	var out []string
	for _, d := range dirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if tempRE.MatchString(e.Name()) {
				out = append(out, filepath.Join(d, e.Name()))
			}
		}
	}
	return out
}

// umask sets the process's umask and returns the old one.
func umask(m int) int { return syscall.Umask(m) }

// Tests that kill a real process with SIGKILL run this test binary again
// as a helper (TestHelperProcess) that does one image operation, named by
// PIFARM_IMAGE_HELPER ("OP" or "OP:ARG", OP a key of helperOps), on the
// cache of the folder PIFARM_IMAGE_HELPER_DIR.

// helperOps are the operations a helper can do; test files add theirs.
var helperOps = map[string]func(m *mod, dir, arg string) error{}

// TestHelperProcess is not a test: run by helperCmd, it does the operation
// named by PIFARM_IMAGE_HELPER and exits.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv("PIFARM_IMAGE_HELPER_DIR")
	if dir == "" {
		return
	}
	m, _ := testMod(t, dir, false)
	op, arg, _ := strings.Cut(os.Getenv("PIFARM_IMAGE_HELPER"), ":")
	fn := helperOps[op]
	err := fmt.Errorf("no helper operation %q", op)
	if fn != nil {
		err = fn(m, dir, arg)
	}
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(0)
}

func helperCmd(dir, op string) *exec.Cmd {
	c := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	c.Env = append(os.Environ(), "PIFARM_IMAGE_HELPER_DIR="+dir, "PIFARM_IMAGE_HELPER="+op)
	return c
}

// linkedSetup registers a fixture image in dir with its boot files and two
// linked clones: clone 1's guest wrote only in partition 2 (a seed keeps
// it), clone 2's in partition 1 (a seed invalidates it). The cache is on a
// tmpfs of tmpfsSize bytes when that is not 0.
func linkedSetup(t *testing.T, dir string, tmpfsSize int64) (*mod, *fixture) {
	t.Helper()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	age(t, fx.path, time.Hour)
	m, _ := testMod(t, dir, false)
	if tmpfsSize > 0 {
		mountTmpfs(t, m.f.Config.CacheDir(), tmpfsSize)
	}
	if _, err := m.Register(fx.path); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	for _, id := range []int{1, 2} {
		if _, err := m.Clone(id, true); err != nil {
			t.Fatal(err)
		}
	}
	last := int64(fx.bootStart+fx.bootN-1) * 512
	run(t, "", "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0 %d 512", last), m.f.Disk(2))
	run(t, "", "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 7 %d 4096", int64(fx.rootStart)*512+1<<20), m.f.Disk(1))
	return m, fx
}

// wantClones checks which linked clones are valid.
func wantClones(t *testing.T, m *mod, when string, valid1, valid2 bool) {
	t.Helper()
	for id, want := range map[int]bool{1: valid1, 2: valid2} {
		st, err := m.CheckClone(id)
		if err != nil {
			t.Fatal(err)
		}
		if st.OK != want {
			t.Errorf("%s: clone %d valid=%v, want %v (%s)", when, id, st.OK, want, st.Reason)
		}
	}
}

// wantSeeded checks that the seed's file is in partition 1 and that no
// temporary file is left in the cache.
func wantSeeded(t *testing.T, m *mod, fx *fixture) {
	t.Helper()
	if got := run(t, "", "mtype", "-i", fmt.Sprintf("%s@@%d", fx.path, fx.bootStart*512), "::userconf.txt"); got != "pi:$6$s$h\n" {
		t.Errorf("userconf.txt: %q", got)
	}
	if tmp := tempsIn(t, m); len(tmp) > 0 {
		t.Errorf("temporary files left: %q", tmp)
	}
}

var (
	seedPi   = SeedOptions{User: "pi", Hash: "$6$s$h"}
	seedBoth = SeedOptions{SSH: true, User: "pi", Hash: "$6$s$h"}
)
