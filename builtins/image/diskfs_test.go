package image

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/mbr"
)

// TestGoDiskfsFixture reads an image that go-diskfs made (MBR, FAT32 and
// files), and checks that a go-diskfs table survives expansion with its
// disk id.
func TestGoDiskfsFixture(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "diskfs.img")
	size := int64(160 << 20)
	dk, err := diskfs.Create(p, size, diskfs.SectorSizeDefault)
	if err != nil {
		t.Fatal(err)
	}
	table := &mbr.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, Partitions: []*mbr.Partition{
		{Index: 1, Type: mbr.Fat32LBA, Start: 8192, Size: 81920},
		{Index: 2, Type: mbr.Linux, Start: 90112, Size: uint32(size/512) - 90112},
	}}
	if err := dk.Partition(table); err != nil {
		t.Fatal(err)
	}
	fs, err := dk.CreateFilesystem(disk.FilesystemSpec{Partition: 1, FSType: filesystem.TypeFat32, VolumeLabel: "bootfs"})
	if err != nil {
		t.Fatal(err)
	}
	kernel := randBytes(7, 123_456)
	for name, b := range map[string][]byte{"/kernel8.img": kernel, "/bcm2710-rpi-3-b-plus.dtb": randBytes(8, 31_337)} {
		f, err := fs.OpenFile(name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	dk.Close()
	// the root file system that expand checks before it grows partition 2
	run(t, "", "mkfs.ext4", "-q", "-F", "-E", fmt.Sprintf("offset=%d", 90112*512), p, "60M")
	// go-diskfs writes no disk id: give it one, as RaspiOS images have
	img, _ := os.OpenFile(p, os.O_RDWR, 0)
	img.WriteAt([]byte{0x78, 0x56, 0x34, 0x12}, 440)
	img.Close()

	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	bfs, err := d.Boot()
	if err != nil {
		t.Fatal(err)
	}
	got, err := bfs.ReadFile("KERNEL8.IMG")
	if err != nil || !bytes.Equal(got, kernel) {
		t.Fatalf("kernel from a go-diskfs FAT32: %v", err)
	}
	d.Close()

	m, _ := testMod(t, dir, false)
	pl, err := m.Expand(p)
	if err != nil {
		t.Fatal(err)
	}
	d, err = Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Layout.DiskID != 0x12345678 || d.Layout.Root().Sectors != pl.Root || d.Layout.FileSize != 4<<30 {
		t.Fatalf("after expand: %+v", d.Layout)
	}
	if got := run(t, "", "sfdisk", "-d", p); !bytes.Contains([]byte(got), []byte("label-id: 0x12345678")) {
		t.Fatalf("sfdisk -d: %s", got)
	}
}
