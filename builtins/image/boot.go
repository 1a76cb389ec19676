package image

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// BootFiles are the files QEMU boots from, read from partition 1, in the
// order the boot signature covers them.
var BootFiles = []struct{ Name, Ext string }{
	{"kernel8.img", "ker"},
	{"bcm2710-rpi-3-b-plus.dtb", "dtb"},
}

// sigComment is the comment line of a .sig record.
const sigComment = `# sha256 over, for each boot-file below in order, "NAME\nLENGTH\n" and the file's content, read from partition 1: what QEMU boots from (other files there, the FAT's dirty flags and free-space hints do not count)`

// sigRecord is the content of an instance's .sig file: the boot files'
// signature (see Disk.BootSignature), their names and sizes, and the
// identities of the files the disk's content came from (the cheap
// unchanged-check).
type sigRecord struct {
	Sum   string // "sha256:HEX"
	Names []string
	Sizes []int64
	Files []fileID
}

func (s sigRecord) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n%s\n", s.Sum, sigComment)
	for i, n := range s.Names {
		fmt.Fprintf(&b, "boot-file %s %d\n", n, s.Sizes[i])
	}
	for _, f := range s.Files {
		fmt.Fprintf(&b, "file %s\n", f)
	}
	return b.String()
}

var (
	sha256RE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	md5RE    = regexp.MustCompile(`^[0-9a-fA-F]{32}\b`)
)

// older says what an outdated record holds ("" when it is of the current
// kind): the signatures of earlier versions hashed the boot partition's
// bytes (sha256, or md5 in pibox), which change when anything in the
// partition is written.
func (s sigRecord) older() string {
	current := sha256RE.MatchString(s.Sum) && len(s.Names) == len(BootFiles)
	for i := 0; current && i < len(BootFiles); i++ {
		current = s.Names[i] == BootFiles[i].Name
	}
	switch {
	case current:
		return ""
	case len(s.Names) > 0:
		return "the signature of other boot files (" + strings.Join(s.Names, ", ") + ")"
	case strings.HasPrefix(s.Sum, "sha256:"):
		return "a signature of the boot partition's bytes (an earlier pifarm)"
	case md5RE.MatchString(s.Sum):
		return "an md5 of the boot partition (pibox)"
	}
	return "no signature pifarm knows"
}

// readSig reads a .sig record. Records of older kinds read without error
// (see older); only a file that cannot be opened is an error.
func readSig(path string) (sigRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return sigRecord{}, err
	}
	var s sigRecord
	for i, line := range strings.Split(string(b), "\n") {
		switch {
		case i == 0:
			s.Sum = strings.TrimSpace(line)
		case strings.HasPrefix(line, "boot-file "):
			fl := strings.Fields(line[len("boot-file "):])
			if len(fl) != 2 {
				return sigRecord{Sum: s.Sum}, nil // not a record this pifarm wrote: outdated
			}
			n, err := strconv.ParseInt(fl[1], 10, 64)
			if err != nil {
				return sigRecord{Sum: s.Sum}, nil
			}
			s.Names, s.Sizes = append(s.Names, fl[0]), append(s.Sizes, n)
		case strings.HasPrefix(line, "file "):
			s.Files = append(s.Files, parseFileID(line[5:]))
		}
	}
	return s, nil
}

// Qboot is the result of ProvideQboot.
type Qboot struct {
	Kernel, DTB, Sig string
	Sum              string // the boot files' signature
	Sizes            []int
}

// mcopyLine is the mtools equivalent of reading or writing a file of the
// FAT partition at off of a raw image.
func mcopyLine(img string, off int64, args ...string) string {
	return "mcopy -n -o -i " + trace.Quote(fmt.Sprintf("%s@@%d", img, off)) + " " + trace.Join(args)
}

// sumLine says how to compute the boot files' signature of disk d with
// shell tools (raw) or in words (qcow2).
func sumLine(d *Disk, sizes []int64) string {
	if d.Qcow2 {
		var names []string
		for _, bf := range BootFiles {
			names = append(names, bf.Name)
		}
		return fmt.Sprintf(`sha256 over "NAME\nLENGTH\n" and the content of %s, read from partition 1 of the guest view of %s`, strings.Join(names, ", then "), trace.Quote(d.Path))
	}
	img := trace.Quote(fmt.Sprintf("%s@@%d", d.Real, d.Layout.Boot().Offset()))
	var b strings.Builder
	b.WriteString("{ ")
	for i, bf := range BootFiles {
		fmt.Fprintf(&b, `printf '%s\n%d\n'; mcopy -n -i %s ::%s -; `, bf.Name, sizes[i], img, bf.Name)
	}
	b.WriteString("} | sha256sum")
	return b.String()
}

