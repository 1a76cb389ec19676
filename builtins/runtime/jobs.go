package runtime

import (
	"bufio"
	"fmt"
	"os"
	goruntime "runtime"
	"strconv"
	"strings"
	"unicode"

	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// DefaultJobs is how many nodes of a node set run at once without -j: the
// CPUs this process may use (its affinity), lowered to the number of
// guests of the configured QEMU memory that fit in MemAvailable, at least 1.
func DefaultJobs(cfg *farm.Config) int {
	n := goruntime.NumCPU()
	if cfg != nil {
		if guest, ok := memoryBytes(cfg.QEMU.Memory); ok && guest > 0 {
			if avail, ok := memAvailable("/proc/meminfo"); ok {
				n = min(n, int(avail/guest))
			}
		}
	}
	return max(n, 1)
}

// memoryBytes reads a QEMU memory size ("1G", "512M", "1024": MiB without
// a suffix, as -m takes it).
func memoryBytes(s string) (uint64, bool) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsDigit(r) })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.ToUpper(strings.TrimSuffix(strings.ToUpper(s[i:]), "B"))
	}
	v, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, false
	}
	shift := map[string]uint{"": 20, "K": 10, "M": 20, "G": 30, "T": 40}
	sh, ok := shift[unit]
	if !ok || v > (1<<63)>>sh {
		return 0, false
	}
	return v << sh, true
}

// memAvailable is MemAvailable of a /proc/meminfo, in bytes.
func memAvailable(path string) (uint64, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb uint64
		if _, err := fmt.Sscanf(sc.Text(), "MemAvailable: %d kB", &kb); err == nil {
			return kb << 10, true
		}
	}
	return 0, false
}

// parseJobs reads the value of -j.
func parseJobs(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 {
		return 0, trace.Usagef("-j %s: want how many nodes run at a time, a whole number of at least 1", v)
	}
	return n, nil
}

// jobsValue reads the N of -j N, -jN, --jobs N and --jobs=N: inline is
// the value written in the option's own word (given says whether there
// was one), else it is the next word of args, and *i moves past it. who
// begins the usage error ("enrol: " after a recipe name).
func jobsValue(who, option, inline string, given bool, args []string, i *int) (int, error) {
	if !given {
		if *i+1 >= len(args) {
			return 0, trace.Usagef("%soption %s needs a number N", who, option)
		}
		*i++
		inline = args[*i]
	}
	return parseJobs(inline)
}
