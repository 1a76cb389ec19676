package image_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"pifarm/builtins/disk/disktest"
	"pifarm/builtins/runtime"
	"pifarm/builtins/startest"
)

// defaultConfig is what main.go embeds: the repository's config.star.
var defaultConfig = func() []byte {
	b, err := os.ReadFile("../../config.star")
	if err != nil {
		panic(err)
	}
	return b
}()

// recipeFixture makes a 200 MiB RaspiOS-like image with the real tools.
func recipeFixture(t *testing.T, dir string) string {
	img := filepath.Join(dir, "raspios.img")
	disktest.Run(t, "", "truncate", "-s", "200M", img)
	disktest.Run(t, "label: dos\nlabel-id: 0x0badcafe\nstart=8192, size=131072, type=c\nstart=139264, type=83\n", "sfdisk", "-q", img)
	disktest.Run(t, "", "mkfs.vfat", "-F", "32", "-s", "1", "-n", "bootfs", "--offset", "8192", img, "65536")
	disktest.Run(t, "", "mkfs.ext4", "-q", "-F", "-E", fmt.Sprintf("offset=%d", 139264*512), img, "120M")
	src := t.TempDir()
	for name, n := range map[string]int{"kernel8.img": 200_000, "bcm2710-rpi-3-b-plus.dtb": 30_000} {
		b := bytes.Repeat([]byte(name), n/len(name))
		os.WriteFile(filepath.Join(src, name), b, 0o644)
		disktest.Run(t, "", "mcopy", "-i", img+"@@4194304", filepath.Join(src, name), "::")
	}
	return img
}

// fileSum is what a write to the image would change: size, mtime, ctime
// (which no program can set back) and the bytes of the table, the boot
// partition and the start of the root partition.
func fileSum(t *testing.T, p string) string {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, io.LimitReader(f, 100<<20))
	fi, _ := f.Stat()
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d %d %d.%d %s", fi.Size(), fi.ModTime().UnixNano(), st.Ctim.Sec, st.Ctim.Nsec, hex.EncodeToString(h.Sum(nil)))
}

var (
	hashRE  = regexp.MustCompile(`sha256:[0-9a-f]{64}`)
	mtimeRE = regexp.MustCompile(`mtime \d+ -> \d+`)
	lineRE  = regexp.MustCompile(`\.star:\d+:\d+:`)
)

// TestRecipe runs the bundled image recipe in-process, dry and live, on a
// fixture, and compares its output (temp folder and hashes replaced by
// $DIR and sha256:HASH) with testdata/golden/NAME.trace.
func TestRecipe(t *testing.T) {
	dir := t.TempDir()
	img := recipeFixture(t, dir)
	// a failed step must not leave the loop mount behind the temp folder
	t.Cleanup(func() { exec.Command("umount", filepath.Join(dir, "cache/mnt/root")).Run() })
	cfg := filepath.Join(dir, "config.star")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`cache = %q
tools = {"guestmount": False}
nodes = [
    node(id = 0, alias = "loner", lan = "192.168.66.63", wan = "100.65.63.15"),
    node(id = 1, alias = "enone", lan = "192.168.66.7", wan = "100.65.4.15"),
]
`, filepath.Join(dir, "cache"))), 0o644)
	steps := []struct {
		name    string
		args    string
		notRoot bool
		check   func(t *testing.T)
	}{
		{"dry-prepare", "-n run image -i IMG --expand-image --seed-ssh --seed-user pi --seed-password raspberry --provide-qboot", true, nil},
		{"prepare", "run image -i IMG --expand-image --seed-ssh --seed-user pi --seed-password raspberry --provide-qboot", false, nil},
		{"status", "run image", false, nil},
		{"expand-again", "run image --expand-image", false, nil},
		{"dry-mount-root", "-n run image --mount-root --sudo-mount", true, nil},
		{"mount-root", "run image --mount-root --sudo-mount", false, func(t *testing.T) {
			if _, err := os.Stat(filepath.Join(dir, "cache/mnt/root/lost+found")); err != nil {
				t.Fatalf("root not mounted: %v", err)
			}
		}},
		{"expand-while-mounted", "run image --expand-image", false, nil},
		{"umount-root", "run image --umount-root", false, nil},
		{"dry-qboot-no-clone", "-n run image --provide-qboot 1", true, nil},
		{"linked-clone", "run testdata/clone.star --linked 1", false, nil},
		{"dry-qboot-clone", "-n run image --provide-qboot 1", true, nil},
		{"seed-under-linked", "run image --seed-user admin --seed-password pw", false, nil},
		{"check-linked", "run testdata/clone.star --check 1", false, nil},
		{"status-linked", "run image 1", false, nil},
		{"seed-key-old-image", "run image --seed-user pi --seed-password pw --seed-key testdata/id_test.pub", false, nil},
	}
	for _, st := range steps {
		var before string
		if strings.HasPrefix(st.args, "-n ") {
			before = fileSum(t, img)
		}
		args := append([]string{"-c", cfg}, strings.Fields(strings.ReplaceAll(st.args, "IMG", img))...)
		var out, errb bytes.Buffer
		code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: args, Stdout: &out, Stderr: &errb, NotRoot: st.notRoot})
		got := startest.Transcript(out.String(), errb.String(), code)
		got = hashRE.ReplaceAllString(strings.ReplaceAll(got, dir, "$DIR"), "sha256:HASH")
		got = mtimeRE.ReplaceAllString(got, "mtime M1 -> M2")
		got = lineRE.ReplaceAllString(got, ".star:L:C:")
		if before != "" {
			if after := fileSum(t, img); after != before {
				t.Errorf("%s: the dry run changed the image", st.name)
			}
		}
		if !startest.Golden(t, filepath.Join("testdata", "golden", st.name+".trace"), got) {
			t.Logf("%s: `pifarm %s`", st.name, st.args)
		}
		if st.check != nil {
			st.check(t)
		}
	}
}

