package console

import (
	"regexp"
	"strings"
)

// cleaner turns the raw byte stream of a serial console into plain text:
// ANSI/VT100 escape sequences (bash's bracketed-paste switches \e[?2004h,
// colours, cursor moves, OSC titles), carriage returns, NULs and other
// control characters are dropped; newlines and tabs stay. It keeps its state
// between chunks, so a sequence split across two reads is still removed.
type cleaner struct {
	state int // 0 text, 1 after ESC, 2 in CSI, 3 in OSC, 4 OSC after ESC
}

const (
	stText = iota
	stEsc
	stCSI
	stOSC
	stOSCEsc
)

// clean appends the text of p to dst and returns it.
func (c *cleaner) clean(dst, p []byte) []byte {
	for _, b := range p {
		switch c.state {
		case stText:
			switch {
			case b == 0x1b:
				c.state = stEsc
			case b == '\n' || b == '\t':
				dst = append(dst, b)
			case b == 0x08 || b == 0x7f: // backspace/delete: take back one character
				if n := len(dst); n > 0 && dst[n-1] != '\n' {
					dst = dst[:n-1]
				}
			case b < 0x20:
				// CR, NUL, BEL, ...: dropped
			default:
				dst = append(dst, b)
			}
		case stEsc:
			switch b {
			case '[':
				c.state = stCSI
			case ']':
				c.state = stOSC
			case '(', ')', '#', '%': // designate charset: one more byte follows
				c.state = stCSI
			default:
				c.state = stText
			}
		case stCSI:
			if b >= 0x40 && b <= 0x7e {
				c.state = stText
			}
		case stOSC:
			switch b {
			case 0x07:
				c.state = stText
			case 0x1b:
				c.state = stOSCEsc
			}
		case stOSCEsc:
			c.state = stText
		}
	}
	return dst
}

// kernelLine matches one message of the kernel log as printed on the
// console (loglevel=8): "[   12.345678] text".
var kernelLine = regexp.MustCompile(`^\[\s*\d+\.\d+\] `)

// dropKernelLines removes whole kernel log lines from console output.
func dropKernelLines(s string) string {
	if !strings.Contains(s, "] ") {
		return s
	}
	lines := strings.Split(s, "\n")
	out := lines[:0]
	for _, l := range lines {
		if !kernelLine.MatchString(l) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// tail returns the last n lines of s (without a trailing empty line).
func tail(s string, n int) []string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return nil
	}
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
