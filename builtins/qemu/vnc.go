package qemu

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"pifarm/builtins/farm"
)

// A VNC display that listens beyond loopback (global_bind) is started with
// password=on, which makes QEMU refuse every VNC client until a password is
// set, and then gets a fresh random password over QMP
// (change-vnc-password, which QEMU 7.2 has besides set_password). The
// password never appears in QEMU's argv: it is a registered secret of the
// door, masked ("****") in every trace line, and it is kept in the file
// vnc-password (mode 0600) of the instance folder (mode 0700), where the
// user reads it when a VNC client asks. It is not printed: terminal
// output ends up in logs and scroll-back, a file readable by the user
// alone does not.

// vncPasswordLen is the length of a VNC password: the RFB protocol's DES
// authentication uses the first 8 bytes only.
const vncPasswordLen = 8

// vncPasswordFile is where instance id's VNC password is kept.
func (in *Instances) vncPasswordFile(id int) string { return vncPasswordPath(in.F, id) }

func vncPasswordPath(f *farm.Farm, id int) string {
	return filepath.Join(f.InstanceDir(id), "vnc-password")
}

// newVNCPassword is a random password of letters and digits (without the
// look-alikes l, I, O, 0, 1), each drawn uniformly.
func newVNCPassword() string {
	const alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	const limit = 256 - 256%len(alphabet)
	out := make([]byte, 0, vncPasswordLen)
	var b [16]byte
	for len(out) < vncPasswordLen {
		rand.Read(b[:]) // never fails on Linux
		for _, c := range b {
			if int(c) < limit && len(out) < vncPasswordLen {
				out = append(out, alphabet[int(c)%len(alphabet)])
			}
		}
	}
	return string(out)
}

// vncPasswordFileFor writes password to instance id's password file (mode
// 0600, atomically), or removes an old file when the QEMU about to start
// has no password.
func (in *Instances) vncPasswordFileFor(id int, password string) error {
	path := in.vncPasswordFile(id)
	if password == "" {
		if _, err := os.Lstat(path); err != nil {
			return nil
		}
		if err := in.D.Remove(path); err != nil {
			return fmt.Errorf("instance %d: %w", id, err)
		}
		return nil
	}
	if err := in.D.WriteFile(path, []byte(password+"\n"), 0o600, false); err != nil {
		return fmt.Errorf("instance %d: VNC password file: %w", id, err)
	}
	return nil
}

// setVNCPassword gives instance id's running QEMU its VNC password over
// QMP. The trace line masks it.
func (in *Instances) setVNCPassword(id int, password string) error {
	sock := in.F.QMP(id)
	const command = "change-vnc-password"
	args := map[string]string{"password": password}
	err := in.D.QMP(sock, command, args, func() error {
		q, err := DialQMP(in.D.Context(), sock, 3*time.Second)
		if err != nil {
			return err
		}
		defer q.Close()
		_, err = q.Execute(in.D.Context(), 3*time.Second, command, args)
		return err
	})
	if err != nil {
		return fmt.Errorf("instance %d: setting the VNC password failed (%v): VNC refuses every client until one is set; restart the instance", id, in.D.Mask(err.Error()))
	}
	return nil
}
