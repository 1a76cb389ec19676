package trace

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestQMPLine(t *testing.T) {
	for _, tc := range []struct {
		socket, command string
		args            any
		want, wantErr   string
	}{
		// byte for byte the lines the qemu module wrote by hand
		{"/c/qmp.sock", "quit", nil,
			`printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"quit"}' | socat - UNIX-CONNECT:/c/qmp.sock`, ""},
		{"/c/qmp.sock", "human-monitor-command", json.RawMessage(`{"command-line":"info status"}`),
			`printf '%s\n' '{"execute":"qmp_capabilities"}' '{"arguments":{"command-line":"info status"},"execute":"human-monitor-command"}' | socat - UNIX-CONNECT:/c/qmp.sock`, ""},
		{"/my cache/qmp.sock", "send-key", map[string]any{"keys": []any{map[string]string{"type": "qcode", "data": "it's"}}},
			`printf '%s\n' '{"execute":"qmp_capabilities"}' '{"arguments":{"keys":[{"data":"it'\''s","type":"qcode"}]},"execute":"send-key"}' | socat - UNIX-CONNECT:'/my cache/qmp.sock'`, ""},
		{"/c/qmp.sock", "", nil, "", "qmp: empty command name"},
		{"/c/qmp.sock", "x", map[string]any{"f": func() {}}, "", "qmp x: arguments: json: unsupported type"},
	} {
		got, err := QMPLine(tc.socket, tc.command, tc.args)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("QMPLine(%s): err %v, want %q", tc.command, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("QMPLine(%s) =\n%s (%v)\nwant\n%s", tc.command, got, err, tc.want)
		}
	}
}

func TestDoorQMPDryAndLive(t *testing.T) {
	var out bytes.Buffer
	ran := false
	d := New(context.Background(), true, false, &out)
	if err := d.QMP("/s", "quit", nil, func() error { ran = true; return nil }); err != nil || ran {
		t.Fatalf("dry run: err %v, ran %v", err, ran)
	}
	want, _ := QMPLine("/s", "quit", nil)
	if out.String() != want+"\n" {
		t.Fatalf("dry-run line %q, want %q", out.String(), want)
	}
	out.Reset()
	d = New(context.Background(), false, true, &out)
	boom := errors.New("boom")
	if err := d.QMP("/s", "quit", nil, func() error { ran = true; return boom }); err != boom || !ran || out.String() != want+"\n" {
		t.Fatalf("live: err %v, ran %v, line %q", err, ran, out.String())
	}
	if err := d.QMP("/s", "", nil, func() error { t.Fatal("ran with a bad command"); return nil }); err == nil {
		t.Fatal("empty command accepted")
	}
}

// qemu is a QEMU with no guest (machine none) listening for QMP.
type qemu struct {
	cmd  *exec.Cmd
	sock string
	done chan error
}

func startQEMU(t *testing.T, paused bool) *qemu {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-aarch64")
	if err != nil {
		t.Fatalf("qemu-system-aarch64 is needed (apt-get install qemu-system-arm): %v", err)
	}
	q := &qemu{sock: filepath.Join(t.TempDir(), "qmp.sock"), done: make(chan error, 1)}
	argv := []string{"-M", "none", "-nodefaults", "-display", "none", "-qmp", "unix:" + q.sock + ",server=on,wait=off"}
	if paused {
		argv = append(argv, "-S")
	}
	q.cmd = exec.Command(bin, argv...)
	if err := q.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { q.done <- q.cmd.Wait() }()
	t.Cleanup(func() {
		q.cmd.Process.Kill()
		<-q.done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", q.sock); err == nil {
			c.Close()
			return q
		}
		if time.Now().After(deadline) {
			t.Fatal("QEMU's QMP socket never answered")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// send is the live action: a QMP client sending req after the
// capabilities negotiation, returning QEMU's reply.
func (q *qemu) send(t *testing.T, req []byte) (json.RawMessage, error) {
	t.Helper()
	c, err := net.Dial("unix", q.sock)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	dec := json.NewDecoder(c)
	var greeting map[string]json.RawMessage
	if err := dec.Decode(&greeting); err != nil || greeting["QMP"] == nil {
		return nil, fmt.Errorf("QMP greeting: %v %v", greeting, err)
	}
	var reply json.RawMessage
	for _, msg := range [][]byte{[]byte(`{"execute":"qmp_capabilities"}`), req} {
		c.Write(append(msg, '\n'))
		for { // skip events
			var m map[string]json.RawMessage
			if err := dec.Decode(&m); err != nil {
				return nil, err // quit: QEMU may close before it answers
			}
			if m["error"] != nil {
				return nil, fmt.Errorf("QMP %s: %s", msg, m["error"])
			}
			if r, ok := m["return"]; ok {
				reply = r
				break
			}
		}
	}
	return reply, nil
}

// state is the run state QEMU reports ("running", "paused"), or "exited".
func (q *qemu) state(t *testing.T) string {
	t.Helper()
	select {
	case <-q.done:
		q.done <- nil
		return "exited"
	default:
	}
	reply, err := q.send(t, []byte(`{"execute":"query-status"}`))
	if err != nil { // exiting: the socket is gone or closes
		select {
		case <-q.done:
			q.done <- nil
			return "exited"
		case <-time.After(10 * time.Second):
			t.Fatalf("QEMU neither answers nor exits: %v", err)
		}
	}
	var st struct{ Status string }
	if err := json.Unmarshal(reply, &st); err != nil {
		t.Fatal(err)
	}
	return st.Status
}

// waitState waits until q reaches want (QMP answers before QEMU exits).
func (q *qemu) waitState(t *testing.T, want string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := q.state(t)
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestQMPLineDoesWhatTheActionDoes sends each command to one real QEMU as
// the live action (a QMP client) and runs its trace line in /bin/sh (socat)
// against a second one: both QEMUs end in the same state.
func TestQMPLineDoesWhatTheActionDoes(t *testing.T) {
	if _, err := exec.LookPath("socat"); err != nil {
		t.Fatalf("socat is needed to run the QMP trace lines (apt-get install socat): %v", err)
	}
	for _, tc := range []struct {
		name    string
		paused  bool
		command string
		args    any
		want    string
	}{
		{"stop", false, "stop", nil, "paused"},
		{"cont", true, "cont", nil, "running"},
		{"hmp with arguments", false, "human-monitor-command", map[string]string{"command-line": "stop"}, "paused"},
		{"quit", false, "quit", nil, "exited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			live, shell := startQEMU(t, tc.paused), startQEMU(t, tc.paused)
			req, err := QMPRequest(tc.command, tc.args)
			if err != nil {
				t.Fatal(err)
			}
			d := New(context.Background(), false, false, nil)
			if err := d.QMP(live.sock, tc.command, tc.args, func() error {
				_, err := live.send(t, req)
				if tc.command == "quit" {
					return nil // QEMU may close before it answers
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			line, err := QMPLine(shell.sock, tc.command, tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if b, err := exec.Command("/bin/sh", "-c", line).CombinedOutput(); err != nil {
				t.Fatalf("sh -c %q: %v\n%s", line, err, b)
			}
			if got := live.waitState(t, tc.want); got != tc.want {
				t.Fatalf("the live action left QEMU %s, want %s", got, tc.want)
			}
			if got := shell.waitState(t, tc.want); got != tc.want {
				t.Fatalf("sh -c %q left QEMU %s, the live action %s", line, got, tc.want)
			}
		})
	}
}
