package startest

import (
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.starlark.net/resolve"
	"go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

// Chunk is one part of a chunked .star file: its source (padded with
// newlines so that line numbers are the file's) and the errors it expects,
// by line.
type Chunk struct {
	// Source is the chunk's text, preceded by as many newlines as lines
	// of the file come before it.
	Source string
	// Want maps a line number to the regexp its error must match.
	Want map[int]*regexp.Regexp
}

// Chunks splits a file's text into chunks at lines "---", reading the
// expected errors: a line holding `### "regexp"` (a Go string literal after
// ###) must fail with an error matching the regexp. A malformed marker is
// an error naming its line.
func Chunks(filename, text string) ([]Chunk, error) {
	var chunks []Chunk
	var errs []string
	line := 1
	for _, part := range strings.Split(text, "\n---\n") {
		c := Chunk{Source: strings.Repeat("\n", line-1) + part, Want: map[int]*regexp.Regexp{}}
		for _, l := range strings.Split(part, "\n") {
			if _, after, ok := strings.Cut(l, "###"); ok {
				pattern, err := strconv.Unquote(strings.TrimSpace(after))
				var rx *regexp.Regexp
				if err == nil {
					rx, err = regexp.Compile(pattern)
				}
				if err != nil {
					errs = append(errs, filename+":"+strconv.Itoa(line)+`: want ### "regexp" (a quoted Go string holding a regular expression): `+err.Error())
				} else {
					c.Want[line] = rx
				}
			}
			line++
		}
		line++ // the "---" line
		chunks = append(chunks, c)
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "\n"))
	}
	return chunks, nil
}

// RunChunks runs every chunk of the chunked file filename (see Chunks), each
// with fresh globals, and reports to the test every error that was not
// expected, every expected error that did not happen, and every error that
// does not match its marker's regexp.
func (fx *Fixture) RunChunks(filename string) {
	fx.T.Helper()
	data, err := os.ReadFile(filename)
	if err != nil {
		fx.T.Fatalf("%v", err)
	}
	chunks, err := Chunks(filename, string(data))
	if err != nil {
		fx.T.Fatalf("%v", err)
	}
	for _, c := range chunks {
		_, err := fx.Exec(filename, c.Source)
		for _, got := range errorLines(filename, err) {
			rx, ok := c.Want[got.line]
			switch {
			case !ok && got.line == 0:
				fx.T.Errorf("%s: unexpected error: %s", filename, ErrorText(err))
			case !ok:
				fx.T.Errorf("%s:%d: unexpected error: %s", filename, got.line, got.msg)
			case !rx.MatchString(got.msg):
				fx.T.Errorf("%s:%d: error %q does not match %q", filename, got.line, got.msg, rx)
			}
			delete(c.Want, got.line)
		}
		for line, rx := range c.Want {
			fx.T.Errorf("%s:%d: expected an error matching %q, got none", filename, line, rx)
		}
	}
}

// located is an error message and the line of filename it happened at (0:
// not in filename).
type located struct {
	line int
	msg  string
}

// errorLines places err in filename: a run-time error at the innermost
// call frame in filename, syntax and resolve errors at their positions.
func errorLines(filename string, err error) []located {
	var ee *starlark.EvalError
	var se syntax.Error
	var rl resolve.ErrorList
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee):
		for i := range ee.CallStack {
			if pos := ee.CallStack.At(i).Pos; pos.Filename() == filename {
				return []located{{int(pos.Line), ee.Error()}}
			}
		}
		return []located{{0, ee.Error()}}
	case errors.As(err, &se):
		return []located{{int(se.Pos.Line), se.Msg}}
	case errors.As(err, &rl):
		var out []located
		for _, e := range rl {
			out = append(out, located{int(e.Pos.Line), e.Msg})
		}
		return out
	}
	return []located{{0, err.Error()}}
}
