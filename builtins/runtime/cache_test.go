package runtime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCacheFolderChecked: before the first step of a run, the cache folder
// is checked: one owned by another user or writable by its group or by
// everyone is refused (in a dry run too) with an error naming the folder,
// the owner or mode and the fix, before anything runs. A missing cache is
// made with mode 0700 (a dry run prints the mkdir and makes nothing).
func TestCacheFolderChecked(t *testing.T) {
	goldenEnv(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "s.star")
	os.WriteFile(script, []byte("print(\"ran\")\n"), 0o644)
	run := func(cache string, args ...string) (string, string, int) {
		cfg := filepath.Join(dir, "config.star")
		os.WriteFile(cfg, []byte("cache = \""+cache+"\"\n"), 0o644)
		return pifarm(t, append([]string{"-c", cfg}, args...)...)
	}

	missing := filepath.Join(dir, "new", "cache")
	o, e, code := run(missing, "-n", "run", script)
	if code != ExitOK || !strings.Contains(o, "mkdir -p -m 700 "+missing+"\n") {
		t.Errorf("dry run, missing cache: exit %d\n%s%s", code, o, e)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Fatal("a dry run made the cache")
	}
	o, e, code = run(missing, "run", script)
	if code != ExitOK || o != "ran\n" {
		t.Errorf("live, missing cache: exit %d\n%s%s", code, o, e)
	}
	if fi, err := os.Stat(missing); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("cache made with %v (%v), want mode 0700", fi.Mode(), err)
	}

	link := filepath.Join(dir, "link")
	os.Symlink(missing, link)
	if o, e, code := run(link, "run", script); code != ExitOK {
		t.Errorf("cache behind a symbolic link to a good folder: exit %d\n%s%s", code, o, e)
	}

	open := filepath.Join(dir, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o777)
	for _, args := range [][]string{{"run", script}, {"-n", "run", script}} {
		o, e, code := run(open, args...)
		if code != ExitFailed || strings.Contains(o, "ran") ||
			!strings.Contains(e, "cache folder "+open) || !strings.Contains(e, "mode 0777") || !strings.Contains(e, "chmod 700 "+open) {
			t.Errorf("%v, cache mode 0777: exit %d\n%s%s", args, code, o, e)
		}
	}
	gw := filepath.Join(dir, "gw")
	os.Mkdir(gw, 0o700)
	os.Chmod(gw, 0o770)
	if _, e, code := run(gw, "run", script); code != ExitFailed || !strings.Contains(e, "mode 0770") {
		t.Errorf("group-writable cache: exit %d %s", code, e)
	}

	if os.Geteuid() != 0 {
		t.Skip("changing a folder's owner needs root")
	}
	other := filepath.Join(dir, "other")
	os.Mkdir(other, 0o700)
	if err := os.Chown(other, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	o, e, code = run(other, "run", script)
	if code != ExitFailed || strings.Contains(o, "ran") || !strings.Contains(e, "cache folder "+other+" is owned by") ||
		!strings.Contains(e, "uid 65534") || !strings.Contains(e, "chown 0 "+other) {
		t.Errorf("cache of another user: exit %d\n%s%s", code, o, e)
	}
	os.Symlink(other, filepath.Join(dir, "otherlink"))
	if _, e, code := run(filepath.Join(dir, "otherlink"), "run", script); code != ExitFailed || !strings.Contains(e, "uid 65534") {
		t.Errorf("symbolic link to another user's folder: exit %d %s", code, e)
	}
}

// TestShortPasswordMaskedOnlyAsValue: with pi_passwords = ["ca"], the dry
// run of enrol masks the password where it is sent, not inside "caches".
func TestShortPasswordMaskedOnlyAsValue(t *testing.T) {
	goldenEnv(t)
	cfg := filepath.Join(t.TempDir(), "config.star")
	os.WriteFile(cfg, []byte("pi_passwords = [\"ca\"]\n"), 0o644)
	o, e, code := pifarm(t, "-c", cfg, "-n", "run", "enrol")
	if code != ExitOK {
		t.Fatalf("exit %d\n%s%s", code, o, e)
	}
	if strings.Contains(o, "****ch") || !strings.Contains(o, "/.cache/pifarm/conf") || !strings.Contains(o, "send '****'") {
		t.Errorf("masking:\n%s", o)
	}
}
