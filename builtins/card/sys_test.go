package card

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"pifarm/builtins/trace"
)

// fakeSys builds a sysfs tree: disks sda (fixed, holds /), sdb (a USB card
// reader's card, two partitions, none mounted), mmcblk0 (an SD card whose
// partition 1 is mounted), sdc (a USB disk with LVM on its partition) and
// loop3 (a loop device).
func fakeSys(t *testing.T) System {
	t.Helper()
	root := t.TempDir()
	sys := filepath.Join(root, "sys")
	write := func(p, v string) {
		p = filepath.Join(sys, p)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	type part struct {
		name, dev   string
		start, size int64
		holders     []string
	}
	disk := func(devpath, name, dev string, sectors int64, removable string, parts ...part) {
		dir := filepath.Join("devices", devpath, "block", name)
		write(filepath.Join(dir, "dev"), dev)
		write(filepath.Join(dir, "size"), itoa(sectors))
		write(filepath.Join(dir, "removable"), removable)
		write(filepath.Join(dir, "ro"), "0")
		write(filepath.Join(dir, "queue", "logical_block_size"), "512")
		os.MkdirAll(filepath.Join(sys, dir, "holders"), 0o755)
		os.MkdirAll(filepath.Join(sys, "block"), 0o755)
		os.MkdirAll(filepath.Join(sys, "dev", "block"), 0o755)
		os.Symlink(filepath.Join(sys, dir), filepath.Join(sys, "block", name))
		os.Symlink(filepath.Join(sys, dir), filepath.Join(sys, "dev", "block", dev))
		for i, p := range parts {
			pd := filepath.Join(dir, p.name)
			write(filepath.Join(pd, "dev"), p.dev)
			write(filepath.Join(pd, "partition"), itoa(int64(i+1)))
			write(filepath.Join(pd, "start"), itoa(p.start))
			write(filepath.Join(pd, "size"), itoa(p.size))
			os.MkdirAll(filepath.Join(sys, pd, "holders"), 0o755)
			os.Symlink(filepath.Join(sys, pd), filepath.Join(sys, "dev", "block", p.dev))
			for _, h := range p.holders {
				os.Symlink("../../../"+h, filepath.Join(sys, pd, "holders", h))
			}
		}
	}
	disk("pci0000:00/ata1/host0", "sda", "8:0", 1<<28, "0", part{"sda1", "8:1", 8192, 1 << 20, nil}, part{"sda2", "8:2", 1<<20 + 8192, 1 << 27, nil})
	disk("pci0000:00/usb1/1-1/host2", "sdb", "8:16", 31<<21, "1", part{"sdb1", "8:17", 8192, 1 << 19, nil}, part{"sdb2", "8:18", 1<<19 + 8192, 1 << 23, nil})
	write("devices/pci0000:00/usb1/1-1/host2/block/sdb/device/vendor", "Generic")
	write("devices/pci0000:00/usb1/1-1/host2/block/sdb/device/model", "STORAGE DEVICE  ")
	disk("platform/mmc0/mmc0:0001", "mmcblk0", "179:0", 15<<21, "0", part{"mmcblk0p1", "179:1", 8192, 1 << 19, nil})
	write("devices/platform/mmc0/mmc0:0001/block/mmcblk0/device/type", "SD")
	write("devices/platform/mmc0/mmc0:0001/block/mmcblk0/device/name", "SD32G")
	disk("pci0000:00/usb2/2-1/host3", "sdc", "8:32", 1<<30, "0", part{"sdc1", "8:33", 2048, 1 << 29, []string{"dm-0"}})
	disk("virtual", "dm-0", "253:0", 1<<29, "0")
	disk("virtual", "loop3", "7:3", 1<<17, "0")
	write("devices/virtual/block/loop3/loop/backing_file", "/tmp/card.img")
	write("devices/virtual/block/loop3/queue/write_zeroes_max_bytes", "4294966784")
	swaps := filepath.Join(root, "swaps")
	os.WriteFile(swaps, []byte("Filename\tType\tSize\tUsed\tPriority\n"), 0o644)
	return System{Sys: sys, Mountinfo: "testdata/mountinfo", Swaps: swaps, Dev: "/nonexistent-dev"}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestInspectFixture: what sysfs and mountinfo say makes each refusal, and
// a card in a reader is writable.
func TestInspectFixture(t *testing.T) {
	s := fakeSys(t)
	src := &Source{Path: "/x.img", Size: 4 << 30, Need: 4 << 30 * 94 / 100}
	for _, tc := range []struct {
		disk      string
		want      []string // refusals, in order
		forceable []bool
		transport string
	}{
		{"sda", []string{"it holds the running system: / is sda2 (/dev/sda2)", "sda1 is mounted on /boot/firmware", "it is not removable (a fixed disk"}, []bool{false, false, true}, "scsi"},
		{"sdb", nil, nil, "usb"},
		{"mmcblk0", []string{"mmcblk0p1 is mounted on /media/pi/my card: unmount it first (umount '/media/pi/my card')"}, []bool{false}, "mmc"},
		{"sdc", []string{"dm-0 is mounted on /srv", "it is not removable"}, []bool{false, true}, "usb"},
		{"loop3", []string{"it is too small: 64.0 MiB", "it is not removable (a loop device of /tmp/card.img"}, []bool{false, true}, "loop"},
	} {
		tg, err := s.inspectDisk(&Target{Path: "/dev/" + tc.disk}, tc.disk, src)
		if err != nil {
			t.Fatalf("%s: %v", tc.disk, err)
		}
		if tg.Disk.Transport != tc.transport {
			t.Errorf("%s: transport %s, want %s", tc.disk, tg.Disk.Transport, tc.transport)
		}
		if len(tg.Refusals) != len(tc.want) {
			t.Errorf("%s: refusals %+v, want %q", tc.disk, tg.Refusals, tc.want)
			continue
		}
		for i, r := range tg.Refusals {
			if !strings.Contains(r.Why, tc.want[i]) || r.Forceable != tc.forceable[i] {
				t.Errorf("%s: refusal %d: %q forceable=%v, want %q forceable=%v", tc.disk, i, r.Why, r.Forceable, tc.want[i], tc.forceable[i])
			}
		}
	}
	d, err := s.ReadDisk("sdb")
	if err != nil {
		t.Fatal(err)
	}
	if d.Model != "Generic STORAGE DEVICE" || !d.Removable || d.Size != 31<<30 || len(d.Parts) != 2 || d.Parts[1].Start != (1<<19+8192)*512 {
		t.Errorf("sdb: %+v", d)
	}
	if d, _ := s.ReadDisk("mmcblk0"); !d.Removable || d.Model != "SD32G" {
		t.Errorf("an SD card in an MMC slot: removable %v model %q", d.Removable, d.Model)
	}
	if d, _ := s.ReadDisk("loop3"); !d.ZeroOffload || d.Backing != "/tmp/card.img" {
		t.Errorf("loop3: %+v", d)
	}
	if _, err := s.DiskOf(unix.Mkdev(8, 17)); err == nil || !strings.Contains(err.Error(), "sdb1 is a partition of sdb: give the whole card, /dev/sdb") {
		t.Errorf("a partition: %v", err)
	}
	if name, err := s.DiskOf(unix.Mkdev(8, 16)); name != "sdb" || err != nil {
		t.Errorf("DiskOf(8:16) = %q, %v", name, err)
	}
	disks, _ := s.Disks()
	var names []string
	for _, d := range disks {
		names = append(names, d.Name)
	}
	if strings.Join(names, " ") != "dm-0 loop3 mmcblk0 sda sdb sdc" {
		t.Errorf("Disks: %v", names)
	}
}

func TestParseMountinfo(t *testing.T) {
	f, _ := os.Open("testdata/mountinfo")
	defer f.Close()
	ms, err := ParseMountinfo(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 5 || ms[1].Point != "/" || ms[1].Dev != unix.Mkdev(8, 2) || ms[3].Point != "/media/pi/my card" || ms[3].FSType != "vfat" || ms[3].Source != "/dev/mmcblk0p1" {
		t.Fatalf("%+v", ms)
	}
	for _, bad := range []string{
		"1 2 8:1 / /x rw shared:1 ext4 /dev/sda1 rw", // no separator
		"1 2 8-1 / /x rw - ext4 /dev/sda1 rw",        // no MAJ:MIN
		"1 2 8:1 / /x rw -",                          // nothing after it
		"1 2 x:1 / /x rw - ext4 /dev/sda1 rw",
	} {
		if _, err := ParseMountinfo(strings.NewReader(bad + "\n")); err == nil || !strings.Contains(err.Error(), "mountinfo line 1") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if got := unescapeOctal(`a\040b\134c\011\0`); got != "a b\\c\t\\0" {
		t.Errorf("unescape: %q", got)
	}
	sw, _ := ParseSwaps(strings.NewReader("Filename Type Size Used Priority\n/dev/sdb2 partition 100 0 -2\n/swap\\040file file 1 0 -3\n"))
	if len(sw) != 2 || sw[0] != "/dev/sdb2" || sw[1] != "/swap file" {
		t.Errorf("swaps: %q", sw)
	}
}

func FuzzParseMountinfo(f *testing.F) {
	b, _ := os.ReadFile("testdata/mountinfo")
	f.Add(string(b))
	f.Add("1 2 8:1 / /a\\040b rw - ext4 /dev/x rw\n")
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := ParseMountinfo(strings.NewReader(s))
		if err == nil {
			for _, m := range ms {
				if m.FSType == "" && m.Source == "" {
					t.Fatalf("a mount without type and source from %q", s)
				}
			}
		}
		ParseSwaps(strings.NewReader(s))
	})
}

func TestProbe(t *testing.T) {
	head := func(fill func(b []byte)) []byte {
		b := make([]byte, ProbeSize)
		fill(b)
		return b
	}
	for _, tc := range []struct {
		name, fstype, label string
		b                   []byte
	}{
		{"ext4", "ext4", "rootfs", head(func(b []byte) {
			copy(b[1080:], "\x53\xef")
			b[1024+0x60] = 0x40 // extents
			copy(b[1024+0x78:], "rootfs")
		})},
		{"ext3", "ext3", "", head(func(b []byte) { copy(b[1080:], "\x53\xef"); b[1024+0x5c] = 4 })},
		{"fat32", "vfat", "BOOTFS", head(func(b []byte) {
			copy(b[0x47:], "BOOTFS     ")
			copy(b[0x52:], "FAT32   ")
			b[510], b[511] = 0x55, 0xaa
		})},
		{"fat16 unlabelled", "vfat", "", head(func(b []byte) {
			copy(b[0x2b:], "NO NAME    ")
			copy(b[0x36:], "FAT16   ")
			b[510], b[511] = 0x55, 0xaa
		})},
		{"swap", "swap", "", head(func(b []byte) { copy(b[4086:], "SWAPSPACE2") })},
		{"zeros", "", "", make([]byte, ProbeSize)},
		{"short", "", "", []byte{1, 2, 3}},
	} {
		fstype, label := Probe(tc.b)
		if fstype != tc.fstype || label != tc.label {
			t.Errorf("%s: %q %q, want %q %q", tc.name, fstype, label, tc.fstype, tc.label)
		}
	}
}

func FuzzProbe(f *testing.F) {
	f.Add(make([]byte, 2048))
	f.Fuzz(func(t *testing.T, b []byte) {
		fstype, label := Probe(b)
		if fstype == "" && label != "" {
			t.Fatalf("a label %q without a type", label)
		}
	})
}

func TestMBREnd(t *testing.T) {
	b := make([]byte, 512)
	put := func(i int, typ byte, start, n uint32) {
		e := b[446+16*i:]
		e[4] = typ
		e[8], e[9], e[10], e[11] = byte(start), byte(start>>8), byte(start>>16), byte(start>>24)
		e[12], e[13], e[14], e[15] = byte(n), byte(n>>8), byte(n>>16), byte(n>>24)
	}
	put(0, 0x0c, 8192, 524288)
	put(1, 0x83, 532480, 7000000)
	if got := mbrEnd(b); got != (532480+7000000)*512 {
		t.Errorf("mbrEnd = %d", got)
	}
	put(2, 0xee, 1, 0xffffffff) // a protective GPT entry says nothing
	if got := mbrEnd(b); got != (532480+7000000)*512 {
		t.Errorf("mbrEnd with a GPT entry = %d", got)
	}
}

// TestConfirm: a card is written only when the question is answered yes;
// an image file needs no question; yes skips it.
func TestConfirm(t *testing.T) {
	s := fakeSys(t)
	src := &Source{Path: "/x.img", Format: "raw", Size: 4 << 30, Data: 1 << 30, Need: 4 << 30}
	card, err := s.inspectDisk(&Target{Path: "/dev/sdb"}, "sdb", src)
	if err != nil {
		t.Fatal(err)
	}
	file := &Target{Path: "/tmp/x.img", Capacity: 4 << 30}
	var asked []string
	m := &module{d: trace.New(context.Background(), false, false, io.Discard), sys: s}
	for _, tc := range []struct {
		targets []*Target
		yes     bool
		answer  bool
		wantErr string
		asks    bool
	}{
		{[]*Target{card}, false, false, "not confirmed: nothing written", true},
		{[]*Target{card, file}, false, true, "", true},
		{[]*Target{file}, false, false, "", false},
		{[]*Target{card}, true, false, "", false},
	} {
		asked = nil
		m.ask = func(q string) (bool, error) { asked = append(asked, q); return tc.answer, nil }
		err := m.confirm(src, tc.targets, tc.yes)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%d targets, yes=%v: err %v, want %q", len(tc.targets), tc.yes, err, tc.wantErr)
		}
		if (len(asked) > 0) != tc.asks {
			t.Errorf("%d targets, yes=%v: asked %q", len(tc.targets), tc.yes, asked)
		}
		if len(asked) > 0 && !strings.Contains(asked[0], ": Generic STORAGE DEVICE, 31.0 GiB, removable (usb); partitions: sdb1 256.0 MiB, sdb2 4.0 GiB") {
			t.Errorf("the question does not show the card: %q", asked[0])
		}
	}
	m.ask = nil // no terminal in a test: refused without yes
	if err := m.confirm(src, []*Target{card}, false); err == nil || !strings.Contains(err.Error(), "there is no terminal to ask on; pass --yes") {
		t.Errorf("without a terminal: %v", err)
	}
}
