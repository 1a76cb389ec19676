package fakeguest

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"net"
	"os/exec"
	"sync"
	"syscall"
	"testing"

	xssh "golang.org/x/crypto/ssh"
)

// SSHServer is an in-process SSH server that runs every exec request with
// sh in its folder: password and public-key log-in, exit status, stderr,
// stdin and pty requests.
type SSHServer struct {
	Listener net.Listener
	// Dir is the working folder of the commands.
	Dir string
	// Command makes the command for an exec request (default: sh -c cmd in
	// Dir); AfterCommand runs after each one, before the exit status is sent.
	Command      func(user, cmd string) *exec.Cmd
	AfterCommand func(user, cmd string)
	// AuthorizedKeys, when set, returns the authorized_keys content of a
	// user: keys found there log in besides those given to Authorize.
	AuthorizedKeys func(user string) []byte

	cfg      *xssh.ServerConfig
	hostKeys []xssh.Signer

	mu       sync.Mutex
	password map[string]string
	keys     map[string]bool // authorized keys (wire format)
	conns    int
	cmds     []string
}

// NewHostKey makes an ed25519 (or with rsaKey an RSA) host key.
func NewHostKey(t testing.TB, rsaKey bool) xssh.Signer {
	t.Helper()
	var priv any
	if rsaKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		priv = k
	} else {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		priv = k
	}
	s, err := xssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// NewSSHServer listens on addr (closed when the test ends) with the given
// host keys (a fresh ed25519 key when none); user pi logs in with password
// raspberry.
func NewSSHServer(t testing.TB, addr string, hostKeys ...xssh.Signer) *SSHServer {
	return NewSSHServerWith(t, addr, nil, hostKeys...)
}

// NewSSHServerWith is NewSSHServer with configure adjusting the server
// before it serves.
func NewSSHServerWith(t testing.TB, addr string, configure func(*SSHServer), hostKeys ...xssh.Signer) *SSHServer {
	t.Helper()
	if len(hostKeys) == 0 {
		hostKeys = []xssh.Signer{NewHostKey(t, false)}
	}
	s := &SSHServer{Dir: t.TempDir(), hostKeys: hostKeys,
		password: map[string]string{"pi": "raspberry"}, keys: map[string]bool{}}
	s.cfg = &xssh.ServerConfig{
		PasswordCallback: func(c xssh.ConnMetadata, pw []byte) (*xssh.Permissions, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if want, ok := s.password[c.User()]; ok && want == string(pw) {
				return nil, nil
			}
			return nil, errRefused
		},
		PublicKeyCallback: func(c xssh.ConnMetadata, k xssh.PublicKey) (*xssh.Permissions, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.keys[string(k.Marshal())] {
				return nil, nil
			}
			if s.AuthorizedKeys != nil {
				rest := s.AuthorizedKeys(c.User())
				for len(rest) > 0 {
					ak, _, _, r, err := xssh.ParseAuthorizedKey(rest)
					if err != nil {
						break
					}
					if string(ak.Marshal()) == string(k.Marshal()) {
						return nil, nil
					}
					rest = r
				}
			}
			return nil, errRefused
		},
	}
	for _, k := range hostKeys {
		s.cfg.AddHostKey(k)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("test server: %v", err)
	}
	s.Listener = ln
	t.Cleanup(func() { ln.Close() })
	if configure != nil {
		configure(s)
	}
	go s.serve()
	return s
}

type refused struct{}

func (refused) Error() string { return "refused" }

var errRefused = refused{}

// Authorize lets key log in (as any user).
func (s *SSHServer) Authorize(k xssh.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[string(k.Marshal())] = true
}

// Commands returns the commands run so far.
func (s *SSHServer) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.cmds...)
}

// Connections counts the connections accepted so far.
func (s *SSHServer) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

func (s *SSHServer) serve() {
	for {
		nc, err := s.Listener.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns++
		s.mu.Unlock()
		go s.handle(nc)
	}
}

func (s *SSHServer) handle(nc net.Conn) {
	defer nc.Close()
	sc, chans, reqs, err := xssh.NewServerConn(nc, s.cfg)
	if err != nil {
		return
	}
	user := sc.User()
	go xssh.DiscardRequests(reqs)
	for nch := range chans {
		if nch.ChannelType() != "session" {
			nch.Reject(xssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		go s.session(user, ch, creqs)
	}
}

func (s *SSHServer) session(user string, ch xssh.Channel, reqs <-chan *xssh.Request) {
	defer ch.Close()
	for req := range reqs {
		switch req.Type {
		case "pty-req", "env":
			req.Reply(true, nil)
		case "exec":
			var p struct{ Command string }
			if err := xssh.Unmarshal(req.Payload, &p); err != nil {
				req.Reply(false, nil)
				continue
			}
			req.Reply(true, nil)
			s.mu.Lock()
			s.cmds = append(s.cmds, p.Command)
			s.mu.Unlock()
			var cmd *exec.Cmd
			if s.Command != nil {
				cmd = s.Command(user, p.Command)
			} else {
				cmd = exec.Command("sh", "-c", p.Command)
				cmd.Dir = s.Dir
			}
			cmd.Stdin, cmd.Stdout, cmd.Stderr = ch, ch, ch.Stderr()
			code := 0
			if err := cmd.Run(); err != nil {
				if ee, ok := err.(*exec.ExitError); ok {
					code = ee.ExitCode()
					if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
						code = 128 + int(ws.Signal())
					}
				} else {
					code = 127
				}
			}
			if s.AfterCommand != nil {
				s.AfterCommand(user, p.Command)
			}
			ch.SendRequest("exit-status", false, xssh.Marshal(struct{ Status uint32 }{uint32(code)}))
			return
		default:
			req.Reply(false, nil)
		}
	}
}
