package qemu

import (
	"strings"
	"testing"

	"go.starlark.net/starlark"
	"pifarm/builtins/startest"
)

// TestStarlark runs testdata/lifecycle.star against real QEMU through the
// module as recipes see it.
func TestStarlark(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 2)
	fx := startest.New(t, startest.Options{Farm: f})
	in := &Instances{D: fx.Door, F: f}
	defer stopAll(t, in)
	fx.Add(in.Module(), f.Module(fx.Door))
	fx.Run("testdata/lifecycle.star", nil)
}

func TestDryRunViewerAndQMPActions(t *testing.T) {
	f := testFarm(t)
	in, out := testInstances(t, f, true)
	thread := &starlark.Thread{Name: "dry"}
	m := in.Module().Struct()
	v, err := starlark.Call(thread, mustAttr(t, m, "viewer"), starlark.Tuple{starlark.MakeInt(2)}, nil)
	if err != nil || v != starlark.None {
		t.Fatalf("viewer: %v %v", v, err)
	}
	if got := out.String(); got != "remote-viewer vnc://localhost:20302 &\n" {
		t.Fatalf("viewer trace %q", got)
	}
	// Not running: a QMP command is refused, nothing printed.
	out.Reset()
	if _, err := starlark.Call(thread, mustAttr(t, m, "qmp"), starlark.Tuple{starlark.MakeInt(2), starlark.String("stop")}, nil); err == nil || !strings.Contains(err.Error(), "instance 2 is not running") {
		t.Fatalf("qmp on a stopped instance: %v", err)
	}
}

func mustAttr(t *testing.T, m interface {
	Attr(string) (starlark.Value, error)
}, name string) starlark.Value {
	v, err := m.Attr(name)
	if err != nil || v == nil {
		t.Fatalf("no %s: %v", name, err)
	}
	return v
}

// TestArguments: the builtins' arguments, through the shared argument
// types (testdata/arguments.star, a dry run).
func TestArguments(t *testing.T) {
	f := testFarm(t)
	fx := startest.New(t, startest.Options{Farm: f, Dry: true})
	in := &Instances{D: fx.Door, F: f}
	fx.Add(in.Module(), f.Module(fx.Door))
	fx.RunChunks("testdata/arguments.star")
	for _, want := range []string{
		"# wait until ssh -p 20102 localhost answers with an SSH banner (at most 5m0s)\n",
		"# wait until the console (nc localhost 20202) shows /login: / (at most 1.5s)\n",
	} {
		if !strings.Contains(fx.Output(), want) {
			t.Errorf("trace lacks %q:\n%s", want, fx.Output())
		}
	}
}
