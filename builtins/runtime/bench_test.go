package runtime

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"pifarm/builtins/startest"
)

// buildPifarm compiles the pifarm binary once per benchmark run.
func buildPifarm(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "pifarm")
	cmd := exec.Command("go", "build", "-o", bin, "../..")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("go build: %v", err)
	}
	return bin
}

// BenchmarkCommandHelp times the whole `pifarm --help` process (start-up
// included). Goal: well under 100 ms.
func BenchmarkCommandHelp(b *testing.B) {
	bin := buildPifarm(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := exec.Command(bin, "--help").Run(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCommandDryRun times a whole `pifarm -n run` process: config
// lookup and validation, every module built, a recipe with a bundled load
// executed in dry-run mode. Goal: well under 100 ms.
func BenchmarkCommandDryRun(b *testing.B) {
	bin := buildPifarm(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(bin, "-n", "run", "testdata/recipes/demo.star", "--run", "-o", "/tmp/pifarm-golden/demo/x", "entwo")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
	}
}

// BenchmarkInProcessDryRun is the same dry run without process start-up.
func BenchmarkInProcessDryRun(b *testing.B) {
	builtin := startest.DefaultConfig(b)
	for i := 0; i < b.N; i++ {
		if code := Main(Options{Args: []string{"-n", "run", "testdata/recipes/demo.star", "--run", "-o", "/tmp/pifarm-golden/demo/x", "entwo"}, Stdout: io.Discard, Stderr: io.Discard, DefaultConfig: builtin}); code != 0 {
			b.Fatal(code)
		}
	}
}
