package ssh

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	xssh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"pifarm/builtins/trace"
)

// Keys finds the user's keys: the first ~/.ssh/id_*.pub that has its
// private key next to it, and pifarm's own key in confDir.
type Keys struct {
	Home    string // the user's home (its .ssh is searched)
	ConfDir string // where pifarm keeps its own key
}

// UserKey returns the private key path of the first ~/.ssh/id_*.pub with a
// private key pifarm can use (no passphrase, or an ssh-agent running), or
// "".
func (k Keys) UserKey() string {
	pubs, _ := filepath.Glob(filepath.Join(k.Home, ".ssh", "id_*.pub"))
	sort.Strings(pubs)
	for _, p := range pubs {
		if strings.HasSuffix(p, "-cert.pub") {
			continue
		}
		priv := strings.TrimSuffix(p, ".pub")
		if usable(priv) {
			return priv
		}
	}
	return ""
}

// usable reports whether pifarm can sign with the private key at path: it
// parses without a passphrase, or it has one and an ssh-agent runs (which
// may hold it).
func usable(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	_, err = parseKey(data)
	var pm *xssh.PassphraseMissingError
	if errors.As(err, &pm) {
		return os.Getenv("SSH_AUTH_SOCK") != ""
	}
	return err == nil
}

// parsedKeys holds the private keys parsed in this process, by the SHA-256
// of the file's content, with the error of a key that does not parse
// (a passphrase missing): every log-in reads the user's key file again,
// but parses a content once. Parsing an RSA key checks it, which takes
// tens of milliseconds of CPU (30 ms for 3072 bits here): twice per log-in,
// that was most of the CPU `pifarm run status` spent on 100 nodes.
var parsedKeys struct {
	sync.Mutex
	m map[[sha256.Size]byte]parsedKey
}

type parsedKey struct {
	s   xssh.Signer
	err error
}

// parseKey is xssh.ParsePrivateKey, once per content in this process;
// concurrent callers wait for the first one's result.
func parseKey(data []byte) (xssh.Signer, error) {
	sum := sha256.Sum256(data)
	parsedKeys.Lock()
	defer parsedKeys.Unlock()
	if p, ok := parsedKeys.m[sum]; ok {
		return p.s, p.err
	}
	s, err := xssh.ParsePrivateKey(data)
	if parsedKeys.m == nil {
		parsedKeys.m = map[[sha256.Size]byte]parsedKey{}
	}
	parsedKeys.m[sum] = parsedKey{s, err}
	return s, err
}

// PifarmKey is the path of pifarm's own private key.
func (k Keys) PifarmKey() string { return filepath.Join(k.ConfDir, "id_ed25519") }

// Key returns the private key to offer and authorise: the user's, else
// pifarm's own (which may not exist yet).
func (k Keys) Key() (path string, own bool) {
	if p := k.UserKey(); p != "" {
		return p, false
	}
	return k.PifarmKey(), true
}

// Ensure creates pifarm's own key through the door when the user has none
// and it does not exist yet, and returns the public key file.
func (k Keys) Ensure(d *trace.Door) (string, error) {
	priv, own := k.Key()
	if !own {
		return priv + ".pub", nil
	}
	for _, p := range []string{priv, priv + ".pub"} {
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			return "", fmt.Errorf("pifarm's key %s is a symbolic link, which pifarm never makes: a key pair planted there would be authorised on your guests; "+
				"remove it (rm %s) and pifarm makes a new key pair", p, trace.Quote(p))
		}
	}
	if _, err := os.Lstat(priv); err == nil {
		return priv + ".pub", nil
	}
	line := fmt.Sprintf("mkdir -p -m 700 %s && ssh-keygen -q -t ed25519 -N '' -C pifarm -f %s", trace.Quote(filepath.Dir(priv)), trace.Quote(priv))
	err := d.Do(line, func() error { return GenerateKey(priv, "pifarm") })
	return priv + ".pub", err
}

// GenerateKey writes a new ed25519 key pair in OpenSSH format to path and
// path.pub (mode 0600 and 0644), each through a temporary file renamed
// onto it (a symbolic link there is replaced, never written through); a
// missing folder is made 0700.
func GenerateKey(path, comment string) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := xssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return err
	}
	sp, err := xssh.NewPublicKey(pub)
	if err != nil {
		return err
	}
	// mkdir -p -m 700 DIR: the parents as mkdir -p makes them, DIR 0700
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o777); err != nil {
			return err
		}
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	if err := trace.WriteAtomic(path, pem.EncodeToMemory(block), 0o600, false); err != nil {
		return err
	}
	line := strings.TrimSpace(string(xssh.MarshalAuthorizedKey(sp))) + " " + comment + "\n"
	return trace.WriteAtomic(path+".pub", []byte(line), 0o644, false)
}

// signers returns the signers to offer: an explicit key file, or the
// user's key and pifarm's key (those without a passphrase), then the
// agent's keys. done closes the connection to the agent (its signers sign
// through it): call it once the log-in is over.
func (k Keys) signers(explicit string) (out []xssh.Signer, names []string, done func(), err error) {
	done = func() {}
	load := func(p string, must bool) error {
		read := os.ReadFile
		if p == k.PifarmKey() {
			read = readNoFollow // a link there is not pifarm's key
		}
		data, err := read(p)
		if err != nil {
			if must {
				return fmt.Errorf("key %s: %w", p, err)
			}
			return nil
		}
		s, err := parseKey(data)
		if err != nil {
			var pm *xssh.PassphraseMissingError
			if errors.As(err, &pm) && !must {
				return nil // the agent may hold it
			}
			return fmt.Errorf("key %s: %w", p, err)
		}
		out = append(out, s)
		names = append(names, "key "+p)
		return nil
	}
	if explicit != "" {
		if err := load(explicit, true); err != nil {
			return nil, nil, done, err
		}
		return out, names, done, nil
	}
	if p := k.UserKey(); p != "" {
		load(p, false)
	}
	load(k.PifarmKey(), false)
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if c, err := net.Dial("unix", sock); err == nil {
			if ss, err := agent.NewClient(c).Signers(); err == nil && len(ss) > 0 {
				out = append(out, ss...)
				names = append(names, "agent keys")
				done = func() { c.Close() }
			} else {
				c.Close()
			}
		}
	}
	return out, names, done, nil
}

// publicLine reads an authorized_keys line from a .pub file.
func publicLine(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	data = bytes.TrimSpace(data)
	if _, _, _, _, err := xssh.ParseAuthorizedKey(data); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return string(data), nil
}
