package pkgcache

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Names and modes of the cache's files.
const (
	fileMode = 0o644
	dirMode  = 0o755
	// tmpPrefix starts the name of a download in progress. No cache key
	// component starts with a dot (CacheKey refuses it), so a request never
	// names one.
	tmpPrefix = ".pkgcache-"
	maxName   = 255
	maxPath   = 4096
)

// CacheKey is the place in the cache of a cacheable http URL's host and
// (decoded) path: the host folder first, then the path's components, each
// one a plain file name. It refuses, rather than cleans, anything that
// could name a place outside the cache or a file the cache did not write:
// an empty host, a component "..", one that starts with a dot, one with a
// control character, a NUL or invalid UTF-8, one longer than 255 bytes.
// Empty components (a doubled slash) and "." (a flat repository's
// "Filename: ./x.deb") are dropped, as URL normalisation does. The host is
// lower-cased and loses the default port 80; another port stays ("host:8080"),
// so two origins never share a folder.
func CacheKey(host, path string) ([]string, error) {
	h, err := hostDir(host)
	if err != nil {
		return nil, err
	}
	if len(path) > maxPath {
		return nil, fmt.Errorf("path of %d bytes is longer than %d", len(path), maxPath)
	}
	key := []string{h}
	for _, c := range strings.Split(path, "/") {
		if c == "" || c == "." {
			continue
		}
		if err := checkName(c); err != nil {
			return nil, fmt.Errorf("path %q: %w", path, err)
		}
		key = append(key, c)
	}
	if len(key) < 2 {
		return nil, fmt.Errorf("path %q names no file", path)
	}
	return key, nil
}

// hostDir is the folder name of a URL host: lower case, without the default
// port, only the characters of a host name, an IP address or a port.
func hostDir(host string) (string, error) {
	h := strings.ToLower(host)
	if name, port, err := net.SplitHostPort(h); err == nil && port == "80" {
		h = name
		if strings.Contains(h, ":") {
			h = "[" + h + "]"
		}
	}
	if h == "" {
		return "", errors.New("empty host")
	}
	if len(h) > maxName {
		return "", fmt.Errorf("host of %d bytes is longer than %d", len(h), maxName)
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte(".-_:[]", c) >= 0) {
			return "", fmt.Errorf("host %q: character %q is not one of a host name", host, c)
		}
	}
	if h[0] == '.' {
		return "", fmt.Errorf("host %q starts with a dot", host)
	}
	return h, nil
}

// checkName refuses a path component that is not a plain file name.
func checkName(c string) error {
	switch {
	case c == "." || c == "..":
		return fmt.Errorf("component %q climbs the tree", c)
	case c[0] == '.':
		return fmt.Errorf("component %q starts with a dot", c)
	case len(c) > maxName:
		return fmt.Errorf("component of %d bytes is longer than %d", len(c), maxName)
	case !utf8.ValidString(c):
		return fmt.Errorf("component %q is not UTF-8", c)
	}
	for _, r := range c {
		if r < 0x20 || r == 0x7f || r == '/' || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("component %q holds the control character %U", c, r)
		}
	}
	return nil
}

// store is the cache folder, held open: every file is reached from its
// descriptor one component at a time with O_NOFOLLOW, so a symbolic link
// planted anywhere inside is never followed (a name it takes is a miss, and
// a download replaces it).
type store struct {
	dir string
	fd  int
}

// openStore makes dir (0755) and holds it open. dir itself must be a
// folder, not a symbolic link.
func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("make the package cache folder %s: %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return nil, fmt.Errorf("open the package cache folder %s: it is not a folder but a symbolic link or file (remove it: pifarm makes it)", dir)
		}
		return nil, fmt.Errorf("open the package cache folder %s: %w", dir, err)
	}
	return &store{dir: dir, fd: fd}, nil
}

func (s *store) close() error { return unix.Close(s.fd) }

// path is the file name of key, for messages.
func (s *store) path(key []string) string { return s.dir + "/" + strings.Join(key, "/") }