// TestRecipeSeedSSHPasswordEnv: PIFARM_SEED_PASSWORD exported in the shell
// stands in for --seed-password only; it must not make --seed-ssh alone fail.
func TestRecipeSeedSSHPasswordEnv(t *testing.T) {
	dir := t.TempDir()
	img := recipeFixture(t, dir)
	cfg := filepath.Join(dir, "config.star")
	os.WriteFile(cfg, []byte(fmt.Sprintf("cache = %q\n", filepath.Join(dir, "cache"))), 0o644)
	t.Setenv("PIFARM_SEED_PASSWORD", "secret")
	for _, args := range []string{"-n run image --seed-ssh", "-n run image --seed-ssh --seed-user pi"} {
		var out, errb bytes.Buffer
		argv := append([]string{"-c", cfg}, strings.Fields(args)...)
		argv = append(argv, "-i", img)
		code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: argv, Stdout: &out, Stderr: &errb, NotRoot: true})
		if code != 0 {
			t.Errorf("pifarm %s: exit %d\n%s%s", args, code, out.String(), errb.String())
		}
		if strings.Contains(out.String(), "secret") {
			t.Errorf("pifarm %s: the password shows in the trace:\n%s", args, out.String())
		}
	}
}

// TestRecipeMountRefusesAnotherDisksMount: mnt/root holding instance 0's
// root partition is not "already mounted" for instance 1.
func TestRecipeMountRefusesAnotherDisksMount(t *testing.T) {
	dir := t.TempDir()
	img := recipeFixture(t, dir)
	t.Cleanup(func() { exec.Command("umount", filepath.Join(dir, "cache/mnt/root")).Run() })
	cfg := filepath.Join(dir, "config.star")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`cache = %q
tools = {"guestmount": False}
nodes = [
    node(id = 0, alias = "loner", lan = "192.168.66.63", wan = "100.65.63.15"),
    node(id = 1, alias = "enone", lan = "192.168.66.7", wan = "100.65.4.15"),
]
`, filepath.Join(dir, "cache"))), 0o644)
	for _, st := range []struct {
		args string
		code int
		want string
	}{
		{"run image -i " + img, 0, "instance 0 is"},
		{"run testdata/clone.star --linked 1", 0, "linked=True"},
		{"run image --mount-root --sudo-mount", 0, "(read-write, loop)"},
		{"run image --mount-root --sudo-mount", 0, "(read-write, already)"},
		{"run image --mount-root --sudo-mount 1", 1, "already holds /dev/loop"},
		{"run image --umount-root", 0, "unmounted mnt/root"},
	} {
		var out bytes.Buffer
		code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: append([]string{"-c", cfg}, strings.Fields(st.args)...), Stdout: &out, Stderr: &out})
		if code != st.code || !strings.Contains(out.String(), st.want) {
			t.Fatalf("pifarm %s: exit %d (want %d), output lacks %q:\n%s", st.args, code, st.code, st.want, out.String())
		}
	}
}

