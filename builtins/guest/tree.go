// Package guest is the Starlark module `guest`: pifarm's guest software
// trees, read and checked on the host before anything is sent to a guest.
//
// A guest tree is a folder with
//
//	files/        a file tree rooted at the guest's / (files/etc/rc.local is /etc/rc.local)
//	permissions   "<abs-path> <user>:<group> <octal-mode>" lines, '#' comments
//	packages      Debian package names, one per line, '#' comments
//	post-install  a sh script run on the guest as root after the files landed
//
// The trees "base" and "local" are bundled with pifarm (recipes/guest/NAME);
// any other source is a host folder (config.star's guest_software). Several
// sources merge into one tree: a later source's file replaces an earlier
// one's with the same guest path, its permission lines override, package
// lists are united and post-install scripts run in source order.
//
// The module only reads: it never talks to a guest. Recipes send what it
// builds (a tar stream, permission commands, scripts) with the ssh module.
package guest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Perm is one line of a permissions file.
type Perm struct {
	Path  string      // absolute guest path
	User  string      // owner name or numeric id
	Group string      // group name or numeric id
	Mode  fs.FileMode // permission bits, including setuid/setgid/sticky
	Where string      // file:line it came from
}

// ModeString is the mode as four octal digits, e.g. "0755".
func (p Perm) ModeString() string {
	return fmt.Sprintf("%04o", uint32(p.Mode.Perm())|specialBits(p.Mode))
}

// Package is one entry of a packages file.
type Package struct {
	Name  string
	Where string // file:line
}

// File is one file of a tree's files/ folder.
type File struct {
	Path string      // absolute guest path
	Data []byte      // content (regular files)
	Link string      // symbolic link target (links only)
	Mode fs.FileMode // permission bits
	From string      // where it was read, for messages
}

// Script is one post-install script.
type Script struct {
	Source string // the tree it belongs to
	Text   string
}

// Layer is one source tree as read.
type Layer struct {
	Name        string // "base", "local" or a host folder
	Files       []*File
	Perms       []Perm
	Packages    []Package
	PostInstall string
}

// Tree is one or more layers merged.
type Tree struct {
	Layers []*Layer
}

// Embedded sources are the names of the bundled trees.
func isBundledName(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/~$\\") && !strings.HasPrefix(s, ".")
}

