package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
	"pifarm/builtins/virt"
)

// hostConns are the open libvirt connections of one run, by URI: one per
// host, shared by every node placed there (a fleet status probes them
// all at once).
type hostConns struct {
	mu    sync.Mutex
	conns map[string]*virt.Conn
	auth  *virt.Auth
}

// libvirtTimeout bounds one libvirt call (and opening the connection).
const libvirtTimeout = 20 * time.Second

// placed reports the libvirt host of node n, when it has one.
func (in *Instances) placed(n *farm.Node) (farm.HostURI, bool) { return in.F.Host(n) }

// conn returns the open connection to host h, opening it (again, when the
// last one died) as needed.
func (in *Instances) conn(h farm.HostURI) (*virt.Conn, error) {
	in.hosts.mu.Lock()
	defer in.hosts.mu.Unlock()
	if c := in.hosts.conns[h.URI]; c != nil && c.Alive() {
		return c, nil
	}
	a := virt.DefaultAuth(in.F)
	if in.hosts.auth != nil {
		a = *in.hosts.auth
	}
	c, err := virt.Connect(in.D.Context(), h, a, libvirtTimeout)
	if err != nil {
		return nil, err
	}
	if in.hosts.conns == nil {
		in.hosts.conns = map[string]*virt.Conn{}
	}
	in.hosts.conns[h.URI] = c
	return c, nil
}

// CloseHosts closes the libvirt connections this run opened.
func (in *Instances) CloseHosts() {
	in.hosts.mu.Lock()
	defer in.hosts.mu.Unlock()
	for k, c := range in.hosts.conns {
		c.Close()
		delete(in.hosts.conns, k)
	}
}

// DomainName is the libvirt domain of instance n (see virt.DomainName).
func (in *Instances) DomainName(n *farm.Node) string {
	return virt.DomainName(n.Alias, virt.FarmID(in.F.Config.CacheDir()))
}

