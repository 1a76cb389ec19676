package virt

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"pifarm/builtins/farm"
)

// Volume and record names. On a remote libvirt host, pifarm keeps an
// instance's files as volumes of its pool named after the farm (FarmTag)
// and the instance; here, in the cache, a record per volume says how far
// its upload got (RecordDir, Record).

// FarmTag is the short hash that tells this farm's domains and volumes
// from another farm's on a shared host: the last part of DomainName.
func FarmTag(cacheDir string) string { return shortHash(FarmID(cacheDir)) }

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:3])
}

// RecordDir is the folder of the upload records of host h in the cache
// (CACHE/hosts/NAME-HASH).
func RecordDir(cacheDir string, h farm.HostURI) string {
	name := strings.NewReplacer("/", "_", ":", "_", "@", "_", "[", "", "]", "").Replace(h.Name())
	return filepath.Join(cacheDir, "hosts", name+"-"+shortHash(h.URI))
}

// Record is the file recording the upload of volume vol to host h.
func Record(cacheDir string, h farm.HostURI, vol string) string {
	return filepath.Join(RecordDir(cacheDir, h), vol+".upload")
}

// BaseVol is the volume of instance 0's image (named after its size and
// modification time: a changed image gets a volume of its own, and the
// clones resting on the old one keep it).
func BaseVol(tag string, fi os.FileInfo) string {
	return fmt.Sprintf("pifarm-%s-0-%s.raw", tag, shortHash(fmt.Sprint(fi.Size(), fi.ModTime().UnixNano())))
}

// DiskVol is the volume of clone id's disk (a qcow2 on the base volume);
// BootVol that of its kernel (ext "ker") or device tree ("dtb").
func DiskVol(tag string, id int) string { return fmt.Sprintf("pifarm-%s-%d.qcow2", tag, id) }
func BootVol(tag string, id int, ext string) string {
	return fmt.Sprintf("pifarm-%s-%d.%s", tag, id, ext)
}

// Uploaded reports whether the record at path says its upload completed
// and was verified on the host.
func Uploaded(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var st uploadState
	return json.Unmarshal(b, &st) == nil && st.SHA256 != ""
}

// DiskOnHost reports whether clone n's disk lives on its remote libvirt
// host: from its first complete upload there (the first start on that
// host) the guest writes to the volume, and the file in the cache is only
// what was uploaded. It returns the host and the volume. Instance 0's
// image stays the farm's master here (a changed one is uploaded as a new
// volume), and a disk on this machine's libvirtd is the local file itself.
func DiskOnHost(f *farm.Farm, n *farm.Node) (farm.HostURI, string, bool) {
	if n == nil || n.ID == 0 {
		return farm.HostURI{}, "", false
	}
	h, ok := f.Remote(n)
	if !ok {
		return farm.HostURI{}, "", false
	}
	cache := f.Config.CacheDir()
	vol := DiskVol(FarmTag(cache), n.ID)
	if !Uploaded(Record(cache, h, vol)) {
		return farm.HostURI{}, "", false
	}
	return h, vol, true
}

// RefuseOnHost is the error of an operation (what, e.g. "snapshot") that
// works on clone n's disk file here, when that disk lives on its remote
// host (see DiskOnHost); nil otherwise. The error names the ways on.
func RefuseOnHost(f *farm.Farm, n *farm.Node, what string) error {
	h, vol, ok := DiskOnHost(f, n)
	if !ok {
		return nil
	}
	return fmt.Errorf("%s of instance %d: its disk lives on %s since its first start there (volume %s of pool %s), and this works on the disk file here, which that guest no longer uses. Do it in the running guest (pifarm run guest without --offline), or start over from a new clone: pifarm run box --flush-clone %d (removes its volumes there too), then box --force-clone %d",
		what, n.ID, h.Name(), vol, Pool, n.ID, n.ID)
}
