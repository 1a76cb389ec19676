package guest_test

// Provisioning end to end, minus QEMU: pifarm (in-process, live mode) runs
// recipes/lib/provision.star over SSH against an in-process x/crypto/ssh
// server whose commands run in a busybox chroot - a small guest like
// pifarm's test guest (busybox userland, no useradd, no apt-get unless the
// test fakes one), plus ssh-keygen as RaspiOS has it.

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestBaseSystemOverSSH(t *testing.T) {
	r := newRig(t, 22000)
	out := r.mustRun("--base-system", "1")
	for rel, mode := range map[string]string{
		"/etc/rc.local": "0755", "/etc/boot.d/30-network": "0755", "/etc/boot.d/10-packages": "0755",
		"/usr/local/lib/pifarm/boot-lib.sh": "0644", "/etc/hostapd/hostapd.conf.in": "0644",
		"/etc/hosts": "0644", "/etc/wifitab": "0644", "/etc/iftab": "0644", "/etc/pifarm/farm.conf": "0644",
	} {
		if got := r.g.mode(rel); got != mode {
			t.Errorf("%s: mode %s, want %s", rel, got, mode)
		}
	}
	if r.g.read("/etc/hosts") != r.farm.Hosts() || r.g.read("/etc/wifitab") != r.farm.WifiTab() {
		t.Errorf("node tables:\n%s", r.g.read("/etc/hosts"))
	}
	if !strings.Contains(r.g.read("/etc/hosts~"), "raspberrypi") || !strings.Contains(r.g.read("/etc/rc.local~"), "the stock one") {
		t.Error("replaced files were not kept as NAME~")
	}
	if !strings.Contains(r.g.read("/etc/pifarm/farm.conf"), "WLAN_ADDR=172.19.111.1/24\n") {
		t.Errorf("farm.conf: %s", r.g.read("/etc/pifarm/farm.conf"))
	}
	if fi, err := os.Stat(filepath.Join(r.g.root, "usr/local/etc/boot.d")); err != nil || !fi.IsDir() {
		t.Errorf("post-install did not run: %v", err)
	}
	if !strings.Contains(out, "installed /etc/rc.local") || !strings.Contains(out, "base system: boot scripts in place") {
		t.Errorf("first run said:\n%s", out)
	}
	// a mode changed by hand is put right by the permissions file
	os.Chmod(filepath.Join(r.g.root, "etc/boot.d/30-network"), 0o600)
	before := mtimes(t, r.g.root)
	out = r.mustRun("--base-system", "1")
	if !strings.Contains(out, "base system: up to date") || strings.Contains(out, "installed") {
		t.Errorf("second run said:\n%s", out)
	}
	after := mtimes(t, r.g.root)
	for p, m := range after {
		if b, ok := before[p]; !ok || !b.Equal(m) {
			t.Errorf("second run changed %s", p)
		}
	}
	if got := r.g.mode("/etc/boot.d/30-network"); got != "0755" {
		t.Errorf("30-network mode %s after the second run", got)
	}
}

