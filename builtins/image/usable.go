package image

import (
	"errors"
	"fmt"
	"strings"

	"pifarm/builtins/disk/ext4"
	"pifarm/builtins/trace"
)

// What makes an image unusable, found past its partition table (which Open
// verifies). Register and expand (and plan_expand) refuse such an image
// before they write anything; status shows the same words as warnings.
//
// Unusable means pifarm cannot boot it or cannot grow it safely:
//
//   - partition 1 holds no readable FAT32, or lacks one of the boot files
//     (kernel8.img, bcm2710-rpi-3-b-plus.dtb): QEMU boots exactly those;
//   - partition 2 holds no ext2/3/4 superblock the kernel would mount (no
//     magic, a wrong checksum, sizes that contradict each other);
//   - the kernel recorded errors in that file system: growing and cloning a
//     damaged file system spreads the damage, and e2fsck -f repairs it in
//     seconds;
//   - the file system is larger than partition 2: the table was changed
//     under it, and growing the partition would hide the damage.
//
// Not fatal, and left to status: a file size QEMU's SD card does not take
// (expand is the fix: register must accept the image so that expand can
// run), boot files missing or outdated in the cache (provide_qboot is the
// fix), an unclean journal (the kernel replays it on mount).

// problems lists what makes the image unusable, in partition 1 (boot) and
// partition 2 (root); each names the image, the partition, what is wrong
// and the fix.
func (d *Disk) problems() (boot, root []string) {
	l := d.Layout
	b, r := l.Boot(), l.Root()
	if fs, err := d.Boot(); err != nil {
		boot = append(boot, fmt.Sprintf("%v: repair it on a loop device (FAT32 keeps a backup boot sector): LOOP=$(sudo losetup -f --show -o %d --sizelimit %d %s); sudo fsck.vfat -r $LOOP; sudo losetup -d $LOOP; or use a sound copy of the image",
			err, b.Offset(), b.Bytes(), trace.Quote(d.Path)))
	} else {
		for _, bf := range BootFiles {
			if _, err := fs.Stat(bf.Name); err != nil {
				boot = append(boot, fmt.Sprintf("%s partition 1 has no %s (%v): QEMU boots kernel8.img and bcm2710-rpi-3-b-plus.dtb from it; use a 64-bit RaspiOS image for a Pi 3 B+", d.Path, bf.Name, err))
			}
		}
	}
	fsck := "e2fsck -f " + trace.Quote(fmt.Sprintf("%s?offset=%d", d.Path, r.Offset()))
	e, err := d.Root()
	switch {
	case errors.Is(err, ext4.ErrNoFileSystem):
		root = append(root, fmt.Sprintf("%v: partition 2 holds no root file system, or its superblock was overwritten; %s may find a backup superblock, else use a sound copy of the image", err, fsck))
	case err != nil:
		root = append(root, fmt.Sprintf("%v; repair it with: %s", err, fsck))
	case e.Errors:
		root = append(root, fmt.Sprintf("%s partition 2: the kernel recorded errors in the ext4 file system (superblock state); repair it with: %s", d.Path, fsck))
	case e.Size() > r.Bytes():
		root = append(root, fmt.Sprintf("%s partition 2: the ext4 file system (%d bytes) is larger than partition 2 (%d bytes): the partition table was changed under it; restore the table (sfdisk) or shrink the file system to the partition first (resize2fs)", d.Path, e.Size(), r.Bytes()))
	}
	return boot, root
}

// Unusable lists what makes the image unusable for pifarm (see problems);
// nil for a sound image.
func (d *Disk) Unusable() []string {
	boot, root := d.problems()
	return append(boot, root...)
}

// refuseUnusable is the error of op on an unusable image, or nil.
func refuseUnusable(op string, d *Disk) error {
	p := d.Unusable()
	if len(p) == 0 {
		return nil
	}
	return fmt.Errorf("%s %s: the image is not usable and nothing was changed: %s", op, d.Path, strings.Join(p, "; "))
}
