package image

import (
	"fmt"
	"path/filepath"
	"strings"

	"pifarm/builtins/disk/mbr"
)

// Status is what `pifarm run image` prints without options.
type Status struct {
	Path, Real, Format string
	FileSize           int64 // bytes (virtual size for qcow2)
	UsedByFS           int64 // bytes up to the end of partition 2
	Ext4Size, Ext4Used int64 // the root file system's own view (0: unreadable)
	Margin             int64 // bytes after partition 2
	Recommended        int64 // margin_percent of the file size
	Boot               BootState
	Warnings           []string
}

// Text renders the status in MiB, one fact per line.
func (s *Status) Text() string {
	var b strings.Builder
	mb := func(n int64) string { return fmt.Sprintf("%d MiB", n/mib) }
	for _, w := range s.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	fmt.Fprintf(&b, "disk image:          %s", s.Path)
	if s.Real != s.Path {
		fmt.Fprintf(&b, " -> %s", s.Real)
	}
	fmt.Fprintf(&b, " (%s)\n", s.Format)
	fmt.Fprintf(&b, "file size:           %s\n", mb(s.FileSize))
	fmt.Fprintf(&b, "used by file system: %s", mb(s.UsedByFS))
	if s.Ext4Size > 0 {
		fmt.Fprintf(&b, " (root file system: %s, %s in use)", mb(s.Ext4Size), mb(s.Ext4Used))
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "unused margin:       %s\n", mb(s.Margin))
	fmt.Fprintf(&b, "recommended margin:  %s\n", mb(s.Recommended))
	fmt.Fprintf(&b, "boot files:          %s\n", s.Boot.State)
	return b.String()
}

// Status reads instance id's disk: sizes, margin and boot file state.
func (m *mod) Status(id int) (*Status, error) {
	path, err := m.diskPath(id)
	if err != nil {
		return nil, err
	}
	d, err := m.open(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	real, _ := filepath.EvalSymlinks(path)
	l := d.Layout
	s := &Status{Path: path, Real: real, Format: "raw", FileSize: l.FileSize}
	if d.Qcow2 {
		s.Format = "qcow2"
	}
	end := int64(0)
	for _, p := range l.Parts {
		if p.Type != 0 && int64(p.End())*mbr.SectorSize > end {
			end = int64(p.End()) * mbr.SectorSize
		}
	}
	s.UsedByFS = end
	s.Margin = l.FileSize - end
	s.Recommended = int64(float64(l.FileSize) * m.f.Config.MarginPercent / 100)
	if e, err := d.Root(); err == nil {
		s.Ext4Size, s.Ext4Used = e.Size(), e.Used()
	}
	bootProblems, rootProblems := d.problems()
	s.Warnings = append(append(s.Warnings, bootProblems...), rootProblems...)
	ok := false
	for _, sz := range m.f.Config.ImageSizesGiB {
		if l.FileSize == int64(sz)*gib {
			ok = true
		}
	}
	if !ok {
		s.Warnings = append(s.Warnings, fmt.Sprintf("%s is %d bytes, not one of the sizes QEMU's SD card accepts (%v GiB); run: pifarm run image --expand-image", path, l.FileSize, m.f.Config.ImageSizesGiB))
	}
	if st, err := m.CheckBoot(id); err == nil {
		s.Boot = st
		if st.State != "ok" {
			s.Warnings = append(s.Warnings, st.Message)
		}
	} else {
		s.Boot = BootState{State: "unknown", Message: err.Error()}
		if len(bootProblems) == 0 { // else said already
			s.Warnings = append(s.Warnings, err.Error())
		}
	}
	return s, nil
}
