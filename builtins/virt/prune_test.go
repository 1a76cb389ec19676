package virt_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
	"pifarm/builtins/virt"
	"pifarm/builtins/virt/virttest"
)

// TestPruneBases: of a farm's earlier images of instance 0 in the pool,
// only those nothing rests on go (a clone's qcow2 volume keeps its base,
// the current one stays, another farm's are not touched); a dry run
// names them and deletes nothing.
func TestPruneBases(t *testing.T) {
	if testing.Short() {
		t.Skip("real libvirtd")
	}
	virttest.Daemon(t)
	h, _ := farm.ParseHostURI("qemu:///system")
	ctx := context.Background()
	c, err := virt.Connect(ctx, h, virt.Auth{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() }) // after the volumes' clean-up below
	live := trace.New(ctx, false, false, &strings.Builder{})
	if err := c.EnsurePool(ctx, live); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir() // this farm's; its tag names its volumes
	tag := virt.FarmTag(cache)
	old1, old2, cur := "pifarm-"+tag+"-0-aaaaaa.raw", "pifarm-"+tag+"-0-bbbbbb.raw", "pifarm-"+tag+"-0-cccccc.raw"
	other, clone := "pifarm-"+virt.FarmTag(t.TempDir())+"-0-aaaaaa.raw", "pifarm-"+tag+"-2.qcow2"
	vols := map[string]string{
		old1: "", old2: "", cur: "", other: "",
		clone: "<backingStore><path>" + virt.VolPath(old2) + "</path><format type='raw'/></backingStore>",
	}
	t.Cleanup(func() {
		c.Call(ctx, 20*time.Second, func(l *libvirt.Libvirt) error {
			p, err := l.StoragePoolLookupByName(virt.Pool)
			if err != nil {
				return err
			}
			for name := range vols {
				if v, err := l.StorageVolLookupByName(p, name); err == nil {
					l.StorageVolDelete(v, 0)
				}
			}
			return nil
		})
	})
	err = c.Call(ctx, 60*time.Second, func(l *libvirt.Libvirt) error {
		p, err := l.StoragePoolLookupByName(virt.Pool)
		if err != nil {
			return err
		}
		for _, name := range []string{old1, old2, cur, other, clone} {
			format := "raw"
			if strings.HasSuffix(name, ".qcow2") {
				format = "qcow2"
			}
			x := fmt.Sprintf("<volume><name>%s</name><capacity unit='bytes'>1048576</capacity><target><format type='%s'/></target>%s</volume>", name, format, vols[name])
			if _, err := l.StorageVolCreateXML(p, x, 0); err != nil {
				return fmt.Errorf("create %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var dryOut strings.Builder
	dry := trace.New(ctx, true, false, &dryOut)
	gone, err := c.PruneBases(ctx, dry, cache, cur)
	if err != nil || len(gone) != 1 || gone[0] != old1 {
		t.Fatalf("dry run: %v %v", gone, err)
	}
	if !strings.Contains(dryOut.String(), "virsh -c qemu:///system vol-delete --pool pifarm "+old1) || strings.Count(dryOut.String(), "vol-delete") != 1 {
		t.Fatalf("dry run trace:\n%s", dryOut.String())
	}
	if _, err := os.Stat(virt.VolPath(old1)); err != nil {
		t.Fatalf("the dry run deleted %s: %v", old1, err)
	}
	gone, err = c.PruneBases(ctx, live, cache, cur)
	if err != nil || len(gone) != 1 || gone[0] != old1 {
		t.Fatalf("prune: %v %v", gone, err)
	}
	for _, name := range []string{old2, cur, other, clone} {
		if _, err := os.Stat(virt.VolPath(name)); err != nil {
			t.Errorf("%s should stay: %v", name, err)
		}
	}
	if _, err := os.Stat(virt.VolPath(old1)); !os.IsNotExist(err) {
		t.Errorf("%s should be gone: %v", old1, err)
	}
}
