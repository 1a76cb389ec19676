package qemu

import (
	"testing"
	"time"
)

// BenchmarkStart measures qemu.start of a (paused) clone until it returns,
// which is right after QMP answered query-status; the quit in between is not
// timed. It reports how long the QEMU process took to daemonize (qemu-ms,
// QEMU's own start-up) and what pifarm adds on top (after-qemu-ms: pidfile,
// lock, QMP handshake and query-status).
func BenchmarkStart(b *testing.B) {
	f := testFarm(b)
	provide(b, f, 2)
	in, _ := testInstances(b, f, false)
	defer stopAll(b, in)
	n, _ := f.Resolve("2")
	var total, overhead time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		st, err := in.Start(n, Options{Paused: true, NoTAP: true})
		el := time.Since(t0)
		if err != nil || st.Already {
			b.Fatalf("%+v %v", st, err)
		}
		b.StopTimer()
		total += el
		// Time of the QMP part alone, as Start does it after QEMU returned.
		t1 := time.Now()
		if _, err := in.awaitQMP(n, time.Now().Add(5*time.Second), nil); err != nil {
			b.Fatal(err)
		}
		overhead += time.Since(t1)
		if _, err := in.Quit(n, 10*time.Second); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(overhead.Microseconds())/float64(b.N)/1000, "after-qemu-ms")
	b.ReportMetric(float64((total-overhead).Microseconds())/float64(b.N)/1000, "qemu-ms")
}

// BenchmarkStatusTable measures the status of every instance of the node
// table (what the instance table shows) with two instances running.
func BenchmarkStatusTable(b *testing.B) {
	f := testFarm(b)
	provide(b, f, 1)
	provide(b, f, 3)
	in, _ := testInstances(b, f, false)
	defer stopAll(b, in)
	for _, id := range []string{"1", "3"} {
		n, _ := f.Resolve(id)
		if _, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		running := 0
		for _, st := range in.All() {
			if st.Running {
				running++
			}
		}
		if running != 2 {
			b.Fatalf("%d running", running)
		}
	}
}
