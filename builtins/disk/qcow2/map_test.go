package qcow2

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"pifarm/builtins/disk/disktest"
)

// TestMapMatchesQemuImg: the map's data ranges are those `qemu-img map`
// reports, the map covers the guest without gaps, and the guest view put
// together from it (bytes of File at Offset, zeros, inflated clusters) is
// what qemu-img convert makes of the image.
func TestMapMatchesQemuImg(t *testing.T) {
	dir := t.TempDir()
	base := rawBase(t, dir)
	q := filepath.Join(dir, "linked.qcow2")
	disktest.Run(t, "", "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", q)
	disktest.Run(t, "", "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 4194304 65536", "-c", "write -P 0xcd 5000000 3000", "-c", "write -z 6000000 131072", "-c", "write -P 0xef 99000000 1000", q)
	full := filepath.Join(dir, "full.qcow2")
	disktest.Run(t, "", "qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", q, full)
	packed := filepath.Join(dir, "compressed.qcow2")
	disktest.Run(t, "", "qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2", q, packed)
	top := filepath.Join(dir, "top.qcow2") // a chain of two qcow2 files on the raw base
	disktest.Run(t, "", "qemu-img", "create", "-q", "-f", "qcow2", "-b", q, "-F", "qcow2", top)
	disktest.Run(t, "", "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 512", "-c", "write -z 4194304 65536", top)
	want := filepath.Join(dir, "want.raw")
	disktest.Run(t, "", "qemu-img", "convert", "-f", "qcow2", "-O", "raw", top, want)
	wantTop, _ := os.ReadFile(want)
	disktest.Run(t, "", "qemu-img", "convert", "-f", "qcow2", "-O", "raw", q, want)
	wantQ, _ := os.ReadFile(want)
	for _, tc := range []struct {
		path string
		want []byte
	}{{q, wantQ}, {full, wantQ}, {packed, wantQ}, {top, wantTop}} {
		img, err := Open(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		m, err := img.Map()
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, img.Size)
		var pos int64
		for _, e := range m {
			if e.Start != pos || e.Length <= 0 {
				t.Fatalf("%s: extent %+v after %d: a gap or an overlap", tc.path, e, pos)
			}
			pos = e.End()
			switch {
			case !e.Data:
			case e.Offset == -1:
				if _, err := img.ReadAt(got[e.Start:e.End()], e.Start); err != nil {
					t.Fatal(err)
				}
			default:
				f, err := os.Open(e.File)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.ReadAt(got[e.Start:e.End()], e.Offset); err != nil {
					t.Fatalf("%s: extent %+v: %v", tc.path, e, err)
				}
				f.Close()
			}
		}
		if pos != img.Size {
			t.Fatalf("%s: the map ends at %d, the guest at %d", tc.path, pos, img.Size)
		}
		if !bytes.Equal(got, tc.want) {
			t.Fatalf("%s: the guest view put together from the map differs", tc.path)
		}
		if gotData, wantData := dataRanges(m), qemuData(t, tc.path); !equalRanges(gotData, wantData) {
			t.Errorf("%s: data ranges\n got %v\nwant %v (qemu-img map)", tc.path, gotData, wantData)
		}
		img.Close()
	}
}

type span struct{ Start, End int64 }

func dataRanges(m []Extent) []span {
	var out []span
	for _, e := range m {
		if !e.Data {
			continue
		}
		if n := len(out); n > 0 && out[n-1].End == e.Start {
			out[n-1].End = e.End()
			continue
		}
		out = append(out, span{e.Start, e.End()})
	}
	return out
}

// qemuData is the data ranges `qemu-img map --output=json` reports.
func qemuData(t *testing.T, path string) []span {
	out, err := exec.Command("qemu-img", "map", "--output=json", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	var m []struct {
		Start, Length int64
		Data          bool
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	var out2 []span
	for _, e := range m {
		if !e.Data {
			continue
		}
		if n := len(out2); n > 0 && out2[n-1].End == e.Start {
			out2[n-1].End = e.Start + e.Length
			continue
		}
		out2 = append(out2, span{e.Start, e.Start + e.Length})
	}
	return out2
}

func equalRanges(a, b []span) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestRawMap: a sparse file's data and holes, zeros past its end.
func TestRawMap(t *testing.T) {
	p := filepath.Join(t.TempDir(), "r.raw")
	f, _ := os.Create(p)
	f.Truncate(8 << 20)
	f.WriteAt(bytes.Repeat([]byte{1}, 4096), 1<<20)
	f.WriteAt(bytes.Repeat([]byte{2}, 8192), 5<<20)
	f.Close()
	m, err := RawMap(p, 10<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{
		{Start: 0, Length: 1 << 20},
		{Start: 1 << 20, Length: 4096, Data: true, File: p, Offset: 1 << 20},
		{Start: 1<<20 + 4096, Length: 4<<20 - 4096},
		{Start: 5 << 20, Length: 8192, Data: true, File: p, Offset: 5 << 20},
		{Start: 5<<20 + 8192, Length: 5<<20 - 8192},
	}
	if len(m) != len(want) {
		t.Fatalf("map %+v\nwant %+v", m, want)
	}
	for i := range m {
		if m[i] != want[i] {
			t.Fatalf("extent %d: %+v, want %+v", i, m[i], want[i])
		}
	}
}
