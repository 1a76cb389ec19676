package ssh

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

// testServer is an in-process SSH server that runs every exec request with
// sh in its folder: password and public-key log-in, exit status, stderr,
// stdin and pty requests.
type testServer struct {
	t        *testing.T
	ln       net.Listener
	dir      string
	cfg      *xssh.ServerConfig
	hostKeys []xssh.Signer

	mu       sync.Mutex
	password map[string]string
	keys     map[string]bool // authorized keys (wire format)
	conns    int
	cmds     []string
}

func newHostKey(t *testing.T, rsaKey bool) xssh.Signer {
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

// newTestServer listens on addr with the given host keys (a fresh ed25519
// key when none).
func newTestServer(t *testing.T, addr string, hostKeys ...xssh.Signer) *testServer {
	t.Helper()
	if len(hostKeys) == 0 {
		hostKeys = []xssh.Signer{newHostKey(t, false)}
	}
	s := &testServer{t: t, dir: t.TempDir(), hostKeys: hostKeys,
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
	s.ln = ln
	t.Cleanup(func() { ln.Close() })
	go s.serve()
	return s
}

func netListen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

type refused struct{}

func (refused) Error() string { return "refused" }

var errRefused = refused{}

func (s *testServer) authorize(k xssh.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[string(k.Marshal())] = true
}

func (s *testServer) connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

func (s *testServer) serve() {
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns++
		s.mu.Unlock()
		go s.handle(nc)
	}
}

func (s *testServer) handle(nc net.Conn) {
	defer nc.Close()
	_, chans, reqs, err := xssh.NewServerConn(nc, s.cfg)
	if err != nil {
		return
	}
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
		go s.session(ch, creqs)
	}
}

func (s *testServer) session(ch xssh.Channel, reqs <-chan *xssh.Request) {
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
			cmd := exec.Command("sh", "-c", p.Command)
			cmd.Dir = s.dir
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
			ch.SendRequest("exit-status", false, xssh.Marshal(struct{ Status uint32 }{uint32(code)}))
			return
		default:
			req.Reply(false, nil)
		}
	}
}
