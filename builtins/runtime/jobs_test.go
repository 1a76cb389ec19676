package runtime

import (
	"os"
	"path/filepath"
	"testing"

	"pifarm/builtins/farm"
)

func TestMemoryBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"1G", 1 << 30, true}, {"512M", 512 << 20, true}, {"1024", 1 << 30, true}, {"2g", 2 << 30, true},
		{"1GB", 1 << 30, true}, {"4096K", 4 << 20, true}, {"", 0, false}, {"G", 0, false}, {"1X", 0, false},
		{"99999999999999999999G", 0, false}, {"9999999999T", 0, false},
	} {
		got, ok := memoryBytes(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("memoryBytes(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestMemAvailableAndDefaultJobs(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meminfo")
	os.WriteFile(p, []byte("MemTotal:       8000000 kB\nMemFree:  100 kB\nMemAvailable:    3145728 kB\n"), 0o644)
	if got, ok := memAvailable(p); !ok || got != 3<<30 {
		t.Errorf("memAvailable = %d, %v; want 3 GiB", got, ok)
	}
	c := farm.Default()
	if n := DefaultJobs(c); n < 1 {
		t.Errorf("DefaultJobs = %d", n)
	}
	c.QEMU.Memory = "1000000G" // no guest fits: still one at a time
	if n := DefaultJobs(c); n != 1 {
		t.Errorf("DefaultJobs with huge guests = %d, want 1", n)
	}
}
