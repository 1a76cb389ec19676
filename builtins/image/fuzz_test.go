package image

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzParseMBR feeds arbitrary first sectors and sizes to the MBR reader:
// it must never panic, and whatever it accepts must be a RaspiOS layout
// that fits the file. The corpus lives in testdata/fuzz/FuzzParseMBR.
func FuzzParseMBR(f *testing.F) {
	good := mbrSector([3]uint32{0x0c, 8192, 524288}, [3]uint32{0x83, 532480, 1000000})
	f.Add(good, int64(532480+1000000)*512)
	f.Add(mbrSector([3]uint32{0xee, 1, 0xffffffff}), int64(1<<30))
	f.Add(make([]byte, 512), int64(512))
	f.Add([]byte{}, int64(0))
	f.Add(mbrSector([3]uint32{0x0c, 8192, 8192}, [3]uint32{0x83, 16384, 0xffffffff}), int64(1<<40))
	f.Fuzz(func(t *testing.T, head []byte, size int64) {
		l, err := ParseMBR(head, size)
		if err != nil {
			if l != nil {
				t.Fatal("layout and error")
			}
			return
		}
		b, r := l.Boot(), l.Root()
		if b.Type != 0x0c || b.Start < MinBootStart || r.Type != 0x83 || r.Start < b.End() || b.Sectors == 0 || r.Sectors == 0 {
			t.Fatalf("accepted a bad layout: %+v", l.Parts)
		}
		for _, p := range l.Parts {
			if p.Type != 0 && int64(p.End())*SectorSize > size {
				t.Fatalf("accepted partition %d past the end of %d bytes", p.Index, size)
			}
		}
		if s := l.SfdiskScript(0); !bytes.Contains([]byte(s), []byte("type=83")) {
			t.Fatalf("script %q", s)
		}
		if _, err := l.withRoot(r.Sectors); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzParseDir feeds arbitrary directory clusters to the FAT directory
// parser (long names, deleted entries, labels): it must never panic.
func FuzzParseDir(f *testing.F) {
	fs := &FAT32{}
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
	run(f, "", "truncate", "-s", "96K", p)
	run(f, "", "mkfs.vfat", "-F", "32", "-s", "1", "-R", "2", "-f", "1", p)
	seed, _ := os.ReadFile(p)
	fs, err := OpenFAT32(memDisk(seed), memDisk(seed), 0, int64(len(seed)))
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
		fs, err := OpenFAT32(img, img, 0, int64(len(img)))
		if err != nil {
			return
		}
		fs.ReadDir("")
		fs.ReadFile("kernel8.img")
		fs.ReadFile("a rather long file name.txt")
		fs.CopyFile(context.Background(), io.Discard, "kernel8.img")
		if err := fs.WriteFile("new file.txt", []byte("new")); err == nil {
			fs2, err := OpenFAT32(img, nil, 0, int64(len(img)))
			if err != nil {
				t.Fatalf("reopen after a write: %v", err)
			}
			if b, err := fs2.ReadFile("new file.txt"); err != nil || string(b) != "new" {
				t.Fatalf("read back %q, %v", b, err)
			}
		}
	})
}
