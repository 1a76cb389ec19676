package virt

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExtentsAndDataSum: the extents of a sparse file are its written
// ranges, and the shell script's checksum of a range (what a host runs)
// is the one computed here.
func TestExtentsAndDataSum(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sparse it's.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const mib = 1 << 20
	f.Truncate(64 * mib)
	for _, off := range []int64{0, 8 * mib, 9 * mib, 40 * mib} {
		f.WriteAt([]byte(strings.Repeat("pifarm", 50000)), off)
	}
	ext, err := Extents(f, 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	var data int64
	for _, e := range ext {
		data += e.Len
		if e.Off < 0 || e.Off+e.Len > 64*mib {
			t.Fatalf("extent %+v out of the file", e)
		}
	}
	if len(ext) < 3 || data >= 16*mib {
		t.Fatalf("extents %+v: the holes were not found", ext)
	}
	// The host's script: one line per range in, its sha256 out.
	var in strings.Builder
	var want []string
	ranges := append(ext, Extent{0, 0}, Extent{8*mib + 100, 5000})
	for _, e := range ranges {
		fmt.Fprintf(&in, "%d %d\n", e.Off, e.Len)
		b := make([]byte, e.Len)
		f.ReadAt(b, e.Off)
		sum := sha256.Sum256(b)
		want = append(want, hex.EncodeToString(sum[:]))
	}
	cmd := exec.Command("sh", "-c", RangeSumScript(path))
	cmd.Stdin = strings.NewReader(in.String())
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		got = append(got, strings.Fields(l)[0])
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("script's sums %v, here %v", got, want)
	}
}

// TestPieces: extents become upload pieces of at most max bytes, small
// holes between extents sent within a piece, nothing before from.
func TestPieces(t *testing.T) {
	const M = 1 << 20
	for _, tc := range []struct {
		name string
		ext  []Extent
		from int64
		want []Extent
	}{
		{"none", nil, 0, nil},
		{"one small", []Extent{{0, 4096}}, 0, []Extent{{0, 4096}}},
		{"small holes merged", []Extent{{0, 4096}, {8192, 4096}, {M, 4096}}, 0, []Extent{{0, M + 4096}}},
		{"big hole splits", []Extent{{0, 4096}, {3 * M, 4096}}, 0, []Extent{{0, 4096}, {3 * M, 4096}}},
		{"split at max", []Extent{{0, 20 * M}}, 0, []Extent{{0, 8 * M}, {8 * M, 8 * M}, {16 * M, 4 * M}}},
		{"no merge past max", []Extent{{0, 7 * M}, {7*M + 4096, 2 * M}}, 0, []Extent{{0, 7 * M}, {7*M + 4096, 2 * M}}},
		{"from inside an extent", []Extent{{0, 4 * M}, {10 * M, M}}, 3 * M, []Extent{{3 * M, M}, {10 * M, M}}},
		{"from past all", []Extent{{0, M}}, 2 * M, nil},
	} {
		got := Pieces(tc.ext, tc.from, 8*M, M)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
