package qemu_test

// The bundled box recipe (recipes/box.star) driven through pifarm's runtime,
// live against real qemu-system-aarch64 and qemu-img, on a RaspiOS-shaped
// image made by sfdisk, mkfs.vfat and mcopy. This is an external test
// package: it runs pifarm as a user does, with every module registered.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"pifarm/builtins/qemu"
	"pifarm/builtins/runtime"
	"pifarm/builtins/startest"
)

var sigRE = regexp.MustCompile(`sha256:[0-9a-f]{64}`)

// defaultConfig is what main.go embeds: the repository's config.star.
var defaultConfig = func() []byte {
	b, err := os.ReadFile("../../config.star")
	if err != nil {
		panic(err)
	}
	return b
}()

// boxConfig uses ports ssh 20500+N, console 20600+N, VNC 20700+N.
const boxConfig = `
cache = %q
ports = {"ssh": 20500, "console": 20600, "vnc": 20700}
tools = {"remote-viewer": False}
nodes = [
    node(id = 0, alias = "loner",   lan = "192.168.66.63", wan = "100.65.63.15"),
    node(id = 1, alias = "enone",   lan = "192.168.66.7",  wan = "100.65.4.15"),
    node(id = 2, alias = "entwo",   lan = "192.168.66.8",  wan = "100.65.5.15"),
    node(id = 3, alias = "enthree", lan = "192.168.66.9",  wan = "100.65.6.15"),
]
`

type box struct {
	t      testing.TB
	dir    string // holds config.star, the image and cache/
	config string
	cache  string
}

func run(t testing.TB, cmd string, args ...string) {
	t.Helper()
	if out, err := exec.Command(cmd, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", cmd, strings.Join(args, " "), err, out)
	}
}

// newBox makes a 128 MiB image with a FAT32 boot partition holding a
// dummy kernel8.img and a minimal bcm2710-rpi-3-b-plus.dtb, registers it as
// instance 0 and provides its boot files.
func newBox(t testing.TB) *box {
	for _, p := range []string{"sfdisk", "mkfs.vfat", "mcopy", "qemu-img", "qemu-system-aarch64"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is needed (apt-get install fdisk dosfstools mtools qemu-utils qemu-system-arm)", p)
		}
	}
	dir, err := os.MkdirTemp("", "pbox")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b := &box{t: t, dir: dir, config: filepath.Join(dir, "config.star"), cache: filepath.Join(dir, "cache")}
	os.WriteFile(b.config, []byte(fmt.Sprintf(boxConfig, b.cache)), 0o644)
	img, fat := filepath.Join(dir, "raspios.img"), filepath.Join(dir, "boot.fat")
	os.WriteFile(filepath.Join(dir, "kernel8.img"), make([]byte, 4096), 0o644)
	os.WriteFile(filepath.Join(dir, "bcm2710-rpi-3-b-plus.dtb"), qemu.MinimalDTB(), 0o644)
	run(t, "truncate", "-s", "40M", fat)
	// A reproducible file system: the signature shows in the dry-run trace.
	run(t, "mkfs.vfat", "--invariant", "-i", "5eed0001", "-F", "32", "-s", "1", fat)
	run(t, "touch", "-d", "2021-02-01 12:00:00", filepath.Join(dir, "kernel8.img"), filepath.Join(dir, "bcm2710-rpi-3-b-plus.dtb"))
	run(t, "mcopy", "-m", "-i", fat, filepath.Join(dir, "kernel8.img"), filepath.Join(dir, "bcm2710-rpi-3-b-plus.dtb"), "::/")
	run(t, "truncate", "-s", "128M", img)
	sf := exec.Command("sfdisk", "-q", img)
	sf.Stdin = strings.NewReader("label: dos\nstart=8192, size=81920, type=c\nstart=90112, type=83\n")
	if out, err := sf.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v %s", err, out)
	}
	run(t, "dd", "if="+fat, "of="+img, "bs=512", "seek=8192", "conv=notrunc", "status=none")
	run(t, "mkfs.ext4", "-q", "-F", "-E", "offset=46137344", img, "84M") // register refuses an image without a root file system
	os.WriteFile(filepath.Join(dir, "prepare.star"), []byte(`SUMMARY = "register and provide boot files"
ARGS = [args.positional("img", required = True)]
def main(opts):
    image.register(opts.img)
    image.provide_qboot(0)
`), 0o644)
	if out, code := b.pifarm("run", filepath.Join(dir, "prepare.star"), img); code != 0 {
		t.Fatalf("prepare: %s", out)
	}
	t.Cleanup(func() {
		for _, id := range []string{"0", "1", "2", "3"} {
			b.pifarm("run", "box", "--terminate", id)
		}
	})
	return b
}

