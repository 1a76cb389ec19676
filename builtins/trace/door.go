// Package trace is pifarm's one door for side effects.
//
// Every builtin splits its work into queries (read a partition table, probe a
// port, look at a pid file), which always run, and actions (write a file, start
// a process, send a line to a guest, add a link), which go through a Door.
// Live, the door executes the action and, with Verbose, prints its trace line.
// In dry-run mode it prints the trace line, changes nothing and lets the caller
// return a plausible value.
//
// A trace line is a copy-pastable shell command wherever one exists, or a
// "# ..." comment that says exactly what would change. Privilege escalation is
// always visible as the configured prefix (sudo); registered secrets are masked.
package trace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	goruntime "runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"
)

// Door carries the mode of one pifarm run. Builtins close over one Door.
type Door struct {
	// Ctx is cancelled on Ctrl-C; blocking builtins must watch it.
	Ctx context.Context
	// DryRun prints actions instead of performing them.
	DryRun bool
	// Verbose prints every action (and query commands) as it runs.
	Verbose bool
	// Out receives trace lines.
	Out io.Writer
	// Priv is the privilege command prefix, e.g. ["sudo"].
	Priv []string
	// Root reports that pifarm already runs privileged: no prefix is needed.
	Root bool
	// Stdout and Stderr receive the output of commands whose output is
	// streamed as it arrives (StreamOut, StreamErr); nil means pifarm's
	// own standard output and error. A run over a node set gives each
	// node's door its own, so the output lands in the node's log.
	Stdout, Stderr io.Writer

	mu      sync.Mutex
	secrets []string
}

// New returns a door for the given mode writing trace lines to out.
func New(ctx context.Context, dryRun, verbose bool, out io.Writer) *Door {
	if ctx == nil {
		ctx = context.Background()
	}
	return &Door{Ctx: ctx, DryRun: dryRun, Verbose: verbose, Out: out,
		Priv: []string{"sudo"}, Root: os.Geteuid() == 0}
}

// Context returns the door's context, never nil.
func (d *Door) Context() context.Context {
	if d.Ctx == nil {
		return context.Background()
	}
	return d.Ctx
}

// Secret registers s so that it is masked in every trace line from now on.
func (d *Door) Secret(s string) {
	if s == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, x := range d.secrets {
		if x == s {
			return
		}
	}
	d.secrets = append(d.secrets, s)
}

// Mask replaces every registered secret in s by "****" where it stands as a
// value: an argument, a quoted word, a here-document line, the text after
// "=" or ":". An occurrence inside a longer word ("ca" in "caches") is left
// alone: masking it would break the trace line and show where the secret
// occurs. A secret is also found as Quote renders it inside a quoted word
// (its single quotes escaped); longer secrets are masked first.
func (d *Door) Mask(s string) string {
	d.mu.Lock()
	var forms []string
	for _, x := range d.secrets {
		forms = append(forms, x)
		if q := strings.ReplaceAll(x, "'", `'\''`); q != x {
			forms = append(forms, q)
		}
	}
	d.mu.Unlock()
	if len(forms) == 0 {
		return s
	}
	sort.SliceStable(forms, func(i, j int) bool { return len(forms[i]) > len(forms[j]) })
	var b strings.Builder
	for i := 0; i < len(s); {
		n := 0
		for _, f := range forms {
			if strings.HasPrefix(s[i:], f) && standsAlone(s, i, i+len(f)) {
				n = len(f)
				break
			}
		}
		if n == 0 {
			b.WriteByte(s[i])
			i++
			continue
		}
		b.WriteString("****")
		i += n
	}
	return b.String()
}

// standsAlone reports whether s[i:j] is not glued to a word character on
// either side: a word (letters, digits, _) does not go on across its ends.
func standsAlone(s string, i, j int) bool {
	if i > 0 {
		prev, _ := utf8.DecodeLastRuneInString(s[:i])
		first, _ := utf8.DecodeRuneInString(s[i:j])
		if isWord(prev) && isWord(first) {
			return false
		}
	}
	if j < len(s) {
		last, _ := utf8.DecodeLastRuneInString(s[i:j])
		next, _ := utf8.DecodeRuneInString(s[j:])
		if isWord(last) && isWord(next) {
			return false
		}
	}
	return true
}

