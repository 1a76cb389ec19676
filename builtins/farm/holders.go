package farm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Holder is a live process that holds a file open.
type Holder struct {
	PID int
	// Write: one of its descriptors of the file may write (O_WRONLY or
	// O_RDWR), as QEMU's descriptor of a disk it runs on.
	Write bool
	// Exe is its executable (/proc/PID/exe), "" when unreadable.
	Exe string
	// Args is its command line.
	Args []string
}

// String names the process for an error message: "pid 123 (qemu-system-aarch64 -name loner ...)".
func (h Holder) String() string {
	desc := strings.Join(h.Args, " ")
	if desc == "" {
		desc = h.Exe
	}
	if len(desc) > 100 {
		desc = desc[:97] + "..."
	}
	return fmt.Sprintf("pid %d (%s)", h.PID, desc)
}

// IsQEMU reports whether the holder's executable is a qemu-system binary
// (or the binary named, e.g. the configured one).
func (h Holder) IsQEMU(binary string) bool {
	base := h.Exe[strings.LastIndexByte(h.Exe, '/')+1:]
	if strings.HasPrefix(base, "qemu-system") {
		return true
	}
	return binary != "" && base == binary[strings.LastIndexByte(binary, '/')+1:]
}

// fileKey is a file's identity: device and inode.
type fileKey struct{ dev, ino uint64 }

func keyOf(path string) (fileKey, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileKey{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return fileKey{uint64(st.Dev), st.Ino}, nil
}

// Holders returns the processes, other than this one, that hold the file
// at path open, each once. Files are compared by device and inode, never
// by the text of a path: a path through a symbolic link, a bind mount or
// another hard link finds the same processes, and a file that was
// replaced at path (a rename) is not confused with the old one a process
// still holds. It scans /proc/PID/fd of every process; processes whose
// descriptors this user may not read (another user's, unless pifarm runs
// as root) and processes of other PID namespaces are not seen.
func Holders(path string) ([]Holder, error) {
	key, err := keyOf(path)
	if err != nil {
		return nil, err
	}
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	self := os.Getpid()
	var out []Holder
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid == self {
			continue
		}
		if held, write := holds(pid, key); held {
			out = append(out, describe(pid, write))
		}
	}
	return out, nil
}

// Holds reports whether process pid holds the file at path open (compared
// by device and inode), and whether for writing.
func Holds(pid int, path string) (held, write bool) {
	key, err := keyOf(path)
	if err != nil {
		return false, false
	}
	return holds(pid, key)
}

func holds(pid int, key fileKey) (held, write bool) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	d, err := os.Open(dir)
	if err != nil {
		return false, false
	}
	fds, _ := d.Readdirnames(-1)
	d.Close()
	for _, fd := range fds {
		var st unix.Stat_t
		if unix.Stat(dir+fd, &st) != nil || st.Ino != key.ino || uint64(st.Dev) != key.dev {
			continue
		}
		held = true
		if fdWrites(pid, fd) {
			return true, true
		}
	}
	return held, false
}

// fdWrites reads the access mode of descriptor fd of pid from
// /proc/PID/fdinfo/FD ("flags:" in octal); unknown counts as writing.
func fdWrites(pid int, fd string) bool {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/fdinfo/" + fd)
	if err != nil {
		return true
	}
	defer f.Close()
	return infoWrites(f)
}

// infoWrites reads the "flags:" line (octal) of a /proc/PID/fdinfo/FD
// text: whether the descriptor may write. A missing or unreadable line
// counts as writing.
func infoWrites(r io.Reader) bool {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "flags:"); ok {
			fl, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			if err != nil {
				return true
			}
			return fl&unix.O_ACCMODE != unix.O_RDONLY
		}
	}
	return true
}

func describe(pid int, write bool) Holder {
	h := Holder{PID: pid, Write: write}
	h.Exe, _ = os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	h.Exe = strings.TrimSuffix(h.Exe, " (deleted)")
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil {
		h.Args = strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	}
	return h
}

// LockHolder tells whether a process holds a POSIX record lock (fcntl) on
// the file at path that a write lock on the whole file would conflict
// with, and which: pid is 0 when the holder is not visible from here
// (another PID namespace) and -1 for an open-file-description lock. QEMU
// holds such a lock on its -pidfile for as long as it runs, so an
// unlocked pidfile proves that the QEMU which wrote it is gone. The file
// is opened read-only without following a symbolic link.
func LockHolder(path string) (locked bool, pid int, err error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return false, 0, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_GETLK, &lk); err != nil {
		return false, 0, &os.PathError{Op: "fcntl F_GETLK", Path: path, Err: err}
	}
	if lk.Type == unix.F_UNLCK {
		return false, 0, nil
	}
	return true, int(lk.Pid), nil
}

// IsSymlinkErr reports whether err is the refusal of an O_NOFOLLOW open of
// a symbolic link.
func IsSymlinkErr(err error) bool { return errors.Is(err, unix.ELOOP) }
