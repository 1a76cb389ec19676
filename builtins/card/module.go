// Package card is the Starlark module `card`: writing a disk image to SD
// cards (whole block devices) or image files, fast and safely.
//
// Fast by not writing nothing: only the image's data extents are written
// (a raw image's SEEK_DATA/SEEK_HOLE map, a qcow2 clone's allocation map,
// its guest view streamed), the rest of a card is made to read as zeros
// with BLKZEROOUT (no transfer where the device offloads it; a new image
// file is all holes), and every written range is read back past the page
// cache and compared with the hash taken while writing.
//
// Safe: a target that is mounted (any partition), holds the running
// system, is a swap area, is in use by a QEMU, is read-only or is smaller
// than the image's partitions is refused; one that is not removable (a
// fixed disk, a loop device) only when --force names it. A card's first
// sector is wiped before anything else and its MBR written last, so an
// interrupted flash leaves a card without a partition table, never a
// half-written system that boots. An image file is written next to the
// target and renamed over it.
//
// Every action passes the tracing door: a dry run prints the commands an
// administrator would type (dd, blkdiscard --zeroout, cmp, blockdev).
package card

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// module is the card module of one run.
type module struct {
	d   *trace.Door
	f   *farm.Farm
	sys System
	// ask asks the question on the terminal, reporting the answer: nil
	// means the run's terminal (stdin, stderr).
	ask func(question string) (bool, error)
}

// New returns the card module.
func New(d *trace.Door, f *farm.Farm) *trace.Module { return (&module{d: d, f: f, sys: Host}).table() }

func (m *module) table() *trace.Module {
	return &trace.Module{
		Name: "card",
		Doc: "SD cards and image files: write an image (data extents only, verified), list the block devices.\n" +
			"Mounted, busy, system or too small targets are refused; fixed disks need force.",
		Funcs: []trace.Func{
			{Name: "devices", Args: "", Fn: m.devicesFn, Doc: devicesDoc},
			{Name: "flash", Args: "image, targets, force=[], yes=False, verify=True, boot_files={}, root_archives=[], root_files={}, root_remove=[]", Fn: m.flashFn, Doc: flashDoc},
		},
	}
}

const devicesDoc = `The whole block devices of the host (a query), the cards first.

A list of struct(path, name, model, size, size_text, transport, removable,
read_only, partitions, mounted, system, backing): size in bytes, size_text as
"29.7 GiB"; transport usb, mmc, loop, nvme, virtio or scsi; partitions a list
of struct(name, size, size_text, fstype, label, mounted); mounted the mount
points of the disk and its partitions; system True when it holds /; backing a
loop device's file ("" otherwise). Empty devices (no medium, unused loop
devices) and RAM disks are left out.`

const flashDoc = `Write the disk image image (a raw file or a qcow2 clone) to each of targets (an action).

targets: block devices (/dev/sdb, /dev/disk/by-id/...) or image files, written
concurrently. A target is refused, before anything is written to any, when it
is a partition, mounted (any partition), holds /, is a swap area, has devices
stacked on it, is in use by a QEMU or open for writing, is read-only, is
smaller than the end of the image's last partition, or is the image itself;
when it is not removable (a fixed disk, a loop device) unless force (a list)
names it. A block device is confirmed on the terminal (model, size,
partitions) unless yes; without a terminal it is refused unless yes.

Only the image's data is written; its holes are zeroed on a card
(BLKZEROOUT). The first sector is wiped first and the image's MBR written
last. With verify every written range is read back (O_DIRECT) and its
64-bit hash compared with the one taken while writing. boot_files (a dict
NAME: text) are written into partition 1 (FAT) of each card before its MBR.
The card's root file system (the image's first Linux partition, ext2/3/4) is
changed offline with debugfs before the MBR too: root_remove (absolute paths)
are removed where they are, root_files (a dict PATH: text, mode 0644, root's)
written on every card, and root_archives[i] (bytes: a tar of regular files,
e.g. ssh.new_host_keys().archive; None for none) unpacked on targets[i] only,
each file with its mode and owner.
An image file target is written to NAME.partial and renamed over NAME (the
old one kept as NAME~). Ctrl-C stops every card; a stopped card has no
partition table.

Returns a list, one struct(target, ok, error, written, zeroed, zero_how,
verified, seconds, summary, notes) per target in order: summary is the one
line to print for it.`

