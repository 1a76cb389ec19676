package runtime

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"pifarm/builtins/farm"
)

// lineKind says where a line of a node's output came from.
type lineKind int

const (
	kindOut    lineKind = iota // print() and streamed standard output
	kindErrOut                 // streamed standard error
	kindTrace                  // the door's trace lines (shown with -v)
	kindFail                   // the node's failure, in full
)

// display shows the runs of a fan-out as they go. begin, line and end
// come from the nodes' goroutines; close once, when all are done.
type display interface {
	begin(i int)
	line(i int, kind lineKind, text string)
	end(i int, r *nodeResult)
	close(results []*nodeResult)
}

// newDisplay picks how a fan-out shows: a dry run prints each node's trace
// as a block, in node order, when all are done; on a terminal without -v,
// one status line per node updates in place; else (a pipe, -v) every line
// comes as it arrives, prefixed "<id> alias |".
func (rt *Runtime) newDisplay(nodes []*farm.Node, dry, verbose bool) display {
	labels := padLabels(nodes)
	switch {
	case dry:
		return &blockDisplay{labels: labels, nodes: nodes, out: rt.Stdout, errw: rt.Fan.stderr(), blocks: make([][]string, len(nodes)), fails: make([][]string, len(nodes))}
	case rt.Fan.Terminal && !verbose:
		return newStatusDisplay(labels, rt.Stdout, rt.Fan.Size)
	}
	return &prefixDisplay{labels: labels, out: rt.Stdout, errw: rt.Fan.stderr(), verbose: verbose}
}

func (o FanOptions) stderr() io.Writer {
	if o.Stderr == nil {
		return io.Discard
	}
	return o.Stderr
}

// padLabels are the nodes' labels ("<2> entwo") padded to one width.
func padLabels(nodes []*farm.Node) []string {
	w := 0
	for _, n := range nodes {
		w = max(w, utf8.RuneCountInString(n.Label()))
	}
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Label() + strings.Repeat(" ", w-utf8.RuneCountInString(n.Label()))
	}
	return out
}

// nodeOut is one node's output: writers for its door, its print() and its
// streamed commands, which cut what they get into lines and hand them to
// the node's log and to the display.
type nodeOut struct {
	i    int
	node *farm.Node
	disp display
	// mask is the node's door's Mask: streamed command output passes it
	// (the door's own lines and print() are masked already).
	mask func(string) string

	mu      sync.Mutex
	log     io.Writer // nil: no log (a dry run)
	writers []*lineWriter
}

// writer is an io.Writer of one kind of output; masked passes every line
// through mask first (never for the door's Out: Door.Print writes while
// holding the lock Mask takes).
func (o *nodeOut) writer(k lineKind, masked bool) io.Writer {
	o.mu.Lock()
	defer o.mu.Unlock()
	w := &lineWriter{emit: func(s string) { o.line(k, s) }}
	if masked {
		w.emit = func(s string) { o.line(k, o.mask(s)) }
	}
	o.writers = append(o.writers, w)
	return w
}

// setLog makes w (nil: none) receive every line from now on.
func (o *nodeOut) setLog(w io.Writer) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.log = w
}

// line records one line of the node's output.
func (o *nodeOut) line(k lineKind, text string) {
	o.mu.Lock()
	if o.log != nil {
		fmt.Fprintln(o.log, text)
	}
	o.mu.Unlock()
	o.disp.line(o.i, k, text)
}

// flush hands on what the writers hold of an unfinished line.
func (o *nodeOut) flush() {
	o.mu.Lock()
	ws := append([]*lineWriter(nil), o.writers...)
	o.mu.Unlock()
	for _, w := range ws {
		w.flush()
	}
}

// lineWriter is an io.Writer that hands each complete line (without its
// newline or a carriage return before it) to emit; a line longer than
// 64 KiB is handed on in pieces.
type lineWriter struct {
	mu   sync.Mutex
	buf  []byte
	emit func(string)
}

const maxLine = 64 << 10

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		w.emit(strings.TrimSuffix(string(w.buf[:i]), "\r"))
		w.buf = w.buf[i+1:]
	}
	for len(w.buf) >= maxLine {
		w.emit(string(w.buf[:maxLine]))
		w.buf = w.buf[maxLine:]
	}
	return len(p), nil
}

func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.emit(strings.TrimSuffix(string(w.buf), "\r"))
		w.buf = nil
	}
}

// ---- a pipe, or -v: every line as it comes, prefixed ----

