package ssh

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"go.starlark.net/starlark"
	xssh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	"pifarm/builtins/trace"
)

// ParseHostKeys reads public host keys as the guest's
// /etc/ssh/ssh_host_*_key.pub files hold them ("TYPE BASE64 [comment]", one
// per line); blank lines are skipped, and anything else among them is an
// error naming the line (a console's echo or a prompt mixed in would
// otherwise be taken for a key, or a key silently dropped).
func ParseHostKeys(text string) ([]xssh.PublicKey, error) {
	var keys []xssh.PublicKey
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		k, _, _, rest, err := xssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("line %d (%.40q) is not a public key: %v", n, line, err)
		}
		if len(bytes.TrimSpace(rest)) > 0 {
			return nil, fmt.Errorf("line %d holds more than one key", n)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no public key in the text")
	}
	return keys, nil
}

// fingerprints is ssh.fingerprints: the SHA256 fingerprints of public
// keys, ed25519's first, the others in the order given.
func (m *module) fingerprints(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var keysText string
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "keys", &keysText); err != nil {
		return nil, err
	}
	keys, err := ParseHostKeys(keysText)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.Name(), err)
	}
	sort.SliceStable(keys, func(i, j int) bool {
		return keys[i].Type() == xssh.KeyAlgoED25519 && keys[j].Type() != xssh.KeyAlgoED25519
	})
	fps := make([]string, len(keys))
	for i, k := range keys {
		fps[i] = xssh.FingerprintSHA256(k)
	}
	return trace.Strings(fps), nil
}

// trust is ssh.trust: record the host keys of an instance learnt over a
// channel pifarm already trusts (the serial console), replacing whatever
// was recorded for its address, so that the next SSH log-in verifies them
// instead of trusting the first key offered.
func (m *module) trust(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ref := m.instanceRef()
	var keysText, how string
	var port portArg
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "instance", &ref, "keys", &keysText, "how", &how, "port?", &port); err != nil {
		return nil, err
	}
	if strings.TrimSpace(how) == "" {
		return nil, trace.Usagef("%s: how= must say where the keys come from (e.g. \"read over the serial console\")", b.Name())
	}
	t, err := m.target(&ref, int(port))
	if err != nil {
		return nil, err
	}
	if m.d.DryRun && strings.TrimSpace(keysText) == "" {
		m.d.Note("ssh: trust the host keys of %s %s, recorded in %s (replacing the ones recorded)", t.Addr(), how, t.KnownHosts)
		return starlark.NewList(nil), nil
	}
	keys, err := ParseHostKeys(keysText)
	if err != nil {
		return nil, fmt.Errorf("host keys of %s %s: %w", t.Addr(), how, err)
	}
	var fps []starlark.Value
	var names []string
	for _, k := range keys {
		fp := xssh.FingerprintSHA256(k)
		fps = append(fps, starlark.String(fp))
		names = append(names, k.Type()+" "+fp)
	}
	m.d.Note("ssh: trust the host keys of %s %s: %s", t.Addr(), how, strings.Join(names, ", "))
	if err := m.replaceKnown(t, keys); err != nil {
		return nil, err
	}
	return starlark.NewList(fps), nil
}

// replaceKnown replaces the lines of t's address in its known_hosts by keys
// (none: the address is forgotten), keeping the old file as known_hosts~.
// Nothing is written when nothing changes.
func (m *module) replaceKnown(t Target, keys []xssh.PublicKey) error {
	addr := knownhosts.Normalize(t.Addr())
	var kept []string
	old, err := readNoFollow(t.KnownHosts)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, l := range strings.Split(string(old), "\n") {
		if l == "" {
			continue
		}
		if _, hosts, _, _, _, err := xssh.ParseKnownHosts([]byte(l)); err == nil && contains(hosts, addr) {
			continue
		}
		kept = append(kept, l)
	}
	for _, k := range keys {
		kept = append(kept, knownhosts.Line([]string{addr}, k))
	}
	text := strings.Join(kept, "\n")
	if text != "" {
		text += "\n"
	}
	if text == string(old) {
		return nil
	}
	if err := m.d.MkdirAll(filepath.Dir(t.KnownHosts), 0o700); err != nil {
		return err
	}
	return m.d.WriteFile(t.KnownHosts, []byte(text), 0o600, true)
}

// forget is ssh.forget: the instance's disk changed (a new image, a fresh
// clone), so the host keys recorded for it no longer apply.
func (m *module) forget(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	ref := m.instanceRef()
	var why string
	var port portArg
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "instance", &ref, "why", &why, "port?", &port); err != nil {
		return nil, err
	}
	t, err := m.target(&ref, int(port))
	if err != nil {
		return nil, err
	}
	before := knownKeys(t.KnownHosts, t.Addr())
	if len(before) == 0 {
		return starlark.False, nil
	}
	m.d.Note("ssh: forget the host keys recorded for %s (%s)", t.Addr(), why)
	if err := m.replaceKnown(t, nil); err != nil {
		return nil, err
	}
	return starlark.True, nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
