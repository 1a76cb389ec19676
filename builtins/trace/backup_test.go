package trace

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestBackupNeverWritesThroughSymlink: another process that keeps planting
// a symbolic link at NAME~ (pointing at a file it wants overwritten) never
// gets the backup written through it: the backup is made under a temporary
// name and renamed onto NAME~, which replaces a link rather than following
// it.
func TestBackupNeverWritesThroughSymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	os.WriteFile(victim, []byte("precious\n"), 0o644)
	p := filepath.Join(dir, "f.txt")
	os.WriteFile(p, []byte("old\n"), 0o600)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				os.Symlink(victim, p+"~")
			}
		}
	}()
	for i := 0; i < 3000; i++ {
		if err := Backup(p); err != nil {
			// losing the race to the planter is an error, never a write
			// through its link
			continue
		}
	}
	close(stop)
	wg.Wait()
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Fatalf("a backup was written through a planted symbolic link: victim holds %q", b)
	}
	// and without a planter, the backup is the old file, mode kept
	os.Remove(p + "~")
	os.Symlink(victim, p+"~")
	live := New(context.Background(), false, false, nil)
	if err := live.WriteFile(p, []byte("new\n"), 0o600, true); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(p + "~")
	if b, _ := os.ReadFile(p + "~"); err != nil || !fi.Mode().IsRegular() || string(b) != "old\n" {
		t.Fatalf("backup %v %q (%v), want the old file", fi.Mode(), b, err)
	}
	if b, _ := os.ReadFile(victim); !bytes.Equal(b, []byte("precious\n")) {
		t.Fatalf("victim holds %q", b)
	}
}
