package ext4

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"pifarm/builtins/disk/disktest"
)

// tree makes the guest-like tree the reader is tested on: small files, a
// file of many blocks, a folder of many entries (hashed), symbolic links
// short and long, absolute and relative, through a linked folder (/bin ->
// usr/bin) and up with "..".
func tree(t testing.TB) (string, map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	files := map[string][]byte{
		"etc/hostname":                     []byte("raspberrypi\n"),
		"etc/machine-id":                   []byte("0123456789abcdef0123456789abcdef\n"),
		"etc/ssh/ssh_host_ed25519_key.pub": []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnE root@raspberrypi\n"),
		"etc/ssh/sshd_config":              []byte("PermitRootLogin prohibit-password\n"),
		"usr/bin/dash":                     disktest.RandBytes(1, 150_000),
		"var/big":                          disktest.RandBytes(2, 3_000_000),
		"etc/empty":                        nil,
	}
	for i := 0; i < 400; i++ {
		files[fmt.Sprintf("usr/share/many/a-rather-long-file-name-%03d", i)] = []byte{byte(i)}
	}
	for name, b := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(dir, "var/lib/dbus"), 0o755)
	for link, target := range map[string]string{
		"bin":                        "usr/bin",
		"usr/bin/sh":                 "dash",
		"var/lib/dbus/machine-id":    "/etc/machine-id",
		"etc/up":                     "../etc/hostname",
		"etc/long":                   "/" + strings.Repeat("./", 40) + "etc/hostname",
		"etc/loop":                   "loop",
		"etc/ssh/ssh_host_rsa_key.x": "/nonexistent",
	} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	return dir, files
}

// TestReadFiles reads a tree mkfs.ext4 -d populated, in the layouts
// pifarm meets: ext4 with extents (4 KiB and 1 KiB blocks, 64-bit or
// not) and ext2/3-style block maps.
func TestReadFiles(t *testing.T) {
	dir, files := tree(t)
	for _, opts := range [][]string{
		nil,
		{"-b", "1024"},
		{"-O", "^64bit,^metadata_csum"},
		{"-t", "ext3"},
		{"-t", "ext2", "-b", "1024"},
	} {
		t.Run(strings.Join(opts, " "), func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "fs.img")
			disktest.Run(t, "", "truncate", "-s", "64M", img)
			args := append([]string{"-q", "-F", "-d", dir}, opts...)
			disktest.Run(t, "", "mkfs.ext4", append(args, img)...)
			// behind a partition offset, as in a disk image
			disk := filepath.Join(t.TempDir(), "disk.img")
			disktest.Run(t, "", "truncate", "-s", "1M", disk)
			b, _ := os.ReadFile(img)
			f, _ := os.OpenFile(disk, os.O_RDWR, 0)
			f.WriteAt(b, 1<<20)
			f.Close()
			r, _ := os.Open(disk)
			defer r.Close()
			x, err := Open(r, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range files {
				got, err := x.ReadFile("/"+name, 1<<30)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s: %d bytes, %v (want %d bytes)", name, len(got), err, len(want))
				}
			}
			for name, want := range map[string]string{
				"/var/lib/dbus/machine-id": "/etc/machine-id",
				"/etc/up":                  "/etc/hostname",
				"/etc/long":                "/etc/hostname",
				"/bin/sh":                  "/usr/bin/dash",
				"/bin/../etc/hostname":     "/etc/hostname",
			} {
				got, err := x.ReadFile(name, 1<<30)
				if err != nil || !bytes.Equal(got, files[want[1:]]) {
					t.Errorf("%s: %v", name, err)
				}
			}
			if head, err := x.ReadFile("/bin/sh", 64); err != nil || !bytes.Equal(head, files["usr/bin/dash"][:64]) {
				t.Errorf("head of /bin/sh: %v", err)
			}
			for _, name := range []string{"/etc/nosuch", "/nosuch/x", "/etc/ssh/ssh_host_rsa_key.x"} {
				if _, err := x.ReadFile(name, 100); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s: %v, want not found", name, err)
				}
			}
			if _, err := x.ReadFile("/etc/loop", 100); err == nil || !strings.Contains(err.Error(), "too many symbolic links") {
				t.Errorf("a loop: %v", err)
			}
			if _, err := x.ReadFile("/etc", 100); err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("a folder read as a file: %v", err)
			}
			ents, err := x.ReadDir("/etc/ssh")
			var names []string
			for _, e := range ents {
				names = append(names, e.Name)
			}
			sort.Strings(names)
			if err != nil || strings.Join(names, " ") != "ssh_host_ed25519_key.pub ssh_host_rsa_key.x sshd_config" {
				t.Errorf("/etc/ssh: %v %v", names, err)
			}
			if ents, err := x.ReadDir("/usr/share/many"); err != nil || len(ents) != 400 {
				t.Errorf("a folder of 400 entries: %d %v", len(ents), err)
			}
			for name, want := range map[string]string{"/var/lib/dbus/machine-id": "link", "/etc/machine-id": "file", "/bin": "link", "/bin/": "link", "/etc": "dir"} {
				if k, err := x.Kind(name); err != nil || k != want {
					t.Errorf("kind of %s: %s %v, want %s", name, k, err, want)
				}
			}
		})
	}
}

// FuzzFiles feeds damaged file systems to the reader: no panic, no
// allocation a damaged inode merely asks for beyond the limits, and every
// lookup ends.
func FuzzFiles(f *testing.F) {
	dir := f.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "etc/ssh"), 0o755)
	os.WriteFile(filepath.Join(src, "etc/hostname"), []byte("pi\n"), 0o644)
	os.WriteFile(filepath.Join(src, "etc/ssh/k.pub"), []byte("ssh-ed25519 AAAA\n"), 0o644)
	os.Symlink("etc/hostname", filepath.Join(src, "h"))
	img := filepath.Join(dir, "fs.img")
	disktest.Run(f, "", "truncate", "-s", "1M", img)
	disktest.Run(f, "", "mkfs.ext4", "-q", "-F", "-b", "1024", "-N", "32", "-d", src, img)
	b, err := os.ReadFile(img)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b[:256<<10])
	f.Fuzz(func(t *testing.T, data []byte) {
		tm := time.AfterFunc(10*time.Second, func() { panic("FuzzFiles: one input took over 10 s (a loop?)") })
		defer tm.Stop()
		x, err := Open(bytes.NewReader(data), 0)
		if err != nil {
			return
		}
		x.ReadFile("/etc/hostname", 1<<20)
		x.ReadFile("/h", 1<<20)
		x.ReadDir("/etc/ssh")
		x.Kind("/h")
	})
}