// prefixDisplay writes every line as it comes, "<id> alias | text": the
// nodes' standard output on standard output, the rest (streamed standard
// error, failures, with -v the trace lines) on standard error; when all
// are done, the summary table on standard error.
type prefixDisplay struct {
	mu        sync.Mutex
	labels    []string
	out, errw io.Writer
	verbose   bool
}

func (d *prefixDisplay) begin(int) {}

func (d *prefixDisplay) line(i int, k lineKind, text string) {
	w := d.errw
	switch k {
	case kindOut:
		w = d.out
	case kindTrace:
		if !d.verbose {
			return
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(w, "%s | %s\n", d.labels[i], text)
}

func (d *prefixDisplay) end(int, *nodeResult) {}

func (d *prefixDisplay) close(results []*nodeResult) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprint(d.errw, summaryTable(results, true))
}

// summaryTable is the outcome of every node, one line each: node, result,
// seconds, and a failure's cause.
// A dry run's table has no seconds (they would say nothing, and differ
// from run to run).
func summaryTable(results []*nodeResult, seconds bool) string {
	rows := [][]string{{"node", "result", "seconds", "cause"}}
	if !seconds {
		rows[0] = []string{"node", "result", "cause"}
	}
	for _, r := range results {
		secs := "-"
		if r.Exit >= 0 {
			secs = fmt.Sprintf("%.1f", r.Seconds)
		}
		row := []string{r.Node.Label(), resultWord(r), secs, r.Cause}
		if !seconds {
			row = []string{r.Node.Label(), resultWord(r), r.Cause}
		}
		rows = append(rows, row)
	}
	return textTable(rows)
}

// resultWord is a node's outcome in a word.
func resultWord(r *nodeResult) string {
	switch r.Exit {
	case 0:
		return "ok"
	case -1:
		return "not run"
	}
	return "failed"
}

// textTable renders rows as columns as wide as their widest cell, the
// last column unpadded, each line without trailing blanks.
func textTable(rows [][]string) string {
	var widths []int
	for _, r := range rows {
		for i, c := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for _, r := range rows {
		var line strings.Builder
		for i, c := range r {
			if i > 0 {
				line.WriteString("  ")
			}
			line.WriteString(c)
			if i < len(r)-1 {
				line.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)))
			}
		}
		b.WriteString(strings.TrimRight(line.String(), " ") + "\n")
	}
	return b.String()
}

// ---- a dry run: each node's trace as a block ----

// blockDisplay keeps each node's lines and prints them when all are done,
// one block per node in node order, each opened by a comment naming the
// node: the output stays a script. Failures follow on standard error.
type blockDisplay struct {
	mu        sync.Mutex
	labels    []string
	nodes     []*farm.Node
	out, errw io.Writer
	blocks    [][]string
	fails     [][]string
}

func (d *blockDisplay) begin(int) {}

func (d *blockDisplay) line(i int, k lineKind, text string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if k == kindFail {
		d.fails[i] = append(d.fails[i], text)
		return
	}
	d.blocks[i] = append(d.blocks[i], text)
}

func (d *blockDisplay) end(int, *nodeResult) {}

func (d *blockDisplay) close(results []*nodeResult) {
	d.mu.Lock()
	defer d.mu.Unlock()
	failed := false
	for i, n := range d.nodes {
		if i > 0 {
			fmt.Fprintln(d.out)
		}
		fmt.Fprintf(d.out, "# ---- %s\n", n.Label())
		for _, l := range d.blocks[i] {
			fmt.Fprintln(d.out, l)
		}
		if results[i].Exit != 0 {
			failed = true
		}
	}
	if !failed {
		return
	}
	for i := range d.nodes {
		for _, l := range d.fails[i] {
			fmt.Fprintf(d.errw, "%s | %s\n", d.labels[i], l)
		}
	}
	fmt.Fprint(d.errw, summaryTable(results, false))
}

// ---- a terminal: one status line per node, updated in place ----

// statusDisplay shows one line per node on a terminal (node, elapsed
// time, state, current step) and redraws them in place a few times a
// second; a node's failure is printed in full above them when it happens.
// When all are done the lines stay, as the summary.
type statusDisplay struct {
	mu     sync.Mutex
	labels []string
	out    io.Writer
	size   func() (int, int)
	states []nodeState
	drawn  int // lines of the block last drawn
	stop   chan struct{}
	done   chan struct{}
	now    func() time.Time
}

// nodeState is what a status line shows.
type nodeState struct {
	phase      int // waiting, running, finished
	start, end time.Time
	step       string
	result     *nodeResult
}

const (
	waiting = iota
	running
	finished
)

// statusTick is how often the status lines are redrawn.
const statusTick = 200 * time.Millisecond

