package mbr

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// mbrSector builds a first sector with the given entries (type, start,
// size) and the 55 aa signature.
func mbrSector(entries ...[3]uint32) []byte {
	b := make([]byte, 1024)
	binary.LittleEndian.PutUint32(b[440:], 0xdeadbeef)
	for i, e := range entries {
		o := 446 + 16*i
		b[o+4] = byte(e[0])
		binary.LittleEndian.PutUint32(b[o+8:], e[1])
		binary.LittleEndian.PutUint32(b[o+12:], e[2])
	}
	b[510], b[511] = 0x55, 0xaa
	return b
}

func TestParse(t *testing.T) {
	good := mbrSector([3]uint32{0x0c, 8192, 524288}, [3]uint32{0x83, 532480, 1000000})
	size := int64(532480+1000000) * 512
	gpt := mbrSector([3]uint32{0xee, 1, 0xffffffff})
	gptHeader := append([]byte(nil), good...)
	copy(gptHeader[512:], "EFI PART")
	noSig := append([]byte(nil), good...)
	noSig[510] = 0
	badBoot := append([]byte(nil), good...)
	badBoot[446] = 0x42
	for _, tc := range []struct {
		name string
		head []byte
		size int64
		want string
	}{
		{"good", good, size, ""},
		{"empty file", nil, 0, "truncated: 0 bytes"},
		{"short file", good[:100], 100, "truncated: 100 bytes"},
		{"zeros", make([]byte, 1024), size, "no partition table (sector 0 is all zeros)"},
		{"no signature", noSig, size, "no MBR signature 55 aa at byte 510, found 00 aa"},
		{"gpt protective", gpt, size, "GPT partition table (protective MBR entry 1"},
		{"gpt header", gptHeader, size, "GPT partition table (found \"EFI PART\""},
		{"bad boot flag", badBoot, size, "unreadable MBR"},
		{"empty table", mbrSector(), size, "empty partition table"},
		{"p1 unused", mbrSector([3]uint32{0, 0, 0}, [3]uint32{0x83, 532480, 1000}), size, "partition 1 is unused"},
		{"p1 fat16", mbrSector([3]uint32{0x0e, 8192, 524288}, [3]uint32{0x83, 532480, 1000}), size, "partition 1 has type 0x0e (FAT16), want 0x0c"},
		{"p1 early", mbrSector([3]uint32{0x0c, 2048, 524288}, [3]uint32{0x83, 532480, 1000}), size, "partition 1 starts at sector 2048, want 8192"},
		{"p2 unused", mbrSector([3]uint32{0x0c, 8192, 524288}), size, "partition 2 is unused"},
		{"p2 swap", mbrSector([3]uint32{0x0c, 8192, 524288}, [3]uint32{0x82, 532480, 1000}), size, "partition 2 has type 0x82 (Linux swap), want 0x83"},
		{"overlap", mbrSector([3]uint32{0x0c, 8192, 524288}, [3]uint32{0x83, 500000, 1000}), size, "partition 2 (sectors 500000..500999) overlaps partition 1 (sectors 8192..532479)"},
		{"p3 overlap", mbrSector([3]uint32{0x0c, 8192, 524288}, [3]uint32{0x83, 532480, 1000}, [3]uint32{0x83, 532000, 1000}), size, "partition 3 (sectors 532000..532999) overlaps partition 1"},
		{"truncated", good, size - 512, fmt.Sprintf("truncated file: partition 2 ends at byte %d but the image holds only %d bytes", size, size-512)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := Parse(tc.head, tc.size)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if l.DiskID != 0xdeadbeef || l.Boot().Start != 8192 || l.Root().Sectors != 1000000 {
					t.Fatalf("layout %+v", l)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrLayout) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

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
		l, err := Parse(head, size)
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
		if _, err := l.WithRoot(r.Sectors); err != nil {
			t.Fatal(err)
		}
	})
}
