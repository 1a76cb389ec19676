package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Snapshot is an internal snapshot of a qcow2 image (`qemu-img snapshot
// -c`): its entry in the image's snapshot table.
type Snapshot struct {
	ID, Name string
	// Date is when it was taken (the host's clock then).
	Date time.Time
	// VMStateSize is the bytes of saved RAM state (0 for a snapshot of a
	// stopped guest's disk, which is what qemu-img makes).
	VMStateSize uint64
	// DiskSize is the guest disk's virtual size when it was taken (0: the
	// entry does not record it, as entries of version 2 images may not).
	DiskSize uint64
	l1Off    uint64
	l1Size   uint32
}

// The limits QEMU sets on a snapshot table (block/qcow2.h): more, or a
// larger entry, is a damaged table.
const (
	maxSnapshots      = 65536
	maxSnapshotExtra  = 1024
	snapshotEntryHead = 40
)

// Snapshots lists the image's internal snapshots in table order (the
// order they were taken in, unless some were deleted and others added).
// A table that does not parse is an error naming what is wrong.
func (q *Image) Snapshots() ([]Snapshot, error) {
	h := q.header
	if len(h) < 72 {
		return nil, errors.New("qcow2: header too short for a snapshot table")
	}
	n := binary.BigEndian.Uint32(h[60:])
	off := binary.BigEndian.Uint64(h[64:])
	if n == 0 {
		return nil, nil
	}
	if n > maxSnapshots {
		return nil, fmt.Errorf("qcow2: %d snapshots, more than QEMU allows (%d): a damaged header", n, maxSnapshots)
	}
	out := make([]Snapshot, 0, n)
	for i := uint32(0); i < n; i++ {
		var head [snapshotEntryHead]byte
		if _, err := q.r.ReadAt(head[:], int64(off)); err != nil {
			return nil, fmt.Errorf("qcow2: snapshot %d of %d: read its entry at %d: %w", i+1, n, off, err)
		}
		be16 := func(i int) uint16 { return binary.BigEndian.Uint16(head[i:]) }
		be32 := func(i int) uint32 { return binary.BigEndian.Uint32(head[i:]) }
		be64 := func(i int) uint64 { return binary.BigEndian.Uint64(head[i:]) }
		s := Snapshot{l1Off: be64(0), l1Size: be32(8)}
		idLen, nameLen := int(be16(12)), int(be16(14))
		s.Date = time.Unix(int64(be32(16)), int64(be32(20)))
		s.VMStateSize = uint64(be32(32))
		extra := int(be32(36))
		if extra > maxSnapshotExtra {
			return nil, fmt.Errorf("qcow2: snapshot %d: %d bytes of extra data, more than QEMU allows (%d): a damaged table", i+1, extra, maxSnapshotExtra)
		}
		if int64(s.l1Size)*8 > maxL1Bytes {
			return nil, fmt.Errorf("qcow2: snapshot %d: L1 table of %d entries, more than QEMU allows: a damaged table", i+1, s.l1Size)
		}
		rest := make([]byte, extra+idLen+nameLen)
		if _, err := q.r.ReadAt(rest, int64(off)+snapshotEntryHead); err != nil {
			return nil, fmt.Errorf("qcow2: snapshot %d: read its entry: %w", i+1, err)
		}
		if extra >= 8 {
			if large := binary.BigEndian.Uint64(rest[0:]); large != 0 {
				s.VMStateSize = large
			}
		}
		if extra >= 16 {
			s.DiskSize = binary.BigEndian.Uint64(rest[8:])
		}
		s.ID = string(rest[extra : extra+idLen])
		s.Name = string(rest[extra+idLen:])
		out = append(out, s)
		size := uint64(snapshotEntryHead + len(rest))
		off += (size + 7) &^ 7
	}
	return out, nil
}

// Usage is what one internal snapshot holds in the qcow2 file.
type Usage struct {
	// Referenced is the bytes of the file's clusters the snapshot's
	// tables point to: its L1 table, its L2 tables and the guest data
	// they map (compressed clusters by their compressed size).
	Referenced int64
	// Exclusive is the part of Referenced that nothing else references
	// (refcount 1: neither the current disk nor another snapshot): what
	// deleting the snapshot frees.
	Exclusive int64
}