var (
	userRE    = regexp.MustCompile(`^([a-z_][a-z0-9_.-]{0,31}\$?|[0-9]{1,10})$`)
	modeRE    = regexp.MustCompile(`^[0-7]{3,4}$`)
	packageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+(:[a-z0-9][a-z0-9-]*)?$`)
	// LoginRE is what pifarm accepts as a user account name (useradd's
	// default NAME_REGEX, plus '.' as Debian allows).
	LoginRE = regexp.MustCompile(`^[a-z_][a-z0-9_.-]{0,31}$`)
)

// ReadLayer reads the tree at root inside fsys. name is how the tree is
// named in messages (file:line errors use name/permissions:N). A missing
// files/, permissions, packages or post-install is an empty one; a missing
// root is an error.
func ReadLayer(fsys fs.FS, root, name string, hostModes bool) (*Layer, error) {
	if fi, err := fs.Stat(fsys, root); err != nil || !fi.IsDir() {
		switch {
		case err == nil:
			err = errors.New("not a folder")
		case errors.Is(err, fs.ErrNotExist):
			err = errors.New("no such folder")
		default:
			err = unwrapPath(err)
		}
		return nil, fmt.Errorf("guest tree %s: %w", name, err)
	}
	l := &Layer{Name: name}
	at := func(p string) string { return path.Join(root, p) }
	label := func(p string) string { return strings.TrimSuffix(name, "/") + "/" + p }

	if b, err := fs.ReadFile(fsys, at("permissions")); err == nil {
		if l.Perms, err = ParsePermissions(label("permissions"), b); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("guest tree %s: %w", name, err)
	}
	if b, err := fs.ReadFile(fsys, at("packages")); err == nil {
		if l.Packages, err = ParsePackages(label("packages"), b); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("guest tree %s: %w", name, err)
	}
	if b, err := fs.ReadFile(fsys, at("post-install")); err == nil {
		l.PostInstall = string(b)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("guest tree %s: %w", name, err)
	}

	perm := map[string]fs.FileMode{}
	for _, p := range l.Perms {
		perm[p.Path] = p.Mode
	}
	filesDir := at("files")
	if _, err := fs.Stat(fsys, filesDir); errors.Is(err, fs.ErrNotExist) {
		return l, nil
	}
	err := fs.WalkDir(fsys, filesDir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, filesDir), "/")
		base := path.Base(p)
		if rel == "" || de.IsDir() {
			return nil
		}
		if strings.HasSuffix(base, "~") || base == ".gitkeep" {
			return nil // editor backups and folder placeholders stay home
		}
		if err := CheckGuestPath("/" + rel); err != nil {
			return fmt.Errorf("%q: %w", "files/"+rel, err)
		}
		f := &File{Path: "/" + rel, From: label("files/" + rel)}
		info, err := de.Info()
		if err != nil {
			return err
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			rl, ok := fsys.(fs.ReadLinkFS)
			if !ok {
				return fmt.Errorf("%s: symbolic link in a tree that cannot hold one", f.From)
			}
			if f.Link, err = rl.ReadLink(p); err != nil {
				return err
			}
			if err := CheckLinkTarget(f.Link); err != nil {
				return fmt.Errorf("%q: %w", "files/"+rel, err)
			}
			f.Mode = 0o777
		case info.Mode().IsRegular():
			if f.Data, err = fs.ReadFile(fsys, p); err != nil {
				return err
			}
			f.Mode = defaultMode(f.Data)
			if hostModes {
				f.Mode = info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
			}
		default:
			return fmt.Errorf("%s: %s is neither a file nor a symbolic link", f.From, info.Mode().Type())
		}
		if m, ok := perm[f.Path]; ok && f.Link == "" {
			f.Mode = m
		}
		l.Files = append(l.Files, f)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("guest tree %s: %w", name, unwrapPath(err))
	}
	return l, nil
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

// defaultMode is the mode of a file whose source has none (the embedded
// trees): 0755 for scripts (a "#!" first line), else 0644.
func defaultMode(data []byte) fs.FileMode {
	if bytes.HasPrefix(data, []byte("#!")) {
		return 0o755
	}
	return 0o644
}

// ParsePermissions parses a permissions file. Every line is blank, a
// comment, or "<abs-path> <user>:<group> <octal-mode>"; anything else is an
// error naming name:line. A path given twice is an error too.
func ParsePermissions(name string, data []byte) ([]Perm, error) {
	var out []Perm
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		where := fmt.Sprintf("%s:%d", name, n)
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%s: %s (want \"<abs-path> <user>:<group> <octal-mode>\", got %q)", where, fmt.Sprintf(format, args...), line)
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, bad("%d fields, want 3", len(f))
		}
		p := f[0]
		if !strings.HasPrefix(p, "/") {
			return nil, bad("path %q is not absolute", p)
		}
		if path.Clean(p) != p || p == "/" {
			return nil, bad("path %q is not clean (no //, /./, /../ or trailing /)", p)
		}
		if err := CheckGuestPath(p); err != nil {
			return nil, bad("%v", err)
		}
		ug := strings.Split(f[1], ":")
		if len(ug) != 2 {
			return nil, bad("owner %q is not user:group", f[1])
		}
		for _, x := range ug {
			if !userRE.MatchString(x) {
				return nil, bad("%q is not a user or group name", x)
			}
		}
		if !modeRE.MatchString(f[2]) {
			return nil, bad("mode %q is not octal (e.g. 0755)", f[2])
		}
		m, _ := strconv.ParseUint(f[2], 8, 32)
		if prev, ok := seen[p]; ok {
			return nil, bad("%s already given on line %d", p, prev)
		}
		seen[p] = n
		out = append(out, Perm{Path: p, User: ug[0], Group: ug[1], Mode: octalMode(uint32(m)), Where: where})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

func octalMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

func specialBits(m fs.FileMode) uint32 {
	var x uint32
	if m&fs.ModeSetuid != 0 {
		x |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		x |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		x |= 0o1000
	}
	return x
}

// CheckPackage validates one Debian package name (optionally name:arch).
func CheckPackage(p string) error {
	if !packageRE.MatchString(p) {
		return fmt.Errorf("%q is not a Debian package name (lower case letters, digits, '+', '-', '.', at least two characters, optional :arch)", p)
	}
	return nil
}

// ParsePackages parses a packages file: one name per line, '#' starts a
// comment. A bad name is an error naming name:line; nothing is dropped.
func ParsePackages(name string, data []byte) ([]Package, error) {
	var out []Package
	seen := map[string]bool{}
	for n, line := range strings.Split(string(data), "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		where := fmt.Sprintf("%s:%d", name, n+1)
		if strings.ContainsAny(line, " \t") {
			return nil, fmt.Errorf("%s: one package per line, got %q", where, line)
		}
		if err := CheckPackage(line); err != nil {
			return nil, fmt.Errorf("%s: %v", where, err)
		}
		if !seen[line] {
			seen[line] = true
			out = append(out, Package{Name: line, Where: where})
		}
	}
	return out, nil
}

// Files is the merged file list, sorted by path: a later layer's file
// replaces an earlier one with the same path, and the merged permissions set
// the modes (a later layer's permissions file also applies to the files of
// earlier layers).
func (t *Tree) Files() []*File {
	m := map[string]*File{}
	for _, l := range t.Layers {
		for _, f := range l.Files {
			m[f.Path] = f
		}
	}
	perm := map[string]fs.FileMode{}
	for _, p := range t.Perms() {
		perm[p.Path] = p.Mode
	}
	out := make([]*File, 0, len(m))
	for _, f := range m {
		if mode, ok := perm[f.Path]; ok && f.Link == "" && mode != f.Mode {
			c := *f
			c.Mode = mode
			f = &c
		}
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// Perms is the merged permission list in order of first appearance; a later
// layer's line for the same path replaces the earlier one.
func (t *Tree) Perms() []Perm {
	idx := map[string]int{}
	var out []Perm
	for _, l := range t.Layers {
		for _, p := range l.Perms {
			if i, ok := idx[p.Path]; ok {
				out[i] = p
				continue
			}
			idx[p.Path] = len(out)
			out = append(out, p)
		}
	}
	return out
}

// Packages is the union of the layers' package lists in order of first
// appearance.
func (t *Tree) Packages() []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range t.Layers {
		for _, p := range l.Packages {
			if !seen[p.Name] {
				seen[p.Name] = true
				out = append(out, p.Name)
			}
		}
	}
	return out
}

// PostInstall lists the non-empty post-install scripts in layer order.
func (t *Tree) PostInstall() []Script {
	var out []Script
	for _, l := range t.Layers {
		if strings.TrimSpace(l.PostInstall) != "" {
			out = append(out, Script{Source: l.Name, Text: l.PostInstall})
		}
	}
	return out
}

// Tar builds the merged tree as an uncompressed tar stream: entries
// relative to / (etc/rc.local), regular files and symbolic links only (the
// guest's existing folders keep their owners and modes; missing ones are
// created by tar), uid/gid 0 (root), modes from the permissions file or the
// source, modification time mtime.
//
// extra adds files that are not part of the tree (rendered tables, staged
// scripts) with mode 0644; an extra file replaces a tree file of the same
// path. Extra paths must be absolute and clean.
func (t *Tree) Tar(mtime time.Time, extra map[string]string) ([]byte, error) {
	files := t.Files()
	if len(extra) > 0 {
		byPath := map[string]*File{}
		for _, f := range files {
			byPath[f.Path] = f
		}
		for p, text := range extra {
			if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" {
				return nil, fmt.Errorf("tar: extra file path %q is not absolute and clean", p)
			}
			if err := CheckGuestPath(p); err != nil && !strings.HasPrefix(p, "/.pifarm/") { // staged, not installed
				return nil, fmt.Errorf("tar: extra file %q: %w", p, err)
			}
			byPath[p] = &File{Path: p, Data: []byte(text), Mode: 0o644, From: "extra " + p}
		}
		files = files[:0:0]
		for _, f := range byPath {
			files = append(files, f)
		}
		sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{
			Name: strings.TrimPrefix(f.Path, "/"), Mode: int64(uint32(f.Mode.Perm()) | specialBits(f.Mode)),
			Uid: 0, Gid: 0, Uname: "root", Gname: "root", ModTime: mtime, Format: tar.FormatUSTAR,
		}
		if len(h.Name) > 100 {
			h.Format = tar.FormatPAX
		}
		if f.Link != "" {
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.Link
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("tar %s: %w", f.From, err)
		}
		if f.Link == "" {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, fmt.Errorf("tar %s: %w", f.From, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// PermScript renders the permissions as explicit shell commands, one
// "chown user:group path && chmod mode path || exit" line per entry. A path
// missing on the guest makes the script fail naming it (set -e alone would
// not: it ignores a failure on the left of &&).
func (t *Tree) PermScript() string {
	var b strings.Builder
	for _, p := range t.Perms() {
		q := shQuote(p.Path)
		fmt.Fprintf(&b, "chown %s:%s %s && chmod %s %s || exit\n", p.User, p.Group, q, p.ModeString(), q)
	}
	return b.String()
}

// OpenSource reads one source: a bundled tree name from bundled (rooted at
// recipes/, trees under guest/NAME), else a host folder.
func OpenSource(bundled fs.FS, src string, expand func(string) string) (*Layer, error) {
	if isBundledName(src) {
		if _, err := fs.Stat(bundled, path.Join("guest", src)); err != nil {
			names, _ := fs.ReadDir(bundled, "guest")
			var known []string
			for _, n := range names {
				if n.IsDir() {
					known = append(known, n.Name())
				}
			}
			return nil, fmt.Errorf("no bundled guest tree %q (bundled: %s; a host folder needs a '/' in its name, e.g. ./%s)", src, strings.Join(known, ", "), src)
		}
		return ReadLayer(bundled, path.Join("guest", src), src, false)
	}
	dir := expand(src)
	return ReadLayer(os.DirFS(dir), ".", dir, true)
}

// NameError is a guest path, or a link target, that the install on the
// guest cannot take as it is.
type NameError struct {
	Name   string // the offending name (one part of the path) or link target
	Link   bool   // Name is a symbolic link's target
	Reason string
}

func (e *NameError) Error() string {
	what := "the name"
	if e.Link {
		what = "its link target"
	}
	return fmt.Sprintf("%s %q %s: the install on the guest reads one name per line, trims the blanks at its ends "+
		"and shows every name in pifarm's output, so it cannot install this file as it is; rename it", what, e.Name, e.Reason)
}

// CheckGuestPath reports a guest path (absolute, "/etc/motd") that the
// install on the guest cannot handle: a name (any part of the path) that
// is not valid UTF-8, holds a control character (newline, tab, CR, DEL,
// C1) or an invisible format character (such as U+202E, which shows text
// reversed), or starts or ends with a blank; and anything under /.pifarm,
// the staging folder of the install, whose files are never installed.
func CheckGuestPath(p string) error {
	for i, name := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if i == 0 && name == ".pifarm" {
			return &NameError{Name: name, Reason: "is pifarm's staging folder on the guest (its files are never installed)"}
		}
		if reason := badText(name); reason != "" {
			return &NameError{Name: name, Reason: reason}
		}
		if r, _ := utf8.DecodeRuneInString(name); unicode.IsSpace(r) {
			return &NameError{Name: name, Reason: "starts with a blank"}
		}
		if r, _ := utf8.DecodeLastRuneInString(name); unicode.IsSpace(r) {
			return &NameError{Name: name, Reason: "ends in a blank"}
		}
	}
	return nil
}

// CheckLinkTarget reports a symbolic link target the install on the guest
// cannot reproduce (it reads it back with $(readlink), which drops
// trailing newlines) or that would garble pifarm's output: not UTF-8, or
// holding a control or format character. Blanks are kept as they are.
func CheckLinkTarget(target string) error {
	if reason := badText(target); reason != "" {
		return &NameError{Name: target, Link: true, Reason: reason}
	}
	return nil
}

// badText says why s cannot pass as one line of text, or "".
func badText(s string) string {
	if !utf8.ValidString(s) {
		return "is not valid UTF-8"
	}
	for _, r := range s {
		switch {
		case unicode.IsControl(r):
			return fmt.Sprintf("holds a control character (U+%04X)", r)
		case unicode.Is(unicode.Cf, r):
			return fmt.Sprintf("holds an invisible format character (U+%04X)", r)
		}
	}
	return ""
}

// shQuote quotes s for a POSIX shell as dash reads it: unchanged when it
// holds only characters no shell treats specially, else in single quotes
// (a single quote inside is closed, escaped and reopened). Everything else
// stays literal inside the quotes, a newline included, so a multi-line script stays multi-line: the
// guest's sh may not know bash's $'\n' (trace.Quote writes control
// characters that way to keep a trace line one line).
func shQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:,=+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
