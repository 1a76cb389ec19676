package guest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"unicode/utf8"
)

// Every name the guest-side install cannot take as it is - a newline or
// another control character, a blank at either end of a name, bytes that
// are not UTF-8, invisible format characters, pifarm's own staging folder -
// is refused on the host, naming the file, before anything is sent.
func TestTreeNamesTheGuestCannotInstall(t *testing.T) {
	for _, tc := range []struct {
		rel  string // under files/
		link string // a symbolic link's target instead of a file
		err  string // "" : accepted
	}{
		{rel: "etc/motd"},
		{rel: "etc/my file"},
		{rel: `etc/back\slash`},
		{rel: "etc/-dash"},
		{rel: "etc/ünïcödé"},
		{rel: "etc/link", link: "../motd target"},
		{rel: "etc/new\nline", err: "a control character (U+000A)"},
		{rel: "etc/motd ", err: "ends in a blank"},
		{rel: "etc/ motd", err: "starts with a blank"},
		{rel: "etc/tab\t", err: "a control character (U+0009)"},
		{rel: "etc /motd", err: `"etc " ends in a blank`},
		{rel: "etc/cr\r", err: "a control character (U+000D)"},
		{rel: "etc/bell\x07", err: "a control character (U+0007)"},
		{rel: "etc/del\x7f", err: "a control character (U+007F)"},
		{rel: "etc/c1\u0085", err: "a control character (U+0085)"},
		{rel: "etc/nbsp\u00a0", err: "ends in a blank"},
		{rel: "etc/\u202etxt.exe", err: "an invisible format character (U+202E)"},
		{rel: "etc/latin1-\xe9", err: "not valid UTF-8"},
		{rel: ".pifarm/post-install.1", err: "pifarm's staging folder"},
		{rel: "etc/link", link: "motd\n", err: "link target"},
		{rel: "etc/link", link: "\xff", err: "link target"},
	} {
		t.Run(fmt.Sprintf("%q", tc.rel+" -> "+tc.link), func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "files", tc.rel)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			var err error
			if tc.link != "" {
				err = os.Symlink(tc.link, p)
			} else {
				err = os.WriteFile(p, []byte("x\n"), 0o644)
			}
			if err != nil {
				t.Skipf("the host cannot hold this name: %v", err)
			}
			_, err = OpenSource(bundledFS(), dir, func(s string) string { return s })
			if tc.err == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			want := fmt.Sprintf("%q", "files/"+tc.rel)
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("error %v, want one naming %s in %s and %q", err, want, dir, tc.err)
			}
			if !utf8.ValidString(err.Error()) || strings.ContainsAny(err.Error(), "\n\r\t\x07\x7f") {
				t.Errorf("the error itself holds the bad bytes: %q", err.Error())
			}
		})
	}
}

// The bundled trees are checked the same way; a permissions line naming
// such a path is refused too (file:line).
func TestBadNamesInBundledTreesAndPermissions(t *testing.T) {
	fsys := bundledFS().(fstest.MapFS)
	fsys["guest/bad/files/etc/x\x01y"] = &fstest.MapFile{Data: []byte("x\n")}
	if _, err := OpenSource(fsys, "bad", nil); err == nil || !strings.Contains(err.Error(), `guest tree bad: "files/etc/x\x01y"`) {
		t.Errorf("bundled: %v", err)
	}
	for _, line := range []string{"/etc/x\x01y root:root 0644", "/etc/\xff root:root 0644", "/.pifarm/x root:root 0644"} {
		_, err := ParsePermissions("t/permissions", []byte("# c\n"+line+"\n"))
		if err == nil || !strings.Contains(err.Error(), "t/permissions:2:") {
			t.Errorf("%q: %v", line, err)
		}
	}
}

func FuzzCheckGuestPath(f *testing.F) {
	for _, s := range []string{"/etc/motd", "/etc/a b", "/etc/a\nb", "/x ", "/\xff", "/.pifarm/x", "/a/\u202e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := CheckGuestPath(p)
		if err == nil {
			if !utf8.ValidString(p) {
				t.Fatalf("%q accepted although not UTF-8", p)
			}
			for _, c := range strings.Split(p, "/") {
				if c != strings.TrimSpace(c) || strings.ContainsAny(c, "\n\r\t\x00") {
					t.Fatalf("%q accepted", p)
				}
			}
			return
		}
		var ne *NameError
		if !errors.As(err, &ne) || !utf8.ValidString(err.Error()) || strings.ContainsAny(err.Error(), "\n\r") {
			t.Fatalf("%q: error %q", p, err)
		}
	})
}

func FuzzParsePermissions(f *testing.F) {
	for _, s := range []string{"/etc/x root:root 0644\n", "# c\n/a b:c 4755\n", "/etc/\x01 r:r 0644", "/x r:r 0644\n/x r:r 0644\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		perms, err := ParsePermissions("f/permissions", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f/permissions") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, p := range perms {
			if CheckGuestPath(p.Path) != nil || !strings.HasPrefix(p.Path, "/") {
				t.Fatalf("accepted path %q", p.Path)
			}
		}
	})
}