// SnapshotUsage counts what snapshot s holds in the file, from its L1 and
// L2 tables and the image's refcounts.
func (q *Image) SnapshotUsage(s Snapshot) (Usage, error) {
	rc, err := q.refcounts()
	if err != nil {
		return Usage{}, err
	}
	cs := int64(1) << q.clusterBits
	var u Usage
	add := func(host uint64, bytes int64) error {
		n, err := rc.get(host >> q.clusterBits)
		if err != nil {
			return err
		}
		u.Referenced += bytes
		if n == 1 {
			u.Exclusive += bytes
		}
		return nil
	}
	l1Bytes := int64(s.l1Size) * 8
	for c := int64(0); c < (l1Bytes+cs-1)/cs; c++ {
		if err := add(s.l1Off+uint64(c*cs), cs); err != nil {
			return Usage{}, err
		}
	}
	l1b := make([]byte, l1Bytes)
	if _, err := q.r.ReadAt(l1b, int64(s.l1Off)); err != nil {
		return Usage{}, fmt.Errorf("qcow2: snapshot %q: read its L1 table: %w", s.Name, err)
	}
	cb := q.clusterBits
	x := 62 - (cb - 8)
	for i := 0; i < int(s.l1Size); i++ {
		l2off := binary.BigEndian.Uint64(l1b[i*8:]) & qOffMask
		if l2off == 0 {
			continue
		}
		if err := add(l2off, cs); err != nil {
			return Usage{}, err
		}
		t, err := q.l2Table(l2off)
		if err != nil {
			return Usage{}, err
		}
		for _, e := range t {
			switch {
			case e&qCompressed != 0:
				host := e & (1<<x - 1)
				sectors := (e>>x)&(1<<(cb-8)-1) + 1
				if err := add(host, int64(sectors)*512); err != nil {
					return Usage{}, err
				}
			case e&qOffMask != 0:
				if err := add(e&qOffMask, cs); err != nil {
					return Usage{}, err
				}
			}
		}
	}
	return u, nil
}

// refTable reads the refcounts of the file's clusters.
type refTable struct {
	q      *Image
	table  []uint64 // offsets of the refcount blocks
	bits   uint     // refcount_bits
	blocks map[uint64][]byte
}

// refcounts reads the image's refcount table (its blocks on demand).
func (q *Image) refcounts() (*refTable, error) {
	h := q.header
	if len(h) < 72 {
		return nil, errors.New("qcow2: header too short for a refcount table")
	}
	order := uint32(4) // version 2: 16-bit refcounts
	if binary.BigEndian.Uint32(h[4:]) == 3 && len(h) >= 100 {
		order = binary.BigEndian.Uint32(h[96:])
	}
	if order > 6 {
		return nil, fmt.Errorf("qcow2: refcount order %d out of range", order)
	}
	off := binary.BigEndian.Uint64(h[48:])
	clusters := binary.BigEndian.Uint32(h[56:])
	n := int64(clusters) << q.clusterBits
	if n > 8<<20 {
		return nil, fmt.Errorf("qcow2: refcount table of %d clusters, more than QEMU allows: a damaged header", clusters)
	}
	b := make([]byte, n)
	if _, err := q.r.ReadAt(b, int64(off)); err != nil {
		return nil, fmt.Errorf("qcow2: read the refcount table: %w", err)
	}
	rt := &refTable{q: q, bits: 1 << order, blocks: map[uint64][]byte{}}
	rt.table = make([]uint64, n/8)
	for i := range rt.table {
		rt.table[i] = binary.BigEndian.Uint64(b[i*8:]) & qOffMask
	}
	return rt, nil
}

// get is the refcount of host cluster c (0 when its block is unallocated).
func (rt *refTable) get(c uint64) (uint64, error) {
	cb := rt.q.clusterBits
	perBlock := (uint64(1) << cb) * 8 / uint64(rt.bits)
	ti, bi := c/perBlock, c%perBlock
	if ti >= uint64(len(rt.table)) || rt.table[ti] == 0 {
		return 0, nil
	}
	blk, ok := rt.blocks[rt.table[ti]]
	if !ok {
		blk = make([]byte, 1<<cb)
		if _, err := rt.q.r.ReadAt(blk, int64(rt.table[ti])); err != nil {
			return 0, fmt.Errorf("qcow2: read a refcount block at %d: %w", rt.table[ti], err)
		}
		rt.blocks[rt.table[ti]] = blk
	}
	switch rt.bits {
	case 8:
		return uint64(blk[bi]), nil
	case 16:
		return uint64(binary.BigEndian.Uint16(blk[bi*2:])), nil
	case 32:
		return uint64(binary.BigEndian.Uint32(blk[bi*4:])), nil
	case 64:
		return binary.BigEndian.Uint64(blk[bi*8:]), nil
	}
	// 1, 2 or 4 bits: packed from the lowest bits of each byte up (QEMU's
	// get_refcount_ro0..2)
	per := 8 / uint64(rt.bits)
	v := blk[bi/per] >> ((bi % per) * uint64(rt.bits))
	return uint64(v) & (1<<rt.bits - 1), nil
}