// Domain is the libvirt domain of instance n on host h, the counterpart
// of Command for a libvirt host: the same machine, memory, CPUs,
// acceleration, boot files, kernel command line, SD card, serial console
// (TCP 5800+N on the host's loopback), SSH forward (5700+N) and VNC
// (5900+N), and the NICs with the same MACs. On this machine's libvirtd
// the QEMU runs as the user running pifarm (a static DAC label), reading
// the instance's files in the user's cache. The TAP NICs are in it when
// their device is usable here (this machine), or exists on the remote
// host (asked over its SSH connection), else left out with a warning as
// for a local QEMU.
func (in *Instances) Domain(h farm.HostURI, n *farm.Node, o Options) (virt.Domain, *Plan, error) {
	c := in.F.Config.QEMU
	id := n.ID
	switch {
	case o.Console:
		return virt.Domain{}, nil, fmt.Errorf("instance %d runs on libvirt host %s: its console is not this terminal; start it in the background and attach with `pifarm run box --console %d` (or virsh -c %s console %s)", id, h.URI, id, h.URI, in.DomainName(n))
	case o.GlobalBind:
		return virt.Domain{}, nil, fmt.Errorf("instance %d runs on libvirt host %s: its console, VNC and SSH listen on that host's loopback only, and pifarm reaches them through the host's connection; global_bind is for a QEMU of this machine", id, h.URI)
	case o.Display == DisplayGUI:
		return virt.Domain{}, nil, fmt.Errorf("instance %d runs on libvirt host %s: it has no window here; use VNC (vnc=True)", id, h.URI)
	}
	mem, err := virt.ParseMemory(c.Memory)
	if err != nil {
		return virt.Domain{}, nil, fmt.Errorf("qemu.memory in %s: %v", in.F.Config.Path, err)
	}
	format := "qcow2"
	if id == 0 {
		format = "raw"
	}
	d := virt.Domain{
		Name: in.DomainName(n), Machine: c.Machine, MemoryMiB: mem, CPUs: c.CPUs,
		Emulator: emulatorPath(c.Binary),
		Kernel:   in.F.Kernel(id), DTB: in.F.DTB(id), Cmdline: c.Append,
		Disk: in.F.Disk(id), DiskFormat: format,
		ConsolePort: in.F.ConsolePort(n),
	}
	if h.Local() {
		d.Label = virt.UserLabel()
	}
	var a []string
	if c.Accel != "" {
		d.Emulator = virt.WrapperPath
		d.Env = map[string]string{virt.AccelEnv: c.Accel}
	}
	if o.Display == DisplayVNC || o.Display == "" {
		vnc := in.F.VNCPort(n)
		if vnc < 5900 {
			return virt.Domain{}, nil, fmt.Errorf("VNC port %d of instance %d is below 5900: VNC display numbers start at 5900 (fix ports.vnc in %s or start without VNC)", vnc, id, in.F.Config.Path)
		}
		a = append(a, "-vnc", fmt.Sprintf("127.0.0.1:%d", vnc-5900))
	}
	a = append(a, "-device", "usb-mouse", "-device", "usb-kbd",
		"-netdev", fmt.Sprintf("user,id=wan,ipv6=off,net=%s,hostfwd=tcp:127.0.0.1:%d-:22", in.F.WANNet(n), in.F.SSHPort(n)),
		"-device", "usb-net,netdev=wan,mac="+farm.GuestMAC(id, farm.NICWAN))
	p := &Plan{}
	for _, t := range []struct {
		netdev, tap string
		nic         int
		on          *bool
	}{{"lan", in.F.LANTap(n), farm.NICLAN, &p.LAN}, {"wlan", in.F.WLANTap(n), farm.NICWLAN, &p.WLAN}} {
		if o.NoTAP {
			continue
		}
		if ok, why := in.tapOn(h, t.tap); !ok {
			p.Warnings = append(p.Warnings, fmt.Sprintf("instance %d starts without its %s NIC: %s", id, strings.ToUpper(t.netdev), why))
			continue
		}
		*t.on = true
		tap := virt.TAP{Name: t.netdev, Dev: t.tap, MAC: farm.GuestMAC(id, t.nic)}
		d.TAPs = append(d.TAPs, tap)
		a = append(a, "-device", fmt.Sprintf("usb-net,netdev=%s,mac=%s", tap.Netdev(), tap.MAC))
	}
	a = append(a, o.Extra...)
	d.QEMUArgs = a
	p.Argv = createCmd(h, o).Argv
	return d, p, nil
}

// emulatorPath is the <emulator> of a domain: libvirt wants a path; a bare
// name is looked up where Debian and most systems install QEMU.
func emulatorPath(binary string) string {
	if strings.Contains(binary, "/") {
		return binary
	}
	return "/usr/bin/" + binary
}

// tapOn reports whether TAP device name is there for a QEMU on host h:
// usable by this user here (see tapUsable), or present on a remote host.
func (in *Instances) tapOn(h farm.HostURI, name string) (bool, string) {
	if h.Local() {
		// libvirtd opens it (as root): it need only exist.
		if _, err := os.Stat("/sys/class/net/" + name + "/tun_flags"); err != nil {
			return false, fmt.Sprintf("TAP device %s does not exist (create it: `pifarm run bridge --taps`)", name)
		}
		return true, ""
	}
	c, err := in.conn(h)
	if err != nil {
		return false, err.Error()
	}
	s, err := c.SSH().NewSession()
	if err != nil {
		return false, fmt.Sprintf("ask %s for TAP device %s: %v", h.Name(), name, err)
	}
	defer s.Close()
	if err := s.Run("test -e /sys/class/net/" + name + "/tun_flags"); err != nil {
		return false, fmt.Sprintf("TAP device %s does not exist on %s (make it there: pifarm run bridge --taps, or ip tuntap add %s mode tap, attached to the LAN bridge)", name, h.Name(), name)
	}
	return true, ""
}

