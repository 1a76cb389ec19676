// Package image is the Starlark module `image`: RaspiOS disk images for
// QEMU. It verifies the MBR (go-diskfs), registers the raw image as
// instance 0, expands it to an SD-card size with a margin, reads the QEMU
// boot files straight out of the FAT32 boot partition and signs their
// content, seeds an image offline (ssh, userconf.txt), mounts partitions
// for inspection, reports sizes, and makes full or linked qcow2 clones.
// Reads are queries; every change passes the tracing door, so a dry run
// prints equivalent shell lines (truncate, sfdisk, mcopy, qemu-img, sudo
// mount) and leaves every file byte for byte as it was.
//
// The formats it reads and writes are sub-packages that know nothing of
// the door or Starlark: mbr (the partition table), fat (the FAT32 boot
// partition), qcow2 (the guest view of clones), ext4 (the root file
// system's superblock) and shacrypt (password hashes).
package image

import (
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// instanceRef is the Unpacker of an instance argument: an id, alias or
// node. None, like leaving the argument out, means instance 0 (Node nil).
func (m *mod) instanceRef() farm.InstanceRef {
	return farm.InstanceRef{Farm: m.f, NoneOK: true, None: true}
}

// imageRef is the Unpacker of an image argument: an instance (its disk)
// or any other string, a file path (see disk).
func (m *mod) imageRef() farm.InstanceRef {
	ref := m.instanceRef()
	ref.Also, ref.Other = "path", func(string) bool { return true }
	return ref
}

// id is the instance an instanceRef names: 0 for None or when left out.
func id(ref farm.InstanceRef) int {
	if ref.Node == nil {
		return 0
	}
	return ref.Node.ID
}

// disk is the file an imageRef names and its instance: a path as given
// (~ expanded) with instance -1, or the instance's disk, which must exist.
func (m *mod) disk(ref farm.InstanceRef) (string, int, error) {
	if ref.Node == nil && !ref.None {
		return farm.ExpandPath(ref.Text), -1, nil
	}
	p, err := m.diskPath(id(ref))
	return p, id(ref), err
}

// New returns the image module.
func New(d *trace.Door, f *farm.Farm) *trace.Module {
	m := &mod{d: d, f: f}
	return &trace.Module{
		Name: "image",
		Doc: "RaspiOS disk images: verify, register, expand, boot files, seeding, mounts, clones.\n" +
			"Boot files come with their signature, seeding is offline, clones are qcow2. An `image`\n" +
			"argument is an instance (id, alias or node; its disk) or a file path.",
		Funcs: []trace.Func{
			{Name: "verify", Args: "image=0", Fn: m.verifyFn,
				Doc: "Verify the partition table of an image (a query).\n\n" +
					"512-byte sectors, partition 1 type 0x0c (FAT32 LBA) at sector 8192 or later, partition 2\n" +
					"type 0x83 after it. Anything else is an error naming the file and what was found (GPT, no\n" +
					"table, wrong types, overlap, truncated file). Returns struct(path, size, disk_id, boot, root)\n" +
					"with boot/root = struct(index, type, start, sectors, offset, bytes)."},
			{Name: "host_keys", Args: "image=0", Fn: m.hostKeysFn,
				Doc: "The public SSH host keys the image's root file system holds (a query; debugfs, no mount).\n\n" +
					"The text of its /etc/ssh/ssh_host_*_key.pub files, one key a line, for ssh.trust; \"\" when it\n" +
					"holds none (a fresh RaspiOS makes its keys at its first boot, so keys recorded for the\n" +
					"instance before no longer apply); None for a qcow2 clone, which debugfs cannot read."},
			{Name: "identity", Args: "image=0", Fn: m.identityFn,
				Doc: "What tells the guest on the disk from others (a query; read from its root file system in pure\n" +
					"Go, raw and qcow2 alike, no mount, no root): struct(hostname, machine_id (\"\" when empty: made at\n" +
					"the first boot), keys (its public host keys, one a line, ed25519 first), fingerprints (theirs,\n" +
					"SHA256), arch (uname -m of its /bin/sh), error (None, or why the file system could not be\n" +
					"read)). What a running or killed guest left in its journal is not seen."},
			{Name: "registered", Args: "", Fn: m.registeredFn,
				Doc: "The image file registered as instance 0 (what clone-0.raw links to), or None."},
			{Name: "register", Args: "path", Fn: m.registerFn,
				Doc: "Register the raw image at path as instance 0 (a query-verified MBR first).\n\n" +
					"An image pifarm cannot use is refused before anything is written, with what is wrong and\n" +
					"the fix: no readable FAT32 in partition 1 or no kernel8.img/dtb in it, no sound ext4\n" +
					"superblock in partition 2 (magic, checksum, sizes), errors the kernel recorded in that file\n" +
					"system (e2fsck -f), or a file system larger than partition 2.\n" +
					"clone-0.raw in the cache becomes a link to it; the old link and the old .ker/.dtb/.sig are\n" +
					"moved aside as NAME~ (stale boot files are dropped). Returns the absolute path.\n" +
					"Dry run: prints `mv -f OLD OLD~` and `ln -s PATH LINK`."},
			{Name: "plan_expand", Args: "image=0", Fn: m.planExpandFn,
				Doc: "What expand would do (a query): struct(path, size_before, size, root_before, root, no_need,\n" +
					"script) with sizes in bytes and partition 2 in sectors; script is the sfdisk script.\n" +
					"An image pifarm cannot use (see register) is an error."},
			{Name: "expand", Args: "image=0", Fn: m.expandFn,
				Doc: "Pad a raw image to the smallest configured size (image_sizes_gib) that holds it and grow\n" +
					"partition 2 to end margin_percent before the end.\n\n" +
					"Refuses images over the largest size or that pifarm cannot use (see register), while any instance runs or another pifarm starts one\n" +
					"(the instance locks are held meanwhile), or while a partition is mounted. The file grows first (truncate, fsync), then the table is rewritten (go-diskfs;\n" +
					"disk id and boot code kept), so no table ever points past the end of the file. Returns\n" +
					"the plan (see plan_expand); no_need=True when the image is already right.\n" +
					"Dry run: prints `truncate -s 4G IMG` and `sfdisk --no-reread -q IMG <<'EOF' ... EOF`\n" +
					"with the exact new table, and changes nothing."},
			{Name: "provide_qboot", Args: "instance=0, image=None", Fn: m.qbootFn,
				Doc: "Copy kernel8.img and bcm2710-rpi-3-b-plus.dtb out of the FAT32 boot partition of the\n" +
					"instance's disk (raw, or qcow2 through a pure-Go qcow2 reader; no root, no mount) to\n" +
					"clone-N.ker and clone-N.dtb (old ones kept as NAME~), and record the boot files' signature\n" +
					"in clone-N.sig: the SHA-256 over, for each of the two files in that order, \"NAME\\nLENGTH\\n\"\n" +
					"and its content (what QEMU boots from; other files in partition 1, the FAT's dirty flags\n" +
					"and free-space hints do not count), with the disk's size/mtime/inode for a cheap\n" +
					"unchanged-check. Holds the instance locks meanwhile, and first removes the temporary files\n" +
					"(.clone-N.ker.tmp and the like) that a killed pifarm left in the instance's folder; every\n" +
					"file is written to such a name, synced and renamed, never through a symbolic link.\n" +
					"image: read this file instead of the instance's disk (a dry run that\n" +
					"registers it in the same recipe). Returns struct(kernel, dtb, sig, sum, sizes).\n" +
					"Dry run: prints the equivalent `mcopy -n -o -i IMG@@OFFSET ::kernel8.img clone-N.ker`\n" +
					"lines and how to compute the signature\n" +
					"(`{ printf 'kernel8.img\\nLENGTH\\n'; mcopy -n -i IMG@@OFFSET ::kernel8.img -; ...; } | sha256sum`)."},
			{Name: "check_boot", Args: "instance=0", Fn: m.checkBootFn,
				Doc: "Whether the instance's boot files match its disk (a query): struct(state, message, hashed)\n" +
					"with state \"ok\", \"missing\" or \"outdated\" (kernel8.img or the dtb in partition 1 changed,\n" +
					"e.g. after an OS upgrade, or clone-N.sig is of an older kind: a hash of the partition's\n" +
					"bytes). A guest that left the FAT dirty, RaspiOS deleting the seeded ssh/userconf.txt or\n" +
					"writing other files in /boot keep it \"ok\". Cheap when nothing changed: the disk's size,\n" +
					"mtime, inode and device (and those of a qcow2's backing chain) are compared first; only a\n" +
					"change reads and hashes the two files again (hashed=True). A boot file missing from\n" +
					"partition 1 is an error."},
			{Name: "seed", Args: "image=0, ssh=True, user=None, password=None, password_hash=None, keys=[], files={}, salt=None", Fn: m.seedFn,
				Doc: "Write files into the FAT32 boot partition of a raw image so that a fresh RaspiOS (Bullseye\n" +
					"2022-04 and later, Bookworm) boots with SSH on and a user account: an empty `ssh` file, and\n" +
					"`userconf.txt` = user + \":\" + SHA-512 crypt of password (or password_hash as given).\n" +
					"On images with cloud-init (RaspiOS Trixie and later: a user-data file on the boot\n" +
					"partition) user-data is rewritten too: the user with the hash, keys (public key lines)\n" +
					"authorised, SSH password logins on, sshd enabled; keys on an older image are an error.\n" +
					"files adds more (name -> text). Refuses while any instance runs or a partition is mounted.\n" +
					"The boot files' signatures stay valid (kernel8.img and the dtb are not written). Linked\n" +
					"clones of the image whose guests have not written partition 1 read the seeded files from\n" +
					"their base and stay valid (clones_kept); those whose qcow2 holds clusters of partition 1\n" +
					"would mix two FATs and become invalid (clones_invalid). The kept clones' new records are\n" +
					"prepared (synced) before the image is written, which a full cache therefore leaves\n" +
					"untouched; a seed that failed or was killed later is completed by the next one\n" +
					"(clones_repaired). Returns struct(written, clones_kept, clones_invalid, clones_repaired).\n" +
					"Dry run: prints\n" +
					"`printf '%s\\n' 'pi:****' | mcopy -n -o -i IMG@@OFFSET - ::userconf.txt` (password and hash\n" +
					"masked). The FAT writer keeps both FATs and FSInfo right (fsck.vfat -n finds nothing)."},
			{Name: "hash_password", Args: "password, salt=None", Fn: m.hashFn,
				Doc: "The SHA-512 crypt (\"$6$salt$...\") of password, as /etc/shadow and userconf.txt hold it;\nsalt random when not given."},
			{Name: "mount", Args: "part, instance=0, sudo=False", Fn: m.mountFn,
				Doc: "Mount partition \"boot\" (read-only) or \"root\" (read-write) of the instance's disk on the\n" +
					"cache's mnt/boot or mnt/root: guestmount when installed and allowed (tools in config.star)\n" +
					"and sudo is False, else `sudo mount -o loop,offset=O,sizelimit=N IMG DIR` (one loop device\nper partition, detached again on umount; needs no partition scanning).\n" +
					"Refuses while the instance runs. Returns struct(target, source, how)."},
			{Name: "umount", Args: "part", Fn: m.umountFn,
				Doc: "Unmount mnt/boot or mnt/root (guestunmount for a guestmount, else sudo umount; a loop\nmount's device is detached by the kernel). Returns whether something was mounted."},
			{Name: "status", Args: "instance=0", Fn: m.statusFn,
				Doc: "Sizes and boot-file state of the instance's disk (a query): struct(path, real, format,\n" +
					"file_size, used_by_fs, ext4_size, ext4_used, margin, recommended_margin (bytes), boot,\n" +
					"warnings, text). used_by_fs is where the last partition ends; ext4_* come from the root\n" +
					"file system's superblock; text is the report in MiB. warnings include what makes the image\n" +
					"unusable (see register)."},
			{Name: "clone", Args: "instance, linked=False, replace=True", Fn: m.cloneFn,
				Doc: "Create instance N's qcow2 (N > 0) from instance 0's raw image: a full copy\n" +
					"(`qemu-img convert -p -f raw -O qcow2`, progress on stderr), or with linked=True a qcow2\n" +
					"whose absolute backing file is the base (`qemu-img create -f qcow2 -b BASE -F raw`) plus\n" +
					"a record of the base's identity (clone-N.base). Written to a temporary name and renamed;\n" +
					"a replaced clone is kept as NAME~. Refuses while instance 0 or N runs or the base is\n" +
					"mounted. Instance 0's boot files are hard-linked along when current, with its signature\n" +
					"(the clone boots from the same files; nothing is read again). The disk is 0600, the\n" +
					"folder 0700. replace=False keeps a clone that exists once the instance locks are held\n" +
					"(made meanwhile by another pifarm). Returns struct(path, base, linked, made)."},
			{Name: "check_clone", Args: "instance", Fn: m.checkCloneFn,
				Doc: "Whether instance N's clone may be used (a query): struct(exists, linked, ok, base, reason).\n" +
					"A linked clone is not ok once its base changed (size, mtime, inode) since it was made."},
			{Name: "remove_clone", Args: "instance", Fn: m.removeCloneFn,
				Doc: "Delete instance N's clone, its backups, boot files and base record (rm -f); refuses while\nit runs. Returns the removed paths."},
			{Name: "linked_clones", Args: "image=0", Fn: m.linkedFn,
				Doc: "The ids of the linked clones whose base is image (a query): changing the image (expand,\n" +
					"running instance 0, seeding once their guests wrote partition 1) invalidates them."},
			{Name: "promote", Args: "instance", Fn: m.promoteFn,
				Doc: "Make clone N instance 0's image: `qemu-img convert -f qcow2 -O raw CLONE TMP` (sparse) to a\n" +
					"temporary file next to the registered image, synced; the old image keeps a second name, a\n" +
					"numbered backup IMG.~K~ (`ln`: no copy), onto which its linked clones are rebased\n" +
					"(`qemu-img rebase -u -b BACKUP -F raw`: the same content under another name; their base\n" +
					"records follow), so none silently reads the new image; then the new file is renamed over\n" +
					"the image: the registered path stays. Clone N stays as it is. Refused while any instance\n" +
					"runs, the clone or the image is open or mounted, for a linked clone whose base changed, and\n" +
					"when the raw file would not fit. Instance 0's boot files are then to be provided again\n" +
					"(provide_qboot). Returns struct(image, backup, rebased, size)."},
			{Name: "snapshot", Args: "instance, name", Fn: m.snapshotFn,
				Doc: "Take snapshot name of the stopped instance's disk: a qcow2 internal snapshot of a clone\n" +
					"(`qemu-img snapshot -c NAME DISK`: the same fraction of a second on any size), or for\n" +
					"instance 0 a copy of its raw image in the instance folder's snapshots/ (`cp --reflink=always`\n" +
					"where the file system shares extents, else `cp --sparse=always`; refused when it would not\n" +
					"fit, with 64 MiB to spare). The boot files and their signature (when they match the disk) and\n" +
					"the instance's known_hosts are kept with it (hard links), then a record NAME.snap. Refused\n" +
					"while the instance runs, its disk is open in another process or mounted (under the instance\n" +
					"locks), and for a name in use. A name is 1-64 bytes, without slash, control characters or\n" +
					"blanks around it, not starting with . or -, not all digits. " + snapshotsDoc + "\n" +
					"Returns the snapshot as snapshots() lists it."},
			{Name: "snapshots", Args: "instance=0", Fn: m.snapshotsFn,
				Doc: "The instance's snapshots, oldest first (a query): a list of struct(instance, name, kind\n" +
					"(\"qcow2\" or \"copy\"), id, date (Unix seconds), date_text, size, own, boot, recorded,\n" +
					"known_hosts, disk, note). size is the bytes the snapshot references in the qcow2 file (its\n" +
					"tables and the data they map; a copy: the space it takes), own the part only it holds (what\n" +
					"deleting it frees), read from the qcow2's tables and refcounts. boot is the boot files'\n" +
					"signature kept with it (\"\" when none); recorded is False for a snapshot made by hand."},
			{Name: "rollback", Args: "instance, name", Fn: m.rollbackFn,
				Doc: "Return the stopped instance's disk to snapshot name (`qemu-img snapshot -a`; instance 0:\n" +
					"the copy copied back to a temporary file next to the image, renamed over it), then its\n" +
					"boot files and known_hosts to those kept with the snapshot (the replaced ones kept as\n" +
					"NAME~); without kept boot files they are read from the disk (provide_qboot). The snapshot\n" +
					"stays. Instance 0 is refused while linked clones rest on its image, or when the snapshot\n" +
					"was taken of another image. Refused like snapshot. Returns struct(snapshot,\n" +
					"boot_restored, known_hosts_restored, boot) with boot as check_boot returns it."},
			{Name: "delete_snapshot", Args: "instance, name", Fn: m.deleteSnapshotFn,
				Doc: "Delete snapshot name of the stopped instance (`qemu-img snapshot -d`, or the copy) and the\n" +
					"files kept with it, its record first. Refused like snapshot. Returns the files removed."},
			{Name: "clones", Args: "", Fn: m.clonesFn,
				Doc: "The ids of the instances that have a clone (a query)."},
			{Name: "running", Args: "", Fn: m.runningFn,
				Doc: "The instances whose QEMU pidfile names a live QEMU process (a query): a list of\nstruct(id, pid)."},
			{Name: "mounts", Args: "image=None", Fn: m.mountsFn,
				Doc: "Mounts on the cache's mnt/boot and mnt/root, and of loop devices backed by image\n(default: instance 0's), as a list of struct(source, target, fstype, options)."},
		},
	}
}
