package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"pifarm/builtins/farm"
)

// WaitResult is what a wait saw.
type WaitResult struct {
	OK   bool
	Seen string // the tail of the console output, or the SSH banner
}

// TimeoutError is a wait that ran out of time; it quotes what was seen.
type TimeoutError struct {
	What    string
	Timeout time.Duration
	Seen    string
}

func (e *TimeoutError) Error() string {
	seen := strings.TrimSpace(e.Seen)
	if seen == "" {
		seen = "nothing"
	} else {
		seen = strconv.Quote(tail(seen, 300))
	}
	return fmt.Sprintf("%s: no success within %s; seen: %s", e.What, e.Timeout, seen)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// backoff grows a retry interval from the poll interval up to 200 ms.
func (in *Instances) backoff(cur time.Duration) time.Duration {
	if cur == 0 {
		return in.poll()
	}
	cur *= 2
	if cur > 200*time.Millisecond {
		cur = 200 * time.Millisecond
	}
	return cur
}

// WaitConsole waits until instance n's TCP serial console shows text
// matching re (the login prompt, "login: ", by default): it connects (again
// and again while QEMU is not listening yet), sends a carriage return so a
// waiting getty prints its prompt again, and reads. It always disconnects
// before returning: QEMU's console socket serves one client at a time, and
// the console module wants it next. Dry, it prints a comment and reports
// success.
func (in *Instances) WaitConsole(n *farm.Node, re *regexp.Regexp, timeout time.Duration) (WaitResult, error) {
	port := in.F.ConsolePort(n)
	what := fmt.Sprintf("instance %d: console %s waiting for /%s/", n.ID, in.where(n, port), re)
	if in.D.DryRun {
		in.D.Note("wait until the console (nc localhost %d) shows /%s/ (at most %s)", port, re, timeout)
		return WaitResult{OK: true}, nil
	}
	ctx := in.D.Context()
	deadline := time.Now().Add(timeout)
	var seen strings.Builder
	var retry time.Duration
	connected := false
	var dialErr error
	ran := in.alive(n)
	for {
		conn, err := in.dialPort(ctx, n, port, deadline)
		if err != nil && (dialErr == nil || !isTimeout(err)) {
			dialErr = err
		}
		if err == nil {
			connected = true
			ok, err := in.readUntil(conn, re, deadline, &seen)
			conn.Close()
			if ok {
				return WaitResult{OK: true, Seen: tail(seen.String(), 2000)}, nil
			}
			if err != nil && ctx.Err() != nil {
				return WaitResult{Seen: seen.String()}, ctx.Err()
			}
			retry = 0
		}
		if ctx.Err() != nil {
			return WaitResult{Seen: seen.String()}, ctx.Err()
		}
		if time.Now().After(deadline) {
			s := seen.String()
			if !connected {
				s = fmt.Sprintf("(could not connect: %v)", dialErr)
			} else if s == "" {
				s = "(connected, but no output: is another client attached to the console?)"
			}
			return WaitResult{Seen: seen.String()}, &TimeoutError{What: what, Timeout: timeout, Seen: s}
		}
		if ran && !in.alive(n) {
			return WaitResult{Seen: seen.String()}, fmt.Errorf("%s: QEMU exited; seen: %q", what, tail(seen.String(), 300))
		}
		retry = in.backoff(retry)
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
}

// alive reports whether instance n's QEMU runs (pidfile and /proc, no QMP).
func (in *Instances) alive(n *farm.Node) bool {
	if h, ok := in.placed(n); ok {
		return in.probeOn(h, n).Running
	}
	return in.find(n.ID).pid != 0
}

// readUntil sends a carriage return and reads conn until re matches the
// output seen on this connection, the deadline passes or the peer closes.
// After 3 s of silence it sends another carriage return.
func (in *Instances) readUntil(conn net.Conn, re *regexp.Regexp, deadline time.Time, seen *strings.Builder) (bool, error) {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-in.D.Context().Done():
			conn.Close()
		case <-stop:
		}
	}()
	var cur []byte
	buf := make([]byte, 4096)
	nudge := func() error {
		conn.SetWriteDeadline(deadline)
		_, err := conn.Write([]byte("\r\n"))
		return err
	}
	if err := nudge(); err != nil {
		return false, err
	}
	for {
		quiet := time.Now().Add(3 * time.Second)
		if quiet.After(deadline) {
			quiet = deadline
		}
		conn.SetReadDeadline(quiet)
		k, err := conn.Read(buf)
		if k > 0 {
			seen.Write(buf[:k])
			cur = append(cur, buf[:k]...)
			if len(cur) > 8192 {
				cur = cur[len(cur)-4096:]
			}
			if re.Match(cur) {
				return true, nil
			}
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && time.Now().Before(deadline) {
				if err := nudge(); err != nil {
					return false, err
				}
				continue
			}
			return false, err
		}
	}
}

