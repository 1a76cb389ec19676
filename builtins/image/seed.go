package image

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"pifarm/builtins/trace"
)

// SeedOptions say what Seed writes into the boot partition.
type SeedOptions struct {
	SSH      bool   // an empty "ssh" file: RaspiOS enables sshd on first boot
	User     string // userconf.txt "user:hash" (Bullseye 2022-04 and later)
	Password string // plain password, hashed with SHA512Crypt
	Hash     string // or a ready crypt hash ("$6$...")
	Salt     string // fixed salt (tests); random when empty
	// Keys are public keys (authorized_keys lines) for User; only images
	// with cloud-init (RaspiOS Trixie and later: a user-data file on the
	// boot partition) can take them offline.
	Keys []string
	// Files are further files to write (name -> content).
	Files map[string]string
}

// cloudUserData is a cloud-init user-data document (RaspiOS Trixie reads
// it from the boot partition on first boot) that creates user with the
// crypt hash, authorises keys, allows password logins over SSH and turns
// sshd on. Strings are JSON-quoted, which YAML reads as they are.
func cloudUserData(user, hash string, keys []string) string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	var b strings.Builder
	b.WriteString("#cloud-config\n# written by pifarm (image.seed)\n")
	b.WriteString("users:\n")
	fmt.Fprintf(&b, "  - name: %s\n", q(user))
	b.WriteString("    groups: users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo\n")
	b.WriteString("    shell: /bin/bash\n    lock_passwd: false\n")
	fmt.Fprintf(&b, "    passwd: %s\n", q(hash))
	b.WriteString("    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n")
	if len(keys) > 0 {
		b.WriteString("    ssh_authorized_keys:\n")
		for _, k := range keys {
			fmt.Fprintf(&b, "      - %s\n", q(k))
		}
	}
	b.WriteString("ssh_pwauth: true\nruncmd:\n  - [systemctl, enable, --now, ssh]\n")
	return b.String()
}

// SeedResult names what was written and what became of the linked clones
// of the image.
type SeedResult struct {
	Written []string
	// ClonesKept are the valid linked clones of the image whose guests
	// had not written partition 1: they read the seeded boot partition
	// whole from their base and stay valid (their base record follows).
	ClonesKept []int
	// ClonesInvalid are the valid linked clones whose qcow2 already holds
	// clusters of partition 1 (their guests wrote their boot partition):
	// seeding the base would mix its new FAT with theirs, so they are
	// invalid now, as after any change of their base.
	ClonesInvalid []int
}

