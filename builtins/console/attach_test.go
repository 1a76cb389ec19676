package console

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"pifarm/builtins/startest"
)

// guestEnd is the console's side of an attachment: a TCP listener on
// addr(id) whose one client is returned.
func guestEnd(t *testing.T, id int) <-chan net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", addr(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			t.Cleanup(func() { c.Close() })
			ch <- c
		}
	}()
	return ch
}

// readUntil reads r until it has seen want, within a few seconds.
func readUntil(t *testing.T, r io.Reader, want string) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		var b strings.Builder
		p := make([]byte, 256)
		for !strings.Contains(b.String(), want) {
			n, err := r.Read(p)
			b.Write(p[:n])
			if err != nil {
				break
			}
		}
		got <- b.String()
	}()
	select {
	case s := <-got:
		if !strings.Contains(s, want) {
			t.Fatalf("read %q, want %q in it", s, want)
		}
		return s
	case <-time.After(5 * time.Second):
		t.Fatalf("%q did not come", want)
	}
	return ""
}

// TestAttachJoinsATerminal: on a real pseudo-terminal, keys reach the
// console at once and untranslated (raw: no line buffering, Ctrl-C is a
// byte, not a signal), the console's output reaches the terminal, the
// escape key leaves without being sent, the terminal's settings are
// restored, and a console that goes away ends the attachment.
func TestAttachJoinsATerminal(t *testing.T) {
	master, slavePath := ptyPair(t)
	slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	before, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	for i, end := range []string{"escape", "console closes"} {
		guest := guestEnd(t, 32+i)
		c, err := net.Dial("tcp", addr(32+i))
		if err != nil {
			t.Fatal(err)
		}
		res := make(chan string, 1)
		go func() {
			why, err := Attach(context.Background(), c, slave, slave, 0x1d)
			if err != nil {
				why = err.Error()
			}
			res <- why
		}()
		g := <-guest
		g.Write([]byte("raspberrypi login: "))
		readUntil(t, master, "login: ")
		master.Write([]byte("pi\x03"))
		readUntil(t, g, "pi\x03")
		raw, _ := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
		if raw.Lflag&(unix.ICANON|unix.ISIG|unix.ECHO) != 0 {
			t.Errorf("%s: terminal not raw while attached: lflag %#x", end, raw.Lflag)
		}
		want := "detached"
		if end == "escape" {
			master.Write([]byte("ls\x1dnot sent"))
			readUntil(t, g, "ls")
		} else {
			g.Close()
			want = "closed"
		}
		select {
		case why := <-res:
			if why != want {
				t.Fatalf("%s: attach ended %q, want %q", end, why, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: attach did not end", end)
		}
		if end == "escape" {
			g.SetReadDeadline(time.Now().Add(2 * time.Second))
			rest, _ := io.ReadAll(g)
			if len(rest) != 0 {
				t.Errorf("after the escape key the console got %q", rest)
			}
		}
		after, _ := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
		if *after != *before {
			t.Errorf("%s: terminal settings not restored: %+v, were %+v", end, after, before)
		}
		if nonblocking(int(slave.Fd())) {
			t.Errorf("%s: the terminal was left non-blocking", end)
		}
	}
}

// TestAttachNeedsATerminal: attach from a pipe is refused, naming why;
// a dry run prints the socat command a user would run and attaches
// nothing; a bad escape key is a usage error.
func TestAttachNeedsATerminal(t *testing.T) {
	// (go test's standard input is not a terminal either)
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	fx := startest.New(t, startest.Options{Farm: testFarm(t)})
	fx.Add(New(fx.Door, fx.Farm))
	fx.Run("attach.star", `
assert.fails(lambda: console.attach(31, escape = "x"), "want a control key")
`)
	os.Stdin, r = r, os.Stdin
	_, err := fx.Exec("attach2.star", "console.attach(31)\n")
	os.Stdin, r = r, os.Stdin
	if err == nil || !strings.Contains(err.Error(), "standard input is not a terminal") {
		t.Fatalf("attach from a pipe: %v", err)
	}
	dry := fixture(t, startest.Options{Dry: true})
	dry.Run("attach3.star", `assert.eq(console.attach(31, escape = "^a"), "detached")`)
	if want := "socat -,rawer,escape=0x01 TCP:127.0.0.1:"; !strings.Contains(dry.Output(), want) {
		t.Fatalf("dry run: %q lacks %q", dry.Output(), want)
	}
}