func TestUseraddTwiceOneKeyLine(t *testing.T) {
	r := newRig(t, 22010)
	out := r.mustRun("--useradd=bob", "--sudo-user-ok", "1")
	if !strings.Contains(out, "created user bob") || !strings.Contains(out, "installed /etc/sudoers.d/bob") {
		t.Errorf("first run:\n%s", out)
	}
	out = r.mustRun("--useradd=bob", "--sudo-user-ok", "1")
	if !strings.Contains(out, "user bob: up to date") {
		t.Errorf("second run:\n%s", out)
	}
	passwd := r.g.read("/etc/passwd")
	if strings.Count(passwd, "\nbob:") != 1 || !strings.Contains(passwd, "bob:x:1001:1001::/home/bob:/bin/bash\n") {
		t.Errorf("passwd:\n%s", passwd)
	}
	if sh := r.g.read("/etc/shadow"); !strings.Contains(sh, "\nbob:*:") {
		t.Errorf("shadow:\n%s", sh)
	}
	ak := strings.Split(strings.TrimSpace(r.g.read("/home/bob/.ssh/authorized_keys")), "\n")
	pub := strings.TrimSpace(r.g.read("/home/bob/.ssh/id_ecdsa.pub"))
	if len(ak) != 2 || ak[1] != pub || !strings.HasPrefix(pub, "ecdsa-sha2-nistp256 ") || !strings.HasPrefix(ak[0], "ssh-") {
		t.Errorf("authorized_keys:\n%s\nid_ecdsa.pub: %s", strings.Join(ak, "\n"), pub)
	}
	for rel, mode := range map[string]string{"/home/bob/.ssh": "0700", "/home/bob/.ssh/authorized_keys": "0600",
		"/home/bob/.ssh/id_ecdsa": "0600", "/etc/sudoers.d/bob": "0440"} {
		if got := r.g.mode(rel); got != mode {
			t.Errorf("%s: mode %s, want %s", rel, got, mode)
		}
	}
	var st syscall.Stat_t
	syscall.Stat(filepath.Join(r.g.root, "home/bob/.ssh/id_ecdsa"), &st)
	if st.Uid != 1001 || st.Gid != 1001 {
		t.Errorf("id_ecdsa owned by %d:%d", st.Uid, st.Gid)
	}
	if s := r.g.read("/etc/sudoers.d/bob"); s != "bob ALL=(ALL:ALL) NOPASSWD: ALL\n" {
		t.Errorf("sudoers: %q", s)
	}
	// an existing user keeps its password; keys are added once
	r.mustRun("--useradd=pi", "1")
	r.mustRun("--useradd=pi", "1")
	if !strings.Contains(r.g.read("/etc/shadow"), "pi:$6$x$y:") || len(strings.Split(strings.TrimSpace(r.g.read("/home/pi/.ssh/authorized_keys")), "\n")) != 2 {
		t.Errorf("pi: %s\n%s", r.g.read("/etc/shadow"), r.g.read("/home/pi/.ssh/authorized_keys"))
	}
	_, errs, code := r.pifarm("--sudo-user-ok", "1")
	if code != 1 || !strings.Contains(errs, "--sudo-user-ok needs --useradd=NAME") {
		t.Errorf("sudo without user: %d %s", code, errs)
	}
	_, errs, code = r.pifarm("--useradd=Bad User", "1")
	if code == 0 || !strings.Contains(errs, `"Bad User" is not a user name`) {
		t.Errorf("bad name: %d %s", code, errs)
	}
}

func TestBadTreesRefusedBeforeAnythingIsSent(t *testing.T) {
	r := newRig(t, 22020)
	os.MkdirAll(filepath.Join(r.userDir, "files/etc"), 0o755)
	os.WriteFile(filepath.Join(r.userDir, "packages"), []byte("# mine\nrsync\nfoo;reboot\n"), 0o644)
	_, errs, code := r.pifarm("--apt-install", "1")
	if code != 1 || !strings.Contains(errs, r.userDir+"/packages:3: \"foo;reboot\" is not a Debian package name") {
		t.Errorf("bad package: exit %d\n%s", code, errs)
	}
	os.WriteFile(filepath.Join(r.userDir, "packages"), []byte("rsync\n"), 0o644)
	os.WriteFile(filepath.Join(r.userDir, "permissions"), []byte("/etc/motd root:root 0644\n/etc/motd2 root:root\n"), 0o644)
	_, errs, code = r.pifarm("--software-update", "1")
	if code != 1 || !strings.Contains(errs, r.userDir+"/permissions:2: 2 fields") {
		t.Errorf("bad permissions: exit %d\n%s", code, errs)
	}
	if n := len(r.srv.commands()); n != 0 || r.srv.conns != 0 {
		t.Errorf("%d commands sent over %d connections despite the errors", n, r.srv.conns)
	}
}

