package image

import (
	"bytes"
	"testing"
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
