package fat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf16"
)

// WriteFile creates or replaces the file at path with data. A replaced
// file keeps its directory entry; its old clusters are freed only after
// the new content and chain are in place, so an interruption leaves either
// the old or the new file, at worst with clusters lost to fsck.
func (f *FS) WriteFile(path string, data []byte) error {
	if f.w == nil {
		return errors.New("FAT file system opened read-only")
	}
	dir, name := splitPath(path)
	if err := checkFATName(name); err != nil {
		return err
	}
	dc, err := f.dirCluster(dir)
	if err != nil {
		return err
	}
	dchain, err := f.chain(dc)
	if err != nil {
		return err
	}
	raw, err := f.readChain(dc, -1)
	if err != nil {
		return err
	}
	entries := parseDir(raw)
	old, found := lookup(entries, name)
	if found && old.Dir {
		return fmt.Errorf("%q is a folder", path)
	}
	dirty := map[int64]bool{}
	need := (int64(len(data)) + f.clusterSize - 1) / f.clusterSize
	clusters, err := f.alloc(int(need), dirty)
	if err != nil {
		return fmt.Errorf("write %q (%d bytes): %w", path, len(data), err)
	}
	for i, c := range clusters {
		chunk := make([]byte, f.clusterSize)
		copy(chunk, data[int64(i)*f.clusterSize:])
		if _, err := f.w.WriteAt(chunk, f.clusterOff(c)); err != nil {
			return err
		}
	}
	if err := f.flushFAT(dirty); err != nil {
		return err
	}
	first := uint32(0)
	if len(clusters) > 0 {
		first = clusters[0]
	}
	now := time.Now()
	if f.Now != nil {
		now = f.Now()
	}
	var set []byte
	slot := 0
	if found {
		slot = old.slot
		set = append([]byte(nil), raw[slot*32:slot*32+32]...)
		stampEntry(set, first, len(data), now, false)
	} else {
		set = f.newEntries(name, entries, first, len(data), now)
		k := len(set) / 32
		slot = freeRun(raw, k)
		for tries := 0; slot < 0; tries++ {
			if tries == 8 {
				return fmt.Errorf("folder %q: no room for %d entries", dir, k)
			}
			// extend the directory by one zeroed cluster
			nc, err := f.alloc(1, dirty)
			if err != nil {
				return fmt.Errorf("extend folder %q: %w", dir, err)
			}
			if _, err := f.w.WriteAt(make([]byte, f.clusterSize), f.clusterOff(nc[0])); err != nil {
				return err
			}
			f.setNext(dchain[len(dchain)-1], nc[0], dirty)
			if err := f.flushFAT(dirty); err != nil {
				return err
			}
			dchain = append(dchain, nc[0])
			raw = append(raw, make([]byte, f.clusterSize)...)
			slot = freeRun(raw, k)
		}
		slot += k - 1 // the short entry is the last of the set
	}
	firstSlot := slot - len(set)/32 + 1
	n := len(set)
	if !found {
		// entries placed past the end marker must be followed by one
		end := endMarker(raw)
		if end >= 0 && slot >= end && (slot+1)*32 < len(raw) && raw[(slot+1)*32] != 0 {
			raw[(slot+1)*32] = 0
			n += 32
		}
	}
	copy(raw[firstSlot*32:], set)
	if err := f.writeDirBytes(dchain, raw, firstSlot*32, n); err != nil {
		return err
	}
	if found && old.Cluster >= 2 {
		oldChain, err := f.chain(old.Cluster)
		if err == nil {
			for _, c := range oldChain {
				f.setNext(c, 0, dirty)
			}
			if err := f.flushFAT(dirty); err != nil {
				return err
			}
		}
	}
	return f.writeFSInfo(clusters)
}

// writeDirBytes writes raw[from:from+n] of a directory back to its clusters.
func (f *FS) writeDirBytes(chain []uint32, raw []byte, from, n int) error {
	for pos := from; pos < from+n; {
		ci := int64(pos) / f.clusterSize
		in := int64(pos) % f.clusterSize
		end := int64(from + n)
		if lim := (ci + 1) * f.clusterSize; end > lim {
			end = lim
		}
		if _, err := f.w.WriteAt(raw[pos:end], f.clusterOff(chain[ci])+in); err != nil {
			return err
		}
		pos = int(end)
	}
	return nil
}

// freeRun finds k consecutive free directory slots (deleted or never used).
func freeRun(raw []byte, k int) int {
	run, start := 0, 0
	for i := 0; i+32 <= len(raw); i += 32 {
		b := raw[i]
		if b == 0 {
			// the end marker: everything from here on is free
			if (len(raw)-i)/32+run >= k {
				if run == 0 {
					start = i / 32
				}
				return start
			}
			return -1
		}
		if b == 0xe5 {
			if run == 0 {
				start = i / 32
			}
			run++
			if run == k {
				return start
			}
			continue
		}
		run = 0
	}
	return -1
}