// pifarm runs pifarm with the box's config and returns stdout+stderr (the
// cache path replaced by $CACHE, the folder by $DIR) and the exit status.
func (b *box) pifarm(args ...string) (string, int) {
	var out bytes.Buffer
	code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: append([]string{"-c", b.config}, args...), Stdout: &out, Stderr: &out, Ctx: context.Background(), NotRoot: true})
	s := strings.ReplaceAll(out.String(), b.cache, "$CACHE")
	s = strings.ReplaceAll(s, b.dir, "$DIR")
	// The signature is the image module's business, not this trace's.
	return sigRE.ReplaceAllString(s, "sha256:SUM"), code
}

func (b *box) want(out string, code, wantCode int, wants ...string) {
	b.t.Helper()
	if code != wantCode {
		b.t.Fatalf("exit %d, want %d:\n%s", code, wantCode, out)
	}
	for _, w := range wants {
		if !strings.Contains(out, w) {
			b.t.Fatalf("output lacks %q:\n%s", w, out)
		}
	}
}

func TestBoxRecipe(t *testing.T) {
	b := newBox(t)
	clone2 := filepath.Join(b.cache, "clones/raspi-clone-2/clone-2.qcow2")

	// Dry run of --run 2: the clone is made, the boot files come along,
	// QEMU's exact line is printed; nothing changes. (The clone lines are
	// the image module's: when it changes them, review and refresh with
	// go test ./builtins/qemu -run BoxRecipe -update.)
	out, code := b.pifarm("-n", "run", "box", "--run", "2")
	if code != 0 {
		t.Fatalf("dry run of --run 2 (exit %d):\n%s", code, out)
	}
	if !startest.Golden(t, "testdata/box-run2.trace", out) {
		t.FailNow()
	}
	if _, err := os.Stat(filepath.Dir(clone2)); err == nil {
		t.Fatal("dry run made the clone folder")
	}

	// A bad --timeout stops before the clone is made or QEMU starts.
	out, code = b.pifarm("run", "box", "--run", "--wait", "--timeout", "soon", "2")
	b.want(out, code, 1, "--timeout soon: want a positive number of seconds")
	if _, err := os.Stat(filepath.Dir(clone2)); err == nil {
		t.Fatal("--run with a bad --timeout made the clone before failing")
	}

	out, code = b.pifarm("run", "box")
	b.want(out, code, 0, "0   loner    192.168.66.63  yes    -", "2   entwo    192.168.66.8   -      -")

	out, code = b.pifarm("run", "box", "--run", "entwo")
	b.want(out, code, 0, "creating its clone of instance 0", "<2> entwo runs: QEMU pid ", "nc localhost 20602",
		"remote-viewer vnc://localhost:20702", "ssh -p 20502 pi@localhost", "pifarm run box --terminate 2")
	pid := regexp.MustCompile(`QEMU pid (\d+)`).FindStringSubmatch(out)[1]

	out, code = b.pifarm("run", "box")
	b.want(out, code, 0, "2   entwo    192.168.66.8   yes    "+pid)
	out, code = b.pifarm("run", "box", "--run", "2")
	b.want(out, code, 0, "<2> entwo is already running", "QEMU pid "+pid)
	// --wait on a running instance waits; this guest never prints a thing.
	out, code = b.pifarm("run", "box", "--run", "--wait", "--timeout", "1", "2")
	b.want(out, code, 1, "<2> entwo is already running", "console 127.0.0.1:20602 waiting for /login: /: no success within 1s")

	// Unsafe clone operations are refused while instance 2 runs.
	for _, args := range [][]string{{"--flush-clone", "2"}, {"--force-clone", "2"}, {"--remove-all-clones"}} {
		out, code = b.pifarm(append([]string{"run", "box"}, args...)...)
		b.want(out, code, 1, "instance <2> entwo is running (pid "+pid+"); terminate it first")
	}
	// Instance 0 runs on the base of clone 2: a force clone is refused too.
	out, code = b.pifarm("run", "box", "--run", "0")
	b.want(out, code, 0, "<0> loner runs: QEMU pid ")
	out, code = b.pifarm("run", "box", "--force-clone", "1")
	b.want(out, code, 1, "instance <0> loner is running")
	// A missing N fails before the other steps (here: stopping instance 0).
	out, code = b.pifarm("run", "box", "--terminate", "--flush-clone")
	b.want(out, code, 1, "--flush-clone needs an instance N > 0")
	out, code = b.pifarm("run", "box", "--run", "0")
	b.want(out, code, 0, "<0> loner is already running")
	out, code = b.pifarm("run", "box", "--terminate", "0")
	b.want(out, code, 0, "<0> loner terminated")

	out, code = b.pifarm("-n", "run", "box", "--terminate", "2")
	b.want(out, code, 0, "printf '%s\\n' '{\"execute\":\"qmp_capabilities\"}' '{\"execute\":\"quit\"}' | socat - UNIX-CONNECT:$CACHE/clones/raspi-clone-2/qmp.sock\n",
		"# wait until pid "+pid+" has exited")
	out, code = b.pifarm("run", "box")
	b.want(out, code, 0, "2   entwo    192.168.66.8   yes    "+pid)
	out, code = b.pifarm("run", "box", "--terminate", "2")
	b.want(out, code, 0, "<2> entwo terminated")
	out, code = b.pifarm("run", "box", "--terminate", "2")
	b.want(out, code, 0, "<2> entwo is not running")
	out, code = b.pifarm("run", "box")
	b.want(out, code, 0, "2   entwo    192.168.66.8   yes    -")

	out, code = b.pifarm("run", "box", "--force-clone", "2")
	b.want(out, code, 0, "<2> entwo: new clone $CACHE/clones/raspi-clone-2/clone-2.qcow2 (the old one kept as $CACHE/clones/raspi-clone-2/clone-2.qcow2~)")
	if _, err := os.Stat(clone2 + "~"); err != nil {
		t.Fatal("no backup of the old clone")
	}
	out, code = b.pifarm("run", "box", "--force-clone", "0")
	b.want(out, code, 1, "--force-clone needs an instance N > 0")

	out, code = b.pifarm("-n", "run", "box", "--flush-clone", "2")
	b.want(out, code, 0, "mv -f $CACHE/clones/raspi-clone-2 $CACHE/clones/.raspi-clone-2.removing\nrm -rf $CACHE/clones/.raspi-clone-2.removing\n")
	out, code = b.pifarm("run", "box", "--flush-clone", "2")
	b.want(out, code, 0, "<2> entwo: clone removed")
	if _, err := os.Stat(filepath.Dir(clone2)); err == nil {
		t.Fatal("clone 2 still there")
	}
	out, code = b.pifarm("run", "box", "--flush-clone", "2")
	b.want(out, code, 0, "<2> entwo has no clone: nothing to flush")

	// A linked clone, then every clone removed.
	out, code = b.pifarm("run", "box", "--run", "--linked", "3")
	b.want(out, code, 0, "<3> enthree runs: QEMU pid ")
	out, code = b.pifarm("run", "box", "--terminate", "--remove-all-clones", "3")
	b.want(out, code, 0, "<3> enthree terminated", "removed clones 3")
	out, code = b.pifarm("run", "box")
	b.want(out, code, 0, "3   enthree  192.168.66.9   -      -")

	// A changed boot partition stops --run; --run-ignore-qboot goes on.
	img := filepath.Join(b.dir, "raspios.img")
	os.WriteFile(filepath.Join(b.dir, "kernel8.img"), bytes.Repeat([]byte{1}, 4096), 0o644)
	run(t, "mcopy", "-o", "-i", img+"@@4194304", filepath.Join(b.dir, "kernel8.img"), "::/kernel8.img")
	out, code = b.pifarm("run", "box", "--run", "0")
	b.want(out, code, 1, "changed since its boot files were copied")
	out, code = b.pifarm("run", "box", "--run-ignore-qboot", "0")
	b.want(out, code, 0, "<0> loner runs: QEMU pid ")
	out, code = b.pifarm("run", "box", "--terminate")
	b.want(out, code, 0, "<0> loner terminated")
}

