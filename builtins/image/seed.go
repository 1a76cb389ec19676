package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"pifarm/builtins/disk/fat"
	"pifarm/builtins/disk/mbr"
	"pifarm/builtins/disk/qcow2"
	"pifarm/builtins/image/shacrypt"
	"pifarm/builtins/trace"
)

// SeedOptions say what Seed writes into the boot partition.
type SeedOptions struct {
	SSH      bool   // an empty "ssh" file: RaspiOS enables sshd on first boot
	User     string // userconf.txt "user:hash" (Bullseye 2022-04 and later)
	Password string // plain password, hashed with shacrypt.SHA512
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
	// ClonesRepaired are the linked clones whose record an interrupted
	// seed had prepared and this one completed (see seeding).
	ClonesRepaired []int
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
				salt = shacrypt.NewSalt()
			}
			if h, err = shacrypt.SHA512(o.Password, salt, 0); err != nil {
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
	ids, err := m.instanceIDs()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		if err := m.removeLeftovers(id); err != nil {
			return nil, err
		}
	}
	if res.ClonesRepaired, err = m.finishPendingRecords(ids); err != nil {
		return nil, err
	}
	if err := m.sortLinkedClones(real, boot, res); err != nil {
		return nil, err
	}
	s := &seeding{m: m, path: path, real: real, kept: res.ClonesKept}
	if err := s.prepare(); err != nil {
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
		if err := s.write(line, fl.name, func(f *os.File) error {
			fs, err := fat.Open(f, f, boot.Offset(), boot.Bytes())
			if err != nil {
				return fmt.Errorf("%s partition 1: %w", real, err)
			}
			s.touched = true
			if err := fs.WriteFile(fl.name, []byte(fl.content)); err != nil {
				return fmt.Errorf("%s partition 1: %w", real, err)
			}
			return nil
		}); err != nil {
			return nil, s.finish(err)
		}
		res.Written = append(res.Written, fl.name)
	}
	// The boot files' signatures (the image's and its clones') cover
	// kernel8.img and the dtb only: seeding leaves them valid, and a
	// seeded boot file would show as "outdated" at the next check.
	if err := s.finish(nil); err != nil {
		return nil, err
	}
	return res, nil
}

// seeding keeps the linked clones that a seed keeps valid (see
// SeedResult) valid whatever happens to the seed. A kept clone stays valid
// only while its record (clone-N.base) names the base's identity, which
// the seed changes. So the seed fixes that identity before it writes:
// the image's modification time becomes a value picked first (when), set
// again after each file written. In this order:
//
//  1. prepare: each kept clone's new record is written under its fixed
//     temporary name, .clone-N.base.tmp, and synced. A full cache (ENOSPC)
//     fails here, before the image is touched: every clone stays valid.
//  2. write: the files go into partition 1; after each, the image's
//     modification time is set to when, then the image is synced.
//  3. commit: each prepared record is renamed over clone-N.base.
//
// A seed that fails after it touched the image still commits (the kept
// clones read the base's partition 1, whatever it holds now, as before). A
// seed killed, or whose commit failed, leaves prepared records; the next
// seed completes each one whose base has exactly the identity it names
// (so the image was written and nothing changed it since) and whose clone
// still holds nothing of partition 1, and removes the others
// (finishPendingRecords). A kill between a file's write and the setting of
// its modification time (microseconds, no I/O between) cannot be told from
// any other change of the base: the clone is invalid then.
type seeding struct {
	m          *mod
	path, real string
	kept       []int
	when       time.Time // the image's modification time after the seed
	id         fileID    // the image's identity after the seed
	staged     []int     // clones whose record is prepared
	touched    bool      // the image may have changed
	checked    bool      // the file system kept when as set
}

// mtimeStep is the granularity of a picked modification time: every file
// system Linux writes (FAT's is 2 s) keeps such a time exactly.
const mtimeStep = 2 * time.Second