func (f *FS) setNext(c, v uint32, dirty map[int64]bool) {
	old := binary.LittleEndian.Uint32(f.fat[c*4:])
	binary.LittleEndian.PutUint32(f.fat[c*4:], old&0xf0000000|v&0x0fffffff)
	dirty[int64(c)*4/512] = true
}

// alloc takes n free clusters, links them into a chain ending in EOC, and
// marks the touched FAT sectors dirty.
func (f *FS) alloc(n int, dirty map[int64]bool) ([]uint32, error) {
	if n == 0 {
		return nil, nil
	}
	if err := f.loadFAT(); err != nil {
		return nil, err
	}
	var out []uint32
	for c := uint32(2); c < f.nClusters+2 && len(out) < n; c++ {
		if f.next(c) == 0 {
			out = append(out, c)
		}
	}
	if len(out) < n {
		return nil, fmt.Errorf("FAT file system full: %d clusters free, %d needed", len(out), n)
	}
	for i, c := range out {
		nx := uint32(0x0fffffff)
		if i+1 < len(out) {
			nx = out[i+1]
		}
		f.setNext(c, nx, dirty)
	}
	return out, nil
}

// flushFAT writes the dirty sectors of the FAT to every FAT copy.
func (f *FS) flushFAT(dirty map[int64]bool) error {
	secs := make([]int64, 0, len(dirty))
	for s := range dirty {
		secs = append(secs, s)
	}
	sort.Slice(secs, func(i, j int) bool { return secs[i] < secs[j] })
	for _, s := range secs {
		lo, hi := s*512, s*512+512
		if hi > int64(len(f.fat)) {
			hi = int64(len(f.fat))
		}
		for k := int64(0); k < f.nfats; k++ {
			at := f.off + (f.reserved+k*f.fatSectors)*f.bps + lo
			if _, err := f.w.WriteAt(f.fat[lo:hi], at); err != nil {
				return fmt.Errorf("write FAT %d: %w", k+1, err)
			}
		}
		delete(dirty, s)
	}
	return nil
}

// writeFSInfo recomputes the free-cluster count and next-free hint.
func (f *FS) writeFSInfo(allocated []uint32) error {
	if f.fsInfo == 0 || f.fsInfo == 0xffff {
		return nil
	}
	b := make([]byte, 512)
	at := f.off + f.fsInfo*f.bps
	if _, err := f.r.ReadAt(b, at); err != nil {
		return err
	}
	if binary.LittleEndian.Uint32(b[0:]) != 0x41615252 || binary.LittleEndian.Uint32(b[484:]) != 0x61417272 {
		return nil
	}
	free := uint32(0)
	for c := uint32(2); c < f.nClusters+2; c++ {
		if f.next(c) == 0 {
			free++
		}
	}
	binary.LittleEndian.PutUint32(b[488:], free)
	if len(allocated) > 0 {
		hint := allocated[len(allocated)-1] + 1
		if hint >= f.nClusters+2 {
			hint = 0xffffffff // unknown
		}
		binary.LittleEndian.PutUint32(b[492:], hint)
	}
	_, err := f.w.WriteAt(b[480:500], at+480)
	return err
}

// FreeBytes is the free space of the file system.
func (f *FS) FreeBytes() (int64, error) {
	if err := f.loadFAT(); err != nil {
		return 0, err
	}
	n := int64(0)
	for c := uint32(2); c < f.nClusters+2; c++ {
		if f.next(c) == 0 {
			n++
		}
	}
	return n * f.clusterSize, nil
}

const shortChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'()-@^_`{}~"

func checkFATName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > 255 {
		return fmt.Errorf("invalid FAT file name %q", name)
	}
	for _, c := range name {
		if c < 32 || strings.ContainsRune(`"*/:<>?\|`, c) {
			return fmt.Errorf("invalid FAT file name %q (character %q)", name, c)
		}
	}
	return nil
}

