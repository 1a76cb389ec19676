package fat

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"pifarm/builtins/disk/disktest"
)

var fixedTime = time.Date(2024, 3, 15, 12, 30, 44, 0, time.UTC)

// partStart is where the test file systems start in their image file (in
// sectors): not at 0, as a boot partition never is.
const partStart = 2048

// mkfsImage makes an image file holding a FAT32 file system of mib MiB
// (mkfs.vfat, one sector per cluster) at sector partStart, with the files
// (name -> content, "dir/name" in a folder dir made first) copied in by
// mcopy. It returns the image and its mtools name (IMG@@OFFSET).
func mkfsImage(t testing.TB, mib uint64, files map[string][]byte) (img, mimg string) {
	t.Helper()
	dir := t.TempDir()
	img = filepath.Join(dir, "fat.img")
	disktest.Run(t, "", "truncate", "-s", fmt.Sprint((partStart+mib*2048)*512), img)
	disktest.Run(t, "", "mkfs.vfat", "-F", "32", "-s", "1", "-n", "BOOTFS", "--offset", fmt.Sprint(partStart), img, fmt.Sprint(mib*1024))
	mimg = fmt.Sprintf("%s@@%d", img, partStart*512)
	made := map[string]bool{}
	for name, b := range files {
		folder := ""
		if i := strings.LastIndexByte(name, '/'); i >= 0 {
			folder = name[:i]
		}
		if folder != "" && !made[folder] {
			disktest.Run(t, "", "mmd", "-i", mimg, "::"+folder)
			made[folder] = true
		}
		src := filepath.Join(dir, "src")
		if err := os.WriteFile(src, b, 0o644); err != nil {
			t.Fatal(err)
		}
		disktest.Run(t, "", "mcopy", "-i", mimg, src, "::"+name)
	}
	return img, mimg
}

// open opens the file system of img for reading and writing.
func open(t testing.TB, img string, mib uint64) *FS {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fs, err := Open(f, f, partStart*512, int64(mib)<<20)
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

// TestReadMatchesMtools: what mcopy wrote (8.3 names, long names, a
// folder, a file of many clusters) reads back byte for byte, whole or
// streamed, under any case of its name.
func TestReadMatchesMtools(t *testing.T) {
	files := map[string][]byte{
		"kernel8.img":                       disktest.RandBytes(1, 300_000),
		"cmdline.txt":                       []byte("console=serial0,115200\n"),
		"A Long File Name With Spaces.text": disktest.RandBytes(4, 5000),
		"overlays/disable-bt-overlay.dtbo":  disktest.RandBytes(5, 7777),
		"empty":                             {},
	}
	img, _ := mkfsImage(t, 40, files)
	fs := open(t, img, 40)
	for name, want := range files {
		for _, n := range []string{name, strings.ToUpper(name)} {
			got, err := fs.ReadFile(n)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("ReadFile(%q): %d bytes, %v; want %d bytes", n, len(got), err, len(want))
			}
			var b bytes.Buffer
			if size, err := fs.CopyFile(context.Background(), &b, n); err != nil || size != int64(len(want)) || !bytes.Equal(b.Bytes(), want) {
				t.Errorf("CopyFile(%q): %d bytes, %v; want %d bytes", n, size, err, len(want))
			}
		}
	}
	es, err := fs.ReadDir("/overlays/")
	if err != nil || len(es) != 1 || es[0].Name != "disable-bt-overlay.dtbo" || es[0].Short != "DISABL~1.DTB" || es[0].Dir || es[0].Size != 7777 {
		t.Errorf("ReadDir(overlays): %+v, %v", es, err)
	}
	if _, err := fs.ReadFile("overlays"); err == nil || !strings.Contains(err.Error(), "is a folder") {
		t.Errorf("folder read as a file: %v", err)
	}
	ro, err := Open(bytes.NewReader(nil), nil, 0, 0)
	if err == nil {
		t.Errorf("an empty image opened: %v", ro)
	}
}

