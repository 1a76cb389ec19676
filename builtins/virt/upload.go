package virt

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-libvirt"
	xssh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
	"pifarm/builtins/trace"
)

// Pool is the storage pool pifarm keeps its volumes in on a remote host,
// PoolDir its folder there.
const (
	Pool    = "pifarm"
	PoolDir = "/var/lib/libvirt/images/pifarm"
)

// chunk bounds one upload call (at most 256 MiB of 4 MiB stream packets): the progress record is written after each.
const chunk = 64 << 20

// EnsurePool makes the storage pool on the host when it is missing (a
// folder pool at PoolDir, built, started, started at boot) and starts it
// when it is stopped. The trace shows the virsh commands.
func (c *Conn) EnsurePool(ctx context.Context, d *trace.Door) error {
	var pool libvirt.StoragePool
	var state uint8
	missing := false
	err := c.Call(ctx, 20*time.Second, func(l *libvirt.Libvirt) error {
		p, err := l.StoragePoolLookupByName(Pool)
		if err != nil {
			var le libvirt.Error
			if errors.As(err, &le) && le.Code == uint32(libvirt.ErrNoStoragePool) {
				missing = true
				return nil
			}
			return err
		}
		pool = p
		state, _, _, _, err = l.StoragePoolGetInfo(p)
		return err
	})
	if err != nil {
		return fmt.Errorf("libvirt %s: storage pool %s: %w", c.Host.URI, Pool, err)
	}
	if !missing && state == uint8(libvirt.StoragePoolRunning) {
		return nil
	}
	u := c.Host.URI
	var lines []string
	if missing {
		lines = append(lines, d.Line(Virsh(u, "pool-define-as", Pool, "dir", "--target", PoolDir)),
			d.Line(Virsh(u, "pool-build", Pool)), d.Line(Virsh(u, "pool-autostart", Pool)))
	}
	lines = append(lines, d.Line(Virsh(u, "pool-start", Pool)))
	return d.Do(strings.Join(lines, "\n"), func() error {
		return c.Call(ctx, 60*time.Second, func(l *libvirt.Libvirt) error {
			if missing {
				x := "<pool type='dir'><name>" + esc(Pool) + "</name><target><path>" + esc(PoolDir) + "</path></target></pool>"
				p, err := l.StoragePoolDefineXML(x, 0)
				if err != nil {
					return fmt.Errorf("define storage pool %s: %w", Pool, err)
				}
				pool = p
				if err := l.StoragePoolBuild(p, 0); err != nil {
					return fmt.Errorf("build storage pool %s: %w", Pool, err)
				}
				if err := l.StoragePoolSetAutostart(p, 1); err != nil {
					return fmt.Errorf("autostart storage pool %s: %w", Pool, err)
				}
			}
			if err := l.StoragePoolCreate(pool, 0); err != nil {
				return fmt.Errorf("start storage pool %s: %w", Pool, err)
			}
			return nil
		})
	})
}

// VolPath is where volume name of pifarm's pool lies on the host.
func VolPath(name string) string { return PoolDir + "/" + name }

// Upload copies a local file into volume Vol of pifarm's pool on a remote
// host, once: a volume whose record says it holds this very file (same
// size and modification time, checksum verified) is left alone.
//
// Only the data extents of a sparse file travel (SEEK_DATA/SEEK_HOLE; the
// volume is made sparse, so a hole stays a hole there too), in pieces of
// at most 64 MiB (see Pieces), and the record (State, a local JSON file)
// says how far it got: an upload that was interrupted (Ctrl-C, a lost
// connection) goes on from there at the next command. Progress receives a
// line a second. On a remote host every piece is checked while the next
// one travels: the sha256 of its range of the volume, read back there over
// the host's SSH connection (RangeSumScript), must be the one sent.
type Upload struct {
	Vol      string // volume name
	Local    string // the local file
	State    string // the local record of the upload
	Progress io.Writer
	// Source, when set, is the file whose size and modification time
	// identify the content (Local is then made from it by Prepare, only
	// when an upload is needed: a copy with another backing file name).
	Source  string
	Prepare func() error
	// Keep: the volume is an instance's disk, which lives on the host
	// from its first start on. A volume holding an earlier, complete
	// upload of a file that changed here since is not replaced (that
	// would lose what the guest wrote there): Upload refuses, naming the
	// choice.
	Keep bool
}

