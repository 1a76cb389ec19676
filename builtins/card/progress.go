package card

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// meter is the progress of one target: its phase, the bytes of data
// written and verified of the total, the bytes zeroed.
type meter struct {
	name          string
	mu            sync.Mutex
	phase         string
	dataStart     time.Time
	done, total   atomic.Int64
	zdone, ztotal atomic.Int64
}

func newMeter(name string) *meter { return &meter{name: name, phase: "waiting"} }

func (m *meter) setPhase(p string) {
	m.mu.Lock()
	m.phase = p
	m.mu.Unlock()
}

func (m *meter) startData() {
	m.mu.Lock()
	m.dataStart = time.Now()
	m.mu.Unlock()
}

// line renders the meter: "/dev/sdb  writing   42%  640.0 MiB of 1.5 GiB
// 31.2 MiB/s  0:31 left".
func (m *meter) line(width int) string {
	m.mu.Lock()
	phase, start := m.phase, m.dataStart
	m.mu.Unlock()
	s := fmt.Sprintf("%-*s  %-9s", width, m.name, phase)
	switch {
	case phase == "zeroing" && m.ztotal.Load() > 0:
		s += fmt.Sprintf(" %3d%%  %s of %s", pct(m.zdone.Load(), m.ztotal.Load()), Bytes(m.zdone.Load()), Bytes(m.ztotal.Load()))
	case m.total.Load() > 0 && !start.IsZero():
		done, total := m.done.Load(), m.total.Load()
		s += fmt.Sprintf(" %3d%%  %s of %s", pct(done, total), Bytes(done), Bytes(total))
		if el := time.Since(start).Seconds(); el > 0.5 && done > 0 && phase != "done" && phase != "failed" {
			rate := float64(done) / el
			left := time.Duration(float64(total-done) / rate * float64(time.Second))
			s += fmt.Sprintf("  %s/s  %s left", Bytes(int64(rate)), clock(left))
		}
	}
	return s
}

func pct(a, b int64) int {
	if b <= 0 {
		return 100
	}
	return int(a * 100 / b)
}

// clock renders a duration as M:SS (H:MM:SS past an hour).
func clock(d time.Duration) string {
	s := int(d.Round(time.Second).Seconds())
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

// display redraws one line per meter on w (a terminal) in place, every
// tick, until stop is closed; it leaves the last state drawn.
func display(w io.Writer, ms []*meter, tick time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	width := 0
	for _, m := range ms {
		width = max(width, len(m.name))
	}
	drawn := false
	draw := func() {
		var b strings.Builder
		if drawn {
			fmt.Fprintf(&b, "\x1b[%dA", len(ms))
		}
		for _, m := range ms {
			b.WriteString("\r" + m.line(width) + "\x1b[K\n")
		}
		io.WriteString(w, b.String())
		drawn = true
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-stop:
			draw()
			return
		case <-t.C:
			draw()
		}
	}
}
