package virt

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExtentsAndDataSum: the extents of a sparse file are its written
// ranges, and the shell script's checksum over them (what a host runs) is
// the one computed here.
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
	want := dataSHA256(path, ext)
	out, err := exec.Command("sh", "-c", DataSumScript(path, ext)).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out))[0]; got != want {
		t.Fatalf("script %s, here %s", got, want)
	}
	// No data at all: the sum of nothing on both sides.
	empty := sha256.Sum256(nil)
	if s := dataSHA256(path, nil); s != hex.EncodeToString(empty[:]) {
		t.Fatal(s)
	}
	out, _ = exec.Command("sh", "-c", DataSumScript(path, nil)).Output()
	if !strings.HasPrefix(string(out), hex.EncodeToString(empty[:])) {
		t.Fatalf("empty script: %s", out)
	}
}
