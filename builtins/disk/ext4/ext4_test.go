package ext4

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"pifarm/builtins/disk/disktest"
)

// mkfs returns the superblock that mkfs.ext4 writes with opts into an
// 8 MiB file.
func mkfs(t testing.TB, opts ...string) []byte {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	disktest.Run(t, "", "truncate", "-s", "8M", img)
	disktest.Run(t, "", "mkfs.ext4", append(append([]string{"-q", "-F", "-L", "rootfs"}, opts...), img)...)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	return b[1024:2048]
}

// TestParse reads what mkfs.ext4 writes and refuses damaged superblocks,
// naming what is wrong; a superblock without the magic is
// ErrNoFileSystem.
func TestParse(t *testing.T) {
	good := mkfs(t)
	e, err := parse(good, 0)
	if err != nil {
		t.Fatal(err)
	}
	if e.Size() != 8<<20 || e.Used() <= 0 || e.Used() >= e.Size() || e.Label != "rootfs" || e.Errors {
		t.Fatalf("superblock %+v", e)
	}
	damaged := func(at int, b byte) []byte {
		sb := append([]byte(nil), good...)
		sb[at] ^= b
		return sb
	}
	for _, tc := range []struct {
		name string
		sb   []byte
		want string
		nofs bool
	}{
		{"zeros", make([]byte, 1024), "no ext2/3/4 file system at byte 0 (magic 0x0000)", true},
		{"checksum", damaged(sbLabel, 1), "superblock checksum", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(tc.sb, 0)
			if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, ErrNoFileSystem) != tc.nofs {
				t.Fatalf("error %v, want %q (ErrNoFileSystem: %v)", err, tc.want, tc.nofs)
			}
		})
	}
}

// FuzzReadExt4 feeds arbitrary superblocks to the ext4 reader (seeded with
// the superblock mkfs.ext4 writes, with and without metadata checksums): it
// must never panic, and what it accepts must be sizes status can print.
func FuzzReadExt4(f *testing.F) {
	for _, opts := range [][]string{{}, {"-O", "^metadata_csum,^64bit", "-b", "1024"}} {
		f.Add(mkfs(f, opts...))
	}
	f.Add(make([]byte, 1024))
	f.Fuzz(func(t *testing.T, sb []byte) {
		if len(sb) < 1024 {
			sb = append(sb, make([]byte, 1024-len(sb))...)
		}
		e, err := parse(sb[:1024], 0)
		if err != nil {
			return
		}
		if e.BlockSize < 1024 || e.BlockSize > 64<<10 || e.Blocks <= 0 || e.FreeBlocks < 0 || e.FreeBlocks > e.Blocks || e.Used() < 0 {
			t.Fatalf("accepted %+v", e)
		}
	})
}
