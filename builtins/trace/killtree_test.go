package trace

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestCancelEndsTheWholeCommand: a run interrupted while a command's shell
// waits for a child ends both at once (killing the shell alone left the
// child running and Exec waiting for the output it held).
func TestCancelEndsTheWholeCommand(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	d := New(ctx, false, false, nil)
	d.Root = true
	mark := fmt.Sprintf("30%d.5", os.Getpid()%1000) // a sleep no one else runs
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, err := d.Exec(Cmd{Argv: []string{"sh", "-c", "sleep " + mark + "; true"}, Stdout: new(strings.Builder)})
	if err == nil {
		t.Fatal("an interrupted command returned no error")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Exec returned %v after the cancel", took)
	}
	time.Sleep(100 * time.Millisecond)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if strings.Contains(string(b), "sleep\x00"+mark) {
			t.Fatalf("the shell's child (pid %s: sleep %s) still runs", e.Name(), mark)
		}
	}
}

func TestParseStatParent(t *testing.T) {
	for _, c := range []struct {
		stat string
		want int
		ok   bool
	}{
		{"123 (sh) S 45 123 123 0 -1", 45, true},
		{"9 (a b) c)) R 1 9 9", 1, true},
		{"9 (x) Z", 0, false},
		{"garbage", 0, false},
		{"9 (x) S notanumber", 0, false},
	} {
		got, ok := parseStatParent(c.stat)
		if got != c.want || ok != c.ok {
			t.Errorf("parseStatParent(%q) = %d, %v; want %d, %v", c.stat, got, ok, c.want, c.ok)
		}
	}
}

func FuzzParseStatParent(f *testing.F) {
	f.Add("123 (sh) S 45 123 123 0 -1")
	f.Add("9 (a b) c)) R 1 9 9")
	f.Fuzz(func(t *testing.T, s string) {
		if pp, ok := parseStatParent(s); ok && !strings.Contains(s, ")") {
			t.Fatalf("parent %d from a line without ')'", pp)
		}
	})
}