func (m *module) devicesFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := trace.UnpackArgs(b.Name(), args, kwargs); err != nil {
		return nil, err
	}
	disks, err := m.sys.Disks()
	if err != nil {
		return nil, fmt.Errorf("list %s/block: %w", m.sys.Sys, err)
	}
	sort.SliceStable(disks, func(i, j int) bool {
		if disks[i].Removable != disks[j].Removable {
			return disks[i].Removable
		}
		return disks[i].Name < disks[j].Name
	})
	var out []starlark.Value
	for _, d := range disks {
		mounts, _, _ := m.sys.Mounts(d)
		var points []string
		system := false
		for _, mt := range mounts {
			points = append(points, mt.Point)
			system = system || mt.Point == "/"
		}
		var parts []starlark.Value
		for _, p := range d.Parts {
			fstype, label := probePart(p.Path, p.Size)
			mp := ""
			for _, mt := range mounts {
				if mt.Dev == p.Dev {
					mp = mt.Point
					break
				}
			}
			parts = append(parts, starlarkstruct.FromStringDict(starlark.String("partition"), starlark.StringDict{
				"name": starlark.String(p.Name), "size": starlark.MakeInt64(p.Size), "size_text": starlark.String(Bytes(p.Size)),
				"fstype": starlark.String(fstype), "label": starlark.String(label), "mounted": starlark.String(mp)}))
		}
		out = append(out, starlarkstruct.FromStringDict(starlark.String("device"), starlark.StringDict{
			"path": starlark.String(d.Path), "name": starlark.String(d.Name), "model": starlark.String(d.Model),
			"size": starlark.MakeInt64(d.Size), "size_text": starlark.String(Bytes(d.Size)), "transport": starlark.String(d.Transport),
			"removable": starlark.Bool(d.Removable), "read_only": starlark.Bool(d.ReadOnly),
			"partitions": starlark.NewList(parts), "mounted": trace.Strings(points), "system": starlark.Bool(system),
			"backing": starlark.String(d.Backing)}))
	}
	return starlark.NewList(out), nil
}

func (m *module) flashFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var image string
	targets := trace.StringList{OneString: true}
	force := trace.StringList{OneString: true}
	var yes bool
	verify := true
	boot, rootFiles := &starlark.Dict{}, &starlark.Dict{}
	var archives starlark.Value = starlark.NewList(nil)
	var remove trace.StringList
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "image", &image, "targets", &targets, "force?", &force,
		"yes?", &yes, "verify?", &verify, "boot_files?", &boot, "root_archives?", &archives,
		"root_files?", &rootFiles, "root_remove?", &remove); err != nil {
		return nil, err
	}
	if len(targets.Strings) == 0 {
		return nil, trace.Usagef("no target: name a card (--device /dev/sdb) or an image file")
	}
	opt := Options{Verify: verify}
	for _, it := range boot.Items() {
		k, ok1 := starlark.AsString(it[0])
		v, ok2 := starlark.AsString(it[1])
		if !ok1 || !ok2 || k == "" || strings.ContainsAny(k, "/\\") {
			return nil, fmt.Errorf("boot_files: want NAME: text with a plain file name, got %s: %s", it[0], it[1].Type())
		}
		opt.BootFiles = append(opt.BootFiles, BootFile{Name: k, Data: []byte(v)})
	}
	var err error
	if opt.Root, err = rootEdits(len(targets.Strings), archives, rootFiles, remove.Strings); err != nil {
		return nil, err
	}
	src, err := OpenSource(image)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	if len(opt.Root) > 0 {
		if _, err := src.rootPartition(); err != nil {
			return nil, err
		}
	}
	if len(opt.BootFiles) > 0 {
		if _, _, err := src.bootPartition(); err != nil {
			return nil, err
		}
	}
	ts, err := m.inspectAll(src, targets.Strings, force.Strings)
	if err != nil {
		return nil, err
	}
	if err := m.confirm(src, ts, yes); err != nil {
		return nil, err
	}
	meters := make([]*meter, len(ts))
	for i, t := range ts {
		meters[i] = newMeter(t.Path)
	}
	var stop, shown chan struct{}
	if w, ok := m.d.StreamErr().(*os.File); ok && !m.d.DryRun && !m.d.Verbose && term.IsTerminal(int(w.Fd())) {
		stop, shown = make(chan struct{}), make(chan struct{})
		go display(w, meters, 250*time.Millisecond, stop, shown)
	}
	results := Write(m.d.Context(), m.d, src, ts, opt, meters)
	if stop != nil {
		close(stop)
		<-shown
	}
	out := make([]starlark.Value, len(results))
	for i, r := range results {
		out[i] = resultStruct(r, m.d.DryRun)
	}
	if err := m.d.Context().Err(); err != nil {
		var lines []string
		for _, r := range results {
			lines = append(lines, Summary(r, m.d.DryRun))
		}
		return nil, fmt.Errorf("interrupted:\n%s", strings.Join(lines, "\n"))
	}
	return starlark.NewList(out), nil
}

