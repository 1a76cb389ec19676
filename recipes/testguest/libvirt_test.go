package testguest

import (
	"os/exec"
	"testing"
)

// TestCycleLibvirt runs cycle-libvirt.sh: clones on qemu:///system and on
// qemu+ssh:// through a real sshd on loopback, an interrupted and resumed
// upload into the storage pool, their LANs joined by VXLAN across two
// network namespaces, pinging each other.
func TestCycleLibvirt(t *testing.T) {
	needCycle(t)
	for _, bin := range []string{"libvirtd", "virsh", "/usr/sbin/sshd"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is missing (.ci/deps installs libvirt-daemon-system, libvirt-clients, openssh-server)", bin)
		}
	}
	runCycle(t, "libvirt hosts", "./cycle-libvirt.sh", buildPifarm(t))
}
