package trace

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "''"},
		{"plain", "plain"},
		{"/a/b-c_d.e:f,g=h+i@j%k", "/a/b-c_d.e:f,g=h+i@j%k"},
		{"two words", "'two words'"},
		{"it's", `'it'\''s'`},
		{"$HOME", "'$HOME'"},
		{"a;b", "'a;b'"},
	} {
		if got := Quote(tc.in); got != tc.want {
			t.Errorf("Quote(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestDryRunExecPrintsAndDoesNothing(t *testing.T) {
	var out bytes.Buffer
	d := New(context.Background(), true, false, &out)
	d.Root = false
	marker := filepath.Join(t.TempDir(), "marker")
	if _, err := d.Exec(Cmd{Argv: []string{"touch", marker}, Sudo: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("dry-run Exec created the file")
	}
	if got, want := out.String(), "sudo touch "+marker+"\n"; got != want {
		t.Fatalf("trace %q, want %q", got, want)
	}
}

func TestLiveExecRunsAndReportsFailure(t *testing.T) {
	var out bytes.Buffer
	d := New(context.Background(), false, true, &out)
	d.Root = true
	res, err := d.Exec(Cmd{Argv: []string{"sh", "-c", "echo hi; echo oops >&2; exit 3"}})
	if err == nil || res.ExitCode != 3 || string(res.Stdout) != "hi\n" {
		t.Fatalf("res=%+v err=%v", res, err)
	}
	if !strings.Contains(err.Error(), "oops") || !strings.Contains(err.Error(), "sh -c") {
		t.Fatalf("error does not name command and stderr: %v", err)
	}
	if !strings.HasPrefix(out.String(), "sh -c ") {
		t.Fatalf("verbose trace missing: %q", out.String())
	}
}

func TestQueryRunsInDryRun(t *testing.T) {
	d := New(context.Background(), true, false, nil)
	res, err := d.Query(Cmd{Argv: []string{"echo", "x"}})
	if err != nil || string(res.Stdout) != "x\n" {
		t.Fatalf("query in dry-run: %+v %v", res, err)
	}
}

func TestSecretsMasked(t *testing.T) {
	var out bytes.Buffer
	d := New(context.Background(), true, false, &out)
	d.Secret("raspberry")
	d.Do("# console: send raspberry", func() error { t.Fatal("ran"); return nil })
	if strings.Contains(out.String(), "raspberry") || !strings.Contains(out.String(), "****") {
		t.Fatalf("secret not masked: %q", out.String())
	}
}

func TestWriteFileAtomicWithBackup(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.txt")
	os.WriteFile(p, []byte("old\n"), 0o644)
	var out bytes.Buffer
	dry := New(context.Background(), true, false, &out)
	if err := dry.WriteFile(p, []byte("new\n"), 0o600, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old\n" {
		t.Fatal("dry run changed the file")
	}
	want := "cp -p " + p + " '" + p + "~'\ncat > " + p + " <<'EOF'\nnew\nEOF\nchmod 600 " + p + "\n"
	if out.String() != want {
		t.Fatalf("trace\n%s\nwant\n%s", out.String(), want)
	}
	live := New(context.Background(), false, false, nil)
	if err := live.WriteFile(p, []byte("new\n"), 0o600, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "new\n" {
		t.Fatalf("content %q", b)
	}
	if b, _ := os.ReadFile(p + "~"); string(b) != "old\n" {
		t.Fatalf("backup %q", b)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("temp file left behind: %v", ents)
	}
}

func TestCancelledContextStopsActions(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d := New(ctx, false, false, nil)
	if err := d.Do("x", func() error { t.Fatal("ran"); return nil }); err == nil {
		t.Fatal("no error after cancel")
	}
}

func TestModuleReferenceAndErrors(t *testing.T) {
	m := &Module{Name: "demo", Doc: "A demo.", Funcs: []Func{{Name: "f", Args: "x", Doc: "Does f.\n\nMore.", Fn: nil}}}
	ref, ok := m.Reference("f")
	if !ok || !strings.Contains(ref, "demo.f(x)") || !strings.Contains(ref, "Does f.") {
		t.Fatalf("reference: %q", ref)
	}
	if _, ok := m.Reference("nope"); ok {
		t.Fatal("unknown function found")
	}
	if !IsUsage(&BuiltinError{Op: "x", Err: Usagef("bad")}) {
		t.Fatal("usage error not seen through BuiltinError")
	}
}

// TestHeredocTracesRunAsShell runs dry-run trace lines in sh: a line "EOF"
// in the text must not end the here-document early.
func TestHeredocTracesRunAsShell(t *testing.T) {
	for _, body := range []string{"EOF\n", "a\nEOF\nb\n", "x\nEOF1\nEOF\n", "plain\n"} {
		dir := t.TempDir()
		p := filepath.Join(dir, "f")
		var out bytes.Buffer
		d := New(context.Background(), true, false, &out)
		if err := d.WriteFile(p, []byte(body), 0, false); err != nil {
			t.Fatal(err)
		}
		line := out.String()
		if !strings.HasPrefix(line, "#") {
			if b, err := exec.Command("sh", "-c", line).CombinedOutput(); err != nil {
				t.Fatalf("WriteFile trace of %q fails in sh: %v %s\n%s", body, err, b, line)
			}
			if got, _ := os.ReadFile(p); string(got) != body {
				t.Errorf("WriteFile trace of %q writes %q:\n%s", body, got, line)
			}
		}
		out.Reset()
		line = d.Line(Cmd{Argv: []string{"cat"}, Heredoc: body})
		got, err := exec.Command("sh", "-c", line).CombinedOutput()
		if err != nil || string(got) != body {
			t.Errorf("Exec trace of a here-document %q gives %q (%v):\n%s", body, got, err, line)
		}
	}
}