// uploadState is the record of an upload.
type uploadState struct {
	Key  string `json:"key"`  // size and modification time of the local file
	Done int64  `json:"done"` // bytes of the file uploaded (and checked) from the start
	// SHA256, set when the upload is complete, is the sha256 of the
	// list of its pieces and their checked sums.
	SHA256 string `json:"sha256,omitempty"`
}

func fileKey(fi os.FileInfo) string {
	return strconv.FormatInt(fi.Size(), 10) + "-" + strconv.FormatInt(fi.ModTime().UnixNano(), 10)
}

// Run performs the upload through the door d (dry: the virsh commands
// only) and returns the volume's path on the host.
func (c *Conn) Upload(ctx context.Context, d *trace.Door, u Upload) (string, error) {
	path := VolPath(u.Vol)
	src := u.Source
	if src == "" {
		src = u.Local
	}
	fi, err := os.Stat(src)
	if err != nil {
		return "", fmt.Errorf("upload %s to %s: %w", src, c.Host.Name(), err)
	}
	key := fileKey(fi)
	var st uploadState
	if b, err := os.ReadFile(u.State); err == nil {
		json.Unmarshal(b, &st)
	}
	old := st
	if st.Key != key {
		st = uploadState{Key: key}
	}
	var vol libvirt.StorageVol
	var volSize uint64
	exists := false
	err = c.Call(ctx, 20*time.Second, func(l *libvirt.Libvirt) error {
		p, err := l.StoragePoolLookupByName(Pool)
		var le libvirt.Error
		if errors.As(err, &le) && le.Code == uint32(libvirt.ErrNoStoragePool) && d.DryRun {
			return nil // made by this (dry) run
		}
		if err != nil {
			return err
		}
		if err := l.StoragePoolRefresh(p, 0); err != nil {
			return err
		}
		v, err := l.StorageVolLookupByName(p, u.Vol)
		if err != nil {
			var le libvirt.Error
			if errors.As(err, &le) && le.Code == uint32(libvirt.ErrNoStorageVol) {
				return nil
			}
			return err
		}
		vol, exists = v, true
		_, volSize, _, err = l.StorageVolGetInfo(v)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("libvirt %s: volume %s: %w", c.Host.URI, u.Vol, err)
	}
	if exists && st.SHA256 != "" && st.Done == int64(volSize) {
		return path, nil // uploaded and verified before
	}
	if u.Keep && exists && old.SHA256 != "" && old.Key != key {
		return "", fmt.Errorf("volume %s on %s is this instance's disk, uploaded from %s before it changed here; the guest has been writing to it since, so it is not replaced. Keep working on the host's disk (undo the local change), or replace it on purpose: virsh -c %s vol-delete --pool %s %s, then start again", u.Vol, c.Host.Name(), src, c.Host.URI, Pool, u.Vol)
	}
	if u.Prepare != nil {
		if err := d.Do("# make "+trace.Quote(u.Local)+" from "+trace.Quote(src)+" for the host", u.Prepare); err != nil {
			return "", err
		}
		if !d.DryRun {
			if fi, err = os.Stat(u.Local); err != nil {
				return "", err
			}
		}
	}
	fresh := !exists || st.Done == 0 || volSize != uint64(fi.Size())
	if fresh {
		st.Done = 0
	}
	var lines []string
	if exists && fresh {
		lines = append(lines, d.Line(Virsh(c.Host.URI, "vol-delete", "--pool", Pool, u.Vol)))
	}
	if fresh {
		lines = append(lines, d.Line(Virsh(c.Host.URI, "vol-create-as", Pool, u.Vol, strconv.FormatInt(fi.Size(), 10)+"b", "--allocation", "0", "--format", "raw")))
	}
	up := Virsh(c.Host.URI, "vol-upload", "--pool", Pool, "--sparse", u.Vol, u.Local)
	if st.Done > 0 {
		up = Virsh(c.Host.URI, "vol-upload", "--pool", Pool, "--offset", strconv.FormatInt(st.Done, 10), u.Vol, u.Local)
		lines = append(lines, fmt.Sprintf("# an earlier upload got to byte %d of %d: it goes on from there", st.Done, fi.Size()))
	}
	lines = append(lines, d.Line(up))
	if c.ssh != nil {
		lines = append(lines, fmt.Sprintf("# checked on %s piece by piece: the sha256 of each range of %s (openssl dgst -sha256, else sha256sum) is the one sent", c.Host.Name(), trace.Quote(path)))
	}
	err = d.Do(strings.Join(lines, "\n"), func() error {
		if fresh {
			if err := c.Call(ctx, 60*time.Second, func(l *libvirt.Libvirt) error {
				p, err := l.StoragePoolLookupByName(Pool)
				if err != nil {
					return err
				}
				if exists {
					if err := l.StorageVolDelete(vol, 0); err != nil {
						return err
					}
				}
				x := fmt.Sprintf("<volume><name>%s</name><capacity unit='bytes'>%d</capacity><allocation unit='bytes'>0</allocation><target><format type='raw'/></target></volume>", esc(u.Vol), fi.Size())
				vol, err = l.StorageVolCreateXML(p, x, 0)
				return err
			}); err != nil {
				return fmt.Errorf("create volume %s: %w", u.Vol, err)
			}
		}
		return c.send(ctx, vol, u, &st)
	})
	if err != nil {
		return "", fmt.Errorf("libvirt %s: upload %s to volume %s: %w", c.Host.URI, u.Local, u.Vol, err)
	}
	return path, nil
}

// send uploads the data extents of u.Local past st.Done, recording
// progress. Over SSH the host checks each piece (sha256 of its range of
// the volume, read back there) while the next one travels, so the check
// costs little more than the last piece's; the record's Done then counts
// the bytes checked, and a resumed upload sends again what was sent but
// not yet checked.
func (c *Conn) send(ctx context.Context, vol libvirt.StorageVol, u Upload, st *uploadState) error {
	f, err := os.Open(u.Local)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	ext, err := Extents(f, size)
	if err != nil {
		return fmt.Errorf("%s: %w", u.Local, err)
	}
	// the record's sha256: of the pieces' sums, in order (each piece was
	// checked on the host; nothing reads the file a second time here)
	marker := sha256.New()
	var mu sync.Mutex // st and the record
	save := func() error {
		b, _ := json.Marshal(st)
		return trace.WriteAtomic(u.State, b, 0o600, false)
	}
	advance := func(to int64) error {
		mu.Lock()
		defer mu.Unlock()
		if to <= st.Done {
			return nil
		}
		st.Done = to
		return save()
	}
	if st.Done > 0 && u.Progress != nil {
		fmt.Fprintf(u.Progress, "upload %s: resuming at byte %d of %d (an earlier upload got that far)\n", u.Vol, st.Done, size)
	}
	// the host's checks, one piece after the other, behind the upload
	type piece struct {
		off, n int64
		sum    string
	}
	var check chan piece
	checked := make(chan error, 1)
	if c.ssh != nil {
		sums, err := c.rangeSums(VolPath(u.Vol))
		if err != nil {
			return err
		}
		check = make(chan piece, 4)
		go func() {
			defer sums.Close()
			var failed error
			for p := range check {
				if failed != nil {
					continue
				}
				got, err := sums.Sum(p.off, p.n)
				switch {
				case err != nil:
					failed = fmt.Errorf("checksum of bytes %d to %d of %s on %s: %w", p.off, p.off+p.n, VolPath(u.Vol), c.Host.Name(), err)
				case got != p.sum:
					failed = fmt.Errorf("checksum mismatch: bytes %d to %d of %s on %s are not those of %s (sha256 %s there, %s here); the next start uploads again from there", p.off, p.off+p.n, VolPath(u.Vol), c.Host.Name(), u.Local, got, p.sum)
				default:
					failed = advance(p.off + p.n)
				}
			}
			checked <- failed
		}()
	} else {
		checked <- nil
	}
	finish := func() error {
		if check != nil {
			close(check)
			check = nil
		}
		return <-checked
	}
	defer func() {
		// interrupted (Ctrl-C, an error): the pieces already sent are
		// checked still, for a few seconds at most, so that the next
		// start goes on after them
		if check != nil {
			close(check)
			select {
			case <-checked:
			case <-time.After(5 * time.Second):
			}
		}
	}()
	start, sent, shown := time.Now(), int64(0), time.Time{}
	last := int64(0)
	if len(ext) > 0 {
		last = ext[len(ext)-1].Off + ext[len(ext)-1].Len
	}
	for _, pc := range Pieces(ext, st.Done, chunk, maxGap) {
		h := sha256.New()
		r := io.TeeReader(io.NewSectionReader(f, pc.Off, pc.Len), h)
		err := c.Call(ctx, 10*time.Minute, func(l *libvirt.Libvirt) error {
			return l.StorageVolUpload(vol, r, uint64(pc.Off), uint64(pc.Len), 0)
		})
		if err != nil {
			return err
		}
		ps := hex.EncodeToString(h.Sum(nil))
		fmt.Fprintf(marker, "%d %d %s\n", pc.Off, pc.Len, ps)
		if check != nil {
			check <- piece{pc.Off, pc.Len, ps}
		} else if err := advance(pc.Off + pc.Len); err != nil {
			return err
		}
		sent += pc.Len
		if end := pc.Off + pc.Len; u.Progress != nil && time.Since(shown) >= time.Second && end != last {
			shown = time.Now()
			el := time.Since(start).Seconds()
			fmt.Fprintf(u.Progress, "upload %s: %d%% (%d of %d MiB of data sent, %.0f MiB/s)\n", u.Vol, end*100/size, sent>>20, allocated(fi)>>20, float64(sent)/(1<<20)/max(el, 0.001))
		}
	}
	if err := finish(); err != nil {
		return err
	}
	if u.Progress != nil {
		el := time.Since(start).Seconds()
		how := ""
		if c.ssh != nil {
			how = ", each piece checked there by sha256"
		}
		fmt.Fprintf(u.Progress, "upload %s: 100%% (%d MiB of data sent in %.1f s, %.0f MiB/s%s)\n", u.Vol, sent>>20, el, float64(sent)/(1<<20)/max(el, 0.001), how)
	}
	local := hex.EncodeToString(marker.Sum(nil))
	mu.Lock()
	defer mu.Unlock()
	st.Done, st.SHA256 = size, local
	return save()
}

// allocated is the bytes a file holds on disk.
func allocated(fi os.FileInfo) int64 {
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		return s.Blocks * 512
	}
	return fi.Size()
}