func TestFATFillsFolderAndDisk(t *testing.T) {
	img, mimg := mkfsImage(t, 40, map[string][]byte{"kernel8.img": disktest.RandBytes(1, 1000), "overlays/disable-bt-overlay.dtbo": {1}})
	fs := open(t, img, 40)
	// many long names: the root folder (one 512-byte cluster) must grow
	for i := 0; i < 60; i++ {
		name := fmt.Sprintf("seeded file number %02d with a long name.conf", i)
		if err := fs.WriteFile(name, []byte(name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := fs.WriteFile("overlays/new-overlay.dtbo", []byte("x")); err != nil {
		t.Fatal(err)
	}
	// a 255-character name needs 20 entries: more than one 512-byte cluster
	longest := strings.Repeat("n", 251) + ".txt"
	if err := fs.WriteFile(longest, []byte("longest")); err != nil {
		t.Fatal(err)
	}
	disktest.FsckClean(t, img, partStart, 40*2048)
	if got := disktest.Run(t, "", "mtype", "-i", mimg, "::seeded file number 59 with a long name.conf"); got != "seeded file number 59 with a long name.conf" {
		t.Errorf("mtype: %q", got)
	}
	if got := disktest.Run(t, "", "mtype", "-i", mimg, "::"+longest); got != "longest" {
		t.Errorf("mtype longest: %q", got)
	}
	if got := disktest.Run(t, "", "mtype", "-i", mimg, "::overlays/new-overlay.dtbo"); got != "x" {
		t.Errorf("mtype: %q", got)
	}
	free, _ := fs.FreeBytes()
	if err := fs.WriteFile("huge.bin", make([]byte, free+1)); err == nil || !strings.Contains(err.Error(), "full") {
		t.Errorf("overfull write: %v", err)
	}
	disktest.FsckClean(t, img, partStart, 40*2048)
}

// FuzzParseDir feeds arbitrary directory clusters to the FAT directory
// parser (long names, deleted entries, labels): it must never panic.
func FuzzParseDir(f *testing.F) {
	fs := &FS{}
	var es []DirEntry
	f.Add(fs.newEntries("a long name.txt", es, 3, 10, fixedTime))
	f.Add(fs.newEntries("SSH", es, 0, 0, fixedTime))
	f.Add(make([]byte, 64))
	f.Fuzz(func(t *testing.T, raw []byte) {
		for _, e := range parseDir(raw) {
			if e.slot < e.first {
				t.Fatalf("entry %+v", e)
			}
		}
		freeRun(raw, 3)
	})
}

// memDisk is a growable in-memory image for the FAT fuzzer.
type memDisk []byte

func (m memDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(m)) {
		return 0, io.EOF
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m memDisk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m)) {
		return 0, io.ErrShortWrite
	}
	return copy(m[off:], p), nil
}

// FuzzFAT32 feeds arbitrary file system bytes to the FAT32 reader and
// writer: no panics, no runaway allocations, and a file written can be
// read back.
func FuzzFAT32(f *testing.F) {
	p := filepath.Join(f.TempDir(), "tiny.img")
	disktest.Run(f, "", "truncate", "-s", "96K", p)
	disktest.Run(f, "", "mkfs.vfat", "-F", "32", "-s", "1", "-R", "2", "-f", "1", p)
	seed, _ := os.ReadFile(p)
	fs, err := Open(memDisk(seed), memDisk(seed), 0, int64(len(seed)))
	if err != nil {
		f.Fatal(err)
	}
	fs.Now = func() time.Time { return fixedTime }
	fs.WriteFile("kernel8.img", []byte("kernel"))
	fs.WriteFile("a rather long file name.txt", bytes.Repeat([]byte("x"), 1000))
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		img := append(memDisk(nil), data...)
		tm := time.AfterFunc(10*time.Second, func() { panic("FuzzFAT32: one input took over 10 s (a loop?)") })
		defer tm.Stop()
		fs, err := Open(img, img, 0, int64(len(img)))
		if err != nil {
			return
		}
		fs.ReadDir("")
		fs.ReadFile("kernel8.img")
		fs.ReadFile("a rather long file name.txt")
		fs.CopyFile(context.Background(), io.Discard, "kernel8.img")
		if err := fs.WriteFile("new file.txt", []byte("new")); err == nil {
			fs2, err := Open(img, nil, 0, int64(len(img)))
			if err != nil {
				t.Fatalf("reopen after a write: %v", err)
			}
			if b, err := fs2.ReadFile("new file.txt"); err != nil || string(b) != "new" {
				t.Fatalf("read back %q, %v", b, err)
			}
		}
	})
}
