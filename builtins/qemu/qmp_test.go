package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestQMPClient(t *testing.T) {
	dir, _ := os.MkdirTemp("", "pqmp")
	defer os.RemoveAll(dir)
	sock := dir + "/q.sock"
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	big := strings.Repeat("x", 200<<10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": []}}`+"\r\n")
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					var req struct {
						Execute string
						ID      json.RawMessage
					}
					json.Unmarshal([]byte(line), &req)
					// Events before every reply must be skipped.
					fmt.Fprintf(c, `{"event": "RTC_CHANGE", "data": {"offset": 1}}`+"\r\n")
					switch req.Execute {
					case "qmp_capabilities":
						fmt.Fprintf(c, `{"return": {}, "id": %s}`+"\r\n", req.ID)
					case "big":
						fmt.Fprintf(c, `{"return": {"s": %q}, "id": %s}`+"\r\n", big, req.ID)
					case "hang":
					default:
						fmt.Fprintf(c, `{"error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}, "id": %s}`+"\r\n", req.Execute, req.ID)
					}
				}
			}()
		}
	}()
	ctx := context.Background()
	q, err := DialQMP(ctx, sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.Version != "7.2.22" {
		t.Errorf("version %q", q.Version)
	}
	raw, err := q.Execute(ctx, time.Second, "big", nil)
	var r struct{ S string }
	if err != nil || json.Unmarshal(raw, &r) != nil || r.S != big {
		t.Fatalf("200 KiB reply: %v (%d bytes)", err, len(raw))
	}
	if _, err := q.Execute(ctx, time.Second, "nope", nil); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Fatalf("error reply: %v", err)
	}
	t0 := time.Now()
	if _, err := q.Execute(ctx, 200*time.Millisecond, "hang", nil); err == nil || !strings.Contains(err.Error(), "no answer in time") || time.Since(t0) > 2*time.Second {
		t.Fatalf("timeout: %v after %s", err, time.Since(t0))
	}
	q2, err := DialQMP(ctx, sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if _, err := q2.Execute(cctx, time.Minute, "hang", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancel: %v", err)
	}
	if len(q.Events) == 0 || q.Events[0].Name != "RTC_CHANGE" {
		t.Errorf("events %+v", q.Events)
	}
	if _, err := DialQMP(ctx, dir+"/none.sock", time.Second); err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("missing socket: %v", err)
	}
}

// TestQMPGreetingAfterStaleMessages: an event or a late reply left over
// from an earlier client ahead of the greeting is skipped; a socket that
// speaks something else is still refused at once.
func TestQMPGreetingAfterStaleMessages(t *testing.T) {
	dir, _ := os.MkdirTemp("", "pqmp")
	defer os.RemoveAll(dir)
	for _, tc := range []struct{ first, want string }{
		{`{"event": "RESUME", "data": {}}` + "\r\n" + `{"return": {"status": "running"}, "id": "pifarm-1"}`, ""},
		{`{"hello": "world"}`, "no QMP greeting"},
	} {
		sock := dir + "/q.sock"
		os.Remove(sock)
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			fmt.Fprintf(c, "%s\r\n", tc.first)
			fmt.Fprintf(c, `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}`+"\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			var req struct{ ID json.RawMessage }
			json.Unmarshal([]byte(line), &req)
			fmt.Fprintf(c, `{"return": {}, "id": %s}`+"\r\n", req.ID)
			time.Sleep(100 * time.Millisecond)
		}()
		q, err := DialQMP(context.Background(), sock, 2*time.Second)
		l.Close()
		if tc.want == "" {
			if err != nil || q.Version != "7.2.0" {
				t.Fatalf("greeting after %s: %v", tc.first, err)
			}
			q.Close()
		} else if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("after %s: err %v, want %q", tc.first, err, tc.want)
		}
	}
}

func TestQMPLargeReplyFromRealQEMU(t *testing.T) {
	f := testFarm(t)
	provide(t, f, 4)
	in, _ := testInstances(t, f, false)
	defer stopAll(t, in)
	n, _ := f.Resolve("4")
	if _, err := in.Start(n, Options{Paused: true, NoTAP: true, Display: DisplayNone}); err != nil {
		t.Fatal(err)
	}
	out, err := in.QMPCommand(n, "query-qmp-schema", nil)
	if err != nil || len(out) < 64<<10 {
		t.Fatalf("query-qmp-schema: %d bytes, %v", len(out), err)
	}
	out, err = in.QMPCommand(n, "query-chardev", nil)
	if err != nil || !strings.Contains(out, "tcp:127.0.0.1:20204") {
		t.Fatalf("query-chardev: %s %v", out, err)
	}
}

// TestIsReset: a peer closing the connection is recognised by its errno
// however it is wrapped, never by the text of a message.
func TestIsReset(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"read reset", &net.OpError{Op: "read", Net: "unix", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, true},
		{"write to a closed socket", fmt.Errorf("qmp quit: %w", &net.OpError{Op: "write", Net: "unix", Err: os.NewSyscallError("write", syscall.EPIPE)}), true},
		{"end of file", io.EOF, false},
		{"refused", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, false},
		{"only the words", errors.New("connection reset by peer"), false},
		{"nil", nil, false},
	} {
		if got := isReset(tc.err); got != tc.want {
			t.Errorf("%s: isReset(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
