package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// QMP is a small client for the QEMU Machine Protocol on a unix socket. It
// uses go-qemu's wire types (qmp.Command, qmp.Version) and its own
// connection handling.
//
// pifarm speaks QMP itself instead of using go-qemu's qmp.SocketMonitor,
// because every one of that monitor's known traps is hit by what pifarm does:
// it reads replies with a bufio.Scanner whose 64 KiB line limit kills the
// connection on a large reply, it needs a consumer draining Events() or its
// reader blocks, and it has no deadline or context anywhere (a wedged QEMU
// hangs the caller forever, also during the greeting). The protocol pifarm
// needs is three messages long; this client reads with an unbounded
// json.Decoder, keeps only the last few events, puts a deadline on every
// exchange and closes the socket when the context is cancelled.
type QMP struct {
	conn    net.Conn
	dec     *json.Decoder
	mu      sync.Mutex
	id      int
	stop    func() bool
	Version string // QEMU version from the greeting, e.g. "7.2.22"
	// Events holds the last events QEMU sent (at most maxEvents).
	Events []Event
}

// Event is an asynchronous QMP event such as SHUTDOWN.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

const maxEvents = 16

// QMPError is an error reply of QEMU to a command.
type QMPError struct {
	Command, Class, Desc string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// message is any QMP message: greeting, reply or event.
type message struct {
	QMP *struct {
		Version qmp.Version `json:"version"`
	} `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
	ID    json.RawMessage `json:"id"`
}

// DialQMP connects to the QMP socket at path, reads the greeting and leaves
// capabilities negotiation mode. The whole handshake must finish within
// timeout (and before ctx ends); the connection is closed when ctx is
// cancelled.
func DialQMP(ctx context.Context, path string, timeout time.Duration) (*QMP, error) {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var dialer net.Dialer
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	conn, err := dialer.DialContext(dctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp connect %s: %w", path, err)
	}
	q := &QMP{conn: conn, dec: json.NewDecoder(conn)}
	q.stop = context.AfterFunc(ctx, func() { conn.Close() })
	conn.SetDeadline(deadline)
	var greet message
	for {
		greet = message{}
		if err := q.dec.Decode(&greet); err != nil {
			q.Close()
			return nil, fmt.Errorf("qmp %s: reading greeting: %w", path, q.ctxErr(ctx, err))
		}
		if greet.QMP != nil {
			break
		}
		// QEMU's monitor may hand a new client what it still had for the
		// one before (an event, a late reply) ahead of the greeting.
		if greet.Event == "" && greet.Return == nil && greet.Error == nil {
			q.Close()
			return nil, fmt.Errorf("qmp %s: no QMP greeting (is this a QMP socket?)", path)
		}
	}
	q.Version = greet.QMP.Version.String()
	if _, err := q.exec(ctx, deadline, "qmp_capabilities", nil); err != nil {
		q.Close()
		return nil, fmt.Errorf("qmp %s: %w", path, err)
	}
	return q, nil
}

// Close closes the connection.
func (q *QMP) Close() error {
	if q.stop != nil {
		q.stop()
	}
	return q.conn.Close()
}

// Execute runs one QMP command with optional arguments and returns its
// "return" value. It fails after timeout or when ctx ends.
func (q *QMP) Execute(ctx context.Context, timeout time.Duration, command string, args any) (json.RawMessage, error) {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return q.exec(ctx, deadline, command, args)
}

func (q *QMP) exec(ctx context.Context, deadline time.Time, command string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.id++
	id := fmt.Sprintf("pifarm-%d", q.id)
	// go-qemu's wire type of a command, with the id this client matches
	// replies by.
	req := struct {
		qmp.Command
		ID string `json:"id"`
	}{qmp.Command{Execute: command, Args: args}, id}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	q.conn.SetDeadline(deadline)
	// Cancellation of this call's context unblocks the read or write.
	stop := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, q.ctxErr(ctx, err))
	}
	for {
		var m message
		if err := q.dec.Decode(&m); err != nil {
			if command == "quit" && (errors.Is(err, io.EOF) || isReset(err)) {
				// QEMU may close the socket before the reply arrives.
				return nil, nil
			}
			return nil, fmt.Errorf("qmp %s: %w", command, q.ctxErr(ctx, err))
		}
		if m.Event != "" {
			q.Events = append(q.Events, Event{Name: m.Event, Data: m.Data})
			if len(q.Events) > maxEvents {
				q.Events = q.Events[len(q.Events)-maxEvents:]
			}
			continue
		}
		if len(m.ID) > 0 && strings.Trim(string(m.ID), `"`) != id {
			continue // a late reply to an earlier, abandoned command
		}
		if m.Error != nil {
			return nil, &QMPError{Command: command, Class: m.Error.Class, Desc: m.Error.Desc}
		}
		return m.Return, nil
	}
}

func (q *QMP) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("no answer in time: %w", err)
	}
	return err
}

// isReset reports whether err is the peer closing the connection under a
// read or write (ECONNRESET, EPIPE).
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// RunStatus is the reply of query-status.
type RunStatus struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// QueryStatus asks QEMU for its run state ("running", "paused", "prelaunch", ...).
func (q *QMP) QueryStatus(ctx context.Context, timeout time.Duration) (RunStatus, error) {
	var st RunStatus
	raw, err := q.Execute(ctx, timeout, "query-status", nil)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("qmp query-status: %w", err)
	}
	return st, nil
}
