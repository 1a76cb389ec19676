package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeServer listens on 127.0.0.1:port and runs serve for each connection.
func fakeServer(t *testing.T, port int, serve func(c net.Conn, i int)) {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for i := 0; ; i++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serve(c, i)
		}
	}()
}

func TestWaitConsole(t *testing.T) {
	f := testFarm(t)
	n, _ := f.Resolve("4")
	in, _ := testInstances(t, f, false)
	closed := make(chan bool, 4)
	started := time.Now()
	// A console that is not listening at first, then shows boot noise and,
	// once it gets a carriage return, a login prompt.
	time.AfterFunc(150*time.Millisecond, func() {
		fakeServer(t, 20204, func(c net.Conn, i int) {
			defer c.Close()
			fmt.Fprintf(c, "[    1.0] booting\r\n")
			r := bufio.NewReader(c)
			if s, _ := r.ReadString('\n'); s == "\r\n" {
				fmt.Fprintf(c, "\r\nRaspbian GNU/Linux 10 raspberrypi ttyAMA0\r\n\r\nraspberrypi login: ")
			}
			_, err := r.ReadByte()
			closed <- err != nil
		})
	})
	r, err := in.WaitConsole(n, regexp.MustCompile(`login: `), 5*time.Second)
	if err != nil || !r.OK || !strings.Contains(r.Seen, "raspberrypi login: ") {
		t.Fatalf("%+v %v", r, err)
	}
	if time.Since(started) > 2*time.Second {
		t.Errorf("took %s", time.Since(started))
	}
	select {
	case ok := <-closed:
		if !ok {
			t.Fatal("wait did not disconnect")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("wait did not disconnect")
	}
	// A console that shows a shell prompt, not a login prompt: the timeout
	// quotes what it saw.
	fakeServer(t, 20203, func(c net.Conn, i int) {
		defer c.Close()
		fmt.Fprintf(c, "pi@raspberrypi:~$ ")
		bufio.NewReader(c).ReadString('x')
	})
	n3, _ := f.Resolve("3")
	_, err = in.WaitConsole(n3, regexp.MustCompile(`login: `), 500*time.Millisecond)
	var te *TimeoutError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "pi@raspberrypi:~$") || !strings.Contains(err.Error(), "127.0.0.1:20203") {
		t.Fatalf("timeout error %v", err)
	}
	dry, out := testInstances(t, f, true)
	if r, err := dry.WaitConsole(n3, regexp.MustCompile(`login: `), time.Second); err != nil || !r.OK || !strings.HasPrefix(out.String(), "# wait until the console (nc localhost 20203)") {
		t.Fatalf("dry: %v %q", err, out.String())
	}
}

func TestWaitConsoleOnRealQEMU(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 1)
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	n, _ := f.Resolve("1")
	if _, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone}); err != nil {
		t.Fatal(err)
	}
	_, err := in.WaitConsole(n, regexp.MustCompile(`login: `), 400*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "connected, but no output") {
		t.Fatalf("paused guest: %v", err)
	}
	// The wait let go of the console: a new client is served at once.
	c, err := net.Dial("tcp", "127.0.0.1:20201")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	_, err = in.WaitSSH(n, 400*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "connected, then") {
		t.Fatalf("ssh forward to a paused guest: %v", err)
	}
}

func TestWaitSSH(t *testing.T) {
	f := testFarm(t)
	n, _ := f.Resolve("4")
	in, _ := testInstances(t, f, false)
	// Like QEMU's forward while the guest's sshd is down: accepted and
	// closed, twice; then a banner.
	fakeServer(t, 20104, func(c net.Conn, i int) {
		defer c.Close()
		if i >= 2 {
			fmt.Fprintf(c, "SSH-2.0-OpenSSH_7.9p1 Raspbian-10\r\n")
		}
	})
	r, err := in.WaitSSH(n, 5*time.Second)
	if err != nil || r.Seen != "SSH-2.0-OpenSSH_7.9p1 Raspbian-10" {
		t.Fatalf("%+v %v", r, err)
	}
	n2, _ := f.Resolve("2")
	_, err = in.WaitSSH(n2, 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("nobody listening: %v", err)
	}
}

func TestWaitEndsWhenQEMUExits(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 3)
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	n, _ := f.Resolve("3")
	if _, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone}); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(300*time.Millisecond, func() { in.Quit(n, 5*time.Second) })
	t0 := time.Now()
	_, err := in.WaitSSH(n, 30*time.Second)
	if err == nil || !strings.Contains(err.Error(), "QEMU exited") || time.Since(t0) > 10*time.Second {
		t.Fatalf("ssh wait after QEMU exit: %v after %s", err, time.Since(t0))
	}
	if _, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone}); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(300*time.Millisecond, func() { in.Quit(n, 5*time.Second) })
	t0 = time.Now()
	_, err = in.WaitConsole(n, regexp.MustCompile("login: "), 30*time.Second)
	if err == nil || !strings.Contains(err.Error(), "QEMU exited") || time.Since(t0) > 10*time.Second {
		t.Fatalf("console wait after QEMU exit: %v after %s", err, time.Since(t0))
	}
}
