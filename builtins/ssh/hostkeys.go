package ssh

import (
	"archive/tar"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"fmt"
	"strings"
	"time"

	"go.starlark.net/starlark"
	xssh "golang.org/x/crypto/ssh"
	"pifarm/builtins/trace"
)

// HostKey is one SSH host key pair as sshd keeps it in /etc/ssh.
type HostKey struct {
	// Type names the files: ssh_host_TYPE_key and ssh_host_TYPE_key.pub.
	Type string
	// Private is the key in OpenSSH's private key format (PEM "OPENSSH
	// PRIVATE KEY"), Public its authorized_keys line.
	Private, Public []byte
	Fingerprint     string // SHA256:...
}

// hostKeyTypes are the keys `ssh-keygen -A` makes, in the order pifarm
// records them: ed25519 first (what OpenSSH clients prefer).
var hostKeyTypes = []string{"ed25519", "ecdsa", "rsa"}

// NewHostKeys makes a new set of host keys as `ssh-keygen -A` does
// (ed25519, ECDSA on P-256, RSA of 3072 bits), comment on each: on this
// host, from its random source, so that pifarm knows the keys a guest
// will present before it ever boots.
func NewHostKeys(comment string) ([]HostKey, error) {
	var out []HostKey
	for _, typ := range hostKeyTypes {
		var priv crypto.PrivateKey
		var err error
		switch typ {
		case "ed25519":
			_, priv, err = ed25519.GenerateKey(rand.Reader)
		case "ecdsa":
			priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		case "rsa":
			priv, err = rsa.GenerateKey(rand.Reader, 3072)
		}
		if err != nil {
			return nil, fmt.Errorf("make a %s host key: %w", typ, err)
		}
		block, err := xssh.MarshalPrivateKey(priv, comment)
		if err != nil {
			return nil, fmt.Errorf("encode the %s host key: %w", typ, err)
		}
		signer, err := xssh.NewSignerFromKey(priv)
		if err != nil {
			return nil, fmt.Errorf("the %s host key: %w", typ, err)
		}
		pub := bytes.TrimSuffix(xssh.MarshalAuthorizedKey(signer.PublicKey()), []byte("\n"))
		if comment != "" {
			pub = append(pub, " "+comment...)
		}
		out = append(out, HostKey{Type: typ, Private: pem.EncodeToMemory(block), Public: append(pub, '\n'),
			Fingerprint: xssh.FingerprintSHA256(signer.PublicKey())})
	}
	return out, nil
}

// HostKeysTar is a tar archive of the keys as sshd expects them, to be
// unpacked at the guest's root: etc/ssh/ssh_host_TYPE_key (mode 0600) and
// its .pub (0644), owned by root.
func HostKeysTar(keys []HostKey) ([]byte, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	now := time.Now()
	for _, k := range keys {
		for _, f := range []struct {
			name string
			mode int64
			data []byte
		}{
			{"etc/ssh/ssh_host_" + k.Type + "_key", 0o600, k.Private},
			{"etc/ssh/ssh_host_" + k.Type + "_key.pub", 0o644, k.Public},
		} {
			h := &tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: now,
				Typeflag: tar.TypeReg, Uname: "root", Gname: "root", Format: tar.FormatUSTAR}
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
			if _, err := tw.Write(f.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// newHostKeys is ssh.new_host_keys: the keys are made in the background
// (an RSA key of 3072 bits takes up to seconds), so a recipe that asks for
// them before a long step (a conversion, a copy) has them when it needs
// them; the value's fields wait for them.
func (m *module) newHostKeys(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var comment string
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "comment?", &comment); err != nil {
		return nil, err
	}
	if strings.ContainsAny(comment, "\n\r") {
		return nil, trace.Usagef("%s: comment %q holds a line break", b.Name(), comment)
	}
	v := &hostKeysValue{name: b.Name(), done: make(chan struct{})}
	go func() {
		defer close(v.done)
		v.fields, v.err = hostKeyFields(comment)
	}()
	return v, nil
}

// hostKeyFields makes a set of host keys and returns the fields of
// ssh.new_host_keys's value.
func hostKeyFields(comment string) (starlark.StringDict, error) {
	keys, err := NewHostKeys(comment)
	if err != nil {
		return nil, err
	}
	archive, err := HostKeysTar(keys)
	if err != nil {
		return nil, err
	}
	var pubs []string
	var fps, files []starlark.Value
	for _, k := range keys {
		pubs = append(pubs, string(k.Public))
		fps = append(fps, starlark.String(k.Fingerprint))
		files = append(files, starlark.String("/etc/ssh/ssh_host_"+k.Type+"_key"), starlark.String("/etc/ssh/ssh_host_"+k.Type+"_key.pub"))
	}
	return starlark.StringDict{
		"archive": starlark.Bytes(archive), "public": starlark.String(strings.Join(pubs, "")),
		"fingerprints": starlark.NewList(fps), "files": starlark.NewList(files),
	}, nil
}

// hostKeysValue is ssh.new_host_keys's value: its fields wait until the
// keys are made (a failure to make them is the error of every field).
type hostKeysValue struct {
	name   string
	done   chan struct{}
	fields starlark.StringDict
	err    error
}

func (v *hostKeysValue) String() string        { return "<host_keys>" }
func (v *hostKeysValue) Type() string          { return "host_keys" }
func (v *hostKeysValue) Freeze()               {}
func (v *hostKeysValue) Truth() starlark.Bool  { return starlark.True }
func (v *hostKeysValue) Hash() (uint32, error) { return 0, fmt.Errorf("unhashable: host_keys") }

// AttrNames lists the fields.
func (v *hostKeysValue) AttrNames() []string {
	return []string{"archive", "files", "fingerprints", "public"}
}

// Attr returns a field once the keys are made.
func (v *hostKeysValue) Attr(name string) (starlark.Value, error) {
	<-v.done
	if v.err != nil {
		return nil, fmt.Errorf("%s: %w", v.name, v.err)
	}
	f, ok := v.fields[name]
	if !ok {
		return nil, nil // no such field: starlark says so
	}
	if l, ok := f.(*starlark.List); ok {
		return starlark.NewList(append([]starlark.Value(nil), listValues(l)...)), nil
	}
	return f, nil
}

func listValues(l *starlark.List) []starlark.Value {
	out := make([]starlark.Value, l.Len())
	for i := range out {
		out[i] = l.Index(i)
	}
	return out
}
