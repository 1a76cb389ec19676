package console

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"pifarm/builtins/trace"
)

// The shell's side of a session: logging in and out, running commands,
// telling prompts apart, waiting for the guest to stop, and what the end
// of a run leaves behind.

// Patterns the console speaks.
var (
	reLogin     = regexp.MustCompile(`(?m)login: *$`)
	rePassword  = regexp.MustCompile(`(?m)[Pp]assword: *$`)
	reShell     = regexp.MustCompile(`(?m)[$#] $`)
	reIncorrect = regexp.MustCompile(`Login incorrect`)
	reWizard    = regexp.MustCompile(`(?i)(enter new username|create a new user)`)
	reLogout    = regexp.MustCompile(`(?m)^logout$`)
	reHalted    = regexp.MustCompile(`reboot: (System halted|Power down)|System halted`)
)

// Login logs user in, trying passwords in turn. A console that already
// shows a shell is logged out first; a pending Password: prompt is
// answered empty. `Login incorrect` moves on to the next password at once.
// It reports false when every password was refused (the image has no such
// user or other passwords).
func (s *Session) Login(user string, passwords []string, timeout time.Duration) (bool, error) {
	byLen := append([]string(nil), passwords...)
	sort.Slice(byLen, func(i, j int) bool { return len(byLen[i]) > len(byLen[j]) })
	for _, p := range byLen {
		s.d.Secret(p)
	}
	if s.Dry() {
		s.d.Print(fmt.Sprintf("# %s: log in as %s (fresh prompt; a logged-in shell is logged out first; passwords %s in turn)",
			s.Label, user, strings.Join(passwords, ", ")))
		s.Send(user + "\r")
		if len(passwords) > 0 {
			s.Send(passwords[0] + "\r")
		}
		s.user = user
		return true, nil
	}
	deadline := time.Now().Add(timeout)
	left := func() time.Duration {
		if d := time.Until(deadline); d > 0 {
			return d
		}
		return time.Millisecond
	}
	// Get to a login prompt.
	if err := s.Send("\r"); err != nil {
		return false, err
	}
	for tries := 0; ; tries++ {
		m, err := s.Expect([]*regexp.Regexp{reLogin, rePassword, reShell, reWizard}, left())
		if err != nil {
			return false, err
		}
		if m.Index == 0 {
			break
		}
		if tries > 5 {
			return false, s.failf(nil, "cannot get to a login prompt")
		}
		switch m.Index {
		case 1: // someone left a password prompt: an empty answer fails and re-prompts
			if err := s.Send("\r"); err != nil {
				return false, err
			}
		case 2: // a shell: log out first
			if err := s.Send("exit\r"); err != nil {
				return false, err
			}
		case 3:
			return false, nil
		}
	}
	for i, pw := range passwords {
		if i > 0 {
			if _, err := s.Expect([]*regexp.Regexp{reLogin}, left()); err != nil {
				return false, err
			}
		}
		if err := s.Send(user + "\r"); err != nil {
			return false, err
		}
		m, err := s.Expect([]*regexp.Regexp{rePassword, reShell, reIncorrect, reWizard}, left())
		if err != nil {
			return false, err
		}
		switch m.Index {
		case 1:
			s.user = user
			return true, nil
		case 2:
			continue
		case 3:
			return false, nil
		}
		s.loggingIn = true // until the answer is seen: End then looks
		if err := s.Send(pw + "\r"); err != nil {
			return false, err
		}
		m, err = s.Expect([]*regexp.Regexp{reShell, reIncorrect, reWizard}, left())
		if err != nil {
			return false, err
		}
		s.loggingIn = false
		switch m.Index {
		case 0:
			s.user = user
			return true, nil
		case 2:
			return false, nil
		}
	}
	return false, nil
}

// Result is the outcome of a command run on the console.
type Result struct {
	Output   string
	ExitCode int
}

