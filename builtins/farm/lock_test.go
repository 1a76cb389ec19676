package farm

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestWaitLock: a free lock is taken at once; one held for a while is
// taken when let go, after a note; one held past the wait is nil, nil; a
// cancelled context ends the wait with its error.
func TestWaitLock(t *testing.T) {
	for _, tc := range []struct {
		name      string
		hold      time.Duration // how long another holder keeps it (0: free, -1: throughout)
		wait      time.Duration
		cancel    bool
		got, note bool
		err       bool
	}{
		{name: "free", wait: time.Second, got: true},
		{name: "let go", hold: 150 * time.Millisecond, wait: 5 * time.Second, got: true, note: true},
		{name: "held past the wait", hold: -1, wait: 120 * time.Millisecond, note: true},
		{name: "cancelled", hold: -1, wait: 5 * time.Second, cancel: true, note: true, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "lock")
			if tc.hold != 0 {
				other, err := TryLock(path)
				if err != nil || other == nil {
					t.Fatalf("the other holder: %v %v", other, err)
				}
				defer other.Close()
				if tc.hold > 0 {
					time.AfterFunc(tc.hold, func() { other.Close() })
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancel {
				time.AfterFunc(100*time.Millisecond, cancel)
			}
			notes := 0
			t0 := time.Now()
			f, err := WaitLock(ctx, path, tc.wait, func() { notes++ })
			took := time.Since(t0)
			if f != nil {
				defer f.Close()
			}
			if (f != nil) != tc.got || (err != nil) != tc.err || (notes == 1) != tc.note || notes > 1 {
				t.Fatalf("lock %v, err %v, %d notes after %v", f, err, notes, took)
			}
			if tc.hold > 0 && took < tc.hold {
				t.Errorf("taken after %v while held for %v", took, tc.hold)
			}
			if !tc.got && !tc.err && (took < tc.wait || took > tc.wait+time.Second) {
				t.Errorf("gave up after %v, wait %v", took, tc.wait)
			}
		})
	}
}
