package trace

import (
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Quote returns s quoted for a shell: unchanged when it holds only safe
// characters, else in single quotes with embedded quotes escaped. A control
// character (newline, carriage return, escape, ...) or a byte that is not
// UTF-8 is written as an ANSI-C quoted part ($'\n', as bash, ksh, zsh,
// busybox sh and `ls --quoting-style=shell-escape` write it), so the quoted
// word never spans lines or moves the terminal's cursor: the trace line
// stays one line that gives the command exactly s.
func Quote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.ContainsRune("-_./:,=+@%^", c)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	var b strings.Builder
	plain := func(p string) {
		if p != "" {
			b.WriteString("'" + strings.ReplaceAll(p, "'", `'\''`) + "'")
		}
	}
	start := 0
	for i := 0; i < len(s); {
		if n := controlLen(s[i:]); n > 0 {
			plain(s[start:i])
			b.WriteString("$'")
			for n > 0 {
				b.WriteString(escapeByte(s[i]))
				i++
				n = controlLen(s[i:])
			}
			b.WriteString("'")
			start = i
			continue
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
	}
	plain(s[start:])
	return b.String()
}

// controlLen is 1 when s begins with a byte that must be escaped: a control
// character other than tab, DEL, or a byte that starts no valid UTF-8
// sequence; else 0.
func controlLen(s string) int {
	if s == "" {
		return 0
	}
	c := s[0]
	if c < 0x20 && c != '\t' || c == 0x7f {
		return 1
	}
	if c >= 0x80 {
		if r, _ := utf8.DecodeRuneInString(s); r == utf8.RuneError {
			return 1
		}
	}
	return 0
}

// escapeByte is the C escape of one byte: \n, \r, \t, \a, \b, \f, \v, \\ or
// \xHH.
func escapeByte(c byte) string {
	switch c {
	case '\n':
		return `\n`
	case '\r':
		return `\r`
	case '\t':
		return `\t`
	case '\a':
		return `\a`
	case '\b':
		return `\b`
	case '\f':
		return `\f`
	case '\v':
		return `\v`
	case '\\':
		return `\\`
	case '\'':
		return `\'`
	}
	return fmt.Sprintf(`\x%02x`, c)
}

// Escape writes the control characters (but tab) and non-UTF-8 bytes of s
// as C escapes (\n, \r, \x1b), for values shown in a "# ..." comment: the
// comment stays one line and shows what the value holds.
func Escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		if controlLen(s[i:]) > 0 {
			b.WriteString(escapeByte(s[i]))
			i++
			continue
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		b.WriteString(s[i : i+size])
		i += size
	}
	return b.String()
}

// Join quotes every argument and joins them with spaces.
func Join(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}

// heredocOpen matches a line that ends by opening one of the door's
// here-documents (Door.Line, Door.WriteFile): <<'TAG'.
var heredocOpen = regexp.MustCompile(`<<'([A-Za-z0-9_]+)'$`)

// faithful makes one trace entry a faithful script, whatever text a module
// put into it. The door's own here-documents (a line ending in <<'TAG', up
// to the line TAG) keep their lines. A "# ..." comment line runs nothing:
// its control characters are escaped, and a following line that is not a
// comment itself can only be the rest of a value holding a newline (a path),
// so it is joined to the comment with the newline escaped as \n, instead of
// becoming a command of its own.
func faithful(entry string) string {
	if !strings.ContainsAny(entry, "\n\r\x1b\x7f") && utf8.ValidString(entry) {
		if !strings.HasPrefix(entry, "#") {
			return entry
		}
	}
	lines := strings.Split(entry, "\n")
	out := make([]string, 0, len(lines))
	tag, comment := "", false
	for _, l := range lines {
		switch {
		case tag != "":
			out = append(out, l)
			if l == tag {
				tag = ""
			}
		case comment && !strings.HasPrefix(l, "#"):
			out[len(out)-1] += `\n` + Escape(l)
		case strings.HasPrefix(l, "#"):
			out = append(out, Escape(l))
			comment = true
		default:
			out = append(out, l)
			comment = false
			if m := heredocOpen.FindStringSubmatch(l); m != nil {
				tag = m[1]
			}
		}
	}
	return strings.Join(out, "\n")
}
