package farm

import (
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// LoopsOf lists the loop devices (/dev/loopN) that read one of the files
// paths: a mount of an image's partition (mount -o loop) or a losetup. A
// device is matched by the device and inode the kernel reports for its
// backing file (LOOP_GET_STATUS64) when pifarm may open it, else by the
// backing file's path (links resolved) as /sys shows it.
func LoopsOf(paths ...string) []string {
	want := map[string]bool{}
	keys := map[fileKey]bool{}
	for _, p := range paths {
		if p == "" {
			continue
		}
		want[p] = true
		if r, err := filepath.EvalSymlinks(p); err == nil {
			want[r] = true
		}
		if k, err := keyOf(p); err == nil {
			keys[k] = true
		}
	}
	if len(want) == 0 {
		return nil
	}
	ents, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, e := range ents {
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(e)))
		if k, ok := loopKey(dev); ok {
			if keys[k] {
				out = append(out, dev)
			}
			continue
		}
		b, err := os.ReadFile(e)
		if err != nil {
			continue
		}
		if want[strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")] {
			out = append(out, dev)
		}
	}
	sort.Strings(out)
	return out
}

// loopKey is the device and inode of a loop device's backing file.
func loopKey(dev string) (fileKey, bool) {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fileKey{}, false
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return fileKey{}, false
	}
	return fileKey{dev: info.Device, ino: info.Inode}, true
}