func TestLocalSoftwareAndAPT(t *testing.T) {
	r := newRig(t, 22030)
	os.MkdirAll(filepath.Join(r.userDir, "files/etc"), 0o755)
	os.MkdirAll(filepath.Join(r.userDir, "files/usr/local/src"), 0o755)
	os.WriteFile(filepath.Join(r.userDir, "files/etc/motd"), []byte("farm guest\n"), 0o600)
	os.WriteFile(filepath.Join(r.userDir, "files/usr/local/src/rsync-update.sh"), []byte("#!/bin/sh\necho mine\n"), 0o700)
	os.WriteFile(filepath.Join(r.userDir, "packages"), []byte("rsync\ngit\n"), 0o644)
	os.WriteFile(filepath.Join(r.userDir, "post-install"), []byte("echo guest-software post-install > /var/log/gs\n"), 0o644)
	// apt-get: logs its calls; dist-upgrade replaces the kernel
	r.g.write("/usr/bin/apt-get", `#!/bin/sh
echo "$DEBIAN_FRONTEND $*" >> /var/log/apt-calls
case " $* " in *" dist-upgrade "*) echo "kernel v2" > /boot/kernel8.img ;; esac
echo "Reading package lists..."
`, 0o755)
	out := r.mustRun("--software-update", "1")
	if got := r.g.read("/etc/motd"); got != "farm guest\n" || r.g.mode("/etc/motd") != "0600" {
		t.Errorf("motd %q %s", got, r.g.mode("/etc/motd"))
	}
	// the user's file overrides the bundled one of the same name, and keeps its mode
	if got := r.g.read("/usr/local/src/rsync-update.sh"); got != "#!/bin/sh\necho mine\n" || r.g.mode("/usr/local/src/rsync-update.sh") != "0755" {
		t.Errorf("rsync-update.sh %q %s (the local permissions file sets 0755)", got, r.g.mode("/usr/local/src/rsync-update.sh"))
	}
	if r.g.mode("/usr/local/src/nim-update.sh") != "0755" || r.g.read("/var/log/gs") != "guest-software post-install\n" {
		t.Error("local tree or guest-software post-install missing")
	}
	calls := r.g.read("/var/log/apt-calls")
	lines := strings.Split(strings.TrimSpace(calls), "\n")
	// every download goes through the farm's package cache on the host
	// (pkgcache's proxy at the .2 address of the guest's WAN net)
	proxy := "-o Acquire::http::Proxy=http://100.65.4.2:5699"
	if len(lines) != 5 || lines[0] != "noninteractive -q "+proxy+" update" || !strings.Contains(lines[1], proxy) || !strings.Contains(lines[2], proxy) ||
		!strings.Contains(lines[1], "install -y -q") || !strings.HasSuffix(lines[1], " hostapd i2c-tools rfkill git build-essential autoconf automake libtool pkg-config rsync") ||
		!strings.Contains(lines[2], "dist-upgrade -y") || lines[3] != " clean" || !strings.Contains(lines[4], "autoremove -y") {
		t.Errorf("apt-get calls:\n%s", calls)
	}
	if r.g.read("/etc/pifarm/packages") != "hostapd\ni2c-tools\nrfkill\ngit\nbuild-essential\nautoconf\nautomake\nlibtool\npkg-config\nrsync\n" {
		t.Errorf("/etc/pifarm/packages:\n%s", r.g.read("/etc/pifarm/packages"))
	}
	if !strings.Contains(out, "the upgrade replaced the kernel or the dtb") || !strings.Contains(out, "pifarm run shutdown 1 && pifarm run image --provide-qboot 1") {
		t.Errorf("no kernel refresh advice:\n%s", out)
	}
	out = r.mustRun("--apt-upgrade", "1")
	if strings.Contains(out, "replaced the kernel") {
		t.Errorf("kernel unchanged, yet:\n%s", out)
	}
	out = r.mustRun("--local-software", "1")
	if !strings.Contains(out, "local software: up to date") {
		t.Errorf("second local-software run:\n%s", out)
	}
}

