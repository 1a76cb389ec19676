package ssh

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	xssh "golang.org/x/crypto/ssh"
	"pifarm/builtins/trace"
)

// RunOpts are the options of one remote command.
type RunOpts struct {
	Stdin     []byte // fed to the command (nil: nothing)
	StdinFile string // a host file fed to the command (shown as "< file")
	Pty       bool   // allocate a terminal (stderr then merges into stdout)
	Stream    bool   // copy output to the terminal as it arrives
	Check     bool   // a non-zero exit is an error quoting stderr's tail
	Timeout   time.Duration
	// Pre is shown before the ssh command in the trace line (a pipe source
	// such as "tar ... |"); the live input then comes from Input.
	Pre   string
	Input io.Reader
}

// Result is what a remote command left behind. ExitCode is -1 when the
// connection closed before the command reported its status (poweroff).
type Result struct {
	Stdout, Stderr []byte
	ExitCode       int
}

// Line is the equivalent ssh command line of cmd.
func (c *Conn) Line(cmd string, o RunOpts) string {
	var b strings.Builder
	if o.Pre != "" {
		b.WriteString(o.Pre + " | ")
	}
	b.WriteString("ssh")
	if o.Pty {
		b.WriteString(" -t")
	}
	if c.A.KeyFile != "" {
		b.WriteString(" -i " + trace.Quote(c.A.KeyFile))
	}
	if c.T.Port != 22 {
		b.WriteString(" -p " + strconv.Itoa(c.T.Port))
	}
	b.WriteString(" " + trace.Quote(c.A.User+"@"+c.T.display()) + " " + trace.Quote(cmd))
	switch {
	case o.StdinFile != "":
		b.WriteString(" < " + trace.Quote(o.StdinFile))
	case o.Stdin != nil && isText(o.Stdin):
		body := string(o.Stdin)
		if !strings.HasSuffix(body, "\n") {
			// printf keeps a missing final newline exact.
			return "printf %s " + trace.Quote(body) + " | " + b.String()
		}
		b.WriteString(" <<'EOF'\n" + body + "EOF")
	case o.Stdin != nil:
		b.WriteString(fmt.Sprintf("  # with %d bytes of binary data on stdin", len(o.Stdin)))
	}
	return b.String()
}

func isText(data []byte) bool {
	for _, c := range data {
		if c == 0 || (c < 32 && c != '\n' && c != '\t') {
			return false
		}
	}
	return !bytes.Contains(data, []byte("\nEOF\n")) && !bytes.HasPrefix(data, []byte("EOF\n"))
}

// Run runs cmd on the remote host through the door.
func (c *Conn) Run(cmd string, o RunOpts) (Result, error) {
	var res Result
	var runErr error
	err := c.d.Do(c.Line(cmd, o), func() error {
		res, runErr = c.run(cmd, o)
		return nil
	})
	if err != nil {
		return res, err
	}
	if runErr != nil {
		return res, runErr
	}
	if o.Check && res.ExitCode != 0 {
		return res, c.exitError(cmd, res)
	}
	return res, nil
}

func (c *Conn) exitError(cmd string, res Result) error {
	what := fmt.Sprintf("exit status %d", res.ExitCode)
	if res.ExitCode == -1 {
		what = "the connection closed before the command reported an exit status"
	}
	msg := tailText(res.Stderr, 10, 2000)
	if msg == "" {
		msg = tailText(res.Stdout, 10, 2000)
	}
	e := fmt.Sprintf("%s %s: %s", c.label(), trace.Quote(cmd), what)
	if msg != "" {
		e += ":\n" + msg
	}
	return errors.New(c.d.Mask(e))
}

// tailText is the last lines of b, at most max bytes.
func tailText(b []byte, lines, max int) string {
	s := strings.TrimRight(string(b), "\n")
	if s == "" {
		return ""
	}
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	s = strings.Join(ls, "\n")
	if len(s) > max {
		s = "..." + s[len(s)-max:]
	}
	return s
}

