package card

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"pifarm/builtins/trace"
)

// RootFile is a file written into the card's root file system (its first
// Linux partition, ext2/3/4) before the MBR: it replaces what is at Path.
type RootFile struct {
	Path     string // absolute, in the card's root
	Mode     os.FileMode
	UID, GID int
	Data     []byte
}

// RootEdit is what is changed in a card's root file system: files
// removed (when there), then files written.
type RootEdit struct {
	Remove []string
	Files  []RootFile
}

func (e RootEdit) empty() bool { return len(e.Remove) == 0 && len(e.Files) == 0 }

// TarFiles reads the regular files of a tar archive (as ssh.new_host_keys
// makes: etc/ssh/ssh_host_TYPE_key, mode 0600, root's) as root files.
func TarFiles(archive []byte) ([]RootFile, error) {
	var out []RootFile
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read the archive: %w", err)
		}
		switch h.Typeflag {
		case tar.TypeReg:
		case tar.TypeDir:
			continue
		default:
			return nil, fmt.Errorf("archive entry %s: only regular files can be written (type %q)", h.Name, h.Typeflag)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("archive entry %s: %w", h.Name, err)
		}
		p := path.Clean("/" + h.Name)
		if strings.ContainsAny(p, " \t\n\"\\") {
			return nil, fmt.Errorf("archive entry %q: a blank, quote or backslash in a path is not written", h.Name)
		}
		out = append(out, RootFile{Path: p, Mode: os.FileMode(h.Mode).Perm(), UID: h.Uid, GID: h.Gid, Data: data})
	}
}

// rootPartition is the byte offset of the image's first Linux partition
// (type 0x83) in its MBR.
func (s *Source) rootPartition() (int64, error) {
	head := make([]byte, 512)
	if _, err := s.ReadAt(head, 0); err != nil {
		return 0, fmt.Errorf("image %s: read its MBR: %w", s.Path, err)
	}
	if head[510] != 0x55 || head[511] != 0xaa {
		return 0, fmt.Errorf("image %s has no MBR: its root file system cannot be found", s.Path)
	}
	for i := 0; i < 4; i++ {
		e := head[446+16*i:]
		if e[4] == 0x83 {
			return int64(binary.LittleEndian.Uint32(e[8:])) * 512, nil
		}
	}
	return 0, fmt.Errorf("image %s has no Linux partition (type 83) in its MBR", s.Path)
}

// debugfsScript is the debugfs command file of an edit, the files' content
// taken from dir (where writeRootFiles put them, named 0, 1, ...).
func debugfsScript(e RootEdit, dir string) string {
	var b strings.Builder
	rm := append([]string(nil), e.Remove...)
	for _, f := range e.Files {
		rm = append(rm, f.Path)
	}
	sort.Strings(rm)
	for i, p := range rm {
		if i == 0 || rm[i-1] != p {
			fmt.Fprintf(&b, "rm %s\n", p)
		}
	}
	for i, f := range e.Files {
		fmt.Fprintf(&b, "write %s %s\n", filepath.Join(dir, fmt.Sprint(i)), f.Path)
		fmt.Fprintf(&b, "sif %s mode 0100%03o\n", f.Path, f.Mode.Perm())
		fmt.Fprintf(&b, "sif %s uid %d\nsif %s gid %d\n", f.Path, f.UID, f.Path, f.GID)
	}
	return b.String()
}

// debugfsErrors picks the failures out of debugfs's standard error (its
// exit status says nothing of its commands): every line but the banner and
// the removal of a file that is not there.
func debugfsErrors(stderr string) []string {
	var out []string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "", strings.HasPrefix(l, "debugfs "), strings.HasPrefix(l, "rm: File not found by ext2_lookup"):
			continue
		}
		out = append(out, l)
	}
	return out
}

// editRoot applies the job's root edit to the target's root partition with
// debugfs (e2fsprogs), offline: no mount, no loop device; the files' content
// goes through a private temporary folder, never through the trace.
func (j *job) editRoot(e RootEdit) error {
	if e.empty() {
		return nil
	}
	j.m.setPhase("root fs")
	off, err := j.src.rootPartition()
	if err != nil {
		return err
	}
	dir := "/tmp/pifarm-card"
	if !j.d.DryRun {
		if dir, err = os.MkdirTemp("", "pifarm-card"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		for i, f := range e.Files {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), f.Data, 0o600); err != nil {
				return err
			}
		}
	}
	res, err := j.d.Exec(trace.Cmd{Argv: []string{"debugfs", "-w", "-f", "-", fmt.Sprintf("%s?offset=%d", j.out, off)}, Heredoc: debugfsScript(e, dir)})
	if err != nil {
		return fmt.Errorf("edit the root file system of %s (debugfs; Debian: apt install e2fsprogs): %w", j.out, err)
	}
	if bad := debugfsErrors(string(res.Stderr)); len(bad) > 0 {
		return fmt.Errorf("edit the root file system of %s: debugfs: %s", j.out, strings.Join(bad, "; "))
	}
	return nil // debugfs syncs what it wrote when it closes the file system
}