// Seed writes files into partition 1 of a raw image (instance 0's disk or
// a path) so that a fresh RaspiOS boots with SSH on and a user account.
// It refuses while an instance runs or a partition is mounted. The boot
// files' signatures stay valid (they cover kernel8.img and the dtb only),
// and so do the linked clones whose guests have not written partition 1
// (see SeedResult).
func (m *mod) Seed(path string, o SeedOptions) (*SeedResult, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	type file struct{ name, content string }
	var files []file
	hash := ""
	if o.SSH {
		files = append(files, file{"ssh", ""})
	}
	if o.User != "" {
		if strings.ContainsAny(o.User, ":\n ") {
			return nil, trace.Usagef("seed: user name %q holds ':', a blank or a newline", o.User)
		}
		h := o.Hash
		if h == "" {
			if o.Password == "" {
				return nil, trace.Usagef("seed: user %s needs a password (or a crypt hash)", o.User)
			}
			m.d.Secret(o.Password)
			salt := o.Salt
			if salt == "" {
				salt = NewSalt()
			}
			if h, err = SHA512Crypt(o.Password, salt, 0); err != nil {
				return nil, err
			}
		}
		m.d.Secret(h)
		hash = h
		files = append(files, file{"userconf.txt", o.User + ":" + h + "\n"})
	} else if o.Password != "" || o.Hash != "" {
		return nil, trace.Usagef("seed: a password needs a user name")
	}
	names := make([]string, 0, len(o.Files))
	for name := range o.Files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		files = append(files, file{name, o.Files[name]})
	}
	for _, k := range o.Keys {
		if fl := strings.Fields(k); len(fl) < 2 || strings.ContainsAny(k, "\n\r") || !strings.Contains(fl[0], "ssh-") && !strings.Contains(fl[0], "ecdsa-") {
			return nil, trace.Usagef("seed: %.40q is not a public key line (type base64 [comment])", k)
		}
	}
	if len(o.Keys) > 0 && o.User == "" {
		return nil, trace.Usagef("seed: keys need a user name")
	}
	if len(files) == 0 {
		return nil, trace.Usagef("seed: nothing to write (want ssh, user/password or files)")
	}
	d, err := m.open(real)
	if err != nil {
		return nil, err
	}
	isQ, boot := d.Qcow2, d.Layout.Boot()
	cloudInit := false
	if bfs, err := d.Boot(); err == nil {
		_, err := bfs.Stat("user-data")
		cloudInit = err == nil
	}
	d.Close()
	if isQ {
		return nil, fmt.Errorf("%s: seeding writes a raw image; seed instance 0 before cloning", path)
	}
	switch {
	case cloudInit && o.User != "":
		files = append(files, file{"user-data", cloudUserData(o.User, hash, o.Keys)})
	case len(o.Keys) > 0:
		return nil, fmt.Errorf("%s: no cloud-init user-data on the boot partition (RaspiOS before Trixie): keys cannot be seeded offline; boot with the seeded password and install them over SSH (pifarm run guest --ssh-authkeys)", path)
	}
	release, err := m.guard("seed", real, -1)
	if err != nil {
		return nil, err
	}
	defer release()
	res := &SeedResult{}
	if err := m.sortLinkedClones(real, boot, res); err != nil {
		return nil, err
	}
	for _, fl := range files {
		var line string
		src := mcopyLine(real, boot.Offset(), "-", "::"+fl.name)
		switch {
		case fl.content == "":
			line = ": | " + src
		case isPrintable(fl.content) && strings.Count(fl.content, "\n") == 1 && strings.HasSuffix(fl.content, "\n"):
			line = `printf '%s\n' ` + trace.Quote(strings.TrimSuffix(fl.content, "\n")) + " | " + src
		case isPrintable(fl.content):
			line = "printf %s " + trace.Quote(fl.content) + " | " + src
		default:
			line = fmt.Sprintf("# write %d bytes to %s in partition 1 of %s", len(fl.content), fl.name, real)
		}
		fl := fl
		err := m.d.Do(line, func() error {
			f, err := os.OpenFile(real, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			fs, err := OpenFAT32(f, f, boot.Offset(), boot.Bytes())
			if err != nil {
				return fmt.Errorf("%s partition 1: %w", real, err)
			}
			if err := fs.WriteFile(fl.name, []byte(fl.content)); err != nil {
				return fmt.Errorf("%s partition 1: %w", real, err)
			}
			return f.Sync()
		})
		if err != nil {
			return nil, err
		}
		res.Written = append(res.Written, fl.name)
	}
	// The boot files' signatures (the image's and its clones') cover
	// kernel8.img and the dtb only: seeding leaves them valid, and a
	// seeded boot file would show as "outdated" at the next check.
	for _, cid := range res.ClonesKept {
		rec := m.baseFile(cid)
		line := fmt.Sprintf("# linked clone %d has written nothing in partition 1: it reads the seeded files from its base; record the base's new identity in %s", cid, rec)
		err := m.d.Do(line, func() error {
			id0, err := statID(real)
			if err != nil {
				return err
			}
			return trace.WriteAtomic(rec, []byte(baseRecord(cid, id0)), 0o644, false)
		})
		if err != nil {
			return nil, err
		}
	}
	return res, nil
}

// sortLinkedClones puts the valid linked clones of the raw image real into
// res.ClonesKept when their qcow2 holds no cluster of the boot partition
// boot, else into res.ClonesInvalid.
func (m *mod) sortLinkedClones(real string, boot Part, res *SeedResult) error {
	ids, err := m.LinkedClones(real)
	if err != nil {
		return err
	}
	for _, cid := range ids {
		if st, err := m.CheckClone(cid); err != nil || !st.OK {
			continue // invalid already: it stays so
		}
		q, err := OpenQcow2(m.f.Disk(cid))
		if err != nil {
			return err
		}
		holds, err := q.HoldsData(boot.Offset(), boot.Bytes())
		q.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", m.f.Disk(cid), err)
		}
		if holds {
			res.ClonesInvalid = append(res.ClonesInvalid, cid)
		} else {
			res.ClonesKept = append(res.ClonesKept, cid)
		}
	}
	return nil
}

func isPrintable(s string) bool {
	for _, c := range s {
		if c < 32 && c != '\n' && c != '\t' {
			return false
		}
	}
	return true
}
