package image

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
)

// The benchmarks share one image the size RaspiOS has after --expand-image:
// a 4 GiB sparse file, a 512 MiB FAT32 boot partition (mkfs.vfat's default
// clusters) filled as RaspiOS Bookworm's is (about 80 MB: a 9 MB
// kernel8.img, seven more 10 MB kernels and initramfs files), and an ext4
// root.
//
//	go test -run XXX -bench . -benchtime 5x ./builtins/image
//
// Compare BenchmarkBootFilesAndSignature (copy both boot files, sign
// them) with BenchmarkDdMd5sumFatcat (the original tools' way: md5 of the
// whole boot partition plus two fatcat reads), BenchmarkRecheckUnchanged
// with the 10 ms goal, BenchmarkRecheckChanged (the disk was written: the
// boot files are read and hashed again), and BenchmarkLinkedClone /
// BenchmarkFullClone / BenchmarkQemuImgConvert.
var (
	benchOnce sync.Once
	benchDir  string
	benchFx   *fixture
	benchErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if benchDir != "" {
		os.RemoveAll(benchDir)
	}
	os.Exit(code)
}

// benchImage makes the shared image once per test binary.
func benchImage(b *testing.B) (*fixture, string) {
	b.Helper()
	benchOnce.Do(func() {
		benchDir, benchErr = os.MkdirTemp("", "pifarm-image-bench")
		if benchErr != nil {
			return
		}
		benchFx = makeFixture(b, benchDir, fixtureOpts{size: 4 << 30, bootMiB: 512, rootMiB: 3300, kernelBytes: 9_000_000, otherKernels: 7})
		age(b, benchFx.path, time.Hour) // written long before, as a real image is
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchFx, benchDir
}

func benchMod(b *testing.B, dir string) *mod {
	m, _ := testMod(b, dir, false)
	if m.Registered() == "" {
		if _, err := m.Register(benchFx.path); err != nil {
			b.Fatal(err)
		}
	}
	return m
}

func BenchmarkBootFilesAndSignature(b *testing.B) {
	_, dir := benchImage(b)
	m := benchMod(b, dir)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.ProvideQboot(0, ""); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDdMd5sumFatcat(b *testing.B) {
	fx, dir := benchImage(b)
	out := filepath.Join(dir, "fatcat")
	os.MkdirAll(out, 0o755)
	off := fx.bootStart * 512
	script := fmt.Sprintf(`dd if=%[1]s bs=4M iflag=skip_bytes,count_bytes skip=%[2]d count=%[3]d status=none | md5sum > %[4]s/sig &&
fatcat %[1]s -O %[2]d -r /kernel8.img > %[4]s/ker &&
fatcat %[1]s -O %[2]d -r /bcm2710-rpi-3-b-plus.dtb > %[4]s/dtb`, fx.path, off, fx.bootN*512, out)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if o, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, o)
		}
	}
}

func BenchmarkRecheckUnchanged(b *testing.B) {
	_, dir := benchImage(b)
	m := benchMod(b, dir)
	if _, err := m.ProvideQboot(0, ""); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st, err := m.CheckBoot(0)
		if err != nil || st.State != "ok" || st.Hashed {
			b.Fatalf("%+v %v", st, err)
		}
	}
}

func BenchmarkRecheckChanged(b *testing.B) {
	fx, dir := benchImage(b)
	m := benchMod(b, dir)
	if _, err := m.ProvideQboot(0, ""); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now().Add(-time.Hour)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t := t0.Add(time.Duration(i+1) * time.Millisecond) // a new mtime: the cheap check fails
		if err := os.Chtimes(fx.path, t, t); err != nil {
			b.Fatal(err)
		}
		st, err := m.CheckBoot(0)
		if err != nil || st.State != "ok" || !st.Hashed {
			b.Fatalf("%+v %v", st, err)
		}
	}
	b.StopTimer()
	age(b, fx.path, time.Hour)
}

func BenchmarkReadKernelOwnFAT(b *testing.B) {
	fx, _ := benchImage(b)
	for i := 0; i < b.N; i++ {
		d, err := Open(fx.path)
		if err != nil {
			b.Fatal(err)
		}
		fs, err := d.Boot()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := fs.ReadFile("kernel8.img"); err != nil {
			b.Fatal(err)
		}
		d.Close()
	}
}

func BenchmarkReadKernelGoDiskfsFAT(b *testing.B) {
	fx, _ := benchImage(b)
	for i := 0; i < b.N; i++ {
		st, err := file.OpenFromPath(fx.path, true)
		if err != nil {
			b.Fatal(err)
		}
		fs, err := fat32.Read(st, int64(fx.bootN)*512, int64(fx.bootStart)*512, 512)
		if err != nil {
			b.Fatal(err)
		}
		f, err := fs.OpenFile("/kernel8.img", os.O_RDONLY)
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		n := 0
		for {
			k, err := f.Read(buf)
			n += k
			if err != nil {
				break
			}
		}
		if n != len(fx.kernel) {
			b.Fatalf("read %d bytes", n)
		}
		st.Close()
	}
}

func BenchmarkLinkedClone(b *testing.B) {
	_, dir := benchImage(b)
	m := benchMod(b, dir)
	if _, err := m.ProvideQboot(0, ""); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.Clone(1, true); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFullClone(b *testing.B) {
	_, dir := benchImage(b)
	m := benchMod(b, dir)
	if _, err := m.ProvideQboot(0, ""); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.Clone(2, false); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkQemuImgConvert(b *testing.B) {
	fx, dir := benchImage(b)
	dst := filepath.Join(dir, "plain.qcow2")
	for i := 0; i < b.N; i++ {
		os.Remove(dst)
		if o, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", fx.path, dst).CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, o)
		}
	}
}
