package image_test

import (
	"os"
	"path/filepath"
	"testing"

	"pifarm/builtins/farm"
	"pifarm/builtins/virt"
)

// TestRecipeRemoteDiskRefused: once clone 2's disk has been uploaded to
// its remote libvirt host (its upload record says so: written before step 2), the offline
// operations on its disk file here are refused with the way on; before
// that, and on a node of this machine, they work.
func TestRecipeRemoteDiskRefused(t *testing.T) {
	const uri = "qemu+ssh://root@farm2.invalid/system"
	uploaded := func(t *testing.T, dir string) {
		h, err := farm.ParseHostURI(uri)
		if err != nil {
			t.Fatal(err)
		}
		cache := filepath.Join(dir, "cache")
		rec := virt.Record(cache, h, virt.DiskVol(virt.FarmTag(cache), 2))
		if err := os.MkdirAll(filepath.Dir(rec), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(rec, []byte(`{"key":"1-1","done":1,"sha256":"00"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		// a user's recipe opening the root file system offline
		if err := os.WriteFile(filepath.Join(dir, "open.star"), []byte("chroot.open(2, root = image.verify(2).root)\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	lives := "its disk lives on root@farm2.invalid since its first start there (volume pifarm-"
	runStepsWith(t, `, host = "`+uri+`"`, map[int]func(*testing.T, string){2: uploaded}, []recipeStep{
		{args: "run box --force-clone 2", want: []string{"new clone"}},
		{args: "run box --snapshot 2 before", want: []string{"snapshot before taken"}},
		{args: "run box --snapshot 2 after", code: 1, want: []string{"snapshot of instance 2: " + lives, "pifarm run box --flush-clone 2"}},
		{args: "run box --rollback 2 before", code: 1, want: []string{"rollback of instance 2: " + lives}},
		{args: "run box --delete-snapshot 2 before", code: 1, want: []string{"deleting a snapshot of instance 2: " + lives}},
		{args: "run image --promote 2", code: 1, want: []string{"promotion of instance 2: " + lives}},
		{args: "run box --force-clone 2", code: 1, want: []string{"a new clone of instance 2: " + lives}},
		{args: "run DIR/open.star", code: 1, want: []string{"chroot.open 2: opening the root file system of instance 2: " + lives}},
		{args: "run box --snapshots 2", want: []string{"before"}},
		{args: "run box --snapshot 1 here", want: []string{"snapshot here taken"}},
	})
}
