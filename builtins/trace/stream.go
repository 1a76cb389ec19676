package trace

import (
	"io"
	"os"
)

// StreamOut is where a command's streamed standard output goes: the door's
// Stdout, else pifarm's own standard output.
func (d *Door) StreamOut() io.Writer {
	if d.Stdout != nil {
		return d.Stdout
	}
	return os.Stdout
}

// StreamErr is where a command's streamed standard error goes: the door's
// Stderr, else pifarm's own standard error.
func (d *Door) StreamErr() io.Writer {
	if d.Stderr != nil {
		return d.Stderr
	}
	return os.Stderr
}
