package image

import (
	"testing"
	"time"

	"go.starlark.net/starlark"
	"pifarm/builtins/startest"
)

// TestStarlark runs testdata/image_test.star against the module (live
// door, a fixture image, an empty cache).
func TestStarlark(t *testing.T) {
	dir := t.TempDir()
	img := makeFixture(t, dir, fixtureOpts{size: 100 << 20, bootMiB: 40, clusterSectrs: 1})
	age(t, img.path, time.Hour)
	fx := startest.New(t, startest.Options{Root: true, Farm: testFarm(t, dir)})
	fx.Add(New(fx.Door, fx.Farm))
	fx.Set("FIXTURE", starlark.String(img.path))
	fx.Set("farm_node0", fx.Farm.NodeStruct(fx.Farm.Nodes()[0]))
	fx.Run("testdata/image_test.star", nil)
}
