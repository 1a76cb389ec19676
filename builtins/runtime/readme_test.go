package runtime

import (
	"strings"
	"testing"

	"pifarm/builtins/startest"
)

// TestREADMEModuleList: the README's module list is the one `pifarm --help`
// shows, generated from the registration. It fails when the README is
// stale; go test ./builtins/runtime -run TestREADMEModuleList -update
// rewrites that section alone.
func TestREADMEModuleList(t *testing.T) {
	startest.GoldenSection(t, "../../README.md", "modules", readmeModules())
}

// readmeModules is the body of the README's module list: moduleIndex as a
// Markdown code block (indented by four), between blank lines.
func readmeModules() string {
	var b strings.Builder
	b.WriteString("\n")
	for _, line := range strings.SplitAfter(moduleIndex(), "\n") {
		if line != "" {
			b.WriteString("  " + line)
		}
	}
	b.WriteString("\n")
	return b.String()
}
