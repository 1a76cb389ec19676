package chroot

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"

	"pifarm/builtins/trace"
)

// machines maps ELF machines to uname -m and to the name of the binfmt_misc
// entry of Debian's qemu-user-static.
var machines = map[elf.Machine]struct{ uname, binfmt, goarch string }{
	elf.EM_AARCH64: {"aarch64", "qemu-aarch64", "arm64"},
	elf.EM_ARM:     {"armv7l", "qemu-arm", "arm"},
	elf.EM_X86_64:  {"x86_64", "", "amd64"},
	elf.EM_386:     {"i686", "qemu-i386", "386"},
	elf.EM_RISCV:   {"riscv64", "qemu-riscv64", "riscv64"},
}

// binfmtDir is where the kernel lists its binfmt_misc handlers.
var binfmtDir = "/proc/sys/fs/binfmt_misc"

// checkArch reads the guest's architecture from its /bin/sh and, when it is
// not the host's, requires the binfmt_misc handler that runs it through
// qemu-user with the F flag (the interpreter opened when registered, so it
// need not exist inside the guest). Dry runs read nothing.
func (r *Root) checkArch() error {
	if r.d.DryRun {
		r.d.Note("commands in the guest run natively when it has the host's architecture, else through qemu-user's binfmt_misc handler")
		return nil
	}
	sh, err := r.guestPath("/bin/sh")
	if err != nil {
		return fmt.Errorf("the guest's /bin/sh: %w (is partition 2 a root file system?)", err)
	}
	ef, err := elf.Open(sh)
	if err != nil {
		return fmt.Errorf("the guest's /bin/sh (%s): %w", sh, err)
	}
	machine := ef.Machine
	ef.Close()
	m, ok := machines[machine]
	if !ok {
		return fmt.Errorf("the guest's /bin/sh is for %s, which pifarm cannot run on this host", machine)
	}
	r.Arch = m.uname
	if m.goarch == goruntime.GOARCH || (m.goarch == "386" && goruntime.GOARCH == "amd64") {
		return nil
	}
	return binfmtReady(m.binfmt, m.uname)
}

// binfmtReady checks the binfmt_misc entry name: registered, enabled, with
// the F (fix binary) flag.
func binfmtReady(name, arch string) error {
	fix := fmt.Sprintf("install qemu-user-static (apt install qemu-user-static) and register its handler: "+
		"update-binfmts --enable %s, or as root: mount -t binfmt_misc binfmt_misc %s (when not mounted) and "+
		"cat /usr/lib/binfmt.d/%s.conf > %s/register", name, binfmtDir, name, binfmtDir)
	b, err := os.ReadFile(filepath.Join(binfmtDir, name))
	if err != nil {
		return fmt.Errorf("the guest is %s and this host runs it only through qemu-user, but the kernel has no %s handler (%s/%s: %v); %s", arch, name, binfmtDir, name, err, fix)
	}
	text := string(b)
	if !strings.HasPrefix(text, "enabled") {
		return fmt.Errorf("the kernel's %s handler is disabled; %s", name, fix)
	}
	for _, l := range strings.Split(text, "\n") {
		if f, ok := strings.CutPrefix(l, "flags:"); ok {
			if strings.Contains(f, "F") {
				return nil
			}
			return fmt.Errorf("the kernel's %s handler lacks the F flag (its interpreter would have to exist inside the guest); %s", name, fix)
		}
	}
	return fmt.Errorf("the kernel's %s handler shows no flags; %s", name, fix)
}

// guestPath resolves path as the guest would (its symbolic links taken
// relative to its root, never out of it) to a host path under r.Path.
func (r *Root) guestPath(path string) (string, error) {
	return resolveIn(r.Path, path)
}

// resolveIn resolves the absolute guest path p inside root: every symbolic
// link is followed as the guest would see it, and ".." never climbs above
// root. It returns the host path of the final file.
func resolveIn(root, p string) (string, error) {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	cur := "/"
	for hops := 0; len(parts) > 0; {
		part := parts[0]
		parts = parts[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, part)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(target, "/") {
			cur = "/"
		}
		parts = append(strings.Split(strings.Trim(target, "/"), "/"), parts...)
	}
	return filepath.Join(root, cur), nil
}