func isWord(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r)
}

// Print writes one trace line (masked) to Out.
func (d *Door) Print(line string) {
	if d.Out == nil {
		return
	}
	line = faithful(d.Mask(line))
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintln(d.Out, line)
}

// Note prints a "# ..." comment in dry-run or verbose mode. Use it for what a
// dry run skips or decides, where no command exists. It is one line: its
// control characters (a newline in a path it names) are escaped.
func (d *Door) Note(format string, args ...any) {
	if d.DryRun || d.Verbose {
		d.Print("# " + Escape(fmt.Sprintf(format, args...)))
	}
}

// Do performs an in-process action described by line (a shell command or a
// "# ..." comment). Live it runs fn, printing line first with Verbose; dry, it
// prints line and returns nil without running fn.
func (d *Door) Do(line string, fn func() error) error {
	if err := d.Context().Err(); err != nil {
		return err
	}
	if d.DryRun || d.Verbose {
		d.Print(line)
	}
	if d.DryRun {
		return nil
	}
	return fn()
}

// Cmd is an external command.
type Cmd struct {
	Argv []string
	// Sudo runs the command through the privilege prefix unless Door.Root.
	Sudo bool
	// Stdin feeds the command; StdinText names it in the trace line
	// (e.g. "<<'EOF' ... EOF" rendering is done by the caller through Heredoc).
	Stdin io.Reader
	// Heredoc, when set, is shown in the trace as a here-document fed to the
	// command (and used as Stdin when Stdin is nil).
	Heredoc string
	Dir     string
	Env     []string
	// Stdout and Stderr, when set, receive the output as it arrives (it is
	// also kept in the Result).
	Stdout, Stderr io.Writer
}

// Result is what a command left behind.
type Result struct {
	Stdout, Stderr []byte
	ExitCode       int
}

// argv returns the full argument vector including the privilege prefix.
func (d *Door) argv(c Cmd) []string {
	if c.Sudo && !d.Root && len(d.Priv) > 0 {
		return append(append([]string{}, d.Priv...), c.Argv...)
	}
	return c.Argv
}

// Line is the trace line of c: quoted argv, privilege prefix, here-document.
func (d *Door) Line(c Cmd) string {
	s := Join(d.argv(c))
	if c.Dir != "" {
		s = "(cd " + Quote(c.Dir) + " && " + s + ")"
	}
	if c.Heredoc != "" {
		body := c.Heredoc
		if !strings.HasSuffix(body, "\n") {
			body += "\n"
		}
		tag := heredocTag(body)
		s += " <<'" + tag + "'\n" + body + tag
	}
	return s
}

// heredocTag is a here-document delimiter that no line of body equals (a
// line "EOF" in the body would end the document early).
func heredocTag(body string) string {
	lines := strings.Split(body, "\n")
	tag := "EOF"
	for i := 1; ; i++ {
		clash := false
		for _, l := range lines {
			if l == tag {
				clash = true
				break
			}
		}
		if !clash {
			return tag
		}
		tag = fmt.Sprintf("EOF%d", i)
	}
}

// Exec runs an action command. Dry, it prints the line and returns an empty
// successful Result. A non-zero exit is an error naming the command and
// quoting its stderr.
func (d *Door) Exec(c Cmd) (Result, error) {
	if err := d.Context().Err(); err != nil {
		return Result{}, err
	}
	if d.DryRun || d.Verbose {
		d.Print(d.Line(c))
	}
	if d.DryRun {
		return Result{}, nil
	}
	return d.run(c)
}

