package image

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"pifarm/builtins/trace"
)

// guestSum is the SHA-256 of a disk's guest view (raw or qcow2).
func guestSum(t *testing.T, path string) [32]byte {
	t.Helper()
	d, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(d.ReaderAt(), 0, d.Layout.FileSize)); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// TestPromote: a full clone's guest view becomes instance 0's image under
// the registered path; the old image is kept as IMG.~1~ and the linked
// clones that rested on it are rebased onto that backup, reading what they
// read before; refusals change nothing.
func TestPromote(t *testing.T) {
	m, fx, dir := registered(t)
	if _, err := m.Clone(1, false); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Clone(2, true); err != nil {
		t.Fatal(err)
	}
	off := int64(fx.rootStart)*512 + 3<<20
	run(t, "", "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x11 %d 1M", off), m.f.Disk(1))
	run(t, "", "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x22 %d 64k", off), m.f.Disk(2))
	want1, want2, old := guestSum(t, m.f.Disk(1)), guestSum(t, m.f.Disk(2)), sum(t, fx.path)

	if _, err := m.Promote(0); err == nil || !strings.Contains(err.Error(), "promote a clone") {
		t.Fatalf("promote 0: %v", err)
	}
	fakeQemu(t, m, 2)
	if _, err := m.Promote(1); err == nil || !strings.Contains(err.Error(), "instance 2 is running") {
		t.Fatalf("promote while 2 runs: %v", err)
	}
	os.Remove(m.f.Pidfile(2))

	dry, dout := testMod(t, dir, true)
	if _, err := dry.Promote(1); err != nil {
		t.Fatal(err)
	}
	backup := fx.path + ".~1~"
	for _, w := range []string{
		fmt.Sprintf("qemu-img convert -f qcow2 -O raw %s %s\n", m.f.Disk(1), tmpName(fx.path)),
		"ln " + fx.path + " " + trace.Quote(backup) + "\n",
		fmt.Sprintf("qemu-img rebase -u -f qcow2 -b %s -F raw %s\n", trace.Quote(backup), m.f.Disk(2)),
		fmt.Sprintf("mv -f %s %s\n", tmpName(fx.path), fx.path),
	} {
		if !strings.Contains(dout.Output(), w) {
			t.Errorf("dry trace lacks %q:\n%s", w, dout.Output())
		}
	}
	if sum(t, fx.path) != old {
		t.Fatal("a dry run changed the image")
	}

	r, err := m.Promote(1)
	if err != nil {
		t.Fatal(err)
	}
	if r.Image != fx.path || r.Backup != backup || len(r.Rebased) != 1 || r.Rebased[0] != 2 || r.Size <= 0 || r.Size > 30<<20 {
		t.Fatalf("promotion %+v", r)
	}
	if guestSum(t, fx.path) != want1 || sum(t, backup) != old || m.Registered() != fx.path {
		t.Fatal("the image is not the clone's guest view, or the backup not the old image")
	}
	st, err := m.CheckClone(2)
	if err != nil || !st.OK || st.Base != backup || guestSum(t, m.f.Disk(2)) != want2 {
		t.Fatalf("linked clone 2 after the promotion: %+v %v", st, err)
	}
	if bs, _ := m.CheckBoot(2); bs.State != "ok" {
		t.Fatalf("boot files of clone 2: %+v", bs)
	}
	if _, err := m.ProvideQboot(0, ""); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(tmpName(fx.path)); fi != nil {
		t.Fatal("the temporary file stayed")
	}

	// the linked clone is promoted in turn: the next backup, and it is
	// rebased itself
	r, err = m.Promote(2)
	if err != nil {
		t.Fatal(err)
	}
	if r.Backup != fx.path+".~2~" || len(r.Rebased) != 0 || guestSum(t, fx.path) != want2 {
		t.Fatalf("second promotion %+v", r)
	}
	if st, _ := m.CheckClone(2); !st.OK || st.Base != backup {
		t.Fatalf("clone 2 rests on the first backup still: %+v", st)
	}
}