func TestBoxRefusesWhileRootMountedRW(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a stand-in file system needs root (CI runs as root)")
	}
	b := newBox(t)
	root := filepath.Join(b.cache, "mnt/root")
	os.MkdirAll(root, 0o755)
	run(t, "mount", "-t", "tmpfs", "-o", "rw,size=1m", "pifarm-test-root", root)
	defer exec.Command("umount", root).Run()
	out, code := b.pifarm("run", "box", "--run", "1")
	b.want(out, code, 1, "the root partition is mounted read-write (pifarm-test-root on $CACHE/mnt/root)")
	out, code = b.pifarm("run", "box", "--force-clone", "1")
	b.want(out, code, 1, "mounted read-write")
	// Read-only is fine (image.clone still refuses any mount of the base).
	run(t, "mount", "-o", "remount,ro", root)
	out, code = b.pifarm("run", "box", "--run", "0")
	b.want(out, code, 0, "<0> loner runs: QEMU pid ")
}

// BenchmarkBoxTable measures `pifarm run box` (the instance table, in
// process: config, recipe, status of every instance) with one instance
// running.
func BenchmarkBoxTable(b *testing.B) {
	bx := newBox(b)
	if out, code := bx.pifarm("run", "box", "--run", "1"); code != 0 {
		b.Fatal(out)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if out, code := bx.pifarm("run", "box"); code != 0 || !strings.Contains(out, "1   enone    192.168.66.7   yes    ") {
			b.Fatal(out)
		}
	}
}