// startOn is Start for a node on a libvirt host: a transient domain made
// from the instance model (see Domain); the trace shows it as
// `virsh -c URI create /dev/stdin` with the domain XML as a here-document.
func (in *Instances) startOn(h farm.HostURI, n *farm.Node, o Options) (Status, error) {
	id := n.ID
	d, plan, err := in.Domain(h, n, o)
	if err != nil {
		return Status{}, err
	}
	if !h.Local() && in.D.DryRun {
		// What the start would put on the host, as far as it can be
		// told from here.
		if c, err := in.conn(h); err != nil {
			in.D.Print("# warning: " + err.Error())
		} else if st := in.probeOn(h, n); st.Running {
			st.Already = true
			return st, nil
		} else if r, err := in.stage(h, c, n); err != nil {
			in.D.Print("# warning: " + err.Error())
		} else {
			d.Disk, d.Kernel, d.DTB = r.Disk, r.Kernel, r.DTB
		}
	}
	xmlText := d.XML()
	cmd := createCmd(h, o)
	cmd.Heredoc = xmlText
	line := in.D.Line(cmd)
	warn := func() {
		for _, w := range plan.Warnings {
			in.D.Print("# warning: " + w)
		}
	}
	if in.D.DryRun {
		warn()
		if d.Emulator == virt.WrapperPath {
			c, err := in.conn(h)
			if err == nil {
				err = in.ensureWrapper(h, c)
			}
			if err != nil {
				in.D.Print("# warning: " + err.Error())
			}
		}
		st := Status{ID: id, Alias: n.Alias, Running: true, State: "running", LAN: plan.LAN, WLAN: plan.WLAN, Warnings: plan.Warnings, Line: line, Host: h.URI, Domain: d.Name}
		if o.Paused {
			st.State = "paused"
		}
		err := in.D.Do(line, func() error { return nil })
		return st, err
	}
	if h.Local() {
		for _, p := range []struct{ what, path string }{{"kernel", d.Kernel}, {"device tree", d.DTB}, {"disk", d.Disk}} {
			if _, err := os.Stat(p.path); err != nil {
				return Status{}, fmt.Errorf("instance %d: %s %s is missing (%v)", id, p.what, p.path, err)
			}
		}
	}
	l, err := in.lock(id, time.Now().Add(in.lockWait()))
	if err != nil {
		return Status{}, err
	}
	defer l.Close()
	if st := in.probeOn(h, n); st.Running {
		st.Already = true
		return st, nil
	} else if st.Err != "" {
		return st, fmt.Errorf("instance %d: %s", id, st.Err)
	}
	if h.Local() {
		if err := in.refuseDiskInUse(n, "start", false); err != nil {
			return Status{}, err
		}
	}
	c, err := in.conn(h)
	if err != nil {
		return Status{}, fmt.Errorf("instance %d: %w", id, err)
	}
	if d.Emulator == virt.WrapperPath {
		if err := in.ensureWrapper(h, c); err != nil {
			return Status{}, fmt.Errorf("instance %d: %w", id, err)
		}
	}
	if !h.Local() {
		r, err := in.stage(h, c, n)
		if err != nil {
			return Status{}, fmt.Errorf("instance %d: %w", id, err)
		}
		d.Disk, d.Kernel, d.DTB = r.Disk, r.Kernel, r.DTB
		xmlText = d.XML()
		cmd.Heredoc = xmlText
		line = in.D.Line(cmd)
	}
	warn()
	err = in.D.Do(line, func() error {
		return c.Call(in.D.Context(), libvirtTimeout, func(l *libvirt.Libvirt) error {
			var flags libvirt.DomainCreateFlags
			if o.Paused {
				flags |= libvirt.DomainStartPaused
			}
			_, err := l.DomainCreateXML(xmlText, flags)
			return err
		})
	})
	if err != nil {
		return Status{}, fmt.Errorf("instance %d: libvirt %s: create domain %s: %w%s", id, h.URI, d.Name, err, createHint(err))
	}
	st := in.probeOn(h, n)
	st.LAN, st.WLAN, st.Warnings, st.Line = plan.LAN, plan.WLAN, plan.Warnings, line
	if !st.Running {
		return st, fmt.Errorf("instance %d: domain %s on %s is %s right after its start (see /var/log/libvirt/qemu/%s.log there)", id, d.Name, h.URI, st.State, d.Name)
	}
	return st, nil
}

