package card

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"pifarm/builtins/disk/fat"
	"pifarm/builtins/disk/qcow2"
	"pifarm/builtins/trace"
)

// testHookWritten, set by tests only, is called after each data chunk is
// written (a card that does not keep what it was given).
var testHookWritten func(path string, off, n int64)

// chunk is the unit of reading, writing and verifying: one hash each.
const chunk = 4 << 20

// Linux block-device ioctls (linux/fs.h) that x/sys/unix does not name.
const (
	ioctlBLKZEROOUT = 0x127f // _IO(0x12, 127): zero a byte range
	ioctlBLKRRPART  = 0x125f // _IO(0x12, 95): re-read the partition table
)

// BootFile is a file written into the first FAT partition of every card
// (before its MBR), e.g. the node a board is.
type BootFile struct {
	Name string
	Data []byte
}

// Options says how to write.
type Options struct {
	// Verify reads every written range back, past the page cache, and
	// compares its hash with the one taken while writing.
	Verify bool
	// BootFiles are written into partition 1 (FAT) of each card.
	BootFiles []BootFile
	// Root holds, per target (in order; missing or empty: none), what is
	// changed in its root file system before the MBR is written.
	Root []RootEdit
}

// Result is what writing one target came to.
type Result struct {
	Target string
	Err    error
	// Written bytes of data; Zeroed bytes made to read as zeros (ZeroHow
	// says how); Verified bytes read back and compared.
	Written, Zeroed, Verified int64
	ZeroHow                   string
	Elapsed                   time.Duration
	// Notes are things worth saying that are not failures.
	Notes []string
}

// seed keys the chunk hashes of a run: maphash, 64 bits, about ten times
// as fast as SHA-256, so verifying costs the reading and not the hashing.
// A hash is only compared within the run that took it; a damaged chunk
// goes unnoticed with a chance of 2^-64.
var seed = maphash.MakeSeed()

// sum is the hash of one written chunk of the target.
type sum struct {
	off, n int64
	h      uint64
}

// job writes one image to one target.
type job struct {
	ctx  context.Context
	d    *trace.Door
	src  *Source
	t    *Target
	opt  Options
	m    *meter
	root RootEdit
	head int64  // the first sector: wiped first, written last
	out  string // the file written: the device, or the file's .partial
	fd   *os.File
	sums []sum
	chk  *checker // reads chunks back while later ones are written
	// headDone: the image's first sector is on the card (a failure after
	// it leaves a card with a partition table).
	headDone bool
	res      Result
}

// partialName is the file an image file target is written to before it is
// renamed over the target.
func partialName(path string) string { return path + ".partial" }

// Write writes src to each target concurrently (in a dry run one after the
// other, so that the trace is a script) and returns one result per target.
// Every action passes the door. A target that fails does not stop the
// others.
func Write(ctx context.Context, d *trace.Door, src *Source, targets []*Target, opt Options, meters []*meter) []Result {
	out := make([]Result, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		j := &job{ctx: ctx, d: d, src: src, t: t, opt: opt, m: meters[i]}
		if i < len(opt.Root) {
			j.root = opt.Root[i]
		}
		if d.DryRun {
			out[i] = j.run()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = j.run()
		}()
	}
	wg.Wait()
	return out
}

func (j *job) run() Result {
	start := time.Now()
	j.res.Target = j.t.Path
	j.head = 512
	if j.t.Block {
		j.head = j.t.Disk.LogicalBlock
	}
	j.head = min(j.head, j.src.Size)
	err := j.steps()
	if j.chk != nil {
		j.chk.finish()
	}
	if j.fd != nil {
		j.fd.Close()
	}
	if err != nil {
		j.res.Err = j.failed(err)
		j.m.setPhase("failed")
	} else {
		j.m.setPhase("done")
	}
	j.res.Elapsed = time.Since(start)
	return j.res
}

