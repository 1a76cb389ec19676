package farm

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func runsFarm(t *testing.T) *Farm {
	t.Helper()
	c := Default()
	c.Cache = t.TempDir()
	return New(c)
}

// TestRunRecord: a run's folder (0700, in a runs folder made 0700), its
// logs (0600, new files only) and summary.json, read back newest first.
func TestRunRecord(t *testing.T) {
	f := runsFarm(t)
	t0 := time.Date(2026, 1, 2, 15, 4, 5, 0, time.Local)
	r, err := f.NewRunRecord("my recipe.star", t0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Name != "20260102-150405-my_recipe.star" {
		t.Errorf("run name %q", r.Name)
	}
	r2, err := f.NewRunRecord("my recipe.star", t0)
	if err != nil || r2.Name != r.Name+"-2" {
		t.Fatalf("the same second again: %v, %v", r2, err)
	}
	r2.Close()
	for _, p := range []string{f.RunsDir(), r.Dir} {
		if fi, err := os.Lstat(p); err != nil || fi.Mode().Perm() != 0o700 || !fi.IsDir() {
			t.Errorf("%s: %v %v, want a folder of mode 0700", p, fi.Mode(), err)
		}
	}
	w, err := r.Log(2)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("hello\n"))
	w.Close()
	if fi, _ := os.Lstat(filepath.Join(r.Dir, "2.log")); fi.Mode().Perm() != 0o600 {
		t.Errorf("log mode %v", fi.Mode())
	}
	if _, err := r.Log(2); err == nil {
		t.Error("a second log of node 2 overwrote the first")
	}
	os.Symlink("/etc/passwd", filepath.Join(r.Dir, "3.log"))
	if _, err := r.Log(3); err == nil {
		t.Error("a log written through a symbolic link")
	}
	s := &RunSummary{Run: r.Name, Recipe: "my recipe.star", Args: []string{"1-2"}, Set: "1-2", Started: t0, Finished: true, Seconds: 1.5, Exit: 1,
		Nodes: []NodeSummary{{Node: 1, Alias: "enone", Exit: 0, Seconds: 1.2, Log: "1.log"}, {Node: 2, Alias: "entwo", Exit: 1, Seconds: 1.4, Error: "it <broke>", Log: "2.log"}}}
	if err := r.WriteSummary(s); err != nil {
		t.Fatal(err)
	}
	s.Seconds = 2
	if err := r.WriteSummary(s); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(r.Dir, "summary.json"))
	for _, want := range []string{`"run": "20260102-150405-my_recipe.star"`, `"error": "it <broke>"`, `"seconds": 2,`, `"node": 2,`, `"exit": 1,`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("summary.json lacks %s:\n%s", want, data)
		}
	}
	if fi, _ := os.Lstat(filepath.Join(r.Dir, "summary.json")); fi.Mode().Perm() != 0o600 {
		t.Errorf("summary mode %v", fi.Mode())
	}
	later, _ := f.NewRunRecord("other", t0.Add(time.Hour))
	later.WriteSummary(&RunSummary{Recipe: "other", Started: t0.Add(time.Hour), Nodes: []NodeSummary{{Node: 1, Exit: -1}}})
	later.Close()
	runs, err := f.Runs()
	if err != nil || len(runs) != 2 || runs[0].Recipe != "other" || runs[1].Run != r.Name {
		t.Fatalf("Runs = %v, %v (the folder without a summary is left out; newest first)", runs, err)
	}
	for ref, want := range map[string]string{"last": later.Name, r.Name: r.Name, "20260102-1504": r.Name} {
		if got, err := f.FindRun(ref); err != nil || got.Run != want {
			t.Errorf("FindRun(%q) = %v, %v; want %s", ref, got, err, want)
		}
	}
	if _, err := f.FindRun("nosuch"); err == nil || !strings.Contains(err.Error(), "pifarm runs lists them") {
		t.Errorf("FindRun(nosuch): %v", err)
	}
	if got, err := f.ReadRunLog(r.Name, 2); err != nil || string(got) != "hello\n" {
		t.Errorf("ReadRunLog = %q, %v", got, err)
	}
	if _, err := f.ReadRunLog(r.Name, 3); err == nil {
		t.Error("ReadRunLog followed a symbolic link")
	}
	if s, n, err := f.LastRun(2); err != nil || s.Run != r.Name || n.Error != "it <broke>" {
		t.Errorf("LastRun(2) = %v, %v, %v", s, n, err)
	}
	if s, n, _ := f.LastRun(1); s.Run != later.Name || n.Exit != -1 {
		t.Errorf("LastRun(1) = %v, %v", s, n)
	}
	if s, _, err := f.LastRun(4); s != nil || err != nil {
		t.Errorf("LastRun(4) = %v, %v", s, err)
	}
}

// TestRunsFolderLinkRefused: a symbolic link at runs is neither followed
// to make a run's folder nor read through.
func TestRunsFolderLinkRefused(t *testing.T) {
	f := runsFarm(t)
	elsewhere := t.TempDir()
	os.Symlink(elsewhere, f.RunsDir())
	if _, err := f.NewRunRecord("enrol", time.Now()); err == nil || !strings.Contains(err.Error(), "is not a folder") {
		t.Errorf("NewRunRecord through a link: %v", err)
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("written through the link: %v", ents)
	}
	if _, err := f.Runs(); err == nil {
		t.Error("Runs read through a link")
	}
	// no runs folder: no runs
	g := runsFarm(t)
	if runs, err := g.Runs(); err != nil || runs != nil {
		t.Errorf("Runs without a folder = %v, %v", runs, err)
	}
	if _, err := g.FindRun("last"); err == nil || !strings.Contains(err.Error(), "no runs recorded") {
		t.Errorf("FindRun without runs: %v", err)
	}
	// no cache folder
	c := Default()
	c.Cache = filepath.Join(t.TempDir(), "missing")
	if _, err := New(c).NewRunRecord("x", time.Now()); err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("NewRunRecord without a cache: %v", err)
	}
}
