package console

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// conn is what a session talks through: a TCP connection (QEMU's console
// port, a ser2net raw port) or a serial device opened raw (*os.File).
type conn interface {
	io.ReadWriteCloser
	SetWriteDeadline(time.Time) error
}

// speeds maps a baud rate to its termios constant.
var speeds = map[int]uint32{
	9600: unix.B9600, 19200: unix.B19200, 38400: unix.B38400, 57600: unix.B57600,
	115200: unix.B115200, 230400: unix.B230400, 460800: unix.B460800, 921600: unix.B921600,
}

// sttyLine is the shell equivalent of OpenSerial's settings, for the trace.
func sttyLine(dev string, baud int) string {
	return fmt.Sprintf("stty -F %s %d cs8 -cstopb -parenb -crtscts clocal cread raw -echo", trace.Quote(dev), baud)
}

// OpenSerial opens a serial device (a USB-UART, a /dev/serial/by-id link to
// one, a pty) for a console session: raw, baud bits per second, 8 data
// bits, no parity, one stop bit, no flow control, no modem control lines
// waited for. The device is locked as terminal programs lock it (flock,
// which screen, picocom and minicom honour, and TIOCEXCL), so that two
// clients never type into one console; a locked device is an error naming
// the likely holder. Input received before the open is discarded.
func OpenSerial(dev string, baud int) (*os.File, error) {
	speed, ok := speeds[baud]
	if !ok {
		return nil, fmt.Errorf("open serial %s: %d baud is not supported (use one of 9600 ... 921600)", dev, baud)
	}
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open serial %s: %w%s", dev, err, openHint(err))
	}
	fail := func(format string, args ...any) (*os.File, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("open serial %s: "+format, append([]any{dev}, args...)...)
	}
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fail("not a terminal device (%v): name the board's USB-UART, e.g. /dev/ttyUSB0", err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fail("another program holds it (%v): close the terminal program (screen, picocom, minicom, another pifarm) that has it open", err)
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF | unix.IXANY
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CSTOPB | unix.CRTSCTS | unix.CBAUD
	t.Cflag |= unix.CS8 | unix.CREAD | unix.CLOCAL | speed
	t.Ispeed, t.Ospeed = speed, speed
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return fail("set %d 8N1 raw: %v", baud, err)
	}
	// TIOCEXCL refuses further opens by anyone but root; a pty's slave
	// side may refuse it, which the flock above covers.
	_ = unix.IoctlSetInt(fd, unix.TIOCEXCL, 0)
	_ = unix.IoctlSetInt(fd, unix.TCFLSH, unix.TCIFLUSH)
	// A non-blocking descriptor is run by Go's poller: reads wait without
	// a thread, Close ends a read in progress, write deadlines work.
	return os.NewFile(uintptr(fd), dev), nil
}

// openHint says what to do about an open error of a serial device.
func openHint(err error) string {
	switch {
	case errors.Is(err, unix.ENOENT):
		return " (is the USB-UART plugged in? ls /dev/serial/by-id/ shows the ones there are)"
	case errors.Is(err, unix.EACCES):
		return " (add yourself to the device's group, usually dialout: sudo adduser $USER dialout, then log in again)"
	case errors.Is(err, unix.EBUSY):
		return " (another program holds it exclusively)"
	case errors.Is(err, unix.EIO):
		return " (the other end is gone: is the board's console server running?)"
	}
	return ""
}

// probeSerial reports whether the device can be opened as a console now:
// it exists, is a terminal and no other program holds its lock. It changes
// no setting.
func probeSerial(dev string) bool {
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); err != nil {
		return false
	}
	return unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) == nil
}

// DialSerial opens a hardware node's serial console: the device (raw at
// its speed, 8N1) or the raw TCP endpoint. Dry, it opens nothing and
// prints what it would do; the session answers with plausible values.
func DialSerial(d *trace.Door, label string, s *farm.Serial, timeout time.Duration) (*Session, error) {
	if s.Addr != "" {
		return Dial(d, label, s.Addr, timeout)
	}
	sess := newSession(d, label, s.Device)
	line := fmt.Sprintf("# %s: open %s at %d baud 8N1, raw (as %s)", label, s.Device, s.Baud, sttyLine(s.Device, s.Baud))
	if d.DryRun || d.Verbose {
		d.Print(line)
	}
	if d.DryRun {
		return sess, nil
	}
	f, err := OpenSerial(s.Device, s.Baud)
	if err != nil {
		return nil, err
	}
	sess.conn = f
	go sess.read()
	return sess, nil
}
