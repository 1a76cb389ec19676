// Package disk is the ground of the on-disk formats pifarm reads and writes
// itself, one package each: mbr (the partition table), fat (FAT32 files of
// the boot partition), ext4 (reading and small edits of the root file
// system) and qcow2 (clones: header, allocation map, snapshots). Like farm
// and trace, any module may import them; they import no module. disktest
// holds what their tests and the modules' tests share.
package disk