// Extent is a range of a sparse file that holds data: Off, Len bytes.
type Extent struct{ Off, Len int64 }

// Extents lists the data extents of the first size bytes of f
// (SEEK_DATA/SEEK_HOLE; a file system without them reports one extent).
func Extents(f *os.File, size int64) ([]Extent, error) {
	var out []Extent
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole: %w", err)
		}
		hole = min(hole, size)
		if data >= hole {
			break
		}
		out = append(out, Extent{data, hole - data})
		off = hole
	}
	return out, nil
}

// RangeSumScript is the shell script that reads lines "OFFSET LENGTH" on
// its standard input and prints, for each, the sha256 of that range of the
// file at path on a host (GNU dd; openssl's digest, which uses the CPU's
// SHA instructions, 4x coreutils' sha256sum here, else sha256sum): one
// session checks every piece of an upload (a session each cost 130 ms).
func RangeSumScript(path string) string {
	return "f=" + trace.Quote(path) + "\n" +
		"if command -v openssl >/dev/null 2>&1; then sum() { openssl dgst -sha256 -r; }; else sum() { sha256sum; }; fi\n" +
		"while read -r off len; do\n" +
		"  dd if=\"$f\" bs=4M iflag=skip_bytes,count_bytes skip=\"$off\" count=\"$len\" status=none | sum || echo failed\n" +
		"done\n"
}

