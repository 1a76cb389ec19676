package runtime

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestModulesAreSiblings enforces the architecture: a builtin module may
// import the shared ground (trace, farm, the disk formats under disk/, the
// libvirt placement virt) and the bundled recipe files, never another
// module. Recipes compose modules.
func TestModulesAreSiblings(t *testing.T) {
	allowed := map[string]bool{"pifarm/builtins/trace": true, "pifarm/builtins/farm": true, "pifarm/builtins/virt": true, "pifarm/recipes": true}
	ground := func(p string) bool { return allowed[p] || strings.HasPrefix(p, "pifarm/builtins/disk/") }
	ents, err := os.ReadDir("..")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, e := range ents {
		if !e.IsDir() || e.Name() == "runtime" {
			continue
		}
		files, _ := filepath.Glob(filepath.Join("..", e.Name(), "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				p, _ := strconv.Unquote(imp.Path.Value)
				if strings.HasPrefix(p, "pifarm/") && !ground(p) && !strings.HasPrefix(p, "pifarm/builtins/"+e.Name()+"/") {
					t.Errorf("%s imports %s: modules must not import each other (compose them in a recipe)", f, p)
				}
			}
			checked++
		}
	}
	if checked < 20 {
		t.Fatalf("only %d files checked", checked)
	}
}
