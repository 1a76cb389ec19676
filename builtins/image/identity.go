package image

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"sort"
	"strings"

	"go.starlark.net/starlark"
	xssh "golang.org/x/crypto/ssh"
	"pifarm/builtins/disk/ext4"
	"pifarm/builtins/trace"
)

// Identity is what tells one guest from another, read from the root file
// system of its disk: two nodes sharing any of it look like one machine
// on the network (DHCP, mDNS, SSH's known_hosts).
type Identity struct {
	Hostname string
	// MachineID is /etc/machine-id; "" when empty or missing (systemd
	// makes one at the first boot).
	MachineID string
	// Keys are the public host keys (/etc/ssh/ssh_host_*_key.pub), ed25519
	// first, then by type; Fingerprints their SHA256 fingerprints.
	Keys, Fingerprints []string
	// Arch is the guest's architecture as uname -m names it, from the ELF
	// header of its /bin/sh ("" when unknown).
	Arch string
}

// elfMachines maps an ELF header's e_machine to uname -m.
var elfMachines = map[uint16]string{183: "aarch64", 40: "armv7l", 62: "x86_64", 3: "i686", 243: "riscv64"}

// ReadIdentity reads the identity of the guest whose disk is d, without
// mounting it (the ext4 reader; raw and qcow2 alike). What a guest left in
// its file system's journal is not seen.
func ReadIdentity(d *Disk) (*Identity, error) {
	f, err := ext4.Open(d.ReaderAt(), d.Layout.Root().Offset())
	if err != nil {
		return nil, err
	}
	id := &Identity{}
	read := func(name string, max int64) (string, error) {
		b, err := f.ReadFile(name, max)
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		return string(b), err
	}
	if id.Hostname, err = read("/etc/hostname", 256); err != nil {
		return nil, err
	}
	id.Hostname = strings.TrimSpace(id.Hostname)
	if id.MachineID, err = read("/etc/machine-id", 256); err != nil {
		return nil, err
	}
	id.MachineID = strings.TrimSpace(id.MachineID)
	if head, err := read("/bin/sh", 64); err == nil && len(head) >= 20 && strings.HasPrefix(head, "\x7fELF") {
		order := binary.ByteOrder(binary.LittleEndian)
		if head[5] == 2 {
			order = binary.BigEndian
		}
		id.Arch = elfMachines[order.Uint16([]byte(head[18:20]))]
	}
	ents, err := f.ReadDir("/etc/ssh")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	type key struct{ typ, line, fp string }
	var keys []key
	for _, e := range ents {
		if !hostKeyFile.MatchString(e.Name) {
			continue
		}
		text, err := read("/etc/ssh/"+e.Name, 64<<10)
		if err != nil {
			return nil, err
		}
		pk, _, _, _, err := xssh.ParseAuthorizedKey([]byte(text))
		if err != nil {
			continue // not a key: the guest's sshd ignores it too
		}
		keys = append(keys, key{strings.TrimSuffix(strings.TrimPrefix(e.Name, "ssh_host_"), "_key.pub"), strings.TrimSpace(text), xssh.FingerprintSHA256(pk)})
	}
	sort.Slice(keys, func(i, j int) bool {
		if (keys[i].typ == "ed25519") != (keys[j].typ == "ed25519") {
			return keys[i].typ == "ed25519"
		}
		return keys[i].typ < keys[j].typ
	})
	for _, k := range keys {
		id.Keys = append(id.Keys, k.line)
		id.Fingerprints = append(id.Fingerprints, k.fp)
	}
	return id, nil
}

// Same says what a and b share: "hostname", "machine-id", "host key"
// (empty ones never count), or "" when nothing.
func (a *Identity) Same(b *Identity) string {
	var same []string
	if a.Hostname != "" && a.Hostname == b.Hostname {
		same = append(same, "hostname "+a.Hostname)
	}
	if a.MachineID != "" && a.MachineID == b.MachineID {
		same = append(same, "machine-id "+a.MachineID)
	}
	for _, fa := range a.Fingerprints {
		for _, fb := range b.Fingerprints {
			if fa == fb {
				same = append(same, "host key "+fa)
			}
		}
	}
	return strings.Join(same, ", ")
}

func (m *mod) identityFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	p, err := m.imageArg(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	st := starlark.StringDict{"hostname": starlark.String(""), "machine_id": starlark.String(""), "keys": starlark.String(""),
		"fingerprints": starlark.NewList(nil), "arch": starlark.String(""), "error": starlark.None}
	d, err := m.open(p)
	var id *Identity
	if err == nil {
		id, err = ReadIdentity(d)
		d.Close()
	}
	if err != nil {
		st["error"] = starlark.String(err.Error())
		return mkstruct("identity", st), nil
	}
	keys := ""
	if len(id.Keys) > 0 {
		keys = strings.Join(id.Keys, "\n") + "\n"
	}
	st["hostname"], st["machine_id"], st["keys"] = starlark.String(id.Hostname), starlark.String(id.MachineID), starlark.String(keys)
	st["fingerprints"], st["arch"] = trace.Strings(id.Fingerprints), starlark.String(id.Arch)
	return mkstruct("identity", st), nil
}
