package virt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/digitalocean/go-libvirt"
	"pifarm/builtins/trace"
)

// backingXML is what PruneBases reads of a volume's and a domain's XML:
// the backing file of a qcow2 volume, the source files of a domain's
// disks.
type backingXML struct {
	Backing string `xml:"backingStore>path"`
	Disks   []struct {
		File string `xml:"source>file,attr"`
	} `xml:"devices>disk"`
}

// PruneBases deletes the volumes of earlier images of instance 0 of the
// farm whose cache is cacheDir (BaseVol names: a changed image is uploaded
// as a new volume) from pifarm's pool on the host, keeping keep (the
// current one) and every base that a volume of the pool still rests on (a
// clone's qcow2) or that a running domain has open. Their local upload
// records go too. It returns the volumes deleted; the trace shows virsh
// vol-delete for each.
func (c *Conn) PruneBases(ctx context.Context, d *trace.Door, cacheDir, keep string) ([]string, error) {
	prefix := "pifarm-" + FarmTag(cacheDir) + "-0-"
	var old []libvirt.StorageVol
	used := map[string]bool{keep: true}
	err := c.Call(ctx, 60*time.Second, func(l *libvirt.Libvirt) error {
		p, err := l.StoragePoolLookupByName(Pool)
		if err != nil {
			var le libvirt.Error
			if errors.As(err, &le) && le.Code == uint32(libvirt.ErrNoStoragePool) {
				return nil
			}
			return err
		}
		if err := l.StoragePoolRefresh(p, 0); err != nil {
			return err
		}
		vols, _, err := l.StoragePoolListAllVolumes(p, 1, 0)
		if err != nil {
			return err
		}
		for _, v := range vols {
			switch {
			case strings.HasPrefix(v.Name, prefix) && strings.HasSuffix(v.Name, ".raw"):
				old = append(old, v)
			case strings.HasSuffix(v.Name, ".qcow2"):
				// any farm's: a clone of another farm resting on this
				// farm's base (a copied cache) keeps it too
				x, err := l.StorageVolGetXMLDesc(v, 0)
				var le libvirt.Error
				if errors.As(err, &le) && le.Code == uint32(libvirt.ErrNoStorageVol) {
					continue // deleted meanwhile
				}
				if err != nil {
					return fmt.Errorf("volume %s: %w", v.Name, err)
				}
				var b backingXML
				if xml.Unmarshal([]byte(x), &b) == nil && b.Backing != "" {
					used[path.Base(b.Backing)] = true
				}
			}
		}
		doms, _, err := l.ConnectListAllDomains(1, libvirt.ConnectListDomainsActive)
		if err != nil {
			return err
		}
		for _, dom := range doms {
			x, err := l.DomainGetXMLDesc(dom, 0)
			if err != nil {
				continue // gone meanwhile
			}
			var b backingXML
			if xml.Unmarshal([]byte(x), &b) == nil {
				for _, disk := range b.Disks {
					if disk.File != "" {
						used[path.Base(disk.File)] = true
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("libvirt %s: look for earlier image volumes in pool %s: %w", c.Host.URI, Pool, err)
	}
	sort.Slice(old, func(i, j int) bool { return old[i].Name < old[j].Name })
	var gone []string
	for _, v := range old {
		if used[v.Name] {
			continue
		}
		line := d.Line(Virsh(c.Host.URI, "vol-delete", "--pool", Pool, v.Name)) + "  # an earlier image of instance 0, which nothing rests on"
		err := d.Do(line, func() error {
			return c.Call(ctx, 60*time.Second, func(l *libvirt.Libvirt) error { return l.StorageVolDelete(v, 0) })
		})
		if err != nil {
			return gone, fmt.Errorf("libvirt %s: delete volume %s: %w", c.Host.URI, v.Name, err)
		}
		if !d.DryRun {
			os.Remove(Record(cacheDir, c.Host, v.Name))
		}
		gone = append(gone, v.Name)
	}
	return gone, nil
}
