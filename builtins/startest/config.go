package startest

import (
	"os"
	"path/filepath"
	"testing"
)

// startDir is the working folder the test binary started in (the package's
// folder): the repository is found from there, also by a test that changed
// its working folder since.
var startDir, startDirErr = os.Getwd()

// DefaultConfig is the repository's config.star (found above the package's
// folder, next to go.mod): what main.go embeds as the built-in
// configuration, for tests that run the pifarm command in-process
// (runtime.Options.DefaultConfig).
func DefaultConfig(t testing.TB) []byte {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "config.star"))
	if err != nil {
		t.Fatalf("read the repository's config.star: %v", err)
	}
	return b
}
