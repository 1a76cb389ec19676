package console

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"pifarm/builtins/trace"
)

// ErrClosed reports that the console connection ended (QEMU exited or
// closed the socket) while a session was waiting for output.
var ErrClosed = errors.New("console closed")

const (
	maxBuf  = 1 << 20 // unconsumed text kept for expect
	maxHist = 8 << 10 // text kept for error messages
	// lookback bounds rescanning: text that was searched without a match is
	// searched again only in its last lookback bytes (aligned to a line
	// start), so a long boot log does not cost a full scan per chunk. A
	// match may span at most this much text that had already arrived.
	lookback = 2 << 10
)

// Session is one client connection to a serial console. QEMU's socket
// chardev serves one client at a time and drops output while nobody is
// connected, so a session asks for a fresh prompt instead of relying on
// what was printed before it connected.
type Session struct {
	d *trace.Door
	// Label names the console in trace lines and errors ("console 5801").
	Label string
	// Addr is the TCP address of the console, or the path of a serial
	// device.
	Addr string

	conn   conn
	mu     sync.Mutex
	buf    []byte // cleaned text not yet consumed by an expect
	cut    int    // bytes dropped from the front of buf so far (absolute offsets)
	hist   []byte // the last maxHist bytes received, for error messages
	notify chan struct{}
	rerr   error // why the reader stopped
	cl     cleaner
	got    bool // anything received at all

	user   string // logged in as (by this session)
	nonce  string
	seq    int
	closed bool

	// found is the user of a shell Prompt found (left logged in by someone
	// else): Logout ends it too.
	found string
	// loggingIn: a password was sent and the answer not seen yet (the
	// shell may come up after the session stopped waiting).
	loggingIn bool
	// running: a command was typed and its end marker not seen yet.
	running bool
	// ending: the run is over (End): waits ignore the run's cancelled
	// context and actions pass Door.Finally.
	ending bool
}

// Match is what an expect found.
type Match struct {
	Index  int      // which of the patterns matched
	Text   string   // the whole match
	Groups []string // the submatches
	Before string   // the text between the previous match and this one
}

// Dial connects to a console. Dry, it connects to nothing and prints a
// comment; the returned session answers every call with plausible values.
func Dial(d *trace.Door, label, addr string, timeout time.Duration) (*Session, error) {
	return DialVia(d, label, addr, timeout, nil)
}

// Dialer opens the connection to a console within timeout (a tunnel to a
// remote host's loopback).
type Dialer func(ctx context.Context, timeout time.Duration) (net.Conn, error)

// DialVia is Dial through dial, which replaces the TCP connection to addr
// when not nil (addr then only names the console).
func DialVia(d *trace.Door, label, addr string, timeout time.Duration, dial Dialer) (*Session, error) {
	s := newSession(d, label, addr)
	if d.DryRun {
		d.Print(fmt.Sprintf("# %s: connect to %s", label, addr))
		return s, nil
	}
	if d.Verbose {
		d.Print(fmt.Sprintf("# %s: connect to %s", label, addr))
	}
	if dial == nil {
		dial = func(ctx context.Context, timeout time.Duration) (net.Conn, error) {
			dl := net.Dialer{Timeout: timeout}
			return dl.DialContext(ctx, "tcp", addr)
		}
	}
	conn, err := dial(d.Context(), timeout)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	s.conn = conn
	go s.read()
	return s, nil
}

// newSession is a session on addr, not connected yet.
func newSession(d *trace.Door, label, addr string) *Session {
	s := &Session{d: d, Label: label, Addr: addr, notify: make(chan struct{})}
	var b [4]byte
	rand.Read(b[:])
	s.nonce = hex.EncodeToString(b[:])
	return s
}