// rangeSums is RangeSumScript running on a remote host.
type rangeSums struct {
	s   *xssh.Session
	in  io.WriteCloser
	out *bufio.Reader
	err strings.Builder
}

// rangeSums starts RangeSumScript for path on the host.
func (c *Conn) rangeSums(path string) (*rangeSums, error) {
	s, err := c.ssh.NewSession()
	if err != nil {
		return nil, fmt.Errorf("checksums on %s: %w", c.Host.Name(), err)
	}
	r := &rangeSums{s: s}
	s.Stderr = &r.err
	if r.in, err = s.StdinPipe(); err == nil {
		var out io.Reader
		if out, err = s.StdoutPipe(); err == nil {
			r.out = bufio.NewReader(out)
			err = s.Start("sh -c " + trace.Quote(RangeSumScript(path)))
		}
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("checksums on %s: %w", c.Host.Name(), err)
	}
	return r, nil
}

// Sum is the hex sha256 of n bytes at off of the file on the host.
func (r *rangeSums) Sum(off, n int64) (string, error) {
	if _, err := fmt.Fprintf(r.in, "%d %d\n", off, n); err != nil {
		return "", err
	}
	line, err := r.out.ReadString('\n')
	if f := strings.Fields(line); err == nil && len(f) > 0 && len(f[0]) == 64 {
		return f[0], nil
	}
	return "", fmt.Errorf("no checksum (%q, %v): %s", strings.TrimSpace(line), err, strings.TrimSpace(r.err.String()))
}