// Query runs a read-only command in every mode (printed as "# query: ..."
// with Verbose).
func (d *Door) Query(c Cmd) (Result, error) {
	if err := d.Context().Err(); err != nil {
		return Result{}, err
	}
	if d.Verbose {
		d.Print("# query: " + d.Line(c))
	}
	return d.run(c)
}

func (d *Door) run(c Cmd) (Result, error) { return d.runIn(d.Context(), c) }

// runIn runs c until it exits or ctx is done.
func (d *Door) runIn(ctx context.Context, c Cmd) (Result, error) {
	argv := d.argv(c)
	if len(argv) == 0 {
		return Result{}, errors.New("trace: empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// An interrupted run ends the command and everything it started (a
	// shell's children, chroot's apt-get and dpkg): killing the command
	// alone would leave them running and holding its output, and Wait with
	// them.
	cmd.Cancel = func() error { return killTree(cmd.Process.Pid) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Dir = c.Dir
	if c.Env != nil {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	switch {
	case c.Stdin != nil:
		cmd.Stdin = c.Stdin
	case c.Heredoc != "":
		cmd.Stdin = strings.NewReader(c.Heredoc)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if c.Stdout != nil {
		cmd.Stdout = io.MultiWriter(&out, c.Stdout)
	}
	if c.Stderr != nil {
		cmd.Stderr = io.MultiWriter(&errb, c.Stderr)
	}
	err := runChild(cmd)
	res := Result{Stdout: out.Bytes(), Stderr: errb.Bytes()}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			res.ExitCode = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				res.ExitCode = 128 + int(ws.Signal())
			}
		} else {
			res.ExitCode = -1
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return res, fmt.Errorf("%s: %w", d.Mask(Join(argv)), ctxErr)
		}
		msg := strings.TrimSpace(string(errb.Bytes()))
		if msg == "" {
			msg = strings.TrimSpace(string(out.Bytes()))
		}
		if len(msg) > 2000 {
			msg = "..." + msg[len(msg)-2000:]
		}
		if msg != "" {
			return res, fmt.Errorf("%s: %v: %s", d.Mask(Join(argv)), err, d.Mask(msg))
		}
		return res, fmt.Errorf("%s: %v", d.Mask(Join(argv)), err)
	}
	return res, nil
}

// runChild runs cmd as a child that dies with pifarm: the kernel sends it
// SIGKILL when the thread that started it ends, which for a pifarm killed
// with SIGKILL (no clean-up of its own possible) is at once. The goroutine
// keeps its thread until the child has exited, so no other thread's end
// (Go retires a thread a goroutine locked and left) is taken for
// pifarm's. A child that daemonizes itself (QEMU's -daemonize, box --run)
// leaves a grandchild that is not affected; a set-user-ID program (sudo)
// drops the signal by the kernel's rule, so commands pifarm runs through the
// privilege prefix are not covered.
func runChild(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	return cmd.Run()
}

// Start launches a long-running action process in the background that is
// meant to outlive pifarm (a VNC viewer): unlike Exec's children it gets no
// parent-death signal. Dry, it prints the line followed by " &" and returns
// nil.
func (d *Door) Start(c Cmd, setup func(*exec.Cmd)) (*exec.Cmd, error) {
	if err := d.Context().Err(); err != nil {
		return nil, err
	}
	if d.DryRun || d.Verbose {
		d.Print(d.Line(c) + " &")
	}
	if d.DryRun {
		return nil, nil
	}
	argv := d.argv(c)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = c.Dir
	if c.Env != nil {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	cmd.Stdin = c.Stdin
	cmd.Stdout, cmd.Stderr = c.Stdout, c.Stderr
	if setup != nil {
		setup(cmd)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", d.Mask(Join(argv)), err)
	}
	return cmd, nil
}

// WriteFile writes data to path atomically (temporary file in the same
// folder, then rename), keeping the replaced file as "path~" when backup is
// set. The trace line is an equivalent shell here-document for text, or a
// comment naming the size for binary data.
func (d *Door) WriteFile(path string, data []byte, mode os.FileMode, backup bool) error {
	if _, err := os.Lstat(path); err != nil {
		backup = false // nothing to keep
	}
	line := fileLine(path, data, mode, backup)
	return d.Do(line, func() error { return WriteAtomic(path, data, mode, backup) })
}

func fileLine(path string, data []byte, mode os.FileMode, backup bool) string {
	if !isText(data) || len(data) > 4096 {
		line := fmt.Sprintf("# write %d bytes to %s", len(data), Quote(path))
		if mode != 0 {
			line += fmt.Sprintf(" (mode %04o)", mode.Perm())
		}
		if backup {
			line += ", the old one kept as " + Quote(path+"~")
		}
		return line
	}
	var b strings.Builder
	if backup {
		fmt.Fprintf(&b, "cp -p %s %s\n", Quote(path), Quote(path+"~"))
	}
	body := string(data)
	if body == "" {
		fmt.Fprintf(&b, ": > %s", Quote(path))
	} else if !strings.HasSuffix(body, "\n") {
		fmt.Fprintf(&b, "printf %%s %s > %s", Quote(body), Quote(path))
	} else {
		tag := heredocTag(body)
		fmt.Fprintf(&b, "cat > %s <<'%s'\n%s%s", Quote(path), tag, body, tag)
	}
	if mode != 0 {
		fmt.Fprintf(&b, "\nchmod %o %s", mode.Perm(), Quote(path))
	}
	return b.String()
}

func isText(data []byte) bool {
	for _, c := range data {
		if c == 0 || (c < 32 && c != '\n' && c != '\t' && c != '\r') {
			return false
		}
	}
	return !strings.Contains(string(data), "\nEOF\n")
}

// WriteAtomic writes data to path through a temporary file and a rename,
// keeping the old file as path~ when backup is set. It is the live half of
// Door.WriteFile, for callers that already passed the door.
func WriteAtomic(path string, data []byte, mode os.FileMode, backup bool) error {
	if mode == 0 {
		mode = 0o644
	}
	dir := dirOf(path)
	f, err := os.CreateTemp(dir, "."+baseOf(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	if backup {
		if err := Backup(path); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	return nil
}

// Backup keeps one generation of path as path~ (a hard link when possible,
// so the original stays in place until it is replaced; else a copy with the
// same mode; a symbolic link is kept as a link). A missing path is not an
// error. The backup is made under a fresh temporary name and renamed onto
// path~, so a symbolic link planted at path~ is replaced, never written
// through.
func Backup(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("backup %s: %w", path, err)
	}
	bak := path + "~"
	tmp, err := tempName(path)
	if err != nil {
		return fmt.Errorf("backup %s: %w", path, err)
	}
	switch {
	case os.Link(path, tmp) == nil:
	case fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err == nil {
			err = os.Symlink(target, tmp)
		}
		if err != nil {
			return fmt.Errorf("backup %s: %w", path, err)
		}
	default:
		if err := copyNew(path, tmp, fi.Mode().Perm()); err != nil {
			return fmt.Errorf("backup %s: %w", path, err)
		}
	}
	if err := os.Rename(tmp, bak); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("backup %s to %s: %w (move what is at %s away)", path, bak, err, bak)
	}
	return nil
}

// tempName returns an unused name next to path (the name is free when it
// is returned; the caller creates it with a call that fails on an existing
// name: link, symlink, O_EXCL).
func tempName(path string) (string, error) {
	f, err := os.CreateTemp(dirOf(path), "."+baseOf(path)+".bak*")
	if err != nil {
		return "", err
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return "", err
	}
	return name, nil
}

// copyNew copies the regular file src to dst, which it creates (O_EXCL: an
// existing dst, a symbolic link included, is an error) with mode perm.
func copyNew(src, dst string, perm os.FileMode) error {
	in, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	if err := out.Chmod(perm); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(dst)
		return err
	}
	return nil
}

func dirOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		if i == 0 {
			return "/"
		}
		return p[:i]
	}
	return "."
}

func baseOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
