package chroot

import (
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"pifarm/builtins/trace"
)

// The boot partition (FAT) is not mounted through the kernel, whose vfat
// driver many hosts (containers, micro-VMs) lack: its files are copied with
// mtools into a tmpfs on the guest's boot folder when the root opens, and
// what the guest's programs changed there (a kernel package writes
// kernel8.img and the dtbs) is copied back file by file when it closes. So
// the boot partition reads and changes as it would under a mount, with the
// same commands on every host, and only changed files are written.

// bootFile is what copy-in found of one file of the boot partition.
type bootFile struct {
	size int64
	sum  [32]byte
}

// bootCopy is the boot partition copied into the guest's root.
type bootCopy struct {
	image  string // the mtools image spec: FILE@@OFFSET
	target string // host path of the guest's boot folder
	files  map[string]bootFile
	dirs   map[string]bool
}

// copyInBoot mounts a tmpfs on the guest's boot folder and copies the boot
// partition's files into it.
func (r *Root) copyInBoot(p Part, target string) error {
	b := &bootCopy{image: fmt.Sprintf("%s@@%d", r.source, p.Offset), target: target}
	if err := r.mount([]string{"mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", target}); err != nil {
		return err
	}
	r.boot = b
	if !r.d.DryRun {
		res, err := r.d.Query(trace.Cmd{Argv: []string{"mdir", "-b", "-i", b.image, "::/"}, Sudo: true})
		if err != nil {
			return fmt.Errorf("read the boot partition: %w", err)
		}
		if strings.TrimSpace(string(res.Stdout)) == "" {
			b.files, b.dirs = map[string]bootFile{}, map[string]bool{}
			return nil
		}
	}
	if _, err := r.d.Exec(trace.Cmd{Argv: []string{"mcopy", "-s", "-p", "-m", "-n", "-i", b.image, "::/*", target + "/"}, Sudo: true}); err != nil {
		return fmt.Errorf("copy the boot partition's files: %w", err)
	}
	if r.d.DryRun {
		return nil
	}
	var err error
	b.files, b.dirs, err = scanBoot(target)
	return err
}

// scanBoot lists the files (with size and SHA-256) and folders under dir,
// by their path relative to it.
func scanBoot(dir string) (map[string]bootFile, map[string]bool, error) {
	files, dirs := map[string]bootFile{}, map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case rel == ".":
			return nil
		case e.IsDir():
			dirs[rel] = true
			return nil
		case !e.Type().IsRegular():
			return fmt.Errorf("the boot folder holds %s, which is neither a file nor a folder: a FAT file system cannot keep it", rel)
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		n, err := io.Copy(h, f)
		if err != nil {
			return err
		}
		var bf bootFile
		bf.size = n
		copy(bf.sum[:], h.Sum(nil))
		files[rel] = bf
		return nil
	})
	return files, dirs, err
}

// copyOutBoot writes back to the boot partition what changed in the
// guest's boot folder since copy-in: new folders, new and changed files,
// then removed files and folders (deepest first). Dry, it says so.
func (r *Root) copyOutBoot() error {
	b := r.boot
	if r.d.DryRun {
		r.d.Note("the files of %s that commands changed are copied back to the boot partition (mcopy -o, mmd, mdel, mrd)", b.target)
		return nil
	}
	if b.files == nil {
		return nil // copy-in did not finish: nothing is known to write back
	}
	files, dirs, err := scanBoot(b.target)
	if err != nil {
		return fmt.Errorf("write back the boot partition: %w", err)
	}
	mt := func(argv ...string) error {
		_, err := r.d.ExecFinally(trace.Cmd{Argv: argv, Sudo: true}, closeTimeout)
		return err
	}
	for _, d := range sorted(dirs) {
		if !b.dirs[d] {
			if err := mt("mmd", "-i", b.image, "::/"+d); err != nil {
				return err
			}
		}
	}
	for _, f := range sorted(files) {
		if old, ok := b.files[f]; ok && old == files[f] {
			continue
		}
		if err := mt("mcopy", "-o", "-p", "-m", "-i", b.image, filepath.Join(b.target, f), "::/"+f); err != nil {
			return err
		}
	}
	for _, f := range sorted(b.files) {
		if _, ok := files[f]; !ok {
			if err := mt("mdel", "-i", b.image, "::/"+f); err != nil {
				return err
			}
		}
	}
	gone := sorted(b.dirs)
	sort.Slice(gone, func(i, j int) bool { return len(gone[i]) > len(gone[j]) })
	for _, d := range gone {
		if !dirs[d] {
			if err := mt("mrd", "-i", b.image, "::/"+d); err != nil {
				return err
			}
		}
	}
	return nil
}

// sorted returns the keys of m in order.
func sorted[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
