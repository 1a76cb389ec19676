package qcow2

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"pifarm/builtins/disk/disktest"
)

// rawBase makes a 100 MiB raw image with random content in a few places
// (the rest sparse zeros), as a linked clone's base.
func rawBase(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "base.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(100 << 20); err != nil {
		t.Fatal(err)
	}
	for i, off := range []int64{0, 4 << 20, 5<<20 + 12345, 40 << 20, 100<<20 - 70000} {
		if _, err := f.WriteAt(disktest.RandBytes(int64(i+1), 70000), off); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// TestReaderMatchesQemuImg writes into a linked clone with qemu-io
// (allocated clusters over an unallocated backing) and compares the guest
// view with what qemu-img convert makes of it.
func TestReaderMatchesQemuImg(t *testing.T) {
	dir := t.TempDir()
	base := rawBase(t, dir)
	q := filepath.Join(dir, "linked.qcow2")
	disktest.Run(t, "", "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", q)
	disktest.Run(t, "", "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 4194304 65536", "-c", "write -P 0xcd 5000000 3000", "-c", "write -z 6000000 131072", q)
	full := filepath.Join(dir, "full.qcow2")
	disktest.Run(t, "", "qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", q, full)
	packed := filepath.Join(dir, "compressed.qcow2")
	disktest.Run(t, "", "qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2", q, packed)
	want := filepath.Join(dir, "want.raw")
	disktest.Run(t, "", "qemu-img", "convert", "-f", "qcow2", "-O", "raw", q, want)
	wb, _ := os.ReadFile(want)
	for _, p := range []string{q, full, packed} {
		r, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if r.Size != int64(len(wb)) {
			t.Fatalf("%s: size %d want %d", p, r.Size, len(wb))
		}
		got := make([]byte, len(wb))
		if _, err := r.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, wb) {
			for i := range got {
				if got[i] != wb[i] {
					t.Fatalf("%s: first difference at byte %d", p, i)
				}
			}
		}
		// odd, cluster-crossing reads and reads past the end
		b := make([]byte, 70000)
		if n, err := r.ReadAt(b, 4194304-1000); n != len(b) || err != nil || !bytes.Equal(b, wb[4194304-1000:4194304-1000+70000]) {
			t.Fatalf("%s: crossing read %d %v", p, n, err)
		}
		if n, err := r.ReadAt(b, r.Size-10); n != 10 || err != io.EOF {
			t.Fatalf("%s: read at end: %d %v", p, n, err)
		}
		r.Close()
	}
	if b, _ := os.ReadFile(q); !Is(q) || len(b) == 0 {
		t.Fatal("Is")
	}
	if Is(base) {
		t.Fatal("raw taken for qcow2")
	}
}

// TestHoldsData: the linked clone holds the clusters qemu-io wrote (data
// and zeros), nothing else; its backing is the raw base.
func TestHoldsData(t *testing.T) {
	dir := t.TempDir()
	base := rawBase(t, dir)
	p := filepath.Join(dir, "linked.qcow2")
	disktest.Run(t, "", "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", p)
	disktest.Run(t, "", "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 4194304 65536", "-c", "write -z 6000000 131072", p)
	q, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.Backing != base || q.BackingFmt != "raw" || q.BackingImage() != nil {
		t.Fatalf("backing %q (%q), image %v", q.Backing, q.BackingFmt, q.BackingImage())
	}
	for _, tc := range []struct {
		off, n int64
		want   bool
	}{
		{0, 4 << 20, false},
		{4<<20 - 1, 2, true},
		{4<<20 + 65536, 6000000 - (4<<20 + 65536) - 65536, false},
		{6000000, 1, true},
		{50 << 20, 50 << 20, false},
		{200 << 20, 1, false},
		{0, 0, false},
	} {
		if got, err := q.HoldsData(tc.off, tc.n); err != nil || got != tc.want {
			t.Errorf("HoldsData(%d, %d) = %v, %v; want %v", tc.off, tc.n, got, err, tc.want)
		}
	}
}

// FuzzOpenQcow2 feeds arbitrary headers and tables to the qcow2 reader
// (seeded with what qemu-img writes; the backing file offset is cleared, so
// no other file is opened): no panic, no allocation a header merely asks
// for, and reads of the guest view, of the snapshot table and of the
// refcounts end.
func FuzzOpenQcow2(f *testing.F) {
	dir := f.TempDir()
	// small files (512-byte clusters, 64 KiB): the fuzzer mutates them fast
	p, packed := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "packed.qcow2")
	disktest.Run(f, "", "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", p, "64K")
	disktest.Run(f, "", "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1024 2048", "-c", "write -z 8192 4096", p)
	disktest.Run(f, "", "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "cluster_size=512,compat=0.10", p, packed)
	snap := filepath.Join(dir, "snap.qcow2")
	disktest.Run(f, "", "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", snap, "64K")
	disktest.Run(f, "", "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1024 2048", snap)
	disktest.Run(f, "", "qemu-img", "snapshot", "-c", "one", snap)
	disktest.Run(f, "", "qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 1024 512", snap)
	for _, p := range []string{p, packed, snap} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tm := time.AfterFunc(10*time.Second, func() { panic("FuzzOpenQcow2: one input took over 10 s (a loop?)") })
		defer tm.Stop()
		if len(data) >= 16 {
			clear(data[8:16])
		}
		q, err := parse(bytes.NewReader(data), filepath.Join(dir, "fuzz.qcow2"), 0)
		if err != nil {
			return
		}
		defer q.Close()
		b := make([]byte, 70000)
		q.ReadAt(b, 0)
		q.ReadAt(b, 4000)
		q.ReadAt(b, q.Size-1)
		q.HoldsData(0, 1<<20)
		ss, _ := q.Snapshots()
		for _, s := range ss {
			q.SnapshotUsage(s)
		}
	})
}