// ProvideQboot copies kernel8.img and the dtb out of partition 1 of
// instance id's disk next to it (.ker, .dtb; old ones kept as NAME~) and
// records the boot files' signature (.sig), computed from the bytes
// copied.
//
// path, when not empty, names the disk to read instead of the instance's
// (a dry run that registers an image reads it from where it is).
func (m *mod) ProvideQboot(id int, path string) (*Qboot, error) {
	var err error
	if path == "" {
		if path, err = m.diskPath(id); err != nil {
			return nil, err
		}
	}
	// The instance locks: no QEMU starts on the disk meanwhile, and no other
	// pifarm writes the boot files' fixed temporary names.
	release, err := m.lockStopped(fmt.Sprintf("provide boot files of instance %d", id), id, func(pid int) error {
		return fmt.Errorf("provide boot files of instance %d: it is running (pid %d) and may be writing its boot partition; shut it down first (pifarm run guest --shutdown %d)", id, pid, id)
	})
	if err != nil {
		return nil, err
	}
	defer release()
	if err := m.removeLeftovers(id); err != nil {
		return nil, err
	}
	d, err := m.open(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	fs, err := d.Boot()
	if err != nil {
		return nil, err
	}
	q := &Qboot{Kernel: m.f.Kernel(id), DTB: m.f.DTB(id), Sig: m.f.Sig(id)}
	var data [][]byte
	var sizes []int64
	for _, bf := range BootFiles {
		b, err := fs.ReadFile(bf.Name)
		if err != nil {
			return nil, fmt.Errorf("%s partition 1: %w (not a RaspiOS boot partition for a Pi 3 B+?)", path, err)
		}
		data = append(data, b)
		q.Sizes = append(q.Sizes, len(b))
		sizes = append(sizes, int64(len(b)))
	}
	ids, err := d.chainIDs()
	if err != nil {
		return nil, err
	}
	q.Sum = bootSum(data)
	for i, dst := range []string{q.Kernel, q.DTB} {
		b, name := data[i], BootFiles[i].Name
		var line string
		if d.Qcow2 {
			line = fmt.Sprintf("# copy %s (%d bytes) from partition 1 of %s to %s", name, len(b), path, dst)
		} else {
			line = mcopyLine(d.Real, d.Layout.Boot().Offset(), "::"+name, dst)
		}
		if m.sameInCache(dst, b) {
			// the same bytes already (a promoted clone's kernel, a second
			// call): nothing to write, and no backup of them
			m.d.Note("%s holds %s of partition 1 of %s already (%d bytes)", dst, name, path, len(b))
			continue
		}
		if _, err := os.Lstat(dst); err == nil {
			line = "cp -p " + trace.Quote(dst) + " " + trace.Quote(dst+"~") + "\n" + line
		}
		if err := m.d.Do(line, func() error { return m.writeCache(dst, b, 0o644, true) }); err != nil {
			return nil, err
		}
	}
	rec := newSigRecord(q.Sum, sizes, ids)
	dst := m.f.Sig(id)
	line := fmt.Sprintf("# record the boot files' signature %s (as %s) in %s", q.Sum, sumLine(d, sizes), dst)
	if err := m.d.Do(line, func() error { return m.writeCache(dst, []byte(rec.String()), 0o644, true) }); err != nil {
		return nil, err
	}
	return q, nil
}

func newSigRecord(sum string, sizes []int64, ids []fileID) sigRecord {
	rec := sigRecord{Sum: sum, Sizes: sizes, Files: ids}
	for _, bf := range BootFiles {
		rec.Names = append(rec.Names, bf.Name)
	}
	return rec
}

// racyWindow is how close to the writing of a .sig record a recorded mtime
// may be before the record no longer proves "unchanged": file system
// timestamps come from a clock that ticks every few milliseconds, so a
// write just after the record may keep the same mtime (git's "racily
// clean" entries). Such records are re-checked, and refreshed when equal.
const racyWindow = 100 * time.Millisecond

// BootState says whether an instance's boot files match its disk.
type BootState struct {
	State   string // "ok", "missing", "outdated"
	Message string
	Hashed  bool // the boot files were read and hashed (the cheap check failed)
}

// CheckBoot compares the recorded signature of the boot files with the
// disk. When the disk and its backing files have the recorded size, mtime,
// inode and device, nothing is read; otherwise kernel8.img and the dtb are
// read from partition 1 and hashed again. Only their content counts: a
// FAT left dirty by a killed guest, files RaspiOS deletes or writes in
// /boot, or seeded files keep the state "ok". A record of an older kind
// (a hash of the partition's bytes) is "outdated"; a boot file missing
// from partition 1 is an error.
func (m *mod) CheckBoot(id int) (BootState, error) {
	path, err := m.diskPath(id)
	if err != nil {
		return BootState{}, err
	}
	var missing []string
	for _, p := range []string{m.f.Kernel(id), m.f.DTB(id), m.f.Sig(id)} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, filepath.Base(p))
		}
	}
	if len(missing) > 0 {
		return BootState{State: "missing", Message: fmt.Sprintf("instance %d: boot files missing (%s); run: pifarm run image --provide-qboot %d", id, strings.Join(missing, ", "), id)}, nil
	}
	rec, err := readSig(m.f.Sig(id))
	if err != nil {
		return BootState{}, err
	}
	if old := rec.older(); old != "" {
		return BootState{State: "outdated", Message: fmt.Sprintf("instance %d: %s holds %s, not the signature of the boot files; run: pifarm run image --provide-qboot %d", id, m.f.Sig(id), old, id)}, nil
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return BootState{}, err
	}
	if len(rec.Files) > 0 && rec.Files[0].Path == real {
		same := true
		sigFi, err := os.Stat(m.f.Sig(id))
		if err != nil {
			return BootState{}, err
		}
		for _, want := range rec.Files {
			got, err := statID(want.Path)
			// A file modified within racyWindow before the record was
			// written may change again without a new mtime (coarse
			// file system clocks): such a record proves nothing.
			if err != nil || got != want || want.MTime > sigFi.ModTime().UnixNano()-racyWindow.Nanoseconds() {
				same = false
				break
			}
		}
		if same {
			return BootState{State: "ok", Message: fmt.Sprintf("instance %d: boot files match %s", id, path)}, nil
		}
	}
	d, err := m.open(path)
	if err != nil {
		return BootState{}, err
	}
	defer d.Close()
	ids, err := d.chainIDs()
	if err != nil {
		return BootState{}, err
	}
	sum, sizes, err := d.BootSignature()
	if err != nil {
		return BootState{}, fmt.Errorf("boot files of instance %d: %w", id, err)
	}
	if sum != rec.Sum {
		var changed []string
		for i, bf := range BootFiles {
			if sizes[i] != rec.Sizes[i] {
				changed = append(changed, fmt.Sprintf("%s %d -> %d bytes", bf.Name, rec.Sizes[i], sizes[i]))
			}
		}
		detail := ""
		if len(changed) > 0 {
			detail = " (" + strings.Join(changed, ", ") + ")"
		}
		return BootState{State: "outdated", Hashed: true, Message: fmt.Sprintf("instance %d: %s or %s in partition 1 of %s changed since its boot files were copied%s (an OS upgrade?); run: pifarm run image --provide-qboot %d", id, BootFiles[0].Name, BootFiles[1].Name, path, detail, id)}, nil
	}
	if err := m.refreshSig(id, newSigRecord(sum, sizes, ids)); err != nil {
		return BootState{}, err
	}
	return BootState{State: "ok", Hashed: true, Message: fmt.Sprintf("instance %d: boot files match %s", id, path)}, nil
}

// refreshSig rewrites instance id's .sig record after a re-hash found the
// same boot files under a new identity (the cheap check holds again). It
// is an optimisation: a dry run, or another pifarm (or this one, in a
// clone) holding the instance's lock, skips it.
func (m *mod) refreshSig(id int, rec sigRecord) error {
	if m.d.DryRun {
		return nil
	}
	l, err := farm.TryLock(m.f.Lock(id))
	if err != nil || l == nil {
		return nil
	}
	defer l.Close()
	if err := m.removeLeftovers(id); err != nil {
		return err
	}
	dst := m.f.Sig(id)
	return m.d.Do("# refresh the unchanged-check record of "+dst, func() error { return m.writeCache(dst, []byte(rec.String()), 0o644, false) })
}