func (c *Conn) run(cmd string, o RunOpts) (Result, error) {
	if c.client == nil {
		return Result{}, nil
	}
	sess, err := c.client.NewSession()
	if err != nil {
		return Result{}, fmt.Errorf("%s: new session: %w", c.label(), err)
	}
	defer sess.Close()
	var stdout, stderr trace.SyncBuffer
	var ow, ew io.Writer = &stdout, &stderr
	if o.Stream {
		ow, ew = io.MultiWriter(&stdout, c.d.StreamOut()), io.MultiWriter(&stderr, c.d.StreamErr())
	}
	sess.Stdout, sess.Stderr = ow, ew
	switch {
	case o.Input != nil:
		sess.Stdin = o.Input
	case o.StdinFile != "":
		f, err := os.Open(o.StdinFile)
		if err != nil {
			return Result{}, err
		}
		defer f.Close()
		sess.Stdin = f
	case o.Stdin != nil:
		sess.Stdin = bytes.NewReader(o.Stdin)
	}
	if o.Pty {
		modes := xssh.TerminalModes{xssh.ECHO: 0, xssh.TTY_OP_ISPEED: 115200, xssh.TTY_OP_OSPEED: 115200}
		if err := sess.RequestPty("xterm", 40, 120, modes); err != nil {
			return Result{}, fmt.Errorf("%s: request a terminal: %w", c.label(), err)
		}
	}
	if err := sess.Start(cmd); err != nil {
		return Result{}, fmt.Errorf("%s: %w", c.d.Mask(c.label()+" "+trace.Quote(cmd)), err)
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	var timeout <-chan time.Time
	if o.Timeout > 0 {
		t := time.NewTimer(o.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	ctx := c.d.Context()
	select {
	case err = <-done:
	case <-timeout:
		sess.Signal(xssh.SIGTERM)
		sess.Close()
		msg := c.d.Mask(fmt.Sprintf("%s %s: timeout after %s%s", c.label(), trace.Quote(cmd), o.Timeout, lastOutput(stdout.Bytes(), stderr.Bytes())))
		res := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: -1}
		if !o.Check {
			// The caller looks at the exit code: -1, the reason in stderr.
			res.Stderr = append(res.Stderr, []byte(msg+"\n")...)
			return res, nil
		}
		return res, errors.New(msg)
	case <-ctx.Done():
		sess.Signal(xssh.SIGINT)
		sess.Close()
		return Result{ExitCode: -1}, fmt.Errorf("%s: %w", c.d.Mask(c.label()+" "+trace.Quote(cmd)), ctx.Err())
	}
	res := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	if err != nil {
		var ee *xssh.ExitError
		var em *xssh.ExitMissingError
		switch {
		case errors.As(err, &ee):
			res.ExitCode = ee.ExitStatus()
			if ee.Signal() != "" && res.ExitCode == 0 {
				res.ExitCode = 128
			}
		case errors.As(err, &em), errors.Is(err, io.EOF):
			res.ExitCode = -1
		default:
			return res, fmt.Errorf("%s: %w", c.d.Mask(c.label()+" "+trace.Quote(cmd)), err)
		}
	}
	return res, nil
}

func lastOutput(stdout, stderr []byte) string {
	all := tailText(append(append([]byte(nil), stdout...), stderr...), 8, 2000)
	if all == "" {
		return "; no output"
	}
	return "; last output:\n" + all
}

// Put writes content to path on the remote host, then sets mode (octal,
// e.g. "644") and owner ("user" or "user:group") when given.
func (c *Conn) Put(content []byte, path, mode, owner string) error {
	q := trace.Quote(path)
	cmd := "cat > " + q
	if mode != "" {
		cmd += " && chmod " + mode + " " + q
	}
	if owner != "" {
		cmd += " && chown " + trace.Quote(owner) + " " + q
	}
	_, err := c.Run(cmd, RunOpts{Stdin: content, Check: true})
	return err
}

// UploadResult counts what an upload sent.
type UploadResult struct{ Files, Bytes int64 }

// UploadCommand is the remote side of Upload.
func UploadCommand(remoteDir string) string {
	q := trace.Quote(remoteDir)
	return "mkdir -p " + q + " && tar -x --no-same-owner --no-overwrite-dir -C " + q + " -f -"
}

// Upload copies the tree under localDir into remoteDir as one tar stream
// into tar -x on the remote host. Entries carry uid/gid 0 and the local
// modes; existing remote directories keep their owner and mode.
func (c *Conn) Upload(localDir, remoteDir string) (UploadResult, error) {
	fi, err := os.Stat(localDir)
	if err != nil {
		return UploadResult{}, err
	}
	if !fi.IsDir() {
		return UploadResult{}, fmt.Errorf("%s is not a folder", localDir)
	}
	var res UploadResult
	pre := "tar -C " + trace.Quote(localDir) + " --owner=0 --group=0 -cf - ."
	if c.client == nil || c.d.DryRun {
		_, err := c.Run(UploadCommand(remoteDir), RunOpts{Pre: pre, Check: true})
		return res, err
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(writeTar(pw, localDir, &res))
	}()
	_, err = c.Run(UploadCommand(remoteDir), RunOpts{Pre: pre, Input: pr, Check: true})
	pr.Close()
	return res, err
}

// writeTar writes the tree under dir (not dir itself) to w.
func writeTar(w io.Writer, dir string, res *UploadResult) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		link := ""
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		case fi.IsDir(), fi.Mode().IsRegular():
		default:
			return nil // sockets, devices, fifos: not part of a software tree
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = "./" + filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "root", "root"
		h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			n, err := io.Copy(tw, f)
			f.Close()
			if err != nil {
				return err
			}
			res.Bytes += n
			res.Files++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("tar %s: %w", dir, err)
	}
	return tw.Close()
}