// TestRecipeBadOptionsChangeNothing: a misused option fails before any step
// changes the image.
func TestRecipeBadOptionsChangeNothing(t *testing.T) {
	dir := t.TempDir()
	img := recipeFixture(t, dir)
	cfg := filepath.Join(dir, "config.star")
	os.WriteFile(cfg, []byte(fmt.Sprintf("cache = %q\n", filepath.Join(dir, "cache"))), 0o644)
	t.Setenv("PIFARM_SEED_PASSWORD", "")
	before := fileSum(t, img)
	for _, tc := range []struct{ args, want string }{
		{"--expand-image --sudo-mount", "--sudo-mount goes with --mount-boot or --mount-root"},
		{"--expand-image --seed-user pi", "--seed-user=pi needs --seed-password=PW"},
		{"--expand-image --seed-ssh --seed-key " + filepath.Join(dir, "none.pub"), "none.pub"},
		{"--expand-image 1", "is a qcow2 clone of it"},
	} {
		var out bytes.Buffer
		args := append([]string{"-c", cfg, "run", "image", "-i", img}, strings.Fields(tc.args)...)
		code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: args, Stdout: &out, Stderr: &out})
		if code != 1 || !strings.Contains(out.String(), tc.want) {
			t.Fatalf("%s: exit %d:\n%s", tc.args, code, out.String())
		}
		if fileSum(t, img) != before {
			t.Fatalf("%s: the image changed before the option error:\n%s", tc.args, out.String())
		}
		if _, err := os.Lstat(filepath.Join(dir, "cache/clones/raspi-clone-0/clone-0.raw")); err == nil {
			t.Fatalf("%s: the image was registered before the option error", tc.args)
		}
	}
}

// TestRecipeMountsBehindSymlinkedCache: with the cache folder behind a
// symbolic link (the kernel lists the resolved mount point), a mount is
// still found: mounted again is "already", box refuses to start on a
// read-write root, and --umount-root unmounts it.
func TestRecipeMountsBehindSymlinkedCache(t *testing.T) {
	dir := t.TempDir()
	img := recipeFixture(t, dir)
	os.MkdirAll(filepath.Join(dir, "real-cache"), 0o755)
	if err := os.Symlink(filepath.Join(dir, "real-cache"), filepath.Join(dir, "cache")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("umount", filepath.Join(dir, "real-cache/mnt/root")).Run() })
	cfg := filepath.Join(dir, "config.star")
	os.WriteFile(cfg, []byte(fmt.Sprintf("cache = %q\ntools = {\"guestmount\": False}\n", filepath.Join(dir, "cache"))), 0o644)
	for _, st := range []struct {
		args string
		code int
		want string
	}{
		{"run image -i " + img, 0, "instance 0 is"},
		{"run image --mount-root", 0, "(read-write, loop)"},
		{"run image --mount-root", 0, "(read-write, already)"},
		{"-n run box --run 0", 1, "the root partition is mounted read-write"},
		{"run image --umount-root", 0, "unmounted mnt/root"},
	} {
		var out bytes.Buffer
		code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: append([]string{"-c", cfg}, strings.Fields(st.args)...), Stdout: &out, Stderr: &out})
		if code != st.code || !strings.Contains(out.String(), st.want) {
			t.Fatalf("pifarm %s: exit %d (want %d), output lacks %q:\n%s", st.args, code, st.code, st.want, out.String())
		}
	}
	if b, _ := os.ReadFile("/proc/self/mounts"); strings.Contains(string(b), filepath.Join(dir, "real-cache")) {
		t.Fatal("mnt/root is still mounted after --umount-root")
	}
}

// TestRecipeEmptyDiskImage: --disk-image= with an empty value (an unset
// variable) is a usage error, not a silent fall-back to the image
// registered before, which the other steps would then change.
func TestRecipeEmptyDiskImage(t *testing.T) {
	dir := t.TempDir()
	img := recipeFixture(t, dir)
	cfg := filepath.Join(dir, "config.star")
	os.WriteFile(cfg, []byte(fmt.Sprintf("cache = %q\n", filepath.Join(dir, "cache"))), 0o644)
	var out bytes.Buffer
	if code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: []string{"-c", cfg, "run", "image", "-i", img}, Stdout: &out, Stderr: &out}); code != 0 {
		t.Fatalf("register: exit %d\n%s", code, out.String())
	}
	before := fileSum(t, img)
	for _, args := range [][]string{{"run", "image", "--disk-image=", "--expand-image"}, {"run", "box", "-i", ""}} {
		out.Reset()
		code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: append([]string{"-c", cfg}, args...), Stdout: &out, Stderr: &out})
		if code != 2 || !strings.Contains(out.String(), "the image path is empty") {
			t.Errorf("%q: exit %d, want 2 and a usage error:\n%s", args, code, out.String())
		}
	}
	if fileSum(t, img) != before {
		t.Fatal("the previously registered image was changed")
	}
}
