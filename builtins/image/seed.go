package image

import (
	"fmt"
	"os"
	"path/filepath"
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
	// Files are further files to write (name -> content), e.g. a key file
	// a first-boot script reads.
	Files map[string]string
}

// SeedResult names what was written.
type SeedResult struct {
	Written []string
	Resign  bool // the boot signature was re-recorded
}

// Seed writes files into partition 1 of a raw image (instance 0's disk or
// a path) so that a fresh RaspiOS boots with SSH on and a user account.
// It refuses while an instance runs on the image or a partition is mounted.
func (m *mod) Seed(path string, id int, o SeedOptions) (*SeedResult, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	type file struct{ name, content string }
	var files []file
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
		files = append(files, file{"userconf.txt", o.User + ":" + h + "\n"})
	} else if o.Password != "" || o.Hash != "" {
		return nil, trace.Usagef("seed: a password needs a user name")
	}
	for name, c := range o.Files {
		files = append(files, file{name, c})
	}
	if len(files) == 0 {
		return nil, trace.Usagef("seed: nothing to write (want ssh, user/password or files)")
	}
	d, err := Open(real)
	if err != nil {
		return nil, err
	}
	isQ, boot := d.Qcow2, d.Layout.Boot()
	d.Close()
	if isQ {
		return nil, fmt.Errorf("%s: seeding writes a raw image; seed instance 0 before cloning", path)
	}
	if err := m.refuseBusy("seed", real, -1); err != nil {
		return nil, err
	}
	wasOK := false
	if id >= 0 {
		if st, err := m.CheckBoot(id); err == nil && st.State == "ok" {
			wasOK = true
		}
	}
	res := &SeedResult{}
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
	if wasOK {
		// the kernel and dtb did not change: keep the boot files current
		d, err := Open(real)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		ids, err := d.chainIDs()
		if err != nil {
			return nil, err
		}
		sum, count := "sha256:(new)", d.Layout.Boot().Sectors
		if !m.d.DryRun {
			if sum, count, err = d.Signature(); err != nil {
				return nil, err
			}
		}
		if err := m.writeSig(id, d, sum, count, ids); err != nil {
			return nil, err
		}
		res.Resign = true
	}
	return res, nil
}

func isPrintable(s string) bool {
	for _, c := range s {
		if c < 32 && c != '\n' && c != '\t' {
			return false
		}
	}
	return true
}
