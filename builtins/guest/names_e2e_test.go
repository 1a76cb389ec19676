package guest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Over SSH into the chroot guest: a file whose name the install cannot
// take stops the run on the host, naming it, with nothing sent; a name
// the install can take (blanks inside, a backslash) lands and is reported
// as it is.
func TestTreeNamesEndToEnd(t *testing.T) {
	r := newRig(t, 26070)
	// RaspiOS's /bin/sh is dash, whose echo reads backslashes as escapes
	dash, err := exec.LookPath("dash")
	if err != nil {
		t.Fatalf("dash is needed (RaspiOS's /bin/sh): %v", err)
	}
	os.Remove(filepath.Join(r.g.root, "bin/sh"))
	r.g.copyWithLibs(dash, "/bin/sh")
	files := filepath.Join(r.userDir, "files", "etc")
	os.MkdirAll(files, 0o755)
	bad := filepath.Join(files, "motd\n")
	os.WriteFile(bad, []byte("x\n"), 0o644)
	_, errs, code := r.pifarm("--local-software", "1")
	if code != 1 || !strings.Contains(errs, `"files/etc/motd\n"`) || !strings.Contains(errs, "control character (U+000A)") {
		t.Errorf("exit %d:\n%s", code, errs)
	}
	if n := len(r.srv.commands()); n != 0 {
		t.Errorf("%d commands sent despite the bad name", n)
	}
	os.Remove(bad)
	for _, name := range []string{`a\nb`, `c\cd`, "my file"} {
		os.WriteFile(filepath.Join(files, name), []byte(name+"\n"), 0o644)
	}
	out := r.mustRun("--local-software", "1")
	for _, name := range []string{`a\nb`, `c\cd`, "my file"} {
		if r.g.read("/etc/"+name) != name+"\n" {
			t.Errorf("/etc/%s not installed", name)
		}
		if !strings.Contains(out, "  installed /etc/"+name+"\n") {
			t.Errorf("not reported as installed: /etc/%s", name)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}
