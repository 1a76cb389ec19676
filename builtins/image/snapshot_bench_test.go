package image

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The snapshot benchmarks work on a full clone of the 4 GiB benchmark
// image whose guest has written about 1.5 GB (24 writes of 64 MiB over its
// root partition), as a provisioned RaspiOS has: a snapshot of a qcow2
// copies its tables and raises its refcounts, so what it costs grows with
// the clusters allocated, not with the virtual size.
//
//	go test -run XXX -bench 'Snapshot|Rollback|Promot' -benchtime 5x ./builtins/image
var (
	filledOnce sync.Once
	filledErr  error
)

// filledID is the instance of the filled clone.
const filledID = 3

// filledClone makes the filled clone once per test binary, in a farm of
// its own (a promotion replaces its image): its instance 0 is a sparse
// copy of the benchmark image.
func filledClone(b *testing.B) *mod {
	b.Helper()
	fx, dir := benchImage(b)
	dir = filepath.Join(dir, "filled")
	img := filepath.Join(dir, "raspios.img")
	m, _ := testMod(b, dir, false)
	filledOnce.Do(func() {
		if filledErr = os.MkdirAll(dir, 0o755); filledErr != nil {
			return
		}
		run(b, "", "cp", "--sparse=always", "-p", fx.path, img)
		if _, filledErr = m.Register(img); filledErr != nil {
			return
		}
		if _, filledErr = m.ProvideQboot(0, ""); filledErr != nil {
			return
		}
		if _, filledErr = m.Clone(filledID, false); filledErr != nil {
			return
		}
		args := []string{"-f", "qcow2"}
		off := int64(fx.rootStart)*512 + 256<<20
		for i := int64(0); i < 24; i++ {
			args = append(args, "-c", fmt.Sprintf("write -P 0x%02x %d 64M", 0x30+i, off+i*(64<<20)))
		}
		run(b, "", "qemu-io", append(args, m.f.Disk(filledID))...)
	})
	if filledErr != nil {
		b.Fatal(filledErr)
	}
	return m
}

func BenchmarkSnapshotClone4GiB(b *testing.B) {
	m := filledClone(b)
	b.ResetTimer()
	var worst time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := m.TakeSnapshot(filledID, fmt.Sprintf("bench-%d", i)); err != nil {
			b.Fatal(err)
		}
		worst = max(worst, time.Since(t0))
	}
	b.StopTimer()
	b.ReportMetric(worst.Seconds(), "worst-s")
	ss, _ := m.Snapshots(filledID)
	for _, s := range ss {
		if strings.HasPrefix(s.Name, "bench-") {
			m.DeleteSnapshot(filledID, s.Name)
		}
	}
}

func BenchmarkRollbackClone4GiB(b *testing.B) {
	fx, _ := benchImage(b)
	m := filledClone(b)
	if _, err := m.TakeSnapshot(filledID, "rollback-bench"); err != nil {
		b.Fatal(err)
	}
	defer m.DeleteSnapshot(filledID, "rollback-bench")
	off := int64(fx.rootStart)*512 + 300<<20
	var worst time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		run(b, "", "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x77 %d 16M", off), m.f.Disk(filledID))
		b.StartTimer()
		t0 := time.Now()
		r, err := m.Rollback(filledID, "rollback-bench")
		if err != nil || r.Boot.State != "ok" {
			b.Fatalf("%+v %v", r, err)
		}
		worst = max(worst, time.Since(t0))
	}
	b.ReportMetric(worst.Seconds(), "worst-s")
}

// BenchmarkPromote4GiB promotes the filled clone and, in the same round,
// converts it with qemu-img convert -O raw alone (as qemu-img leaves the
// file: not synced) and then synced (as a promotion does before it renames
// the file over the image); each after a sync of everything written before
// (outside the timing), the backup of the replaced image removed after
// each round. Reported per round: promote-s, convert-s, convert-sync-s and
// their ratios.
func BenchmarkPromote4GiB(b *testing.B) {
	m := filledClone(b)
	dst := filepath.Join(filepath.Dir(m.Registered()), "plain.raw")
	defer os.Remove(dst)
	var promote, convert, convertSync time.Duration
	timed := func(fn func()) time.Duration {
		os.Remove(dst)
		run(b, "", "sync")
		t0 := time.Now()
		fn()
		return time.Since(t0)
	}
	conv := func() {
		if o, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", m.f.Disk(filledID), dst).CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, o)
		}
	}
	for i := 0; i < b.N; i++ {
		convert += timed(conv)
		convertSync += timed(func() { conv(); run(b, "", "sync", dst) })
		var r *PromoteResult
		promote += timed(func() {
			var err error
			if r, err = m.Promote(filledID); err != nil {
				b.Fatal(err)
			}
		})
		os.Remove(r.Backup)
	}
	n := float64(b.N)
	b.ReportMetric(promote.Seconds()/n, "promote-s")
	b.ReportMetric(convert.Seconds()/n, "convert-s")
	b.ReportMetric(convertSync.Seconds()/n, "convert-sync-s")
	b.ReportMetric(promote.Seconds()/convert.Seconds(), "x-convert")
	b.ReportMetric(promote.Seconds()/convertSync.Seconds(), "x-convert-sync")
}
