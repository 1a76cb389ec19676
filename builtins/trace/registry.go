package trace

import (
	"fmt"
	"strings"

	"go.starlark.net/syntax"
)

// FileOptions returns the Starlark dialect of pifarm's recipes, their
// library, config.star and the .star tests: set, while, top-level control
// flow, global reassignment and recursion. Each call returns a new value, so
// no caller can change another's dialect.
func FileOptions() *syntax.FileOptions {
	return &syntax.FileOptions{Set: true, While: true, TopLevelControl: true, GlobalReassign: true, Recursion: true}
}

// The helpers below render what the registered modules are, so the module
// lists in `pifarm --help`, `pifarm doc` and the README come from the one
// registration instead of being kept by hand.

// Names lists the modules' names in registration order.
func Names(mods []*Module) []string {
	names := make([]string, len(mods))
	for i, m := range mods {
		names[i] = m.Name
	}
	return names
}

// Index renders one line per module, "  NAME  SUMMARY" with the names
// padded to one width, in registration order: the module list of
// `pifarm --help` and of the README.
func Index(mods []*Module) string {
	w := 0
	for _, m := range mods {
		w = max(w, len(m.Name))
	}
	var b strings.Builder
	for _, m := range mods {
		fmt.Fprintf(&b, "  %-*s  %s\n", w, m.Name, Summary(m.Doc))
	}
	return b.String()
}

// SectionMarkers returns the marker lines around the generated section name
// of a text file (the README): "<!-- NAME: generated, do not edit -->" and
// "<!-- end of NAME -->". ReplaceSection maintains what is between them.
func SectionMarkers(name string) (begin, end string) {
	return "<!-- " + name + ": generated, do not edit -->", "<!-- end of " + name + " -->"
}

// ReplaceSection replaces the lines between the markers of section name
// in text (see SectionMarkers) by body, keeping the markers. It is an error
// when the markers are missing, repeated or out of order, naming the marker
// lines to add.
func ReplaceSection(text, name, body string) (string, error) {
	begin, end := SectionMarkers(name)
	i := strings.Index(text, begin+"\n")
	j := strings.Index(text, "\n"+end)
	if i < 0 || j < 0 || j < i+len(begin) || strings.Count(text, begin) != 1 || strings.Count(text, end) != 1 {
		return "", fmt.Errorf("section %q: want exactly one line %q followed later by one line %q (add them around the generated part)", name, begin, end)
	}
	if body != "" && !strings.HasSuffix(body, "\n") {
		body += "\n"
	}
	head := text[:i+len(begin)+1]
	return head + body + text[j+1:], nil
}