// inspectAll inspects every target; any refusal not lifted by force stops
// the whole command before anything is written.
func (m *module) inspectAll(src *Source, paths, force []string) ([]*Target, error) {
	var ts []*Target
	var refusals []string
	used := make([]bool, len(force))
	seen := map[string]string{}
	for _, p := range paths {
		t, err := m.sys.Inspect(p, src)
		if err != nil {
			return nil, err
		}
		key := identity(p)
		if prev, ok := seen[key]; ok {
			return nil, trace.Usagef("%s and %s are the same target: name it once", prev, p)
		}
		seen[key] = p
		forced := false
		for i, f := range force {
			if f == p || identity(f) == key {
				forced, used[i] = true, true
			}
		}
		for _, r := range t.Refusals {
			if r.Forceable && forced {
				m.d.Note("%s: %s — written anyway: --force names it", p, r.Why)
				continue
			}
			refusals = append(refusals, fmt.Sprintf("%s: %s", p, r.Why))
		}
		ts = append(ts, t)
	}
	for i, f := range force {
		if !used[i] {
			return nil, trace.Usagef("--force %s names no target (the targets are %s)", f, strings.Join(paths, ", "))
		}
	}
	if len(refusals) > 0 {
		return nil, fmt.Errorf("refusing to write, nothing written:\n  %s", strings.Join(refusals, "\n  "))
	}
	return ts, nil
}

// identity names a target's file: the device number of a block device,
// device and inode of an existing file, else its absolute path.
func identity(path string) string {
	var st unix.Stat_t
	if unix.Stat(path, &st) == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			return "dev:" + devString(uint64(st.Rdev))
		}
		return fmt.Sprintf("file:%d:%d", st.Dev, st.Ino)
	}
	abs, _ := filepath.Abs(path)
	return "path:" + abs
}

// confirm asks on the terminal before block devices are written, showing
// each; without a terminal it refuses unless yes.
func (m *module) confirm(src *Source, ts []*Target, yes bool) error {
	var cards []*Target
	for _, t := range ts {
		m.d.Note("%s", t.Describe())
		if t.Block {
			cards = append(cards, t)
		}
	}
	if len(cards) == 0 || yes {
		return nil
	}
	if m.d.DryRun {
		m.d.Note("asks for confirmation on a terminal first (--yes does not ask)")
		return nil
	}
	var q strings.Builder
	fmt.Fprintf(&q, "Write %s (%s, %s, %s of data) to:\n", src.Path, src.Format, Bytes(src.Size), Bytes(src.Data))
	for _, t := range cards {
		q.WriteString("  " + t.Describe() + "\n")
	}
	q.WriteString("Everything on ")
	if len(cards) == 1 {
		q.WriteString("it")
	} else {
		q.WriteString("them")
	}
	q.WriteString(" is lost. Go on? [y/N] ")
	ask := m.ask
	if ask == nil {
		ask = m.askTerminal
	}
	ok, err := ask(q.String())
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("not confirmed: nothing written")
	}
	return nil
}

// askTerminal asks on stderr and reads the answer from stdin, both
// terminals; Ctrl-C while it waits ends the run.
func (m *module) askTerminal(q string) (bool, error) {
	if !term.IsTerminal(int(os.Stdin.Fd())) || !term.IsTerminal(int(os.Stderr.Fd())) {
		return false, errors.New("refusing to write a block device without confirmation: there is no terminal to ask on; pass --yes (yes = True) if you are sure")
	}
	io.WriteString(os.Stderr, q)
	ans := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
		ans <- strings.TrimSpace(strings.ToLower(line))
	}()
	select {
	case a := <-ans:
		return a == "y" || a == "yes", nil
	case <-m.d.Context().Done():
		return false, m.d.Context().Err()
	}
}

// Summary is the one line said of a target's result.
func Summary(r Result, dry bool) string {
	if dry {
		return fmt.Sprintf("%s: would be written (dry run)", r.Target)
	}
	if r.Err != nil {
		return fmt.Sprintf("%s: FAILED: %v", r.Target, r.Err)
	}
	s := fmt.Sprintf("%s: %s written", r.Target, Bytes(r.Written))
	if r.Zeroed > 0 {
		s += fmt.Sprintf(", %s zeroed (%s)", Bytes(r.Zeroed), r.ZeroHow)
	}
	if r.Verified > 0 {
		s += fmt.Sprintf(", %s verified", Bytes(r.Verified))
	} else {
		s += ", not verified"
	}
	secs := r.Elapsed.Seconds()
	s += fmt.Sprintf(", %.1f s", secs)
	if secs > 0 {
		s += fmt.Sprintf(" (%s/s)", Bytes(int64(float64(r.Written+r.Verified)/secs)))
	}
	for _, n := range r.Notes {
		s += "; " + n
	}
	return s
}