func (s *Session) read() {
	p := make([]byte, 4096)
	for {
		n, err := s.conn.Read(p)
		s.mu.Lock()
		if n > 0 {
			s.got = true
			before := len(s.buf)
			s.buf = s.cl.clean(s.buf, p[:n])
			s.hist = append(s.hist, s.buf[before:]...)
			if len(s.hist) > maxHist {
				s.hist = append(s.hist[:0], s.hist[len(s.hist)-maxHist/2:]...)
			}
			if len(s.buf) > maxBuf {
				drop := len(s.buf) - maxBuf/2
				s.buf = append(s.buf[:0], s.buf[drop:]...)
				s.cut += drop
			}
		}
		if err != nil {
			s.rerr = err
		}
		close(s.notify)
		s.notify = make(chan struct{})
		s.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// alive reports whether the console connection is still up (a dry
// session always is).
func (s *Session) alive() bool {
	if s.conn == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rerr == nil
}

// Dry reports whether the session only prints.
func (s *Session) Dry() bool { return s.conn == nil }

// Expect waits until one of pats matches the text received since the last
// match, consumes the text up to the end of the match and returns it. It
// fails after timeout, when the console closes (ErrClosed) or when the run
// is cancelled, quoting the last lines received.
func (s *Session) Expect(pats []*regexp.Regexp, timeout time.Duration) (Match, error) {
	if s.Dry() {
		s.d.Print(fmt.Sprintf("# %s: expect %s", s.Label, showPats(pats)))
		m := Match{Groups: make([]string, pats[0].NumSubexp())}
		return m, nil
	}
	return s.expect(pats, timeout, showPats(pats), timeout)
}

// expect is Expect with the awaited thing described as what, and shown as
// the timeout in the error (a part of a longer wait).
func (s *Session) expect(pats []*regexp.Regexp, timeout time.Duration, what string, shown time.Duration) (Match, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	ctx := s.context()
	from := -1 // absolute offset where the next search starts; -1: everything
	for {
		s.mu.Lock()
		start := 0
		if from >= 0 {
			start = s.lineStart(from - s.cut)
		}
		if m, ok := s.find(pats, start); ok {
			s.mu.Unlock()
			return m, nil
		}
		from = s.cut + len(s.buf) - lookback
		if s.rerr != nil {
			err := s.rerr
			s.mu.Unlock()
			return Match{}, s.failf(fmt.Errorf("%w (%v)", ErrClosed, err), "the console closed while waiting for %s", what)
		}
		ch := s.notify
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			return Match{}, s.failf(nil, "timeout after %s waiting for %s", shown, what)
		case <-ctx.Done():
			return Match{}, s.failf(ctx.Err(), "interrupted while waiting for %s", what)
		}
	}
}

// lineStart returns the start of the line holding buf[i] (looking back at
// most lookback bytes more), so that ^ in a pattern means a line start.
func (s *Session) lineStart(i int) int {
	if i <= 0 {
		return 0
	}
	if i > len(s.buf) {
		i = len(s.buf)
	}
	stop := max(0, i-lookback)
	for j := i - 1; j >= stop; j-- {
		if s.buf[j] == '\n' {
			return j + 1
		}
	}
	return stop
}

// find looks for the earliest match of any pattern in buf[start:]; s.mu is
// held.
func (s *Session) find(pats []*regexp.Regexp, start int) (Match, bool) {
	best, bestAt := -1, 0
	var loc []int
	for i, re := range pats {
		l := re.FindSubmatchIndex(s.buf[start:])
		if l != nil && (best < 0 || l[0] < bestAt) {
			best, bestAt, loc = i, l[0], l
		}
	}
	if best < 0 {
		return Match{}, false
	}
	for k := range loc {
		if loc[k] >= 0 {
			loc[k] += start
		}
	}
	m := Match{Index: best, Text: string(s.buf[loc[0]:loc[1]]), Before: string(s.buf[:loc[0]])}
	for g := 1; g < len(loc)/2; g++ {
		if loc[2*g] >= 0 {
			m.Groups = append(m.Groups, string(s.buf[loc[2*g]:loc[2*g+1]]))
		} else {
			m.Groups = append(m.Groups, "")
		}
	}
	s.buf = append(s.buf[:0], s.buf[loc[1]:]...)
	return m, true
}

// failf builds an error that names the console and quotes the last lines
// received (or says that nothing came at all, with the likely reasons).
func (s *Session) failf(wrapped error, format string, args ...any) error {
	s.mu.Lock()
	got, hist := s.got, string(s.hist)
	s.mu.Unlock()
	msg := s.Label + ": " + fmt.Sprintf(format, args...)
	if !got {
		if strings.HasPrefix(s.Addr, "/") {
			msg += fmt.Sprintf("; nothing was received from %s (is the board powered and booting? Its console needs enable_uart=1 in config.txt, the UART's TX on the Pi's RX (pin 10), RX on TX (pin 8), GND joined)", s.Addr)
		} else {
			msg += fmt.Sprintf("; nothing was received from %s (is the guest still booting, or is another client such as nc, socat or another pifarm connected? QEMU serves one console client at a time)", s.Addr)
		}
	} else {
		msg += "; last lines received:"
		for _, l := range tail(hist, 8) {
			msg += "\n  | " + l
		}
	}
	msg = s.d.Mask(msg)
	if wrapped != nil {
		return &consoleError{msg: msg, err: wrapped}
	}
	return errors.New(msg)
}

type consoleError struct {
	msg string
	err error
}

func (e *consoleError) Error() string { return e.msg }
func (e *consoleError) Unwrap() error { return e.err }

// Send writes text to the console as typed. The trace line shows it quoted,
// with registered secrets masked.
func (s *Session) Send(text string) error {
	return s.do(fmt.Sprintf("# %s: send %s", s.Label, showText(text)), func() error {
		return s.write(text)
	})
}

// do passes an action through the door: Door.Do during the run, and
// Door.Finally once it ended (its context may be cancelled: Ctrl-C).
func (s *Session) do(line string, fn func() error) error {
	if s.ending {
		return s.d.Finally(line, fn)
	}
	return s.d.Do(line, fn)
}

// context is the run's context, or a background one once the run ended:
// the clean-up waits have deadlines of their own.
func (s *Session) context() context.Context {
	if s.ending {
		return context.Background()
	}
	return s.d.Context()
}

func (s *Session) write(text string) error {
	if s.conn == nil {
		return nil
	}
	s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.conn.Write([]byte(text)); err != nil {
		return fmt.Errorf("%s: send: %w", s.Label, err)
	}
	return nil
}

// quote shows text in single quotes (always), for trace lines.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func showText(text string) string {
	body := strings.TrimRight(text, "\r\n")
	enter := body != text
	var q string
	switch {
	case body == "" && enter:
		return "Enter"
	case printable(body):
		q = quote(body)
	default:
		q = strconv.Quote(body)
	}
	if !enter {
		q += " (without Enter)"
	}
	return q
}

func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func showPats(pats []*regexp.Regexp) string {
	var s []string
	for _, p := range pats {
		s = append(s, "/"+p.String()+"/")
	}
	return strings.Join(s, " or ")
}
