package image

import (
	"fmt"
	"regexp"
	"strings"

	"go.starlark.net/starlark"
	"pifarm/builtins/trace"
)

// hostKeyFile is the name of a public SSH host key file in /etc/ssh.
var hostKeyFile = regexp.MustCompile(`^ssh_host_[a-z0-9]+_key\.pub$`)

// HostKeys reads the public SSH host keys an image's root file system
// holds (/etc/ssh/ssh_host_*_key.pub), with debugfs (no mount, no root),
// one key a line; "" when it holds none (a fresh RaspiOS makes them at its
// first boot). A qcow2 clone cannot be read this way: ok is false.
func (m *mod) HostKeys(path string) (keys string, ok bool, err error) {
	d, err := m.open(path)
	if err != nil {
		return "", false, err
	}
	defer d.Close()
	if d.Qcow2 {
		return "", false, nil
	}
	spec := fmt.Sprintf("%s?offset=%d", d.Real, d.Layout.Root().Offset())
	debugfs := func(req string) (string, error) {
		res, err := m.d.Query(trace.Cmd{Argv: []string{"debugfs", "-R", req, spec}})
		if err != nil {
			return "", fmt.Errorf("read %s of %s: %w (debugfs: apt install e2fsprogs)", req, path, err)
		}
		return string(res.Stdout), nil
	}
	list, err := debugfs("ls -p /etc/ssh")
	if err != nil {
		return "", false, err
	}
	var out []string
	for _, l := range strings.Split(list, "\n") {
		// ls -p: /inode/mode/uid/gid/name/size/
		f := strings.Split(l, "/")
		if len(f) < 7 || !hostKeyFile.MatchString(f[5]) || !strings.HasPrefix(f[2], "100") {
			continue
		}
		text, err := debugfs("cat /etc/ssh/" + f[5])
		if err != nil {
			return "", false, err
		}
		if t := strings.TrimSpace(text); t != "" {
			out = append(out, t)
		}
	}
	if len(out) == 0 {
		return "", true, nil
	}
	return strings.Join(out, "\n") + "\n", true, nil
}

func (m *mod) hostKeysFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	p, err := m.imageArg(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	keys, ok, err := m.HostKeys(p)
	if err != nil {
		return nil, err
	}
	if !ok {
		return starlark.None, nil
	}
	return starlark.String(keys), nil
}
