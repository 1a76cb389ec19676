package image

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"pifarm/builtins/trace"
)

// BootFiles are the files QEMU boots from, read from partition 1.
var BootFiles = []struct{ Name, Ext string }{
	{"kernel8.img", "ker"},
	{"bcm2710-rpi-3-b-plus.dtb", "dtb"},
}

// sigRecord is the content of an instance's .sig file: the signature of
// the boot partition and the identities of the files it was computed from.
type sigRecord struct {
	Sum   string // "sha256:HEX"
	Start uint64
	Count uint64
	Files []fileID
}

func (s sigRecord) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", s.Sum)
	fmt.Fprintf(&b, "# sha256 of 512-byte sectors %d..%d: partition 1 up to its last used cluster\n", s.Start, s.Start+s.Count-1)
	for _, f := range s.Files {
		fmt.Fprintf(&b, "file %s\n", f)
	}
	return b.String()
}

func readSig(path string) (sigRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return sigRecord{}, err
	}
	defer f.Close()
	var s sigRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case s.Sum == "":
			s.Sum = strings.TrimSpace(line)
		case strings.HasPrefix(line, "file "):
			id := parseFileID(line[5:])
			s.Files = append(s.Files, id)
		}
	}
	return s, sc.Err()
}

// Qboot is the result of ProvideQboot.
type Qboot struct {
	Kernel, DTB, Sig string
	Sum              string
	Count            uint64 // sectors hashed
	Sizes            []int
}

// mcopyLine is the mtools equivalent of reading or writing a file of the
// FAT partition at off of a raw image.
func mcopyLine(img string, off int64, args ...string) string {
	return "mcopy -n -o -i " + trace.Quote(fmt.Sprintf("%s@@%d", img, off)) + " " + trace.Join(args)
}

// ProvideQboot copies kernel8.img and the dtb out of partition 1 of
// instance id's disk next to it (.ker, .dtb; old ones kept as NAME~) and
// records the boot partition's signature (.sig).
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
	if id >= 0 {
		run, err := m.running()
		if err != nil {
			return nil, err
		}
		for _, r := range run {
			if r.ID == id {
				return nil, fmt.Errorf("provide boot files of instance %d: it is running (pid %d) and may be writing its boot partition; shut it down first (pifarm run guest --shutdown %d)", id, r.Pid, id)
			}
		}
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
	for _, bf := range BootFiles {
		b, err := fs.ReadFile(bf.Name)
		if err != nil {
			return nil, fmt.Errorf("%s partition 1: %w (not a RaspiOS boot partition for a Pi 3 B+?)", path, err)
		}
		data = append(data, b)
		q.Sizes = append(q.Sizes, len(b))
	}
	ids, err := d.chainIDs()
	if err != nil {
		return nil, err
	}
	sum, count, err := d.Signature()
	if err != nil {
		return nil, err
	}
	q.Sum, q.Count = sum, count
	for i, dst := range []string{q.Kernel, q.DTB} {
		b, name := data[i], BootFiles[i].Name
		var line string
		if d.Qcow2 {
			line = fmt.Sprintf("# copy %s (%d bytes) from partition 1 of %s to %s", name, len(b), path, dst)
		} else {
			line = mcopyLine(d.Real, d.Layout.Boot().Offset(), "::"+name, dst)
		}
		if _, err := os.Lstat(dst); err == nil {
			line = "cp -p " + trace.Quote(dst) + " " + trace.Quote(dst+"~") + "\n" + line
		}
		if err := m.d.Do(line, func() error { return trace.WriteAtomic(dst, b, 0o644, true) }); err != nil {
			return nil, err
		}
	}
	if err := m.writeSig(id, d, sum, count, ids); err != nil {
		return nil, err
	}
	return q, nil
}

func (m *mod) writeSig(id int, d *Disk, sum string, count uint64, ids []fileID) error {
	b := d.Layout.Boot()
	rec := sigRecord{Sum: sum, Start: b.Start, Count: count, Files: ids}
	dst := m.f.Sig(id)
	var how string
	if d.Qcow2 {
		how = fmt.Sprintf("sha256sum of sectors %d..%d of the guest view of %s", b.Start, b.Start+count-1, trace.Quote(d.Path))
	} else {
		how = fmt.Sprintf("dd if=%s bs=512 skip=%d count=%d status=none | sha256sum", trace.Quote(d.Real), b.Start, count)
	}
	line := fmt.Sprintf("# record the boot partition signature %s (as %s) in %s", sum, how, dst)
	return m.d.Do(line, func() error { return trace.WriteAtomic(dst, []byte(rec.String()), 0o644, true) })
}

// racyWindow is how close to the writing of a .sig record a recorded mtime
// may be before the record no longer proves "unchanged": file system
// timestamps come from a clock that ticks every few milliseconds, so a
// write just after the record may keep the same mtime (git's "racily
// clean" entries). Such records are re-hashed, and refreshed when equal.
const racyWindow = 100 * time.Millisecond

// BootState says whether an instance's boot files match its disk.
type BootState struct {
	State   string // "ok", "missing", "outdated"
	Message string
	Hashed  bool // the partition had to be hashed (the cheap check failed)
}

// CheckBoot compares the recorded signature with the disk. When the disk
// and its backing files have the recorded size, mtime, inode and device,
// nothing is read; otherwise partition 1 is hashed again.
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
	sum, count, err := d.Signature()
	if err != nil {
		return BootState{}, err
	}
	if sum != rec.Sum {
		return BootState{State: "outdated", Hashed: true, Message: fmt.Sprintf("instance %d: the boot partition of %s changed since its boot files were copied (an OS upgrade?); run: pifarm run image --provide-qboot %d", id, path, id)}, nil
	}
	if !m.d.DryRun {
		// same content, new mtime: refresh the cheap-check record
		b := d.Layout.Boot()
		rec = sigRecord{Sum: sum, Start: b.Start, Count: count, Files: ids}
		dst := m.f.Sig(id)
		if err := m.d.Do("# refresh the unchanged-check record of "+dst, func() error { return trace.WriteAtomic(dst, []byte(rec.String()), 0o644, false) }); err != nil {
			return BootState{}, err
		}
	}
	return BootState{State: "ok", Hashed: true, Message: fmt.Sprintf("instance %d: boot files match %s", id, path)}, nil
}