// fits83 reports whether name is a plain 8.3 name, returning the 11-byte
// short name and the case flags that give back its lower-case parts.
func fits83(name string) ([]byte, byte, bool) {
	base, ext := name, ""
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		base, ext = name[:i], name[i+1:]
	}
	if base == "" || len(base) > 8 || len(ext) > 3 || strings.Contains(base, ".") || (ext == "" && strings.HasSuffix(name, ".")) {
		return nil, 0, false
	}
	var flags byte
	for k, part := range []string{base, ext} {
		up, low := strings.ToUpper(part), strings.ToLower(part)
		if part != up && part != low {
			return nil, 0, false // mixed case needs a long name
		}
		if part == low && up != low {
			flags |= []byte{0x08, 0x10}[k]
		}
		for _, c := range up {
			if !strings.ContainsRune(shortChars, c) {
				return nil, 0, false
			}
		}
	}
	sn := []byte(fmt.Sprintf("%-8s%-3s", strings.ToUpper(base), strings.ToUpper(ext)))
	return sn, flags, true
}

// basis makes the "NAME~N.EXT" short name for a long name.
func basis(name string, taken map[string]bool) []byte {
	clean := func(s string, n int) string {
		var b strings.Builder
		for _, c := range strings.ToUpper(s) {
			if c == ' ' || c == '.' {
				continue
			}
			if !strings.ContainsRune(shortChars, c) {
				c = '_'
			}
			b.WriteRune(c)
			if b.Len() >= n {
				break
			}
		}
		return b.String()
	}
	base, ext := strings.TrimLeft(name, "."), ""
	if i := strings.LastIndexByte(base, '.'); i > 0 {
		base, ext = base[:i], base[i+1:]
	}
	b, e := clean(base, 8), clean(ext, 3)
	if b == "" {
		b = "_"
	}
	for n := 1; n < 1000000; n++ {
		tail := fmt.Sprintf("~%d", n)
		bb := b
		if len(bb)+len(tail) > 8 {
			bb = bb[:8-len(tail)]
		}
		cand := bb + tail
		full := cand
		if e != "" {
			full += "." + e
		}
		if !taken[full] {
			return []byte(fmt.Sprintf("%-8s%-3s", cand, e))
		}
	}
	return []byte(fmt.Sprintf("%-8s%-3s", "_~X", e))
}

func dosTime(t time.Time) (date, tm uint16) {
	if t.Year() < 1980 {
		t = time.Date(1980, 1, 1, 0, 0, 0, 0, time.Local)
	}
	date = uint16((t.Year()-1980)<<9 | int(t.Month())<<5 | t.Day())
	tm = uint16(t.Hour()<<11 | t.Minute()<<5 | t.Second()/2)
	return
}

// stampEntry sets cluster, size and times of a short entry.
func stampEntry(e []byte, cluster uint32, size int, now time.Time, created bool) {
	d, t := dosTime(now)
	if created {
		e[13] = byte(now.Second()%2*100 + now.Nanosecond()/10000000)
		binary.LittleEndian.PutUint16(e[14:], t)
		binary.LittleEndian.PutUint16(e[16:], d)
	}
	binary.LittleEndian.PutUint16(e[18:], d)
	binary.LittleEndian.PutUint16(e[20:], uint16(cluster>>16))
	binary.LittleEndian.PutUint16(e[22:], t)
	binary.LittleEndian.PutUint16(e[24:], d)
	binary.LittleEndian.PutUint16(e[26:], uint16(cluster))
	binary.LittleEndian.PutUint32(e[28:], uint32(size))
}

// newEntries builds the long-name entries (when needed) and the short entry
// for a new file.
func (f *FS) newEntries(name string, existing []DirEntry, cluster uint32, size int, now time.Time) []byte {
	short := make([]byte, 32)
	sn, flags, ok := fits83(name)
	var lfn []byte
	if !ok {
		taken := map[string]bool{}
		for _, e := range existing {
			taken[strings.ToUpper(e.Short)] = true
		}
		sn = basis(name, taken)
		units := utf16.Encode([]rune(name))
		n := (len(units) + 12) / 13
		padded := make([]uint16, n*13)
		for i := range padded {
			switch {
			case i < len(units):
				padded[i] = units[i]
			case i == len(units):
				padded[i] = 0
			default:
				padded[i] = 0xffff
			}
		}
		sum := lfnChecksum(sn)
		for seq := n; seq >= 1; seq-- {
			e := make([]byte, 32)
			e[0] = byte(seq)
			if seq == n {
				e[0] |= 0x40
			}
			e[11], e[13] = 0x0f, sum
			for k, o := range []int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30} {
				binary.LittleEndian.PutUint16(e[o:], padded[(seq-1)*13+k])
			}
			lfn = append(lfn, e...)
		}
	}
	copy(short, sn)
	short[11] = 0x20
	short[12] = flags
	stampEntry(short, cluster, size, now, true)
	return append(lfn, short...)
}

// endMarker is the slot of a directory's end marker, or -1.
func endMarker(raw []byte) int {
	for i := 0; i+32 <= len(raw); i += 32 {
		if raw[i] == 0 {
			return i / 32
		}
	}
	return -1
}