func resultStruct(r Result, dry bool) starlark.Value {
	errText := ""
	if r.Err != nil {
		errText = r.Err.Error()
	}
	return starlarkstruct.FromStringDict(starlark.String("flashed"), starlark.StringDict{
		"target": starlark.String(r.Target), "ok": starlark.Bool(r.Err == nil), "error": starlark.String(errText),
		"written": starlark.MakeInt64(r.Written), "zeroed": starlark.MakeInt64(r.Zeroed),
		"zero_how": starlark.String(r.ZeroHow), "verified": starlark.MakeInt64(r.Verified),
		"seconds": starlark.Float(r.Elapsed.Seconds()), "summary": starlark.String(Summary(r, dry)),
		"notes": trace.Strings(r.Notes)})
}

// bootPartition is the byte offset and size of partition 1 of the image
// when it is a FAT partition (types 0x0b, 0x0c, 0x0e, 0x06, 0x04, 0x01).
func (s *Source) bootPartition() (int64, int64, error) {
	head := make([]byte, 512)
	if _, err := s.ReadAt(head, 0); err != nil {
		return 0, 0, fmt.Errorf("image %s: read its MBR: %w", s.Path, err)
	}
	if head[510] != 0x55 || head[511] != 0xaa {
		return 0, 0, fmt.Errorf("image %s has no MBR (no 55 AA signature): boot files cannot be written to its partition 1", s.Path)
	}
	e := head[446:462]
	switch e[4] {
	case 0x0b, 0x0c, 0x0e, 0x06, 0x04, 0x01:
	default:
		return 0, 0, fmt.Errorf("image %s: partition 1 is of type %#02x, not FAT: boot files cannot be written to it", s.Path, e[4])
	}
	start := int64(binary.LittleEndian.Uint32(e[8:])) * 512
	size := int64(binary.LittleEndian.Uint32(e[12:])) * 512
	if size == 0 || start+size > s.Size {
		return 0, 0, fmt.Errorf("image %s: partition 1 (%d+%d) lies outside the image (%d bytes)", s.Path, start, size, s.Size)
	}
	return start, size, nil
}

// rootEdits builds each target's root edit from card.flash's arguments:
// archives (a list, one tar or None per target), files (PATH: text, on
// every card) and remove (paths). None of them given: no edits.
func rootEdits(n int, archives starlark.Value, files *starlark.Dict, remove []string) ([]RootEdit, error) {
	var common RootEdit
	for _, p := range remove {
		if err := rootPath(p); err != nil {
			return nil, fmt.Errorf("root_remove: %w", err)
		}
		common.Remove = append(common.Remove, p)
	}
	for _, it := range files.Items() {
		p, ok1 := starlark.AsString(it[0])
		v, ok2 := starlark.AsString(it[1])
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("root_files: want PATH: text, got %s: %s", it[0].Type(), it[1].Type())
		}
		if err := rootPath(p); err != nil {
			return nil, fmt.Errorf("root_files: %w", err)
		}
		common.Files = append(common.Files, RootFile{Path: p, Mode: 0o644, Data: []byte(v)})
	}
	seq, ok := archives.(starlark.Indexable)
	if !ok {
		return nil, fmt.Errorf("root_archives: want a list (one tar or None per target), got %s", archives.Type())
	}
	if seq.Len() > 0 && seq.Len() != n {
		return nil, fmt.Errorf("root_archives: %d archives for %d targets: give one per target (None for none)", seq.Len(), n)
	}
	if common.empty() && seq.Len() == 0 {
		return nil, nil
	}
	out := make([]RootEdit, n)
	for i := range out {
		out[i] = RootEdit{Remove: common.Remove, Files: append([]RootFile(nil), common.Files...)}
		if seq.Len() == 0 || seq.Index(i) == starlark.None {
			continue
		}
		b, ok := seq.Index(i).(starlark.Bytes)
		if !ok {
			return nil, fmt.Errorf("root_archives[%d]: want bytes (a tar archive) or None, got %s", i, seq.Index(i).Type())
		}
		fs, err := TarFiles([]byte(b))
		if err != nil {
			return nil, fmt.Errorf("root_archives[%d]: %w", i, err)
		}
		out[i].Files = append(out[i].Files, fs...)
	}
	return out, nil
}

// rootPath checks a path given for the card's root file system.
func rootPath(p string) error {
	if !strings.HasPrefix(p, "/") || filepath.Clean(p) != p || p == "/" || strings.ContainsAny(p, " \t\n\"\\") {
		return fmt.Errorf("%q: want a clean absolute path without blanks or quotes", p)
	}
	return nil
}