// createHint adds the fix for the failures of a domain start seen most.
func createHint(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "Permission denied"):
		return " (the QEMU of this machine's libvirtd runs as you: every folder above the instance's files must be searchable by you; on a remote host, the disk must be in a storage pool)"
	case strings.Contains(s, "already exists"):
		return " (a domain of that name runs already: pifarm run box --terminate N stops it)"
	case strings.Contains(s, "tun"):
		return " (the TAP device must exist and belong to the QEMU's user on that host)"
	}
	return ""
}

// domainStates names libvirt's domain states as QMP names run states.
var domainStates = map[libvirt.DomainState]string{
	libvirt.DomainNostate: "unknown", libvirt.DomainRunning: "running", libvirt.DomainBlocked: "running",
	libvirt.DomainPaused: "paused", libvirt.DomainShutdown: "shutdown", libvirt.DomainShutoff: "shutoff",
	libvirt.DomainCrashed: "guest-panicked", libvirt.DomainPmsuspended: "suspended",
}

// probeOn is the status of instance n on host h: its domain's state, and
// on this machine the QEMU's pid (from libvirt's pidfile, when readable).
// An unreachable host is State "unreachable" with Err saying why.
func (in *Instances) probeOn(h farm.HostURI, n *farm.Node) Status {
	st := Status{ID: n.ID, Alias: n.Alias, Host: h.URI, Domain: in.DomainName(n)}
	c, err := in.conn(h)
	if err != nil {
		st.State, st.Err = "unreachable", err.Error()
		return st
	}
	var state int32
	found := true
	err = c.Call(in.D.Context(), libvirtTimeout, func(l *libvirt.Libvirt) error {
		dom, err := l.DomainLookupByName(st.Domain)
		if libvirt.IsNotFound(err) {
			found = false
			return nil
		}
		if err != nil {
			return err
		}
		state, _, err = l.DomainGetState(dom, 0)
		if libvirt.IsNotFound(err) {
			found = false
			return nil
		}
		return err
	})
	switch {
	case err != nil:
		st.State, st.Err = "unreachable", fmt.Sprintf("libvirt %s: domain %s: %v", h.URI, st.Domain, err)
	case !found:
	default:
		s := libvirt.DomainState(state)
		st.State = domainStates[s]
		st.Running = s != libvirt.DomainShutoff && s != libvirt.DomainCrashed && s != libvirt.DomainNostate
		if st.Running && h.Local() {
			if pid, err := readPid("/var/run/libvirt/qemu/" + st.Domain + ".pid"); err == nil {
				st.PID = pid
			}
		}
	}
	return st
}

// quitOn is Quit for a node on a libvirt host: the domain is destroyed
// (QEMU ends at once, as QMP quit ends a local one) and, being transient,
// is gone. The trace line is `virsh -c URI destroy NAME`.
func (in *Instances) quitOn(h farm.HostURI, n *farm.Node, timeout time.Duration) (bool, error) {
	name := in.DomainName(n)
	st := in.probeOn(h, n)
	if st.Err != "" {
		return false, fmt.Errorf("instance %d: %s", n.ID, st.Err)
	}
	if !st.Running && !in.D.DryRun {
		return false, nil
	}
	if in.D.DryRun && !st.Running {
		return false, nil
	}
	c, err := in.conn(h)
	if err != nil {
		return false, err
	}
	err = in.D.Do(in.D.Line(virt.Virsh(h.URI, "destroy", name)), func() error {
		return c.Call(in.D.Context(), timeout, func(l *libvirt.Libvirt) error {
			dom, err := l.DomainLookupByName(name)
			if err == nil {
				err = l.DomainDestroy(dom)
			}
			if libvirt.IsNotFound(err) {
				return nil
			}
			return err
		})
	})
	if err != nil {
		return true, fmt.Errorf("instance %d: libvirt %s: destroy %s: %w", n.ID, h.URI, name, err)
	}
	return true, nil
}

