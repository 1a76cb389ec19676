package image_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"pifarm/builtins/runtime"
)

// recipeConfig writes a configuration with nodes 0 to 2 and its cache in
// dir, and returns its path; node2 is added to node 2's arguments.
func recipeConfig(t *testing.T, dir string, node2 string) string {
	cfg := filepath.Join(dir, "config.star")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`cache = %q
tools = {"guestmount": False, "remote-viewer": False}
nodes = [
    node(id = 0, alias = "loner", lan = "192.168.66.63", wan = "100.65.63.15"),
    node(id = 1, alias = "enone", lan = "192.168.66.7", wan = "100.65.4.15"),
    node(id = 2, alias = "entwo", lan = "192.168.66.8", wan = "100.65.5.15"%s),
]
`, filepath.Join(dir, "cache"), node2)), 0o644)
	return cfg
}

// recipeStep is one pifarm command line of a recipe test: its exit status
// and what its output holds (and lacks).
type recipeStep struct {
	args string
	code int
	want []string
	not  []string
}

// runSteps runs the steps in order (IMG in args and want is the image, DIR
// its folder, where the cache is) on
// a fixture registered as instance 0 with a full clone 1, and stops at the
// first one that does not do what it should.
func runSteps(t *testing.T, steps []recipeStep) { t.Helper(); runStepsWith(t, "", nil, steps) }

// runStepsWith is runSteps with node2 added to node 2's arguments in the
// configuration, and before[i] run (with the fixture's folder) before
// steps[i].
func runStepsWith(t *testing.T, node2 string, before map[int]func(*testing.T, string), steps []recipeStep) {
	t.Helper()
	dir := t.TempDir()
	img := recipeFixture(t, dir)
	cfg := recipeConfig(t, dir, node2)
	steps = append([]recipeStep{
		{"run image -i IMG --provide-qboot", 0, []string{"instance 0 is"}, nil},
		{"run box --force-clone 1", 0, []string{"new clone"}, nil},
	}, steps...)
	for i, st := range steps {
		if f := before[i-2]; f != nil {
			f(t, dir)
		}
		var out bytes.Buffer
		args := append([]string{"-c", cfg}, strings.Fields(strings.NewReplacer("IMG", img, "DIR", dir).Replace(st.args))...)
		code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: args, Stdout: &out, Stderr: &out})
		bad := code != st.code
		for _, w := range st.want {
			bad = bad || !strings.Contains(out.String(), strings.NewReplacer("IMG", img, "DIR", dir).Replace(w))
		}
		for _, w := range st.not {
			bad = bad || strings.Contains(out.String(), w)
		}
		if bad {
			t.Fatalf("pifarm %s: exit %d (want %d), output should hold %q and not %q:\n%s", st.args, code, st.code, st.want, st.not, out.String())
		}
	}
}

// TestRecipeBoxSnapshots: the box recipe's snapshot options on a clone and
// on instance 0, and their misuses.
func TestRecipeBoxSnapshots(t *testing.T) {
	runSteps(t, []recipeStep{
		{"run box --snapshot 1", 1, []string{"--snapshot needs a snapshot name: pifarm run box --snapshot N NAME"}, nil},
		{"run box 1 before", 1, []string{"before: a snapshot name goes with --snapshot"}, nil},
		{"run box --snapshot --rollback 1 before", 1, []string{"one snapshot option at a time"}, nil},
		{"run box --snapshot 1 12", 2, []string{"all digits"}, nil},
		{"-n run box --snapshot 1 before", 0, []string{"qemu-img snapshot -c before DIR/cache/clones/raspi-clone-1/clone-1.qcow2"}, nil},
		{"run box --snapshots 1", 0, []string{"<1> enone has no snapshots"}, nil},
		{"run box --snapshot 1 before", 0, []string{"<1> enone: snapshot before taken (qcow2, boot files kept)"}, nil},
		{"run box --snapshot 1 before", 1, []string{"has a snapshot before already"}, nil},
		{"run box --snapshots 1", 0, []string{"name    date", "before  20", "kept"}, nil},
		{"-n run box --rollback 1 before", 0, []string{"qemu-img snapshot -a before "}, nil},
		{"run box --rollback 1 before", 0, []string{"rolled back to snapshot before of 20", "boot files ok"}, []string{"no known_hosts"}},
		{"run box --rollback 1 after", 1, []string{"no snapshot after (it has before;"}, nil},
		{"run box --delete-snapshot 1 before", 0, []string{"snapshot before deleted"}, nil},
		{"run box --snapshot 0 pristine", 0, []string{"<0> loner: snapshot pristine taken (copy, boot files kept)"}, nil},
		{"-n run box --rollback 0 pristine", 0, []string{"cp --sparse=always DIR/cache/clones/raspi-clone-0/snapshots/pristine.raw"}, nil},
		{"run box --rollback 0 pristine", 0, []string{"<0> loner: rolled back to snapshot pristine"}, nil},
		{"run box --snapshots", 0, []string{"pristine"}, nil},
	})
}

// TestRecipeImagePromote: image --promote N makes clone N instance 0's
// image under the same path, keeps the old one as IMG.~1~, rebases the
// linked clones onto it and provides instance 0's boot files.
func TestRecipeImagePromote(t *testing.T) {
	runSteps(t, []recipeStep{
		{"run box --force-clone --linked 2", 0, []string{"new linked clone"}, nil},
		{"run image --promote", 1, []string{"--promote N: N is the clone"}, nil},
		{"run image --promote --provide-qboot 1", 1, []string{"--promote goes alone, not with --provide-qboot"}, nil},
		{"-n run image --promote 1", 0, []string{"qemu-img convert -f qcow2 -O raw "}, nil},
		{"run image --promote 1", 0, []string{"<1> enone is instance 0's image now: IMG", "the old image is kept as IMG.~1~",
			"the linked clones 2 rested on the old image: rebased onto IMG.~1~", "<0> loner: boot files"}, nil},
		{"run image 2", 0, []string{"linked clone of     IMG.~1~ (valid)"}, nil},
		{"run image", 0, []string{"boot files          ok"}, []string{"warning: instance 0"}},
	})
}