// failed explains err, and what it left: a card without a partition table,
// or a file target as it was.
func (j *job) failed(err error) error {
	head := fmt.Sprintf("writing %s failed: %v", j.t.Path, err)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		head = fmt.Sprintf("writing %s interrupted", j.t.Path)
	}
	if !j.t.Block {
		if j.fd != nil {
			j.d.Finally(trace.Join([]string{"rm", "-f", "--", j.out}), func() error { return os.Remove(j.out) })
		}
		state := "left as it was"
		if !j.t.Exists {
			state = "not made"
		}
		return fmt.Errorf("%s; %s is %s", head, j.t.Path, state)
	}
	switch {
	case j.fd == nil:
		return fmt.Errorf("%s; nothing was written", head)
	case j.headDone:
		return fmt.Errorf("%s; all of the image was written, its first sector last", head)
	}
	return fmt.Errorf("%s; its first sector is zeros (no partition table), so the card boots nothing: flash it again", head)
}

func (j *job) steps() error {
	if err := j.open(); err != nil {
		return err
	}
	if err := j.zero(); err != nil {
		return err
	}
	if err := j.writeData(); err != nil {
		return err
	}
	if err := j.sync(); err != nil {
		return err
	}
	if j.opt.Verify {
		if err := j.verifyData(); err != nil {
			return err
		}
	}
	if err := j.bootFiles(); err != nil {
		return err
	}
	if err := j.editRoot(j.root); err != nil {
		return err
	}
	if err := j.writeHead(); err != nil {
		return err
	}
	return j.finish()
}

// open opens the target for writing: a block device exclusively (the
// kernel refuses while anything mounts or claims it) with its first sector
// wiped at once, so that an interrupted flash never leaves a card whose
// old partition table points into half-written data; a file target as a
// new NAME.partial next to it, locked.
func (j *job) open() error {
	j.m.setPhase("opening")
	if j.t.Block {
		j.out = j.t.Disk.Path
		if !j.d.DryRun {
			fd, err := unix.Open(j.out, unix.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0)
			switch {
			case errors.Is(err, unix.EBUSY):
				return fmt.Errorf("open %s: the kernel says it is busy (mounted, or claimed by another program: a partition mounted since, an automounter, a RAID or device-mapper set); unmount or release it", j.out)
			case errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM):
				return fmt.Errorf("open %s: permission denied: writing a block device needs root (sudo pifarm run flash ...)", j.out)
			case err != nil:
				return fmt.Errorf("open %s: %w", j.out, err)
			}
			j.fd = os.NewFile(uintptr(fd), j.out)
		}
		line := fmt.Sprintf("dd if=/dev/zero of=%s bs=%d count=1 conv=notrunc,fsync status=none", trace.Quote(j.out), j.head)
		return j.d.Do(line, func() error {
			if _, err := j.fd.WriteAt(make([]byte, j.head), 0); err != nil {
				return fmt.Errorf("wipe the first sector of %s: %w", j.out, err)
			}
			return j.fd.Sync()
		})
	}
	j.out = partialName(j.t.Path)
	if fi, err := os.Lstat(j.out); err == nil {
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s is in the way (%s): remove it", j.out, fi.Mode().Type())
		}
		if !j.d.DryRun {
			if err := checkUnlocked(j.out); err != nil {
				return err
			}
		}
		if err := j.d.Remove(j.out); err != nil {
			return err
		}
	}
	line := fmt.Sprintf("truncate -s %d -- %s", j.t.Capacity, trace.Quote(j.out))
	return j.d.Do(line, func() error {
		perm := os.FileMode(0o600) // a card holds private host keys
		if j.t.Exists {
			perm = j.t.Mode
		}
		f, err := os.OpenFile(j.out, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
		if err != nil {
			return err
		}
		j.fd = f
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return fmt.Errorf("lock %s: %w (another pifarm writes it)", j.out, err)
		}
		if j.t.Exists {
			if err := f.Chmod(perm); err != nil {
				return err
			}
		}
		return f.Truncate(j.t.Capacity)
	})
}