// Close ends the script.
func (r *rangeSums) Close() {
	r.in.Close()
	r.s.Wait()
	r.s.Close()
}

// maxGap is the largest hole between two extents that an upload sends as
// zeros rather than starting another piece: every piece costs an RPC
// (a stream's start and finish) and a check, 20 ms or more on a remote
// host, and the holes between a file system's small extents are small.
const maxGap = 1 << 20

// Pieces plans an upload of the data extents ext from offset from on:
// ranges of at most max bytes, an extent's own or several extents' with
// the holes between them of at most gap bytes (sent as the zeros they
// read as).
func Pieces(ext []Extent, from, max, gap int64) []Extent {
	var out []Extent
	var cur Extent
	flush := func() {
		for cur.Len > 0 {
			n := min(cur.Len, max)
			out = append(out, Extent{cur.Off, n})
			cur.Off, cur.Len = cur.Off+n, cur.Len-n
		}
	}
	for _, e := range ext {
		if e.Off+e.Len <= from {
			continue
		}
		if e.Off < from {
			e = Extent{from, e.Off + e.Len - from}
		}
		if cur.Len > 0 && e.Off-(cur.Off+cur.Len) <= gap && e.Off+e.Len-cur.Off <= max {
			cur.Len = e.Off + e.Len - cur.Off
			continue
		}
		flush()
		cur = e
	}
	flush()
	return out
}

// remote runs cmd on a remote host over its SSH connection and returns
// its standard output; a failure quotes its standard error.
func (c *Conn) remote(cmd string) (string, error) {
	return c.RemoteInput(cmd, "")
}

// RemoteInput runs cmd on the remote host with stdin; see remote.
func (c *Conn) RemoteInput(cmd, stdin string) (string, error) {
	if c.ssh == nil {
		return "", fmt.Errorf("%s is this machine: no SSH connection", c.Host.URI)
	}
	s, err := c.ssh.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	var out, errb strings.Builder
	s.Stdout, s.Stderr = &out, &errb
	s.Stdin = strings.NewReader(stdin)
	if err := s.Run(cmd); err != nil {
		return out.String(), fmt.Errorf("%s: %v: %s", cmd, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}