// parent opens the folder holding key's file, walking from the cache folder
// without following links; with create it makes missing folders (0755).
// The caller closes the returned descriptor.
func (s *store) parent(key []string, create bool) (int, error) {
	fd, err := unix.Dup(s.fd)
	if err != nil {
		return -1, err
	}
	for _, c := range key[:len(key)-1] {
		next, err := openDir(fd, c)
		if errors.Is(err, unix.ENOENT) && create {
			made := unix.Mkdirat(fd, c, dirMode)
			if made == nil || errors.Is(made, unix.EEXIST) {
				next, err = openDir(fd, c)
				if err == nil && made == nil {
					err = unix.Fchmod(next, dirMode) // the umask may have taken bits
				}
			} else {
				err = made
			}
		}
		unix.Close(fd)
		if err != nil {
			if next >= 0 {
				unix.Close(next)
			}
			return -1, fmt.Errorf("folder %s of %s: %w", c, s.path(key), err)
		}
		fd = next
	}
	return fd, nil
}

// openDir opens the folder name in dirfd, never through a link.
func openDir(dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// open returns the cached file of key and its size and modification time,
// or an error when there is none: a missing file, a symbolic link, anything
// but a regular file (a planted FIFO does not block: O_NONBLOCK).
func (s *store) open(key []string) (*os.File, os.FileInfo, error) {
	dfd, err := s.parent(key, false)
	if err != nil {
		return nil, nil, err
	}
	defer unix.Close(dfd)
	name := key[len(key)-1]
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", s.path(key), err)
	}
	f := os.NewFile(uintptr(fd), s.path(key))
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is a %s, not a file", s.path(key), fi.Mode().Type())
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// temp is a download being written next to its place in the cache.
type temp struct {
	s    *store
	key  []string
	dfd  int // the folder of the file
	name string
	f    *os.File
}

// create starts the temporary file of key (0644, a fresh name, O_EXCL).
func (s *store) create(key []string) (*temp, error) {
	dfd, err := s.parent(key, true)
	if err != nil {
		return nil, err
	}
	var b [8]byte
	rand.Read(b[:])
	name := tmpPrefix + hex.EncodeToString(b[:])
	fd, err := unix.Openat(dfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, fileMode)
	if err == nil {
		if err = unix.Fchmod(fd, fileMode); err != nil {
			unix.Close(fd)
			unix.Unlinkat(dfd, name, 0)
		}
	}
	if err != nil {
		unix.Close(dfd)
		return nil, fmt.Errorf("create a temporary file for %s: %w", s.path(key), err)
	}
	return &temp{s: s, key: key, dfd: dfd, name: name, f: os.NewFile(uintptr(fd), s.path(key)+".tmp")}, nil
}

// commit makes the complete download key's file: synced, dated mtime (when
// not zero), renamed over whatever had the name (a planted link is replaced,
// never followed), the folder synced. The file stays open for readers.
func (t *temp) commit(mtime time.Time) error {
	defer t.release()
	if !mtime.IsZero() {
		ts := []unix.Timespec{unix.NsecToTimespec(mtime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
		unix.UtimesNanoAt(t.dfd, t.name, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err := t.f.Sync(); err != nil {
		unix.Unlinkat(t.dfd, t.name, 0)
		return fmt.Errorf("sync %s: %w", t.s.path(t.key), err)
	}
	final := t.key[len(t.key)-1]
	if err := unix.Renameat(t.dfd, t.name, t.dfd, final); err != nil {
		unix.Unlinkat(t.dfd, t.name, 0)
		return fmt.Errorf("rename the download to %s: %w", t.s.path(t.key), err)
	}
	unix.Fsync(t.dfd)
	return nil
}

// abort removes the temporary file (an aborted or short download is never
// cached). The file stays open for readers.
func (t *temp) abort() {
	defer t.release()
	unix.Unlinkat(t.dfd, t.name, 0)
}

func (t *temp) release() {
	if t.dfd >= 0 {
		unix.Close(t.dfd)
		t.dfd = -1
	}
}
