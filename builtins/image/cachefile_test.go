package image

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// victimDir is a folder outside the cache with one file, which no write
// to the cache may reach.
func victimDir(t *testing.T, dir string) (string, func() string) {
	t.Helper()
	v := filepath.Join(dir, "victim")
	os.MkdirAll(v, 0o755)
	os.WriteFile(filepath.Join(v, "precious"), []byte("precious\n"), 0o600)
	state := func() string {
		var s []string
		filepath.Walk(v, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				b, _ := os.ReadFile(p)
				s = append(s, p+" "+fi.Mode().String()+" "+string(b))
			}
			return nil
		})
		sort.Strings(s)
		return strings.Join(s, "\n")
	}
	return v, state
}

// TestSymlinkedInstanceFolderRefused: an instance folder that is a
// symbolic link out of the cache (planted before the image is registered,
// or after) receives nothing: register and provide_qboot refuse, naming
// the link, and the folder it points to stays as it was.
func TestSymlinkedInstanceFolderRefused(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	victim, state := victimDir(t, dir)
	before := state()
	m, _ := testMod(t, dir, false)
	inst := m.f.InstanceDir(0)
	os.MkdirAll(filepath.Dir(inst), 0o755)
	if err := os.Symlink(victim, inst); err != nil {
		t.Fatal(err)
	}
	_, err := m.Register(fx.path)
	if err == nil || !strings.Contains(err.Error(), inst) {
		t.Fatalf("register into a linked instance folder: %v", err)
	}
	if got := state(); got != before {
		t.Fatalf("register wrote through the link:\n%s", got)
	}
	// planted after the registration: the boot files go nowhere
	os.Remove(inst)
	if _, err := m.Register(fx.path); err != nil {
		t.Fatal(err)
	}
	os.Rename(inst, victim+"-moved")
	os.Rename(victim+"-moved/clone-0.raw", filepath.Join(victim, "clone-0.raw"))
	os.Symlink(victim, inst)
	before = state()
	_, err = m.ProvideQboot(0, "")
	if err == nil || !strings.Contains(err.Error(), inst) {
		t.Fatalf("provide_qboot into a linked instance folder: %v", err)
	}
	if got := state(); got != before {
		t.Fatalf("provide_qboot wrote through the link:\n%s", got)
	}
}

// TestPlantedSymlinksNotFollowed: symbolic links planted in an instance
// folder at the names pifarm writes (the boot files, their backups, the
// .sig, their fixed temporary names) are replaced or removed, never
// written through; the files written get their modes exactly (0644: copies
// of the image's public boot files, and a record of sizes and hashes),
// whatever the umask.
func TestPlantedSymlinksNotFollowed(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	age(t, fx.path, time.Hour)
	m, _ := testMod(t, dir, false)
	if _, err := m.Register(fx.path); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	victim, state := victimDir(t, dir)
	target := filepath.Join(victim, "precious")
	before := state()
	plant := func(paths ...string) {
		for _, p := range paths {
			os.Remove(p)
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
		}
	}
	tmp := func(p string) string { return filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".tmp") }
	old := umask(0o077)
	defer umask(old)
	plant(m.f.Kernel(0)+"~", m.f.DTB(0), tmp(m.f.Kernel(0)), tmp(m.f.Sig(0)), m.f.Sig(0)+"~")
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{m.f.Kernel(0), m.f.DTB(0), m.f.Sig(0)} {
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: %v %v, want a regular file 0644", p, fi.Mode(), err)
		}
	}
	// the refresh of a .sig record after the image changed
	plant(tmp(m.f.Sig(0)))
	age(t, fx.path, 10*time.Minute)
	if st, err := m.CheckBoot(0); err != nil || st.State != "ok" {
		t.Fatalf("check: %+v %v", st, err)
	}
	if got := state(); got != before {
		t.Fatalf("a write went through a planted link:\n%s\nwas\n%s", got, before)
	}
}
