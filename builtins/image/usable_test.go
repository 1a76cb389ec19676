package image

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// brokenImages are the ways an image can be unusable that only a look past
// its partition table finds, each made with the real tools (debugfs sets
// superblock fields and recomputes the checksum, as a damaged but
// self-consistent superblock would have it), with what the refusal must say
// and whether `e2fsck -fy` (the fix the refusal names) repairs it.
var brokenImages = []struct {
	name    string
	break_  func(t *testing.T, fx *fixture, img string)
	want    []string
	e2fsck  bool // the named e2fsck -f repairs it
	errOnly bool // status cannot show it as a warning of its own (no status check)
}{
	{"no file system in partition 2", func(t *testing.T, fx *fixture, img string) {
		zero(t, img, int64(fx.rootStart)*512, 1<<20)
	}, []string{"partition 2", "no ext2/3/4 file system", "sound copy"}, false, false},
	{"superblock checksum", func(t *testing.T, fx *fixture, img string) {
		// a bit flip in the volume name: only the checksum sees it
		patch(t, img, int64(fx.rootStart)*512+1024+0x78, []byte("rootfT"))
	}, []string{"partition 2", "superblock checksum", "e2fsck -f", "?offset="}, true, false},
	{"errors recorded", func(t *testing.T, fx *fixture, img string) {
		debugfs(t, fx, img, "ssv state 3")
	}, []string{"partition 2", "errors", "e2fsck -f"}, true, false},
	{"free blocks over the size", func(t *testing.T, fx *fixture, img string) {
		debugfs(t, fx, img, "ssv free_blocks_count 99999999")
	}, []string{"partition 2", "free blocks", "e2fsck -f"}, true, false},
	{"no blocks", func(t *testing.T, fx *fixture, img string) {
		debugfs(t, fx, img, "ssv blocks_count 0")
	}, []string{"partition 2", "0 blocks", "e2fsck -f"}, true, false},
	{"block size", func(t *testing.T, fx *fixture, img string) {
		debugfs(t, fx, img, "ssv log_block_size 9")
	}, []string{"partition 2", "block size", "e2fsck -f"}, true, false},
	{"inodes per group", func(t *testing.T, fx *fixture, img string) {
		debugfs(t, fx, img, "ssv inodes_per_group 0")
	}, []string{"partition 2", "inodes", "e2fsck -f"}, true, false},
	{"file system larger than partition 2", func(t *testing.T, fx *fixture, img string) {
		run(t, fmt.Sprintf("label: dos\nlabel-id: 0x%08x\nstart=%d, size=%d, type=c\nstart=%d, size=%d, type=83\n",
			fx.diskID, fx.bootStart, fx.bootN, fx.rootStart, fx.rootN-2048), "sfdisk", "-q", "--no-reread", img)
	}, []string{"partition 2", "larger than partition 2", "resize2fs"}, false, false},
	{"no FAT32 in partition 1", func(t *testing.T, fx *fixture, img string) {
		patch(t, img, int64(fx.bootStart)*512+13, []byte{3}) // sectors per cluster
	}, []string{"partition 1", "no FAT file system", "fsck.vfat"}, false, true},
	{"no kernel8.img", func(t *testing.T, fx *fixture, img string) {
		run(t, "", "mdel", "-i", fmt.Sprintf("%s@@%d", img, fx.bootStart*512), "::kernel8.img")
	}, []string{"partition 1", "no kernel8.img", "QEMU boots"}, false, true},
}

func zero(t *testing.T, img string, off, n int64) {
	t.Helper()
	patch(t, img, off, make([]byte, n))
}

func patch(t *testing.T, img string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func debugfs(t *testing.T, fx *fixture, img, cmd string) {
	t.Helper()
	run(t, "", "debugfs", "-w", "-R", cmd, fmt.Sprintf("%s?offset=%d", img, fx.rootStart*512))
}

// TestBrokenImageRefused: an image that pifarm cannot use (a broken or
// missing root file system, a boot partition without FAT32 or boot files)
// is refused by register, expand and plan_expand before anything is
// written, with an error that names the image, the partition, what is
// wrong and the fix; status warns with the same words. Where the fix is
// e2fsck -f, running it makes the image acceptable.
func TestBrokenImageRefused(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 200 << 20, bootMiB: 64, rootMiB: 120, clusterSectrs: 1})
	for i, tc := range brokenImages {
		t.Run(tc.name, func(t *testing.T) {
			sub := filepath.Join(dir, fmt.Sprint(i))
			os.MkdirAll(sub, 0o755)
			img := filepath.Join(sub, "broken.img")
			run(t, "", "cp", "--sparse=always", fx.path, img)
			tc.break_(t, fx, img)
			m, _ := testMod(t, sub, false)
			before := imageSum(t, img)
			check := func(what string, err error) {
				t.Helper()
				if err == nil {
					t.Fatalf("%s accepted the broken image", what)
				}
				for _, w := range append([]string{img}, tc.want...) {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s: error lacks %q:\n%v", what, w, err)
					}
				}
			}
			_, err := m.Register(img)
			check("register", err)
			if _, err := os.Lstat(m.f.Disk(0)); err == nil {
				t.Error("register made the link")
			}
			if _, err := os.Stat(m.f.Config.CacheDir()); err == nil {
				t.Error("register created the cache")
			}
			_, err = m.PlanExpand(img)
			check("plan_expand", err)
			_, err = m.Expand(img)
			check("expand", err)
			if after := imageSum(t, img); after != before {
				t.Fatal("the refused image changed")
			}
			if !tc.errOnly {
				// registered before it broke: status warns in the same words
				good := filepath.Join(sub, "good.img")
				run(t, "", "cp", "--sparse=always", fx.path, good)
				if _, err := m.Register(good); err != nil {
					t.Fatal(err)
				}
				tc.break_(t, fx, good)
				s, err := m.Status(0)
				if err != nil {
					t.Fatal(err)
				}
				warned := false
				for _, w := range s.Warnings {
					warned = warned || strings.Contains(w, tc.want[1]) && strings.Contains(w, tc.want[len(tc.want)-1])
				}
				if !warned {
					t.Errorf("status does not warn about it: %q", s.Warnings)
				}
			}
			if tc.e2fsck {
				c := run(t, "", "sh", "-c", fmt.Sprintf("e2fsck -fy %s?offset=%d >/dev/null 2>&1; echo $?", img, fx.rootStart*512))
				if c != "1\n" && c != "0\n" {
					t.Fatalf("e2fsck -fy: exit %s", c)
				}
				if _, err := m.Register(img); err != nil {
					t.Fatalf("register after e2fsck -f: %v", err)
				}
			}
		})
	}
}

// TestRegisterGoodImageUnchanged: a sound image registers and plans as
// before; status warns only about its size and the missing boot files.
func TestRegisterGoodImageUnchanged(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 200 << 20, bootMiB: 64, rootMiB: 120, clusterSectrs: 1})
	m, _ := testMod(t, dir, false)
	if _, err := m.Register(fx.path); err != nil {
		t.Fatal(err)
	}
	if _, err := m.PlanExpand(fx.path); err != nil {
		t.Fatal(err)
	}
	s, err := m.Status(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Warnings) != 2 || !strings.Contains(s.Warnings[0], "not one of the sizes") || !strings.Contains(s.Warnings[1], "boot files missing") {
		t.Fatalf("warnings %q", s.Warnings)
	}
}
