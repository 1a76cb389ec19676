package trace

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestMaskOnlyWholeValues: a secret is masked where it stands as a value
// (an argument, a quoted word, after = or :, a here-document line), never
// inside another word: a short password must not turn "caches" into
// "****ches" (the trace would no longer run and would show where the
// password occurs).
func TestMaskOnlyWholeValues(t *testing.T) {
	for _, tc := range []struct {
		name    string
		secrets []string
		in      string
		want    string
	}{
		{"inside a path", []string{"ca"}, "mkdir -p /root/.cache/pifarm/conf", "mkdir -p /root/.cache/pifarm/conf"},
		{"inside words", []string{"ca"}, "# console 5800: connect to 127.0.0.1:5800 (cat, scan, ca1)", "# console 5800: connect to 127.0.0.1:5800 (cat, scan, ca1)"},
		{"quoted argument", []string{"ca"}, "# console 5800: send 'ca'", "# console 5800: send '****'"},
		{"bare argument", []string{"ca"}, "sshpass -p ca ssh pi@h", "sshpass -p **** ssh pi@h"},
		{"whole line", []string{"ca"}, "ca", "****"},
		{"after = and :", []string{"ca"}, "PASSWORD=ca echo pi:ca", "PASSWORD=**** echo pi:****"},
		{"here-document", []string{"ca"}, "chpasswd <<'EOF'\npi:ca\nEOF", "chpasswd <<'EOF'\npi:****\nEOF"},
		{"list", []string{"ca", "raspberry"}, "passwords ca, raspberry in turn", "passwords ****, **** in turn"},
		{"longer secret first", []string{"raspberry", "raspberrypi"}, "send raspberrypi, then raspberry", "send ****, then ****"},
		{"secret with blanks", []string{"my pass"}, "send 'my pass'", "send '****'"},
		{"secret with a quote, as Quote renders it", []string{"it's"}, "send " + Quote("it's") + " and " + Quote("x it's y"), "send '****' and 'x **** y'"},
		{"not in a longer word at either end", []string{"pass"}, "passwd bypass password pass", "passwd bypass password ****"},
		{"hash with $ and /", []string{"$6$salt$a/b.c"}, "usermod -p '$6$salt$a/b.c' pi", "usermod -p '****' pi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := New(context.Background(), true, false, nil)
			for _, s := range tc.secrets {
				d.Secret(s)
			}
			if got := d.Mask(tc.in); got != tc.want {
				t.Errorf("Mask(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestMaskedDryRunStillRuns: with a password that is also part of a word of
// the trace, the printed command is the command that would run.
func TestMaskedDryRunStillRuns(t *testing.T) {
	var out bytes.Buffer
	d := New(context.Background(), true, false, &out)
	d.Secret("ca")
	d.Exec(Cmd{Argv: []string{"mkdir", "-p", "/root/.cache/pifarm/conf"}})
	d.Exec(Cmd{Argv: []string{"chpasswd"}, Heredoc: "pi:ca\n"})
	want := "mkdir -p /root/.cache/pifarm/conf\nchpasswd <<'EOF'\npi:****\nEOF\n"
	if out.String() != want {
		t.Fatalf("trace\n%s\nwant\n%s", out.String(), want)
	}
	if strings.Contains(out.String(), "pi:ca") {
		t.Fatal("secret shown")
	}
}
