package image

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"go.starlark.net/starlarktest"
	"go.starlark.net/syntax"
)

// TestStarlark runs testdata/image_test.star against the module (live
// door, a fixture image, an empty cache).
func TestStarlark(t *testing.T) {
	dir := t.TempDir()
	fx := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	age(t, fx.path, time.Hour)
	m, _ := testMod(t, dir, false)
	mod := New(m.d, m.f)
	assert, err := starlarktest.LoadAssertModule()
	if err != nil {
		t.Fatal(err)
	}
	pre := starlark.StringDict{
		"image":      mod.Struct(),
		"FIXTURE":    starlark.String(fx.path),
		"farm_node0": m.f.NodeStruct(m.f.Nodes()[0]),
		"struct":     starlark.NewBuiltin("struct", starlarkstruct.Make),
	}
	for k, v := range assert {
		pre[k] = v
	}
	th := &starlark.Thread{Name: "image_test"}
	starlarktest.SetReporter(th, t)
	src, err := os.ReadFile(filepath.Join("testdata", "image_test.star"))
	if err != nil {
		t.Fatal(err)
	}
	opts := &syntax.FileOptions{Set: true, While: true, TopLevelControl: true, GlobalReassign: true, Recursion: true}
	if _, err := starlark.ExecFileOptions(opts, th, "image_test.star", src, pre); err != nil {
		if ee, ok := err.(*starlark.EvalError); ok {
			t.Fatal(ee.Backtrace())
		}
		t.Fatal(err)
	}
}
