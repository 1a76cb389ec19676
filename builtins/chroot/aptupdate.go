package chroot

import (
	"os/exec"

	"pifarm/builtins/trace"
)

// aptUpdateScript is `apt-get update` for the guest's root run by this
// host's own apt (native speed: under qemu-user the guest's apt spends
// minutes decompressing and parsing the package lists) in a mount namespace
// of its own where the guest's apt configuration, lists, cache, dpkg status
// and keyrings stand at the paths the guest sees them at: so the lists and
// the package cache it writes are the very files the guest's apt would have
// written (and the guest's apt takes the cache as it is when both apts are
// of one version, else it rebuilds it). The guest's architectures come from
// its own dpkg. Where the host's apt cannot stand in for the guest's - the
// guest's configuration runs commands around an update (APT::Update::
// hooks), or a source's Signed-By names a key outside /etc/apt and
// /usr/share/keyrings - the guest's apt runs in the chroot instead.
//
// $1 is the guest's root, $2 the locale of the chroot's commands, the rest
// apt-get's options. All output goes to stdout.
const aptUpdateScript = `exec 2>&1
r=$1 loc=$2; shift 2
[ -x "$r/usr/bin/apt-get" ] || { echo "apt-get: not found on this guest (not Debian-based?)"; exit 127; }
in_guest() { exec chroot "$r" /usr/bin/env -i PATH=` + guestPATH + ` HOME=/root LC_ALL="$loc" TERM=dumb apt-get -q "$@" update; }
arch=$(chroot "$r" /usr/bin/dpkg --print-architecture) || exit
foreign=$(chroot "$r" /usr/bin/dpkg --print-foreign-architectures) || exit
for d in etc/apt var/lib/apt var/cache/apt var/lib/dpkg usr/share/keyrings; do
  if [ -d "$r/$d" ]; then
    [ -d "/$d" ] || { echo "pifarm: this host has no /$d: the guest's apt updates its lists"; in_guest "$@"; }
    mount --bind "$r/$d" "/$d" || exit
  fi
done
for k in $(grep -rhoiE 'signed-by[=:][[:space:]]*[^] ]+' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null | sed -E 's/^[^=:]*[=:][[:space:]]*//; s/,/ /g'); do
  case $k in
  /etc/apt/* | /usr/share/keyrings/*) ;;
  /*) echo "pifarm: a source is signed by $k (outside /etc/apt and /usr/share/keyrings): the guest's apt updates its lists"; in_guest "$@" ;;
  esac
done
if apt-config dump | grep -q '^APT::Update::'; then
  echo "pifarm: the guest's apt configuration runs commands around an update: the guest's apt updates its lists"
  in_guest "$@"
fi
set -- -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch" "$@"
for a in $foreign; do set -- -o "APT::Architectures::=$a" "$@"; done
exec apt-get -q -o APT::Sandbox::User=root "$@" update`

// AptUpdateArgv is the command line of AptUpdate (opts: apt-get options).
func (r *Root) AptUpdateArgv(opts []string) []string {
	argv := []string{"unshare", "--mount", "--propagation", "private", "sh", "-c", aptUpdateScript, "apt-update", r.Path, r.locale()}
	return append(argv, opts...)
}

// AptUpdate runs apt-get update for the guest's root (see aptUpdateScript):
// by this host's apt when it has one (apt-get and unshare), else by the
// guest's in the chroot. The output is all on stdout; the result's exit
// code is apt-get's (127: the guest has no apt-get). stream copies the output
// to the terminal as it arrives.
func (r *Root) AptUpdate(opts []string, stream bool) (Result, error) {
	if !hostHasApt() {
		cmd := "command -v apt-get >/dev/null || { echo \"apt-get: not found on this guest (not Debian-based?)\" >&2; exit 127; }; apt-get -q"
		for _, o := range opts {
			cmd += " " + trace.Quote(o)
		}
		return r.Run(cmd+" update 2>&1", RunOpts{Stream: stream})
	}
	c := trace.Cmd{Argv: r.AptUpdateArgv(opts), Sudo: true}
	if stream {
		c.Stdout, c.Stderr = r.d.StreamOut(), r.d.StreamErr()
	}
	res, err := r.d.Exec(c)
	out := Result{Stdout: string(res.Stdout), Stderr: string(res.Stderr), ExitCode: res.ExitCode}
	if err != nil && (res.ExitCode < 0 || r.d.Context().Err() != nil) {
		return out, err
	}
	return out, nil
}

// hostHasApt says whether this host can run apt-get update for a guest
// (a Debian-based host: apt-get, apt-config and unshare on its PATH).
func hostHasApt() bool {
	for _, p := range []string{"apt-get", "apt-config", "unshare"} {
		if _, err := exec.LookPath(p); err != nil {
			return false
		}
	}
	return true
}
