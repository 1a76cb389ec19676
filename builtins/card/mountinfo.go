package card

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is one line of /proc/self/mountinfo: which device is mounted where.
type Mount struct {
	// Dev is the mounted device's number (major:minor of field 3).
	Dev uint64
	// Point is the mount point as this process sees it ("/" for its root).
	Point string
	// FSType and Source are the fields after the " - " separator.
	FSType, Source string
}

// ParseMountinfo reads a /proc/PID/mountinfo text (proc(5)): mount ID,
// parent ID, major:minor, root, mount point, options, optional fields,
// "-", file system type, source, super options. Octal escapes in the mount
// point and source (\040 for a blank) are decoded. A line that does not
// have this shape is an error naming its number.
func ParseMountinfo(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || sep+2 >= len(f) {
			return nil, fmt.Errorf("mountinfo line %d: want \"ID PARENT MAJ:MIN ROOT POINT OPTIONS ... - TYPE SOURCE ...\", got %q", n, line)
		}
		maj, min, ok := strings.Cut(f[2], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("mountinfo line %d: device %q is not MAJOR:MINOR", n, f[2])
		}
		out = append(out, Mount{Dev: unix.Mkdev(uint32(ma), uint32(mi)), Point: unescapeOctal(f[4]),
			FSType: f[sep+1], Source: unescapeOctal(f[sep+2])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	return out, nil
}

// unescapeOctal decodes the kernel's \ooo escapes (blank, tab, newline,
// backslash) in a mountinfo or /proc/swaps field; anything else stays.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// ParseSwaps reads /proc/swaps: the swap areas' file names (the first
// column after the header line), escapes decoded.
func ParseSwaps(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if n == 1 || len(f) == 0 {
			continue
		}
		out = append(out, unescapeOctal(f[0]))
	}
	return out, sc.Err()
}
