package qcow2

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"

	"pifarm/builtins/disk/disktest"
)

// TestSnapshots takes internal snapshots with qemu-img, writes over part
// of the data between them with qemu-io, and compares the table read here
// with qemu-img info's and the usage with what copy-on-write must have
// left: the overwritten clusters, the L2 table copied for the write and
// the L1 table are the first snapshot's alone.
func TestSnapshots(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.qcow2")
	const cs = 64 << 10
	for _, tc := range []struct {
		name string
		opts []string
	}{
		{"refcount16", nil},
		{"refcount2", []string{"-o", "refcount_bits=2"}},
		{"refcount64", []string{"-o", "refcount_bits=64"}},
		{"v2", []string{"-o", "compat=0.10"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"create", "-q", "-f", "qcow2"}, tc.opts...)
			disktest.Run(t, "", "qemu-img", append(args, p, "64M")...)
			q0, err := Open(p)
			if err != nil {
				t.Fatal(err)
			}
			if s, err := q0.Snapshots(); err != nil || len(s) != 0 {
				t.Fatalf("a new image's snapshots: %v %v", s, err)
			}
			q0.Close()
			disktest.Run(t, "", "qemu-io", "-f", "qcow2", "-c", "write -P 1 0 1M", p)
			disktest.Run(t, "", "qemu-img", "snapshot", "-c", "first one", p)
			disktest.Run(t, "", "qemu-io", "-f", "qcow2", "-c", "write -P 2 0 512k", p)
			disktest.Run(t, "", "qemu-img", "snapshot", "-c", "second", p)
			q, err := Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			ss, err := q.Snapshots()
			if err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("qemu-img", "info", "--output=json", p).Output()
			if err != nil {
				t.Fatal(err)
			}
			var info struct {
				Snapshots []struct {
					ID      string `json:"id"`
					Name    string `json:"name"`
					DateSec int64  `json:"date-sec"`
					DateNs  int64  `json:"date-nsec"`
				} `json:"snapshots"`
			}
			if err := json.Unmarshal(out, &info); err != nil {
				t.Fatal(err)
			}
			if len(ss) != 2 || len(info.Snapshots) != 2 {
				t.Fatalf("snapshots %+v, qemu-img: %s", ss, out)
			}
			for i, s := range ss {
				w := info.Snapshots[i]
				if s.ID != w.ID || s.Name != w.Name || s.Date.Unix() != w.DateSec || int64(s.Date.Nanosecond()) != w.DateNs {
					t.Errorf("snapshot %d: %+v, qemu-img says %+v", i, s, w)
				}
				if s.VMStateSize != 0 {
					t.Errorf("snapshot %d: vm state %d", i, s.VMStateSize)
				}
			}
			if tc.name != "v2" && ss[0].DiskSize != 64<<20 {
				t.Errorf("disk size %d", ss[0].DiskSize)
			}
			u1, err := q.SnapshotUsage(ss[0])
			if err != nil {
				t.Fatal(err)
			}
			// 16 data clusters, an L2 table, the L1 table; 8 of the data
			// clusters, the L2 table (copied on write) and the L1 are its own
			if u1.Referenced != 18*cs || u1.Exclusive != 10*cs {
				t.Errorf("first snapshot: %+v, want referenced %d exclusive %d", u1, 18*cs, 10*cs)
			}
			u2, err := q.SnapshotUsage(ss[1])
			if err != nil {
				t.Fatal(err)
			}
			if u2.Referenced != 18*cs || u2.Exclusive != cs {
				t.Errorf("second snapshot: %+v, want referenced %d exclusive %d", u2, 18*cs, cs)
			}
		})
	}
}