// checkUnlocked refuses a .partial another pifarm still writes (it holds
// its lock); a stale one, of a killed run, is free.
func checkUnlocked(p string) error {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("%s is being written by another pifarm (it holds its lock): wait for it", p)
	}
	return nil
}

// span returns the part of e within [from, to), or ok false.
func span(e qcow2.Extent, from, to int64) (qcow2.Extent, bool) {
	s, end := max(e.Start, from), min(e.End(), to)
	if s >= end {
		return e, false
	}
	if e.Data && e.Offset >= 0 {
		e.Offset += s - e.Start
	}
	e.Start, e.Length = s, end-s
	return e, true
}

// zero makes the image's holes read as zeros on a block device, past its
// first sector (wiped already): BLKZEROOUT, which a device that can
// (write zeroes: a loop device's file, many SSDs) does without a
// transfer, and the kernel otherwise does by writing zeros. A new file
// target is all holes already.
func (j *job) zero() error {
	end := min(j.src.Size, j.t.Capacity)
	var holes []qcow2.Extent
	for _, e := range j.src.Map {
		if h, ok := span(e, j.head, end); ok && !e.Data {
			holes = append(holes, h)
			j.res.Zeroed += h.Length
		}
	}
	if !j.t.Block {
		j.res.ZeroHow = "holes of a new file"
		return nil
	}
	j.res.ZeroHow = "zeros written by the kernel"
	if j.t.Disk.ZeroOffload {
		j.res.ZeroHow = "write zeroes (no transfer)"
	}
	j.m.setPhase("zeroing")
	j.m.ztotal.Store(j.res.Zeroed)
	for _, h := range holes {
		if err := j.zeroRange(h.Start, h.Length); err != nil {
			return err
		}
	}
	return nil
}

// zeroRange zeroes [off, off+n) of the block device: the sector-aligned
// middle with BLKZEROOUT in pieces (a Ctrl-C waits for one piece at most),
// unaligned ends by writing zeros.
func (j *job) zeroRange(off, n int64) error {
	a := (off + 511) &^ 511
	b := (off + n) &^ 511
	if a >= b {
		return j.writeZeros(off, n)
	}
	if a > off {
		if err := j.writeZeros(off, a-off); err != nil {
			return err
		}
	}
	line := fmt.Sprintf("blkdiscard --zeroout --offset %d --length %d %s", a, b-a, trace.Quote(j.out))
	err := j.d.Do(line, func() error {
		const piece = 256 << 20
		for p := a; p < b; p += piece {
			if err := j.ctx.Err(); err != nil {
				return err
			}
			r := [2]uint64{uint64(p), uint64(min(piece, b-p))}
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, j.fd.Fd(), ioctlBLKZEROOUT, uintptr(unsafe.Pointer(&r))); e != 0 {
				if e == unix.EOPNOTSUPP || e == unix.ENOTTY || e == unix.EINVAL {
					return j.zeroByWriting(p, b-p)
				}
				return fmt.Errorf("zero bytes %d-%d of %s (BLKZEROOUT): %w", p, p+int64(r[1]), j.out, e)
			}
			j.m.zdone.Add(int64(r[1]))
		}
		return nil
	})
	if err != nil {
		return err
	}
	if off+n > b {
		return j.writeZeros(b, off+n-b)
	}
	return nil
}

// writeZeros writes zeros over [off, off+n) through the door (a dd line).
func (j *job) writeZeros(off, n int64) error {
	line := fmt.Sprintf("dd if=/dev/zero of=%s bs=4M iflag=count_bytes oflag=seek_bytes conv=notrunc status=none seek=%d count=%d", trace.Quote(j.out), off, n)
	return j.d.Do(line, func() error { return j.zeroByWriting(off, n) })
}