// TestBoxCommandStdoutIsTheCommand: `pifarm run box --command N` prints the
// command line alone on standard output, so that $(pifarm run box
// --command N) is it; warnings (missing TAPs, what --global-ip-bind
// exposes) go to standard error.
func TestBoxCommandStdoutIsTheCommand(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "config.star")
	os.WriteFile(config, []byte(fmt.Sprintf(boxConfig, filepath.Join(dir, "cache"))), 0o644)
	for _, tc := range []struct {
		args   []string
		stderr []string
	}{
		{[]string{"1"}, []string{"# warning: instance 1 starts without its LAN NIC", "# warning: instance 1 starts without its WLAN NIC"}},
		{[]string{"--global-ip-bind", "2"}, []string{"# warning: instance 2 listens on all addresses (global bind)", "serial console on TCP port 20602 with no password"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			code := runtime.Main(runtime.Options{DefaultConfig: defaultConfig, Args: append([]string{"-c", config, "run", "box", "--command"}, tc.args...), Stdout: &out, Stderr: &errb, Ctx: context.Background(), NotRoot: true})
			if code != 0 {
				t.Fatalf("exit %d: %s%s", code, out.String(), errb.String())
			}
			lines := strings.Split(out.String(), "\n")
			if len(lines) != 2 || lines[1] != "" || !strings.HasPrefix(lines[0], "qemu-system-aarch64 -name ") || !strings.HasSuffix(lines[0], " -daemonize") {
				t.Fatalf("standard output is not the command line alone:\n%s", out.String())
			}
			for _, w := range tc.stderr {
				if !strings.Contains(errb.String(), w) {
					t.Errorf("standard error lacks %q:\n%s", w, errb.String())
				}
			}
		})
	}
}