// The same provisioning against a real OpenSSH sshd.
func TestProvisionWithRealSshd(t *testing.T) {
	r := newSshdRig(t, 22040)
	out := r.mustRun("--base-system", "--useradd=carol", "--sudo-user-ok", "1")
	if r.g.mode("/etc/rc.local") != "0755" || r.g.mode("/usr/local/lib/pifarm/boot-lib.sh") != "0644" || r.g.read("/etc/hosts") != r.farm.Hosts() {
		t.Errorf("base system did not land:\n%s", out)
	}
	out = r.mustRun("--base-system", "--useradd=carol", "--sudo-user-ok", "1")
	if !strings.Contains(out, "base system: up to date") || !strings.Contains(out, "user carol: up to date") {
		t.Errorf("second run:\n%s", out)
	}
	if ak := strings.Split(strings.TrimSpace(r.g.read("/home/carol/.ssh/authorized_keys")), "\n"); len(ak) != 2 {
		t.Errorf("authorized_keys:\n%s", strings.Join(ak, "\n"))
	}
	if r.g.mode("/etc/sudoers.d/carol") != "0440" {
		t.Errorf("sudoers mode %s", r.g.mode("/etc/sudoers.d/carol"))
	}
}

// A permissions line naming a path the guest does not have fails the
// upload (naming the path) instead of being skipped in silence.
func TestMissingPermissionPathFails(t *testing.T) {
	r := newRig(t, 26000)
	os.WriteFile(filepath.Join(r.userDir, "permissions"), []byte("/etc/no-such-file root:root 0644\n"), 0o644)
	out, errs, code := r.pifarm("--local-software", "1")
	if code != 1 || !strings.Contains(errs, "/etc/no-such-file") {
		t.Errorf("missing path: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
}

// --useradd appends its keys to an authorized_keys whose last line has no
// newline without gluing them onto that line.
func TestUseraddKeepsLastKeyLine(t *testing.T) {
	r := newRig(t, 26010)
	last := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMine mine@laptop"
	r.g.write("/home/pi/.ssh/authorized_keys", last, 0o600)
	r.mustRun("--useradd=pi", "1")
	r.mustRun("--useradd=pi", "1")
	ak := strings.Split(r.g.read("/home/pi/.ssh/authorized_keys"), "\n")
	if len(ak) != 4 || ak[0] != last || !strings.HasPrefix(ak[1], "ssh-ed25519 ") || !strings.HasPrefix(ak[2], "ecdsa-sha2-nistp256 ") || ak[3] != "" {
		t.Errorf("authorized_keys:\n%s", strings.Join(ak, "\n"))
	}
}

// A post-install script may print anything, including lines that look like
// pifarm's own markers.
func TestPostInstallOutputIsOnlyShown(t *testing.T) {
	r := newRig(t, 26040)
	os.WriteFile(filepath.Join(r.userDir, "post-install"), []byte("echo 'post-install: done'\n"), 0o644)
	out := r.mustRun("--local-software", "1")
	if !strings.Contains(out, "post-install: done") {
		t.Errorf("output:\n%s", out)
	}
}

// A user name with '.' is matched exactly: creating a.b leaves user axb
// (and its password) alone.
func TestUseraddDotNameIsExact(t *testing.T) {
	r := newRig(t, 26050)
	r.g.write("/etc/passwd", r.g.read("/etc/passwd")+"axb:x:1001:1001::/home/axb:/bin/sh\n", 0o644)
	r.g.write("/etc/group", r.g.read("/etc/group")+"axb:x:1001:\n", 0o644)
	r.g.write("/etc/shadow", r.g.read("/etc/shadow")+"axb:$6$keep$me:19500:0:99999:7:::\n", 0o640)
	out := r.mustRun("--useradd=a.b", "1")
	if !strings.Contains(out, "created user a.b") || !strings.Contains(r.g.read("/etc/passwd"), "\na.b:x:") {
		t.Errorf("a.b not created:\n%s\n%s", out, r.g.read("/etc/passwd"))
	}
	if sh := r.g.read("/etc/shadow"); !strings.Contains(sh, "\naxb:$6$keep$me:") || !strings.Contains(sh, "\na.b:*:") {
		t.Errorf("shadow:\n%s", sh)
	}
}