// Run types cmd into the logged-in shell and waits for it to finish. The
// command runs through eval between two printf markers whose output
// ("TOKEN_B", "TOKEN_E<status>") differs from their echo, so neither the
// echoed line nor kernel messages can be mistaken for the end. Kernel log
// lines are dropped from the output.
func (s *Session) Run(cmd string, timeout time.Duration) (Result, error) {
	s.seq++
	tok := fmt.Sprintf("PF%s%d", s.nonce, s.seq)
	arg := trace.Quote(cmd)
	if strings.Contains(cmd, "\n") {
		// Typed as one line: a newline would end the line early (or leave
		// the shell at its continuation prompt). printf (a shell builtin)
		// turns \n back into newlines.
		esc := strings.NewReplacer("\\", "\\\\", "%", "%%", "\n", "\\n").Replace(cmd)
		arg = `"$(printf ` + trace.Quote(esc) + `)"`
	}
	line := fmt.Sprintf("printf '%%s_B\\n' %s; eval %s; printf '%%s_E%%d\\n' %s $?\r", tok, arg, tok)
	// A multi-line command stays one comment: every line starts with "#".
	shown := strings.ReplaceAll(quote(cmd), "\n", "\n#   ")
	if err := s.do(fmt.Sprintf("# %s: run %s", s.Label, shown), func() error { return s.write(line) }); err != nil {
		return Result{}, err
	}
	if s.Dry() {
		return Result{}, nil
	}
	s.running = true // until the end marker is seen: End interrupts it
	// Two short matches: the output between them may be long.
	deadline := time.Now().Add(timeout)
	if _, err := s.expect([]*regexp.Regexp{regexp.MustCompile(tok + `_B\n`)}, timeout,
		"the command to start (marker "+tok+"_B)", timeout); err != nil {
		return Result{}, fmt.Errorf("run %s: %w", s.d.Mask(quote(cmd)), err)
	}
	m, err := s.expect([]*regexp.Regexp{regexp.MustCompile(tok + `_E(\d+)\n`)}, max(time.Until(deadline), time.Millisecond),
		"the command to finish (marker "+tok+"_E<status>)", timeout)
	if err != nil {
		return Result{}, fmt.Errorf("run %s: %w", s.d.Mask(quote(cmd)), err)
	}
	s.running = false
	code, _ := strconv.Atoi(m.Groups[0])
	out := strings.TrimSuffix(dropKernelLines(m.Before), "\n")
	return Result{Output: out, ExitCode: code}, nil
}

// WaitHalted waits until the guest reports that it stopped (`reboot:
// System halted`, `reboot: Power down`) or the console closes because QEMU
// exited; it returns what it saw.
func (s *Session) WaitHalted(timeout time.Duration) (string, error) {
	if s.Dry() {
		s.d.Print(fmt.Sprintf("# %s: wait until the guest reports it stopped (reboot: System halted / reboot: Power down)", s.Label))
		s.user = ""
		return "reboot: Power down", nil
	}
	m, err := s.Expect([]*regexp.Regexp{reHalted}, timeout)
	if errors.Is(err, ErrClosed) {
		return "console closed", nil
	}
	if err != nil {
		return "", err
	}
	s.user = ""
	return strings.TrimSpace(m.Text), nil
}

// WaitClosed waits at most timeout for the console to close (QEMU exited)
// and reports whether it did. Output arriving meanwhile is kept for Expect.
func (s *Session) WaitClosed(timeout time.Duration) bool {
	if s.Dry() {
		s.d.Print(fmt.Sprintf("# %s: wait at most %s for QEMU to close the console (it exits by itself after a power-down when the guest has the bcm2835 watchdog driver)", s.Label, timeout))
		return false
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		if s.rerr != nil {
			s.mu.Unlock()
			return true
		}
		ch := s.notify
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			return false
		case <-s.d.Context().Done():
			return false
		}
	}
}

// Logout ends the shell this session logged into, or the one Prompt found.
func (s *Session) Logout() error {
	_, err := s.logout()
	return err
}

// logout is Logout, reporting whether the console confirmed it (a live
// run that saw "logout" or the login prompt).
func (s *Session) logout() (bool, error) {
	if s.user == "" && s.found == "" {
		return false, nil
	}
	s.user, s.found = "", ""
	if err := s.Send("exit\r"); err != nil {
		return false, err
	}
	if s.Dry() {
		return false, nil
	}
	// Wait until the shell took the line: bytes still queued in QEMU's
	// socket when the client disconnects are lost (a lone "e" would reach
	// the shell). bash says "logout"; other shells go back to the login
	// prompt.
	_, err := s.Expect([]*regexp.Regexp{reLogout, reLogin}, 5*time.Second)
	if ctxErr := s.context().Err(); ctxErr != nil {
		return false, err
	}
	return err == nil, nil // a slow or closed console: the log-out was sent, go on
}