func newStatusDisplay(labels []string, out io.Writer, size func() (int, int)) *statusDisplay {
	d := &statusDisplay{labels: labels, out: out, size: size, states: make([]nodeState, len(labels)),
		stop: make(chan struct{}), done: make(chan struct{}), now: time.Now}
	d.mu.Lock()
	d.redraw()
	d.mu.Unlock()
	go d.tick()
	return d
}

func (d *statusDisplay) tick() {
	defer close(d.done)
	t := time.NewTicker(statusTick)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
			d.mu.Lock()
			d.redraw()
			d.mu.Unlock()
		}
	}
}

func (d *statusDisplay) begin(i int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.states[i].phase, d.states[i].start = running, d.now()
}

func (d *statusDisplay) line(i int, k lineKind, text string) {
	if k == kindFail || strings.TrimSpace(text) == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.states[i].phase == running {
		d.states[i].step = text
	}
}

func (d *statusDisplay) end(i int, r *nodeResult) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := &d.states[i]
	st.phase, st.end, st.result = finished, d.now(), r
	if r.Exit != 0 {
		// the failure in full, above the status lines
		d.erase()
		fmt.Fprintf(d.out, "✗ %s failed after %.1fs:\n", strings.TrimSpace(d.labels[i]), r.Seconds)
		for _, l := range strings.Split(r.Error, "\n") {
			fmt.Fprintf(d.out, "  %s\n", l)
		}
	}
	d.redraw()
}

func (d *statusDisplay) close(results []*nodeResult) {
	close(d.stop)
	<-d.done
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, r := range results {
		if d.states[i].phase != finished {
			d.states[i].phase, d.states[i].result = finished, r
		}
	}
	d.erase()
	for i := range d.states {
		fmt.Fprintln(d.out, d.clip(d.statusLine(i)))
	}
}

// erase moves the cursor to the first status line and clears from there
// to the end of the screen.
func (d *statusDisplay) erase() {
	if d.drawn > 0 {
		fmt.Fprintf(d.out, "\x1b[%dA\r\x1b[J", d.drawn)
		d.drawn = 0
	}
}

// redraw draws the status lines again (every one when they fit the
// terminal, else a count and the running ones).
func (d *statusDisplay) redraw() {
	_, rows := d.termSize()
	var lines []string
	if len(d.states) < rows {
		for i := range d.states {
			lines = append(lines, d.statusLine(i))
		}
	} else {
		var count [3]int
		failed := 0
		for i, st := range d.states {
			count[st.phase]++
			if st.phase == finished && st.result != nil && st.result.Exit != 0 {
				failed++
			}
			if st.phase == running && len(lines) < rows-2 {
				lines = append(lines, d.statusLine(i))
			}
		}
		lines = append([]string{fmt.Sprintf("%d nodes: %d done (%d failed), %d running, %d waiting",
			len(d.states), count[finished], failed, count[running], count[waiting])}, lines...)
	}
	var b strings.Builder
	if d.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA\r\x1b[J", d.drawn)
	}
	for _, l := range lines {
		b.WriteString(d.clip(l) + "\n")
	}
	io.WriteString(d.out, b.String())
	d.drawn = len(lines)
}

// statusLine is node i's line: label, elapsed seconds, state, step.
func (d *statusDisplay) statusLine(i int) string {
	st := d.states[i]
	secs, state, step := "", "waiting", ""
	switch st.phase {
	case running:
		secs = fmt.Sprintf("%.1fs", d.now().Sub(st.start).Seconds())
		state, step = "running", st.step
	case finished:
		r := st.result
		if r.Exit >= 0 {
			secs = fmt.Sprintf("%.1fs", r.Seconds)
		}
		switch r.Exit {
		case 0:
			state, step = "✓ ok", st.step
		case -1:
			state, step = "- not run", r.Cause
		default:
			state, step = "✗ failed", r.Cause
		}
	}
	return fmt.Sprintf("%s  %7s  %-9s %s", d.labels[i], secs, state, step)
}

func (d *statusDisplay) termSize() (int, int) {
	cols, rows := 80, 24
	if d.size != nil {
		if c, r := d.size(); c > 0 && r > 0 {
			cols, rows = c, r
		}
	}
	return cols, rows
}

// clip cuts a status line to the terminal's width (a line that wraps
// would throw the redrawing off), its control characters made visible.
func (d *statusDisplay) clip(s string) string {
	cols, _ := d.termSize()
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return '?'
		}
		return r
	}, s)
	if utf8.RuneCountInString(s) < cols {
		return strings.TrimRight(s, " ")
	}
	r := []rune(s)
	return string(r[:max(cols-2, 1)]) + "…"
}
