package trace

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// argvRecorder is a script that prints its arguments, each followed by a
// NUL byte, so a test can see what a shell made of a trace line.
func argvRecorder(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rec")
	if err := os.WriteFile(p, []byte("#!/bin/sh\nfor a do printf '%s\\0' \"$a\"; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// runBash runs a trace as a bash script in which every simple command that
// would run is reported on stderr (DEBUG trap) before it runs.
func runBash(t testing.TB, script string) (stdout []byte, ran string, err error) {
	t.Helper()
	bash, lerr := exec.LookPath("bash")
	if lerr != nil {
		t.Skip("bash is not installed")
	}
	var out, errb bytes.Buffer
	cmd := exec.Command(bash, "--norc", "--noprofile", "-c", "trap 'printf \"RAN %s\\n\" \"$BASH_COMMAND\" >&2' DEBUG\n"+script)
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Dir = t.TempDir()
	err = cmd.Run()
	return out.Bytes(), errb.String(), err
}

var awkwardValues = []string{
	"plain",
	"two words",
	"a\nb",
	"/tmp/x\ntouch /tmp/injected",
	"/tmp/x\n# not a comment\ntouch /tmp/injected",
	"tail\n",
	"\n",
	"cr\rhidden",
	"esc\x1b[2Jclear",
	"tab\there",
	"quote'and\"dq\\bs$HOME`id`",
	"del\x7f",
	"bad\xffutf8",
	"x<<'EOF'\ntouch /tmp/injected\nEOF",
}

// TestTraceLineIsOneCommand: an argument holding a newline or another
// control character is quoted so that the trace line stays on one line and
// a shell gives the command exactly the arguments it was given.
func TestTraceLineIsOneCommand(t *testing.T) {
	rec := argvRecorder(t)
	for _, v := range awkwardValues {
		var out bytes.Buffer
		d := New(context.Background(), true, false, &out)
		d.Exec(Cmd{Argv: []string{rec, v, "--", v}})
		line := strings.TrimSuffix(out.String(), "\n")
		if strings.ContainsAny(line, "\n\r\x1b\x7f") || !utf8.ValidString(line) {
			t.Errorf("trace of argument %q spans lines or holds control bytes: %q", v, line)
		}
		got, ran, err := runBash(t, line)
		if err != nil || string(got) != v+"\x00--\x00"+v+"\x00" || strings.Count(ran, "RAN ") != 1 {
			t.Errorf("bash runs the trace of %q as %q (commands run: %q, %v)", v, got, ran, err)
		}
	}
}

// TestTraceCommentStaysComment: whatever a module puts into a "# ..."
// comment (a path holding a newline), the printed comment runs nothing.
// Where the door formats the value (Note, the comments it writes itself),
// the value is escaped and the comment stays on one line; a line a module
// formatted itself may go on only as further comment lines.
func TestTraceCommentStaysComment(t *testing.T) {
	for _, v := range awkwardValues {
		var out bytes.Buffer
		d := New(context.Background(), true, false, &out)
		d.Note("nothing is mounted on %s", v)
		d.WriteFile(filepath.Join("/nonexistent", v), []byte{0, 1, 2}, 0o600, true)
		oneLine := out.String()
		if n := strings.Count(oneLine, "\n"); n != 2 {
			t.Errorf("door-made comments about %q take %d lines, want 2:\n%s", v, n, oneLine)
		}
		d.Do("# refresh the record of "+v, func() error { return nil })
		d.Print("# warning: " + v + " is odd")
		trace := out.String()
		if _, ran, err := runBash(t, trace); err != nil || ran != "" {
			t.Errorf("comments about %q run %q (%v):\n%s", v, ran, err, trace)
		}
		for _, l := range strings.Split(strings.TrimSuffix(trace, "\n"), "\n") {
			if !strings.HasPrefix(l, "#") {
				t.Errorf("comments about %q print a line that is not a comment: %q", v, l)
			}
		}
		if strings.ContainsAny(trace, "\r\x1b\x7f") || !utf8.ValidString(trace) {
			t.Errorf("comments about %q hold control bytes: %q", v, trace)
		}
	}
	// A module's own continuation lines ("#   ...") stay as they are.
	var out bytes.Buffer
	d := New(context.Background(), true, false, &out)
	d.Print("# console: run 'a\n#   b'")
	if out.String() != "# console: run 'a\n#   b'\n" {
		t.Errorf("continuation comment changed: %q", out.String())
	}
}

// TestDoorHeredocStaysRunnable: the door's own here-documents keep their
// lines, and a script holding a file written with WriteFile still runs.
func TestDoorHeredocStaysRunnable(t *testing.T) {
	dir := t.TempDir()
	for i, v := range awkwardValues {
		if !utf8.ValidString(v) || strings.ContainsAny(v, "\x00") {
			continue
		}
		p := filepath.Join(dir, "f"+string(rune('a'+i)))
		var out bytes.Buffer
		d := New(context.Background(), true, false, &out)
		body := "line one\n" + v + "\n"
		if err := d.WriteFile(p, []byte(body), 0o600, false); err != nil {
			t.Fatal(err)
		}
		if _, _, err := runBash(t, out.String()); err != nil {
			t.Errorf("trace of a file holding %q: %v\n%s", v, err, out.String())
			continue
		}
		if got, _ := os.ReadFile(p); !isText([]byte(body)) && string(got) == body {
			// binary data is a comment: nothing written
			t.Errorf("a comment wrote %s", p)
		} else if isText([]byte(body)) && string(got) != body {
			t.Errorf("trace of a file holding %q writes %q:\n%s", v, got, out.String())
		}
	}
}

// FuzzTraceLine: any text as an argument, a here-document or a value in a
// comment gives a trace that bash runs as exactly the intended commands:
// the command gets its arguments and its standard input unchanged, the
// comments run nothing, and no line of it is a command a module did not ask
// for.
func FuzzTraceLine(f *testing.F) {
	for _, v := range awkwardValues {
		f.Add(v, "body\n")
	}
	f.Add("x", "EOF\n")
	f.Add("'", "a\nEOF\nb")
	f.Add("$'\\n'", "\x1b[2J")
	rec := argvRecorder(f)
	f.Fuzz(func(t *testing.T, arg, body string) {
		if strings.ContainsRune(arg, 0) || strings.ContainsRune(body, 0) {
			t.Skip("an argument or a here-document cannot hold NUL")
		}
		var out bytes.Buffer
		d := New(context.Background(), true, false, &out)
		d.Note("a note about %s", arg)
		d.Do("# a comment about "+arg, func() error { return nil })
		d.Exec(Cmd{Argv: []string{rec, arg}})
		d.Exec(Cmd{Argv: []string{"cat"}, Heredoc: body})
		want := arg + "\x00" + body
		if body != "" && !strings.HasSuffix(body, "\n") {
			want += "\n"
		}
		got, ran, err := runBash(t, out.String())
		if err != nil || string(got) != want {
			t.Fatalf("bash gives %q, want %q (%v; %s):\n%s", got, want, err, ran, out.String())
		}
		if n := strings.Count(ran, "RAN "); n != 2 {
			t.Fatalf("bash ran %d commands, want 2: %s\n%s", n, ran, out.String())
		}
	})
}