func (s *seeding) prepare() error {
	if len(s.kept) == 0 {
		return nil
	}
	id, err := statID(s.real)
	if err != nil {
		return err
	}
	s.when = time.Now().Truncate(mtimeStep)
	if old := time.Unix(0, id.MTime); !s.when.After(old) {
		s.when = old.Truncate(mtimeStep).Add(mtimeStep)
	}
	id.MTime = s.when.UnixNano()
	s.id = id
	return s.stage()
}

// stage writes the kept clones' records naming s.id under their temporary
// names.
func (s *seeding) stage() error {
	s.staged = s.staged[:0]
	for _, cid := range s.kept {
		rec := s.m.baseFile(cid)
		tmp := tmpName(rec)
		line := fmt.Sprintf("# prepare the record of linked clone %d in %s (renamed over %s once the image is written): base %s", cid, tmp, rec, s.id)
		err := s.m.d.Do(line, func() error {
			if err := s.m.hook(fmt.Sprintf("prepare %d", cid)); err != nil {
				return err
			}
			return s.m.withCache(func(c *cacheFS) error { return c.stage(tmp, []byte(baseRecord(cid, s.id)), 0o644) })
		})
		if err != nil {
			s.drop()
			return fmt.Errorf("seed %s: prepare the record of linked clone %d (%s): %w; nothing was written (free space in the cache %s and seed again)", s.path, cid, rec, err, s.m.f.Config.CacheDir())
		}
		s.staged = append(s.staged, cid)
	}
	return nil
}

// drop removes the prepared records.
func (s *seeding) drop() {
	if s.m.d.DryRun {
		return
	}
	for _, cid := range s.staged {
		tmp := tmpName(s.m.baseFile(cid))
		s.m.withCache(func(c *cacheFS) error { return c.remove(tmp) })
	}
	s.staged = nil
}