// waitExitOn waits until instance n's domain on host h is gone or shut off.
func (in *Instances) waitExitOn(h farm.HostURI, n *farm.Node, timeout time.Duration) error {
	if in.D.DryRun {
		if in.probeOn(h, n).Running {
			in.D.Note("wait until domain %s on %s has stopped (at most %s)", in.DomainName(n), h.URI, timeout)
		}
		return nil
	}
	deadline := time.Now().Add(timeout)
	for {
		st := in.probeOn(h, n)
		if !st.Running && st.Err == "" {
			return nil
		}
		if time.Now().After(deadline) {
			why := st.State
			if st.Err != "" {
				why = st.Err
			}
			return fmt.Errorf("instance %d: domain %s on %s still %s after %s", n.ID, st.Domain, h.URI, why, timeout)
		}
		select {
		case <-in.D.Context().Done():
			return in.D.Context().Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// qmpOn passes one QMP command to the QEMU of instance n's domain
// (virsh qemu-monitor-command: libvirt has no API for most of QMP).
func (in *Instances) qmpOn(h farm.HostURI, n *farm.Node, command string, args any) (string, error) {
	req, err := trace.QMPRequest(command, args)
	if err != nil {
		return "", err
	}
	st := in.probeOn(h, n)
	if st.Err != "" {
		return "", fmt.Errorf("instance %d: %s", n.ID, st.Err)
	}
	if !st.Running {
		return "", fmt.Errorf("instance %d is not running (domain %s on %s)", n.ID, st.Domain, h.URI)
	}
	out := "{}"
	run := func() error {
		c, err := in.conn(h)
		if err != nil {
			return err
		}
		return c.Call(in.D.Context(), libvirtTimeout, func(l *libvirt.Libvirt) error {
			dom, err := l.DomainLookupByName(st.Domain)
			if err != nil {
				return err
			}
			reply, err := l.QEMUDomainMonitorCommand(dom, string(req), 0)
			if err != nil {
				return err
			}
			var r struct {
				Return json.RawMessage `json:"return"`
			}
			if err := json.Unmarshal([]byte(reply), &r); err != nil {
				return fmt.Errorf("QMP reply %q: %w", reply, err)
			}
			if r.Return != nil {
				out = string(r.Return)
			}
			return nil
		})
	}
	if isQuery(command) {
		if err := run(); err != nil {
			return "", fmt.Errorf("instance %d: qmp %s through libvirt %s: %w", n.ID, command, h.URI, err)
		}
		return out, nil
	}
	if err := in.D.Do(in.D.Line(virt.Virsh(h.URI, "qemu-monitor-command", st.Domain, string(req))), run); err != nil {
		return "", fmt.Errorf("instance %d: qmp %s through libvirt %s: %w", n.ID, command, h.URI, err)
	}
	return out, nil
}

// dialPort connects to TCP port of instance n's host loopback: this
// machine's, or a remote libvirt host's through its SSH connection.
func (in *Instances) dialPort(ctx context.Context, n *farm.Node, port int, deadline time.Time) (net.Conn, error) {
	h, ok := in.placed(n)
	if !ok || h.Local() {
		return dialLoopback(ctx, port, deadline)
	}
	c, err := in.conn(h)
	if err != nil {
		return nil, err
	}
	return c.DialHost(ctx, port, time.Until(deadline))
}

// where names the place of a port in messages: "127.0.0.1:5801", or
// "127.0.0.1:5801 on root@farm2".
func (in *Instances) where(n *farm.Node, port int) string {
	s := "127.0.0.1:" + strconv.Itoa(port)
	if h, ok := in.placed(n); ok && !h.Local() {
		s += " on " + h.Name()
	}
	return s
}

// plan is what qemu.command shows for node n: the QEMU command line, or
// for a node on a libvirt host the virsh command with the domain XML
// (its line a here-document).
func (in *Instances) plan(n *farm.Node, o Options) (*Plan, error) {
	h, ok := in.placed(n)
	if !ok {
		return Command(in.F, n, o)
	}
	d, p, err := in.Domain(h, n, o)
	if err != nil {
		return nil, err
	}
	cmd := createCmd(h, o)
	cmd.Heredoc = d.XML()
	p.Line = in.D.Line(cmd)
	return p, nil
}

// ensureWrapper installs the emulator wrapper (virt.Wrapper) on host h
// when it is missing or differs: on this machine through the privilege
// prefix, on a remote host over its SSH connection (whose user must be
// root there). The trace shows the install command with the script.
func (in *Instances) ensureWrapper(h farm.HostURI, c *virt.Conn) error {
	want := virt.Wrapper(emulatorPath(in.F.Config.QEMU.Binary))
	install := []string{"install", "-D", "-m", "0755", "/dev/stdin", virt.WrapperPath}
	if h.Local() {
		if have, err := os.ReadFile(virt.WrapperPath); err == nil && string(have) == want {
			return nil
		}
		if _, err := in.D.Exec(trace.Cmd{Argv: install, Sudo: true, Heredoc: want}); err != nil {
			return fmt.Errorf("install pifarm's emulator wrapper %s: %w", virt.WrapperPath, err)
		}
		return nil
	}
	have, _ := c.RemoteInput("cat "+trace.Quote(virt.WrapperPath)+" 2>/dev/null", "")
	if have == want {
		return nil
	}
	cmdText := trace.Join(install)
	line := fmt.Sprintf("ssh -p %d %s %s <<'EOF'\n%sEOF", h.Port, trace.Quote(sshLogin(h)), trace.Quote(cmdText), want)
	return in.D.Do(line, func() error {
		if _, err := c.RemoteInput(cmdText, want); err != nil {
			return fmt.Errorf("install pifarm's emulator wrapper %s on %s: %w (log in as root there: qemu+ssh://root@%s/system)", virt.WrapperPath, h.Name(), err, h.Host)
		}
		return nil
	})
}

// sshLogin is user@host of a remote libvirt host (host alone when the
// URI names no user).
func sshLogin(h farm.HostURI) string {
	if h.User == "" {
		return h.Host
	}
	return h.User + "@" + h.Host
}

// createCmd is the virsh command that starts a domain from the XML on its
// standard input (paused: CPUs stopped, as QEMU's -S).
func createCmd(h farm.HostURI, o Options) trace.Cmd {
	if o.Paused {
		return virt.Virsh(h.URI, "create", "--paused", "/dev/stdin")
	}
	return virt.Virsh(h.URI, "create", "/dev/stdin")
}

// remoteFiles are an instance's disk and boot files on a remote host.
type remoteFiles struct{ Disk, Kernel, DTB string }

// stage puts instance n's disk and boot files into pifarm's storage pool
// on remote host h (see virt.Upload): instance 0's image once per content
// (a new volume when the image changed, so clones resting on the old one
// keep it), a clone's qcow2 overlay with its backing file renamed to that
// volume, and the kernel and device tree of the instance, each checked by
// its sha256 there. A volume uploaded before is kept as it is: from its
// first start on, the instance's disk lives on its host.
func (in *Instances) stage(h farm.HostURI, c *virt.Conn, n *farm.Node) (remoteFiles, error) {
	ctx := in.D.Context()
	id := n.ID
	if err := c.EnsurePool(ctx, in.D); err != nil {
		return remoteFiles{}, err
	}
	cache := in.F.Config.CacheDir()
	farmTag := virt.FarmTag(cache)
	dir := virt.RecordDir(cache, h)
	if !in.D.DryRun {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return remoteFiles{}, err
		}
	}
	var progress io.Writer = os.Stderr
	if in.D.Stderr != nil {
		progress = in.D.Stderr
	}
	up := func(vol, local string, extra func(*virt.Upload)) (string, error) {
		u := virt.Upload{Vol: vol, Local: local, State: virt.Record(cache, h, vol), Progress: progress}
		if extra != nil {
			extra(&u)
		}
		return c.Upload(ctx, in.D, u)
	}
	base, err := filepath.EvalSymlinks(in.F.Disk(0))
	if err != nil {
		return remoteFiles{}, fmt.Errorf("instance 0's image %s: %w", in.F.Disk(0), err)
	}
	bi, err := os.Stat(base)
	if err != nil {
		return remoteFiles{}, err
	}
	baseVol := virt.BaseVol(farmTag, bi)
	newBase := !virt.Uploaded(virt.Record(cache, h, baseVol))
	var r remoteFiles
	if r.Disk, err = up(baseVol, base, nil); err != nil {
		return r, err
	}
	if newBase {
		// earlier images of instance 0 that nothing rests on any more
		if _, err := c.PruneBases(ctx, in.D, cache, baseVol); err != nil {
			in.D.Note("%v (they stay; remove them with virsh vol-delete)", err)
		}
	}
	if id != 0 {
		overlay := in.F.Disk(id)
		tmp := filepath.Join(dir, fmt.Sprintf("clone-%d.qcow2", id))
		r.Disk, err = up(virt.DiskVol(farmTag, id), tmp, func(u *virt.Upload) {
			u.Source, u.Keep = overlay, true
			u.Prepare = func() error {
				if _, err := in.D.Exec(trace.Cmd{Argv: []string{"cp", "--sparse=always", overlay, tmp}}); err != nil {
					return err
				}
				_, err := in.D.Exec(trace.Cmd{Argv: []string{"qemu-img", "rebase", "-u", "-F", "raw", "-b", r.Disk, tmp}})
				return err
			}
		})
		if err != nil {
			return r, err
		}
		os.Remove(tmp)
	}
	if r.Kernel, err = up(virt.BootVol(farmTag, id, "ker"), in.F.Kernel(id), nil); err != nil {
		return r, err
	}
	if r.DTB, err = up(virt.BootVol(farmTag, id, "dtb"), in.F.DTB(id), nil); err != nil {
		return r, err
	}
	return r, nil
}

// Where says in words what runs for a status: "pid N" for a QEMU of this
// machine, "domain NAME on HOST" (with the pid when it is known) for one
// on a libvirt host.
func (st Status) Where(f *farm.Farm) string {
	if st.Host == "" {
		return fmt.Sprintf("pid %d", st.PID)
	}
	on := st.Host
	if h, err := farm.ParseHostURI(st.Host); err == nil {
		on = h.Name()
		if h.Local() {
			on = h.URI
		}
	}
	s := fmt.Sprintf("domain %s on %s", st.Domain, on)
	if st.PID > 0 {
		s = fmt.Sprintf("pid %d, %s", st.PID, s)
	}
	return s
}

// removeVolumes deletes instance n's volumes in pifarm's pool on remote
// host h (its disk and boot files; instance 0's image volumes stay, clones
// may rest on them) and their local upload records. A volume that is not
// there is skipped. The trace shows virsh vol-delete.
func (in *Instances) removeVolumes(h farm.HostURI, n *farm.Node) error {
	c, err := in.conn(h)
	if err != nil {
		return err
	}
	cache := in.F.Config.CacheDir()
	tag := virt.FarmTag(cache)
	for _, vol := range []string{virt.DiskVol(tag, n.ID), virt.BootVol(tag, n.ID, "ker"), virt.BootVol(tag, n.ID, "dtb")} {
		var v libvirt.StorageVol
		found := false
		err := c.Call(in.D.Context(), libvirtTimeout, func(l *libvirt.Libvirt) error {
			p, err := l.StoragePoolLookupByName(virt.Pool)
			if err != nil {
				return nil // no pool: no volumes
			}
			v, err = l.StorageVolLookupByName(p, vol)
			found = err == nil
			return nil
		})
		if err != nil {
			return err
		}
		if found {
			err = in.D.Do(in.D.Line(virt.Virsh(h.URI, "vol-delete", "--pool", virt.Pool, vol)), func() error {
				return c.Call(in.D.Context(), libvirtTimeout, func(l *libvirt.Libvirt) error { return l.StorageVolDelete(v, 0) })
			})
			if err != nil {
				return fmt.Errorf("libvirt %s: delete volume %s: %w", h.URI, vol, err)
			}
		}
		if rec := virt.Record(cache, h, vol); !in.D.DryRun {
			os.Remove(rec)
		}
	}
	return nil
}