// WaitSSH waits until instance n's SSH port (5700+N, forwarded by QEMU to
// the guest's port 22) answers with an "SSH-" banner and returns the banner.
// QEMU accepts the connection even while the guest's sshd is down and then
// closes it; that is retried until the deadline. Dry, it prints a comment.
func (in *Instances) WaitSSH(n *farm.Node, timeout time.Duration) (WaitResult, error) {
	port := in.F.SSHPort(n)
	what := fmt.Sprintf("instance %d: ssh %s waiting for an SSH banner", n.ID, in.where(n, port))
	if in.D.DryRun {
		in.D.Note("wait until ssh -p %d localhost answers with an SSH banner (at most %s)", port, timeout)
		return WaitResult{OK: true}, nil
	}
	ctx := in.D.Context()
	deadline := time.Now().Add(timeout)
	var last string
	var retry time.Duration
	ran := in.alive(n)
	for {
		conn, err := in.dialPort(ctx, n, port, deadline)
		if err == nil {
			stop := closeOnCancel(ctx, conn)
			// QEMU's forward to a paused or busy guest may neither answer
			// nor close: give each attempt at most 5 s.
			rd := time.Now().Add(5 * time.Second)
			if rd.After(deadline) {
				rd = deadline
			}
			conn.SetReadDeadline(rd)
			line, rerr := bufio.NewReaderSize(conn, 512).ReadString('\n')
			stop()
			conn.Close()
			if strings.HasPrefix(line, "SSH-") {
				return WaitResult{OK: true, Seen: strings.TrimRight(line, "\r\n")}, nil
			}
			switch {
			case line != "":
				last = fmt.Sprintf("%q", line)
			case rerr != nil:
				last = fmt.Sprintf("connected, then %v", rerr)
			}
		} else if last == "" || !isTimeout(err) {
			// A dial cut short by the deadline says less than the
			// error before it.
			last = err.Error()
		}
		if ctx.Err() != nil {
			return WaitResult{Seen: last}, ctx.Err()
		}
		if time.Now().After(deadline) {
			return WaitResult{Seen: last}, &TimeoutError{What: what, Timeout: timeout, Seen: last}
		}
		if ran && !in.alive(n) {
			return WaitResult{Seen: last}, fmt.Errorf("%s: QEMU exited; last seen: %s", what, last)
		}
		retry = in.backoff(retry)
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
}

// dialLoopback connects to TCP port on 127.0.0.1 (a port QEMU listens on
// for the instance), giving up at deadline or when ctx ends.
func dialLoopback(ctx context.Context, port int, deadline time.Time) (net.Conn, error) {
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var d net.Dialer
	return d.DialContext(dctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
}

// closeOnCancel closes c when ctx is cancelled, until stop is called.
func closeOnCancel(ctx context.Context, c net.Conn) (stop func() bool) {
	return context.AfterFunc(ctx, func() { c.Close() })
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