func (j *job) zeroByWriting(off, n int64) error {
	z := make([]byte, min(n, chunk))
	for p := off; p < off+n; p += int64(len(z)) {
		if err := j.ctx.Err(); err != nil {
			return err
		}
		w := z[:min(int64(len(z)), off+n-p)]
		if _, err := j.fd.WriteAt(w, p); err != nil {
			return fmt.Errorf("write zeros at byte %d of %s: %w", p, j.out, err)
		}
		j.m.zdone.Add(int64(len(w)))
	}
	return nil
}

// dataExtents are the image's data extents past the first sector.
func (j *job) dataExtents() []qcow2.Extent {
	var out []qcow2.Extent
	for _, e := range j.src.Map {
		if x, ok := span(e, j.head, j.src.Size); ok && e.Data {
			out = append(out, x)
		}
	}
	return out
}

// ddLine is the command that copies extent e (guest bytes, from its file)
// to the same place on the target; a compressed extent has none.
func (j *job) ddLine(e qcow2.Extent, conv string) string {
	if e.Offset < 0 {
		return fmt.Sprintf("# write guest bytes %d-%d of %s to %s: compressed clusters, inflated by pifarm (no dd equivalent; qemu-img convert -O raw makes a raw copy to write)", e.Start, e.End(), j.src.Path, j.out)
	}
	s := fmt.Sprintf("dd if=%s of=%s bs=4M iflag=skip_bytes,count_bytes oflag=seek_bytes conv=%s status=none", trace.Quote(e.File), trace.Quote(j.out), conv)
	if e.Offset > 0 {
		s += fmt.Sprintf(" skip=%d", e.Offset)
	}
	if e.Start > 0 {
		s += fmt.Sprintf(" seek=%d", e.Start)
	}
	return s + fmt.Sprintf(" count=%d", e.Length)
}

