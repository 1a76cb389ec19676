package guest

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"go.starlark.net/starlark"
	"pifarm/builtins/farm"
	"pifarm/builtins/startest"
	"pifarm/recipes"
)

func TestParsePermissions(t *testing.T) {
	good := "# comment\n\n/etc/rc.local root:root 0755\n  /home/pi/.ssh   pi:pi   700  # not a comment position\n"
	if _, err := ParsePermissions("t/permissions", []byte(good)); err == nil {
		t.Fatal("a trailing comment is a fourth field and must be refused")
	}
	good = "# comment\n\n/etc/rc.local root:root 0755\n  /home/pi/.ssh   pi:pi   700\n/usr/bin/x 0:50 4755\n"
	ps, err := ParsePermissions("t/permissions", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 3 || ps[0].Path != "/etc/rc.local" || ps[0].ModeString() != "0755" || ps[1].User != "pi" ||
		ps[1].ModeString() != "0700" || ps[1].Where != "t/permissions:4" || ps[2].ModeString() != "4755" || ps[2].Group != "50" {
		t.Fatalf("parsed %+v", ps)
	}
	for _, tc := range []struct{ name, src, want string }{
		{"two fields", "/etc/x root:root\n", "t/permissions:1: 2 fields"},
		{"relative", "# x\netc/x root:root 0644\n", "t/permissions:2: path \"etc/x\" is not absolute"},
		{"unclean", "/etc/../x root:root 0644\n", "not clean"},
		{"trailing slash", "/etc/x/ root:root 0644\n", "not clean"},
		{"no group", "/etc/x root 0644\n", "owner \"root\" is not user:group"},
		{"bad user", "/etc/x Root:root 0644\n", "\"Root\" is not a user or group name"},
		{"bad mode", "/etc/x root:root 0999\n", "mode \"0999\" is not octal"},
		{"symbolic mode", "/etc/x root:root u+x\n", "mode \"u+x\""},
		{"duplicate", "/etc/x root:root 0644\n\n/etc/x root:root 0600\n", "t/permissions:3: /etc/x already given on line 1"},
		{"garbage", "chmod 755 /etc/x\n", "t/permissions:1: path \"chmod\" is not absolute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePermissions("t/permissions", []byte(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestParsePackages(t *testing.T) {
	ps, err := ParsePackages("t/packages", []byte("# list\nhostapd   # AP\nlibc6:armhf\ng++\nhostapd\nnim-1.6.0\n"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
	}
	if got := strings.Join(names, " "); got != "hostapd libc6:armhf g++ nim-1.6.0" {
		t.Fatalf("packages %q", got)
	}
	for _, tc := range []struct{ src, want string }{
		{"ok\nHostapd\n", "t/packages:2: \"Hostapd\" is not a Debian package name"},
		{"git rsync\n", "t/packages:1: one package per line"},
		{"x\n", "t/packages:1: \"x\""},
		{"a;rm -rf /\n", "one package per line"},
		{"pkg$(id)\n", "t/packages:1: \"pkg$(id)\""},
		{"-oops\n", "\"-oops\""},
		{"ok:ARM\n", "\"ok:ARM\""},
	} {
		_, err := ParsePackages("t/packages", []byte(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.src, err, tc.want)
		}
	}
}

// hostTree makes a host guest tree with real file modes.
func hostTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(rel, data string, mode os.FileMode) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("files/etc/motd", "welcome\n", 0o640)
	write("files/usr/local/bin/hello", "#!/bin/sh\necho hello\n", 0o750)
	write("files/etc/boot.d/20-services", "#!/bin/sh\n# the user's own\n", 0o755)
	write("files/etc/secret", "s3cret\n", 0o644)
	write("files/etc/motd~", "backup\n", 0o644)
	if err := os.Symlink("hello", filepath.Join(dir, "files/usr/local/bin/hi")); err != nil {
		t.Fatal(err)
	}
	write("permissions", "/etc/secret root:root 0600\n/etc/rc.local root:adm 0750\n", 0o644)
	write("packages", "rsync\nhostapd\n", 0o644)
	write("post-install", "echo user post-install\n", 0o644)
	return dir
}

func bundledFS() fs.FS {
	return fstest.MapFS{
		"guest/base/files/etc/rc.local":           {Data: []byte("#!/bin/sh\nexit 0\n")},
		"guest/base/files/etc/boot.d/20-services": {Data: []byte("#!/bin/sh\n# bundled\n")},
		"guest/base/files/etc/hostapd/x.conf.in":  {Data: []byte("ssid=@SSID@\n")},
		"guest/base/permissions":                  {Data: []byte("/etc/rc.local root:root 0755\n")},
		"guest/base/packages":                     {Data: []byte("hostapd\ni2c-tools\n")},
		"guest/base/post-install":                 {Data: []byte("echo base\n")},
	}
}

func TestMergeAndTar(t *testing.T) {
	dir := hostTree(t)
	base, err := OpenSource(bundledFS(), "base", func(s string) string { return s })
	if err != nil {
		t.Fatal(err)
	}
	user, err := OpenSource(bundledFS(), dir, func(s string) string { return s })
	if err != nil {
		t.Fatal(err)
	}
	tr := &Tree{Layers: []*Layer{base, user}}
	if got := strings.Join(tr.Packages(), " "); got != "hostapd i2c-tools rsync" {
		t.Errorf("packages %q", got)
	}
	if pi := tr.PostInstall(); len(pi) != 2 || pi[0].Text != "echo base\n" || pi[1].Source != dir {
		t.Errorf("post-install %+v", pi)
	}
	// the later layer's permission line for /etc/rc.local wins
	if ps := tr.PermScript(); ps != "chown root:adm /etc/rc.local && chmod 0750 /etc/rc.local || exit\nchown root:root /etc/secret && chmod 0600 /etc/secret || exit\n" {
		t.Errorf("perm script:\n%s", ps)
	}
	b, err := tr.Tar(time.Unix(1700000000, 0), map[string]string{"/etc/hosts": "127.0.0.1 localhost\n"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		mode int64
		data string
		link string
	}{
		"etc/boot.d/20-services": {0o755, "#!/bin/sh\n# the user's own\n", ""}, // the user's file replaces the bundled one
		"etc/hostapd/x.conf.in":  {0o644, "ssid=@SSID@\n", ""},
		"etc/motd":               {0o640, "welcome\n", ""}, // host mode kept
		"etc/rc.local":           {0o750, "#!/bin/sh\nexit 0\n", ""},
		"etc/secret":             {0o600, "s3cret\n", ""}, // permissions file wins over the host mode
		"usr/local/bin/hello":    {0o750, "#!/bin/sh\necho hello\n", ""},
		"usr/local/bin/hi":       {0o777, "", "hello"},
		"etc/hosts":              {0o644, "127.0.0.1 localhost\n", ""}, // an extra file
	}
	rd := tar.NewReader(bytes.NewReader(b))
	seen := 0
	for {
		h, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		w, ok := want[h.Name]
		if !ok {
			t.Errorf("unexpected entry %s", h.Name)
			continue
		}
		seen++
		data, _ := io.ReadAll(rd)
		if h.Mode != w.mode || string(data) != w.data || h.Linkname != w.link || h.Uid != 0 || h.Gid != 0 || h.Uname != "root" {
			t.Errorf("%s: mode %o uid %d gid %d link %q data %q", h.Name, h.Mode, h.Uid, h.Gid, h.Linkname, data)
		}
	}
	if _, err := tr.Tar(time.Now(), map[string]string{"etc/x": ""}); err == nil {
		t.Error("a relative extra path was accepted")
	}
	if seen != len(want) {
		t.Errorf("saw %d of %d entries", seen, len(want))
	}

	// Real tars extract it as the guest does (tar -x -o -C DIR): GNU tar and
	// busybox tar, with the modes of the stream.
	for _, argv := range [][]string{{"tar"}, {"busybox", "tar"}} {
		if _, err := exec.LookPath(argv[0]); err != nil {
			t.Fatalf("%s is needed for this test: %v", argv[0], err)
		}
		root := t.TempDir()
		cmd := exec.Command(argv[0], append(argv[1:], "-x", "-o", "-C", root, "-f", "-")...)
		cmd.Stdin = bytes.NewReader(b)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
		for name, w := range want {
			fi, err := os.Lstat(filepath.Join(root, name))
			if err != nil {
				t.Errorf("%v: %v", argv, err)
				continue
			}
			if w.link == "" && int64(fi.Mode().Perm()) != w.mode {
				t.Errorf("%v: %s landed with mode %o, want %o", argv, name, fi.Mode().Perm(), w.mode)
			}
		}
	}
}

func TestErrorsNameTheFile(t *testing.T) {
	dir := hostTree(t)
	os.WriteFile(filepath.Join(dir, "permissions"), []byte("/etc/secret root:root 0600\n/etc/x root:root\n"), 0o644)
	_, err := OpenSource(bundledFS(), dir, func(s string) string { return s })
	if err == nil || !strings.Contains(err.Error(), dir+"/permissions:2: 2 fields") {
		t.Fatalf("err = %v", err)
	}
	os.WriteFile(filepath.Join(dir, "permissions"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "packages"), []byte("rsync\n\nBad_Name\n"), 0o644)
	_, err = OpenSource(bundledFS(), dir, func(s string) string { return s })
	if err == nil || !strings.Contains(err.Error(), dir+"/packages:3: \"Bad_Name\"") {
		t.Fatalf("err = %v", err)
	}
	if _, err := OpenSource(bundledFS(), "nosuch", func(s string) string { return s }); err == nil || !strings.Contains(err.Error(), "bundled: base") {
		t.Fatalf("err = %v", err)
	}
	if _, err := OpenSource(bundledFS(), dir+"/missing", func(s string) string { return s }); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("err = %v", err)
	}
}

// The trees shipped inside pifarm parse, and every permissions line names a
// file of the tree or a folder holding one.
func TestBundledTrees(t *testing.T) {
	for _, name := range []string{"base", "local"} {
		l, err := OpenSource(recipes.FS, name, func(s string) string { return s })
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Files) == 0 || len(l.Perms) == 0 || len(l.Packages) == 0 || l.PostInstall == "" {
			t.Fatalf("%s: incomplete tree %+v", name, l)
		}
		have := map[string]bool{}
		for _, f := range l.Files {
			for p := f.Path; p != "/"; p = path.Dir(p) {
				have[p] = true
			}
			if strings.HasPrefix(string(f.Data), "#!") && f.Mode&0o111 == 0 {
				t.Errorf("%s: script %s is not executable", name, f.Path)
			}
		}
		for _, p := range l.Perms {
			if !have[p.Path] {
				t.Errorf("%s: %s names %s, which the tree does not hold", name, p.Where, p.Path)
			}
		}
	}
}

func TestStarlarkModule(t *testing.T) {
	dir := hostTree(t)
	fx := startest.New(t, startest.Options{Dry: true, Farm: farm.New(farm.Default())})
	fx.Add(NewFS(bundledFS())).Set("USER", starlark.String(dir))
	g := fx.Run("test.star", `
t = guest.tree("base", None, "", USER)
files = t.files
pk = guest.packages(t, ["git", "rsync"])
mode = t.mode("/etc/secret")
perm = t.permissions[0]
tarlen = len(t.tar())
su = guest.sudoers("first.last")
q = guest.quote("it's")
`)
	if got := g["pk"].String(); got != `["hostapd", "i2c-tools", "rsync", "git"]` {
		t.Errorf("packages %s", got)
	}
	if g["mode"].String() != `"0600"` || !strings.Contains(g["perm"].String(), `where = "`+dir+`/permissions:2"`) {
		t.Errorf("mode %s perm %s", g["mode"], g["perm"])
	}
	if !strings.Contains(g["su"].String(), `/etc/sudoers.d/first_last`) || !strings.Contains(g["su"].String(), `first.last ALL=(ALL:ALL) NOPASSWD: ALL\n`) {
		t.Errorf("sudoers %s", g["su"])
	}
	if g["q"].String() != `"'it'\\''s'"` {
		t.Errorf("quote %s", g["q"])
	}
	for _, bad := range []struct{ src, want string }{
		{`guest.packages(["ok", "Not OK"])`, `guest.packages: list 1: "Not OK" is not a Debian package name`},
		{`guest.packages([1])`, `guest.packages: list 1: 1 is not a string`},
		{`guest.check_user("Root")`, `"Root" is not a user name`},
		{`guest.sudoers("a b")`, `guest.sudoers: "a b" is not a user name`},
		{`guest.tree("nosuch")`, `no bundled guest tree "nosuch"`},
		{`guest.tree(1)`, `want a tree name or folder`},
		{`guest.tree(base = 1)`, `guest.tree: unexpected keyword argument "base"`},
		{`guest.tree("base").mode("/nosuch")`, `guest.tree.mode: /nosuch is not a file of guest.tree(base)`},
		{`guest.tree("base").tar(extra = {"/x": 1})`, `guest.tree.tar: extra wants {path: text} strings`},
	} {
		_, err := fx.Exec("bad.star", bad.src)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: err = %v, want %q", bad.src, err, bad.want)
		}
	}
}

// TestQuoteKeepsLines: guest.quote is what a POSIX sh reads back as s, a
// newline kept as a newline inside the quotes (dash knows no $'\n').
func TestQuoteKeepsLines(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain-1.0_x/y:z,a=b+c@d%e", "plain-1.0_x/y:z,a=b+c@d%e"},
		{"", "''"},
		{"a b", "'a b'"},
		{"it's", `'it'\''s'`},
		{"two\nlines\n", "'two\nlines\n'"},
		{"$(reboot)", "'$(reboot)'"},
		{"a^b", "'a^b'"},
	} {
		if got := shQuote(tc.in); got != tc.want {
			t.Errorf("shQuote(%q) = %s, want %s", tc.in, got, tc.want)
		}
		out, err := exec.Command("sh", "-c", "printf %s "+shQuote(tc.in)).Output()
		if err != nil || string(out) != tc.in {
			t.Errorf("sh read %s back as %q (%v), want %q", shQuote(tc.in), out, err, tc.in)
		}
	}
}