// Prompt kinds, as Prompt reports them.
const (
	PromptLogin    = "login"    // a login prompt: nobody logged in
	PromptPassword = "password" // a Password: prompt
	PromptShell    = "shell"    // a shell prompt: someone is logged in
	PromptSetup    = "setup"    // the first-boot wizard asks for a user
)

// reShellUser takes the user from a prompt like "pi@raspberrypi:~$".
var reShellUser = regexp.MustCompile(`^([a-z_][a-z0-9_.-]*)@`)

// Prompt asks the console for a fresh prompt (Enter) and reports which it
// shows: PromptLogin, PromptPassword, PromptShell or PromptSetup, with the
// prompt's line ("pi@raspberrypi:~$"); "" when none comes within timeout
// (another client holds the console, or the guest is busy or booting).
// Text that arrived before is not trusted: only what follows the Enter
// counts. A shell found this way is one Logout ends.
func (s *Session) Prompt(timeout time.Duration) (kind, line string, err error) {
	if s.Dry() {
		s.Send("\r")
		s.d.Print(fmt.Sprintf("# %s: expect a login, password or shell prompt (a live run tells which)", s.Label))
		return PromptLogin, "", nil
	}
	s.mu.Lock()
	s.cut += len(s.buf)
	s.buf = s.buf[:0]
	s.mu.Unlock()
	if err := s.Send("\r"); err != nil {
		return "", "", err
	}
	m, err := s.expect([]*regexp.Regexp{reLogin, rePassword, reShell, reWizard}, timeout, "a prompt", timeout)
	if err != nil {
		if s.context().Err() != nil {
			return "", "", err
		}
		return "", "", nil
	}
	line = strings.TrimSpace(lastLine(m.Before) + m.Text)
	kind = []string{PromptLogin, PromptPassword, PromptShell, PromptSetup}[m.Index]
	if kind == PromptShell {
		s.found = "?"
		if u := reShellUser.FindStringSubmatch(line); u != nil {
			s.found = u[1]
		}
	}
	return kind, line, nil
}

// lastLine is the text after the last newline of s.
func lastLine(s string) string {
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// End logs the session out and disconnects at the end of the run, however
// the run ended: on Ctrl-C the run's context is cancelled, so it waits with
// fresh deadlines of its own (a few seconds). A command still running is
// interrupted (Ctrl-C) first; a log-in whose answer was not seen is looked
// at (Enter) and logged out when a shell came up. What it did, or could not
// do, is printed.
func (s *Session) End() {
	if s.closed {
		return
	}
	s.ending = true
	if s.Dry() || (s.user == "" && !s.loggingIn && !s.running) {
		s.Close(true)
		return
	}
	who := s.user
	if who == "" {
		who = "the user being logged in"
	}
	var err error
	if s.running {
		err = s.Send("\x03") // the shell's foreground command gets SIGINT
		s.running = false
	}
	var kind string
	if err == nil {
		kind, _, err = s.Prompt(5 * time.Second)
	}
	s.user, s.loggingIn = "", false
	switch {
	case err != nil:
	case kind == PromptShell:
		if s.found != "?" {
			who = s.found
		}
		var seen bool
		if seen, err = s.logout(); err == nil && !seen {
			err = fmt.Errorf("exit sent, but neither logout nor a login prompt came within 5s")
		}
		if err == nil {
			s.d.Print(fmt.Sprintf("# %s: the run ended while logged in as %s: logged out", s.Label, who))
		}
	case kind == "":
		err = fmt.Errorf("no prompt within 5s")
	default:
		s.d.Print(fmt.Sprintf("# %s: the run ended while logged in as %s: the console shows a %s prompt, not a shell", s.Label, who, kind))
	}
	if err != nil {
		s.d.Print(fmt.Sprintf("# %s: the run ended while logged in as %s, and logging out failed (%v): the console may still be logged in; look with pifarm run status", s.Label, who, err))
	}
	s.Close(false)
}

// Close logs out (when logout is set and this session logged in: a shell
// Prompt only found is left to an explicit Logout) and disconnects, so
// that another client may use the console.
func (s *Session) Close(logout bool) error {
	if s.closed {
		return nil
	}
	var err error
	if logout && s.user != "" {
		err = s.Logout()
	}
	s.closed = true
	if s.conn != nil {
		s.conn.Close()
	} else if s.d.DryRun {
		s.d.Print(fmt.Sprintf("# %s: disconnect", s.Label))
	}
	return err
}