// writeData copies the data extents, hashing each chunk as it goes.
func (j *job) writeData() error {
	j.m.setPhase("writing")
	ext := j.dataExtents()
	for _, e := range ext {
		j.m.total.Add(e.Length)
	}
	if j.opt.Verify {
		for _, e := range ext {
			j.m.total.Add(e.Length)
		}
	}
	j.m.startData()
	if j.opt.Verify && !j.d.DryRun {
		c, err := j.startChecker()
		if err != nil {
			return err
		}
		j.chk = c
		defer c.close()
	}
	for _, e := range ext {
		err := j.d.Do(j.ddLine(e, "notrunc"), func() error {
			s, err := j.copyExtent(e)
			j.sums = append(j.sums, s...)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// piece is a chunk read from the image, hashed.
type piece struct {
	off int64
	buf []byte
	h   uint64
	err error
}

// copyExtent copies e chunk by chunk, reading (and hashing) the next chunk
// while the last is written.
func (j *job) copyExtent(e qcow2.Extent) ([]sum, error) {
	ctx, cancel := context.WithCancel(j.ctx)
	defer cancel()
	free := make(chan []byte, 3)
	for i := 0; i < cap(free); i++ {
		free <- make([]byte, chunk)
	}
	ch := make(chan piece, 2)
	go func() {
		defer close(ch)
		for off := e.Start; off < e.End(); off += chunk {
			var b []byte
			select {
			case b = <-free:
			case <-ctx.Done():
				return
			}
			b = b[:min(chunk, e.End()-off)]
			p := piece{off: off, buf: b}
			if p.err = j.src.readExtent(e, b, off); p.err == nil {
				p.h = maphash.Bytes(seed, b)
			} else {
				p.err = fmt.Errorf("read %s at guest byte %d: %w", j.src.Path, off, p.err)
			}
			select {
			case ch <- p:
			case <-ctx.Done():
				return
			}
			if p.err != nil {
				return
			}
		}
	}()
	var sums []sum
	for p := range ch {
		if p.err != nil {
			return sums, p.err
		}
		if err := j.ctx.Err(); err != nil {
			return sums, err
		}
		if _, err := j.fd.WriteAt(p.buf, p.off); err != nil {
			return sums, fmt.Errorf("write %s at byte %d: %w", j.out, p.off, err)
		}
		if testHookWritten != nil {
			testHookWritten(j.out, p.off, int64(len(p.buf)))
		}
		s := sum{off: p.off, n: int64(len(p.buf)), h: p.h}
		sums = append(sums, s)
		j.res.Written += int64(len(p.buf))
		j.m.done.Add(int64(len(p.buf)))
		free <- p.buf[:cap(p.buf)]
		if j.chk != nil {
			if !j.t.Block {
				// an image file: its write-out starts now, so the disk
				// writes while the checker reads earlier chunks back (on a
				// loop device this measured slower: left to the kernel)
				unix.SyncFileRange(int(j.fd.Fd()), p.off, int64(len(p.buf)), unix.SYNC_FILE_RANGE_WRITE)
			}
			if err := j.chk.add(ctx, s); err != nil {
				return sums, err
			}
		}
	}
	return sums, j.ctx.Err()
}

// sync flushes what was written to the target.
func (j *job) sync() error {
	j.m.setPhase("syncing")
	return j.d.Do("sync -- "+trace.Quote(j.out), func() error {
		if err := j.fd.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", j.out, err)
		}
		return nil
	})
}

// verifyData reports the check of the data chunks, which the checker read
// back while later ones were written: in the trace, a cmp of each extent
// after the target's cached pages are dropped.
func (j *job) verifyData() error {
	j.m.setPhase("verifying")
	if err := j.d.Do(j.dropLine(), func() error {
		return unix.Fadvise(int(j.fd.Fd()), 0, 0, unix.FADV_DONTNEED)
	}); err != nil {
		return fmt.Errorf("drop the cached pages of %s: %w", j.out, err)
	}
	if j.chk != nil {
		j.chk.finish()
		j.res.Verified += j.chk.verified
	}
	for _, e := range j.dataExtents() {
		err := j.d.Do(j.cmpLine(e), func() error { return j.chk.errIn(e.Start, e.End()) })
		if err != nil {
			return err
		}
	}
	return nil
}

// dropLine is the command that drops the target's cached pages.
func (j *job) dropLine() string {
	if j.t.Block {
		return "blockdev --flushbufs " + trace.Quote(j.out)
	}
	return fmt.Sprintf("dd if=%s iflag=nocache count=0 status=none", trace.Quote(j.out))
}

// verify reads the ranges of sums back from the target, past the page
// cache (O_DIRECT; where the file system refuses it, after dropping the
// target's cached pages), and compares their hashes: the first sector's
// check, after it was written and synced.
func (j *job) verify(sums []sum) error {
	j.m.setPhase("verifying")
	if err := j.d.Do(j.dropLine(), func() error {
		return unix.Fadvise(int(j.fd.Fd()), 0, 0, unix.FADV_DONTNEED)
	}); err != nil {
		return fmt.Errorf("drop the cached pages of %s: %w", j.out, err)
	}
	var r *reader
	if !j.d.DryRun {
		var err error
		if r, err = openReader(j.out, j.t.Block); err != nil {
			return err
		}
		defer r.close()
	}
	i := 0
	for _, e := range j.dataExtentsOf(sums) {
		n := 0
		for i+n < len(sums) && sums[i+n].off < e.End() {
			n++
		}
		group := sums[i : i+n]
		i += n
		err := j.d.Do(j.cmpLine(e), func() error {
			for _, s := range group {
				if err := j.ctx.Err(); err != nil {
					return err
				}
				b, err := r.read(s.off, s.n)
				if err != nil {
					return fmt.Errorf("read back %s at byte %d: %w", j.out, s.off, err)
				}
				if maphash.Bytes(seed, b) != s.h {
					return j.differs(s)
				}
				j.res.Verified += s.n
				j.m.done.Add(s.n)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// dataExtentsOf returns the extents whose chunks sums are (the first
// sector's own, or the data extents).
func (j *job) dataExtentsOf(sums []sum) []qcow2.Extent {
	if len(sums) == 1 && sums[0].off == 0 {
		for _, e := range j.src.Map {
			if x, ok := span(e, 0, j.head); ok && e.Data {
				return []qcow2.Extent{x}
			}
		}
	}
	return j.dataExtents()
}

// cmpLine is the command that compares extent e of the image with the
// target.
func (j *job) cmpLine(e qcow2.Extent) string {
	if e.Offset < 0 {
		return fmt.Sprintf("# compare guest bytes %d-%d of %s with %s (compressed clusters: no cmp equivalent)", e.Start, e.End(), j.src.Path, j.out)
	}
	return fmt.Sprintf("cmp --ignore-initial=%d:%d --bytes=%d %s %s", e.Offset, e.Start, e.Length, trace.Quote(e.File), trace.Quote(j.out))
}

// bootFiles writes the boot files into the target's partition 1 (FAT32),
// as the image's partition table places it.
func (j *job) bootFiles() error {
	if len(j.opt.BootFiles) == 0 {
		return nil
	}
	off, size, err := j.src.bootPartition()
	if err != nil {
		return err
	}
	for _, bf := range j.opt.BootFiles {
		line := fmt.Sprintf("printf %%s %s | mcopy -n -o -i %s - ::%s", trace.Quote(string(bf.Data)), trace.Quote(fmt.Sprintf("%s@@%d", j.out, off)), bf.Name)
		if err := j.d.Do(line, func() error {
			fs, err := fat.Open(j.fd, j.fd, off, size)
			if err != nil {
				return fmt.Errorf("partition 1 of %s: %w", j.out, err)
			}
			if err := fs.WriteFile(bf.Name, bf.Data); err != nil {
				return fmt.Errorf("write %s into partition 1 of %s: %w", bf.Name, j.out, err)
			}
			return j.fd.Sync()
		}); err != nil {
			return err
		}
	}
	return nil
}

// writeHead writes the image's first sector (its MBR) last, and verifies
// it: only now does the card have a partition table.
func (j *job) writeHead() error {
	j.m.setPhase("MBR")
	var e qcow2.Extent
	found := false
	for _, x := range j.src.Map {
		if h, ok := span(x, 0, j.head); ok && x.Data {
			e, found = h, true
			break
		}
	}
	if !found {
		return nil // the image's first sector is zeros: wiped already
	}
	var s sum
	err := j.d.Do(j.ddLine(e, "notrunc,fsync"), func() error {
		b := make([]byte, e.Length)
		if err := j.src.readExtent(e, b, e.Start); err != nil {
			return fmt.Errorf("read the first sector of %s: %w", j.src.Path, err)
		}
		s = sum{off: e.Start, n: e.Length, h: maphash.Bytes(seed, b)}
		if _, err := j.fd.WriteAt(b, e.Start); err != nil {
			return fmt.Errorf("write the first sector of %s: %w", j.out, err)
		}
		j.res.Written += e.Length
		if err := j.fd.Sync(); err != nil {
			return err
		}
		j.headDone = true
		return nil
	})
	if err != nil {
		return err
	}
	if j.opt.Verify {
		return j.verify([]sum{s})
	}
	return nil
}

// finish makes the work visible: the kernel re-reads a card's partition
// table; a file target is renamed over the old file (kept as NAME~).
func (j *job) finish() error {
	if j.t.Block {
		err := j.d.Do("blockdev --rereadpt "+trace.Quote(j.out), func() error {
			err := unix.IoctlSetInt(int(j.fd.Fd()), ioctlBLKRRPART, 0)
			if errors.Is(err, unix.EINVAL) && j.t.Disk.Transport == "loop" {
				err = nil // a loop device without partition scanning (losetup -P)
			}
			if err != nil {
				j.res.Notes = append(j.res.Notes, fmt.Sprintf("the kernel did not re-read the partition table (%v): unplug and replug the card to see its partitions", err))
			}
			return nil
		})
		return err
	}
	if err := j.d.Do("sync -- "+trace.Quote(j.out), func() error { return j.fd.Sync() }); err != nil {
		return err
	}
	if j.t.Exists {
		line := trace.Join([]string{"ln", "-f", "--", j.t.Path, j.t.Path + "~"})
		if err := j.d.Do(line, func() error { return trace.Backup(j.t.Path) }); err != nil {
			return err
		}
	}
	if err := j.d.Rename(j.out, j.t.Path); err != nil {
		return err
	}
	if !j.d.DryRun {
		if dir, err := os.Open(filepath.Dir(j.t.Path)); err == nil {
			dir.Sync()
			dir.Close()
		}
	}
	return nil
}

// differs is the error of a chunk read back unlike it was written.
func (j *job) differs(s sum) error {
	return fmt.Errorf("verify %s: bytes %d-%d differ from the image (%s at guest byte %d): the card is faulty or was removed; try another card or reader", j.out, s.off, s.off+s.n, j.src.Path, s.off)
}

// checker reads written chunks back while later ones are written: each
// once the device has it (sync_file_range waits for its write-out), with
// O_DIRECT, and compares its hash; then the chunk's pages leave the page
// cache. Reading overlaps writing, so a verified flash costs little more
// than an unverified one where the target reads while it writes.
type checker struct {
	j        *job
	r        *reader
	q        chan sum
	done     chan struct{}
	once     sync.Once
	mu       sync.Mutex
	fails    []sum
	errs     []error
	verified int64 // read after done
}

func (j *job) startChecker() (*checker, error) {
	r, err := openReader(j.out, j.t.Block)
	if err != nil {
		return nil, err
	}
	c := &checker{j: j, r: r, q: make(chan sum, 32), done: make(chan struct{})}
	go c.run()
	return c, nil
}

func (c *checker) run() {
	defer close(c.done)
	defer c.r.close()
	for s := range c.q {
		if c.j.ctx.Err() != nil || c.failed() {
			continue // drain
		}
		if err := c.check(s); err != nil {
			c.mu.Lock()
			c.fails, c.errs = append(c.fails, s), append(c.errs, err)
			c.mu.Unlock()
		}
	}
}

func (c *checker) check(s sum) error {
	j := c.j
	fd := int(j.fd.Fd())
	if err := unix.SyncFileRange(fd, s.off, s.n, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER); err != nil {
		return fmt.Errorf("write bytes %d-%d of %s out: %w", s.off, s.off+s.n, j.out, err)
	}
	if !c.r.direct {
		unix.Fadvise(fd, s.off, s.n, unix.FADV_DONTNEED)
	}
	b, err := c.r.read(s.off, s.n)
	if err != nil {
		return fmt.Errorf("read back %s at byte %d: %w", j.out, s.off, err)
	}
	if maphash.Bytes(seed, b) != s.h {
		return j.differs(s)
	}
	unix.Fadvise(fd, s.off, s.n, unix.FADV_DONTNEED) // written and checked: not needed again
	c.verified += s.n
	j.m.done.Add(s.n)
	return nil
}

func (c *checker) failed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.errs) > 0
}

// add queues a written chunk; a failed check stops the writing.
func (c *checker) add(ctx context.Context, s sum) error {
	c.mu.Lock()
	if len(c.errs) > 0 {
		err := c.errs[0]
		c.mu.Unlock()
		return err
	}
	c.mu.Unlock()
	select {
	case c.q <- s:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close says no chunk follows.
func (c *checker) close() { c.once.Do(func() { close(c.q) }) }

// finish waits until every queued chunk is checked.
func (c *checker) finish() {
	c.close()
	<-c.done
}

// errIn is the first failed check of a chunk in [from, to), or nil.
func (c *checker) errIn(from, to int64) error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.fails {
		if s.off >= from && s.off < to {
			return c.errs[i]
		}
	}
	return nil
}
