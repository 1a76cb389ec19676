package trace

import (
	"context"
	"strings"
	"sync"
	"testing"
)

// TestSyncBuffer: a door's trace lines and other writers share one buffer
// from several goroutines; run with -race this finds unguarded access.
func TestSyncBuffer(t *testing.T) {
	var b SyncBuffer
	d := New(context.Background(), true, false, &b)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				d.Print("x")
				b.Write([]byte("y\n"))
				_ = b.String()
			}
		}()
	}
	wg.Wait()
	if got := strings.Count(b.String(), "\n"); got != 800 {
		t.Fatalf("%d lines, want 800", got)
	}
	c := b.Bytes()
	c[0] = 'z'
	if b.String()[0] == 'z' {
		t.Fatal("Bytes shares the buffer's memory")
	}
	b.Reset()
	if b.String() != "" || len(b.Bytes()) != 0 {
		t.Fatal("Reset kept content")
	}
}