// vfatDir is where the guest's /etc/fstab mounts its vfat file system
// (the boot partition): /boot/firmware on RaspiOS Bookworm, /boot before.
func (r *Root) vfatDir() string {
	if r.d.DryRun {
		r.d.Note("partition 1 goes where the guest's /etc/fstab mounts its vfat file system; /boot is shown here")
		return "/boot"
	}
	p, err := r.guestPath("/etc/fstab")
	if err == nil {
		if b, err := os.ReadFile(p); err == nil {
			if dir := VfatMountPoint(b); dir != "" {
				return dir
			}
		}
	}
	if fi, err := os.Lstat(filepath.Join(r.Path, "boot/firmware")); err == nil && fi.IsDir() {
		return "/boot/firmware"
	}
	return "/boot"
}

// VfatMountPoint returns the mount point of the first vfat line of an
// fstab ("" when there is none). Octal escapes (\040 for a blank) are
// decoded.
func VfatMountPoint(fstab []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(fstab))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if f[2] == "vfat" || f[2] == "msdos" || f[2] == "fat" {
			dir := unescape(f[1])
			if strings.HasPrefix(dir, "/") && dir != "/" {
				return filepath.Clean(dir)
			}
		}
	}
	return ""
}

// unescape decodes fstab's octal escapes (\040 space, \011 tab, \134 \).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) && isOctal(s[i+1:i+4]) {
			var v byte
			for _, c := range s[i+1 : i+4] {
				v = v*8 + byte(c-'0')
			}
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(s string) bool {
	if len(s) != 3 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '7' {
			return false
		}
	}
	return true
}

// resolver gives commands in the guest the host's name resolution for the
// time the root is open: a regular /etc/resolv.conf of the guest is covered
// by a bind mount of the host's; one that links into /run is made in the
// fresh /run; none at all stays none (a note says so).
func (r *Root) resolver() error {
	if r.d.DryRun {
		r.d.Note("the guest resolves names as the host does while it is open (the host's /etc/resolv.conf over the guest's, or in its /run)")
		return nil
	}
	guest := filepath.Join(r.Path, "etc/resolv.conf")
	fi, err := os.Lstat(guest)
	switch {
	case err != nil:
		r.d.Note("the guest has no /etc/resolv.conf: commands in it resolve no names")
		return nil
	case fi.Mode().IsRegular():
		return r.mount([]string{"mount", "--bind", "-o", "ro", "/etc/resolv.conf", guest})
	case fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(guest)
		if err != nil {
			return err
		}
		if !strings.HasPrefix(target, "/") {
			target = filepath.Join("/etc", target)
		}
		target = filepath.Clean(target)
		if !strings.HasPrefix(target, "/run/") {
			r.d.Note("the guest's /etc/resolv.conf links to %s, outside /run: left as it is", target)
			return nil
		}
		dst := filepath.Join(r.Path, target)
		_, err = r.d.Exec(trace.Cmd{Argv: []string{"install", "-D", "-m", "644", "/etc/resolv.conf", dst}, Sudo: true})
		return err
	}
	return nil
}

// policyRcD keeps the maintainer scripts of packages installed in the guest
// from starting services (invoke-rc.d asks it; 101: action forbidden).
const policyRcD = "#!/bin/sh\n# made by pifarm while the disk is open on the host: no service starts here\nexit 101\n"

// policy puts a policy-rc.d into the guest when it has none, removed at
// close.
func (r *Root) policy() error {
	path := filepath.Join(r.Path, "usr/sbin/policy-rc.d")
	if !r.d.DryRun {
		if _, err := os.Lstat(path); err == nil {
			r.d.Note("the guest has a policy-rc.d of its own: kept")
			return nil
		}
		if err := r.inside(filepath.Dir(path)); err != nil {
			return err
		}
	}
	if _, err := r.d.Exec(trace.Cmd{Argv: []string{"install", "-m", "755", "/dev/stdin", path}, Sudo: true, Heredoc: policyRcD}); err != nil {
		return err
	}
	r.made = append(r.made, path)
	return nil
}