// linkConfig writes a configuration like the box's whose cache is reached
// through a symbolic link, and returns its path.
func (b *box) linkConfig() string {
	link := filepath.Join(b.dir, "cache-link")
	if err := os.Symlink(b.cache, link); err != nil {
		b.t.Fatal(err)
	}
	cfg := filepath.Join(b.dir, "link-config.star")
	os.WriteFile(cfg, []byte(fmt.Sprintf(boxConfig, link)), 0o644)
	return cfg
}

// TestBoxThroughASymlinkedCache: with the cache reached through a symbolic
// link, the instance table shows a running QEMU (and deletes none of its
// files), seeding the disk it runs on is refused, and --terminate stops it.
func TestBoxThroughASymlinkedCache(t *testing.T) {
	b := newBox(t)
	out, code := b.pifarm("run", "box", "--run", "0")
	b.want(out, code, 0, "<0> loner runs: QEMU pid ")
	pid := regexp.MustCompile(`QEMU pid (\d+)`).FindStringSubmatch(out)[1]
	link := b.linkConfig()
	out, code = b.pifarm("-c", link, "run", "box")
	b.want(out, code, 0, "0   loner    192.168.66.63  yes    "+pid)
	for _, f := range []string{"qemu.pid", "qmp.sock"} {
		if _, err := os.Stat(filepath.Join(b.cache, "clones/raspi-clone-0", f)); err != nil {
			t.Fatalf("the table through the link removed %s: %v", f, err)
		}
	}
	out, code = b.pifarm("-c", link, "run", "image", "--seed-ssh")
	b.want(out, code, 1, "instance 0 is running (pid "+pid+")")
	out, code = b.pifarm("-c", link, "run", "box", "--terminate", "0")
	b.want(out, code, 0, "<0> loner terminated")
}

// TestBoxParallelRunsMakeOneClone: two `pifarm run box --run 2` at once on
// an instance without a clone: one makes the clone, the other keeps it
// (no replacement, no "running; stop it first"), one QEMU results and both
// succeed.
func TestBoxParallelRunsMakeOneClone(t *testing.T) {
	b := newBox(t)
	// Both find no clone, then wait for the instance locks (held here as
	// another pifarm holds them while it changes the image).
	holder := exec.Command("flock", "-o", filepath.Join(b.cache, "clones/raspi-clone-0/lock"), "sleep", "1")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Wait()
	time.Sleep(100 * time.Millisecond)
	outs := make([]string, 2)
	codes := make([]int, 2)
	var wg sync.WaitGroup
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], codes[i] = b.pifarm("run", "box", "--run", "2")
		}()
	}
	wg.Wait()
	for i := range outs {
		b.want(outs[i], codes[i], 0, "creating its clone of instance 0")
	}
	all := outs[0] + outs[1]
	if strings.Count(all, "its clone was made meanwhile by another pifarm") != 1 || strings.Count(all, "runs: QEMU pid ") != 2 {
		t.Fatalf("outputs:\n%s\n---\n%s", outs[0], outs[1])
	}
	if _, err := os.Stat(filepath.Join(b.cache, "clones/raspi-clone-2/clone-2.qcow2~")); err == nil {
		t.Fatal("the clone made by one was replaced by the other")
	}
	out, code := b.pifarm("run", "box")
	b.want(out, code, 0, "2   entwo    192.168.66.8   yes    ")
}