// write passes one change of the image (fn, on the image opened for
// writing) through the door; with kept clones it sets the image's
// modification time to s.when after it, then syncs the image.
func (s *seeding) write(line, name string, fn func(f *os.File) error) error {
	if len(s.kept) > 0 {
		line += "\ntouch -m -d @" + fmt.Sprint(s.when.Unix()) + " " + trace.Quote(s.real)
	}
	return s.m.d.Do(line, func() error {
		if err := s.m.hook("write " + name); err != nil {
			return err
		}
		f, err := os.OpenFile(s.real, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		err = fn(f)
		if !s.touched {
			return err
		}
		if len(s.kept) > 0 {
			err = joinErr(err, os.Chtimes(s.real, time.Time{}, s.when))
		}
		return joinErr(err, f.Sync())
	})
}

// joinErr is a, b, or both in one line (errors.Is sees both).
func joinErr(a, b error) error {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return fmt.Errorf("%w; %w", a, b)
}

// finish commits the prepared records when the image was written (or may
// have been: err is the failure of a write), else drops them, and returns
// err with what became of the records.
func (s *seeding) finish(err error) error {
	if !s.touched && err != nil {
		s.drop()
		return err
	}
	if len(s.kept) > 0 && s.touched {
		if cerr := s.checkMTime(); cerr != nil {
			return joinErr(err, cerr)
		}
	}
	for _, cid := range s.staged {
		rec := s.m.baseFile(cid)
		line := fmt.Sprintf("# linked clone %d has written nothing in partition 1: it reads the seeded files from its base; record the base's new identity in %s", cid, rec)
		cerr := s.m.d.Do(line, func() error {
			if err := s.m.hook(fmt.Sprintf("commit %d", cid)); err != nil {
				return err
			}
			return s.m.withCache(func(c *cacheFS) error { return c.rename(tmpName(rec), rec, false) })
		})
		if cerr != nil {
			return joinErr(err, fmt.Errorf("seed %s: record the base's new identity for linked clone %d in %s: %w; seed again to complete it (the prepared record stays in %s)", s.path, cid, rec, cerr, tmpName(rec)))
		}
	}
	return err
}

// checkMTime makes sure the image's identity is the one the prepared
// records name; where the file system rounded the time set (a coarse
// clock), the records are prepared again with the time it kept.
func (s *seeding) checkMTime() error {
	if s.checked || s.m.d.DryRun {
		return nil
	}
	s.checked = true
	got, err := statID(s.real)
	if err != nil {
		return err
	}
	if got == s.id {
		return nil
	}
	if got.Size != s.id.Size || got.Ino != s.id.Ino || got.Dev != s.id.Dev {
		return fmt.Errorf("seed %s: the image changed under the seed (%s, expected %s)", s.path, got, s.id)
	}
	s.id, s.when = got, time.Unix(0, got.MTime)
	return s.stage()
}

// sortLinkedClones puts the valid linked clones of the raw image real into
// res.ClonesKept when their qcow2 holds no cluster of the boot partition
// boot, else into res.ClonesInvalid.
func (m *mod) sortLinkedClones(real string, boot mbr.Part, res *SeedResult) error {
	ids, err := m.LinkedClones(real)
	if err != nil {
		return err
	}
	for _, cid := range ids {
		if st, err := m.CheckClone(cid); (err != nil || !st.OK) && !(m.d.DryRun && slices.Contains(res.ClonesRepaired, cid)) {
			continue // invalid already: it stays so
		}
		q, err := qcow2.Open(m.f.Disk(cid))
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

// instanceIDs lists the instances that have a folder in the cache.
func (m *mod) instanceIDs() ([]int, error) {
	ents, err := os.ReadDir(filepath.Join(m.f.Config.CacheDir(), "clones"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var ids []int
	for _, e := range ents {
		if sm := instanceDirRE.FindStringSubmatch(e.Name()); sm != nil && e.IsDir() {
			id, _ := strconv.Atoi(sm[1])
			ids = append(ids, id)
		}
	}
	sort.Ints(ids)
	return ids, nil
}

// finishPendingRecords completes the records of linked clones that an
// interrupted seed prepared (see seeding) when they still hold, and
// removes the others. It returns the clones whose record it completed (in
// a dry run: would complete). The caller holds the instance locks.
func (m *mod) finishPendingRecords(ids []int) ([]int, error) {
	var done []int
	for _, id := range ids {
		rec := m.baseFile(id)
		tmp := tmpName(rec)
		if _, err := os.Lstat(tmp); err != nil {
			continue
		}
		if why := m.pendingRecordStale(id, tmp); why != "" {
			m.d.Note("an interrupted seed prepared the record of linked clone %d in %s, which no longer holds (%s): drop it", id, tmp, why)
			if err := m.cache().Remove(tmp); err != nil {
				return nil, err
			}
			continue
		}
		m.d.Note("an interrupted seed prepared the record of linked clone %d in %s; its base is as the record says and the clone holds nothing of partition 1: complete it", id, tmp)
		if err := m.cache().Rename(tmp, rec); err != nil {
			return nil, err
		}
		done = append(done, id)
	}
	return done, nil
}

// pendingRecordStale says why the record prepared in tmp for linked clone
// id no longer holds, or "" when it does: the base it names has exactly
// the identity it names, the clone is backed by that base and holds no
// data of the base's partition 1.
func (m *mod) pendingRecordStale(id int, tmp string) string {
	f, err := os.OpenFile(tmp, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err.Error()
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	f.Close()
	if err != nil {
		return err.Error()
	}
	var want fileID
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "base "); ok {
			want = parseFileID(rest)
		}
	}
	if want.Path == "" || want.MTime == 0 {
		return "it names no base"
	}
	if got, err := statID(want.Path); err != nil || got != want {
		return "the seed did not write " + want.Path + ", or it changed since"
	}
	q, err := qcow2.Open(m.f.Disk(id))
	if err != nil {
		return err.Error()
	}
	defer q.Close()
	if q.Backing != want.Path {
		return "the clone is not backed by " + want.Path
	}
	d, err := m.open(want.Path)
	if err != nil {
		return err.Error()
	}
	boot := d.Layout.Boot()
	d.Close()
	if holds, err := q.HoldsData(boot.Offset(), boot.Bytes()); err != nil || holds {
		return "the clone's guest wrote partition 1"
	}
	return ""
}