func TestTreeMethodsRegistration(t *testing.T) {
	if err := treeMethods.Validate(); err != nil {
		t.Fatal(err)
	}
	v := &treeValue{t: &Tree{}}
	for _, name := range v.AttrNames() {
		if a, err := v.Attr(name); a == nil || err != nil {
			t.Errorf("t.%s: %v, %v", name, a, err)
		}
	}
}

// The sudoers drop-in passes sudo's own check (Debian package sudo).
func TestSudoersPassesVisudo(t *testing.T) {
	visudo, err := exec.LookPath("visudo")
	if err != nil {
		t.Fatalf("visudo is needed (apt-get install sudo): %v", err)
	}
	m := NewFS(bundledFS()).Struct()
	for _, name := range []string{"bob", "first.last", "_svc", "a-b_c9"} {
		v, err := starlark.Call(&starlark.Thread{}, m.Members["sudoers"], starlark.Tuple{starlark.String(name)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		text, _ := v.(starlark.HasAttrs).Attr("text")
		p := filepath.Join(t.TempDir(), "drop-in")
		os.WriteFile(p, []byte(string(text.(starlark.String))), 0o440)
		if out, err := exec.Command(visudo, "-c", "-q", "-f", p).CombinedOutput(); err != nil {
			t.Errorf("%s: visudo: %v\n%s", name, err, out)
		}
	}
}
