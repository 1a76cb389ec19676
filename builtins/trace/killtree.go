package trace

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// killTree sends SIGKILL to pid and every process descended from it (found
// by their parent pids in /proc), descendants first, so that a command
// pifarm ends takes what it started along. The walk repeats until it finds
// no one new, for processes forked meanwhile.
func killTree(pid int) error {
	killed := map[int]bool{}
	for round := 0; round < 5; round++ {
		tree := descendants(pid)
		fresh := false
		for i := len(tree) - 1; i >= 0; i-- {
			if !killed[tree[i]] {
				syscall.Kill(tree[i], syscall.SIGKILL)
				killed[tree[i]], fresh = true, true
			}
		}
		if !fresh {
			break
		}
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

// descendants lists the processes descended from pid, parents before their
// children.
func descendants(pid int) []int {
	kids := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, ok := parentOf(p); ok {
			kids[pp] = append(kids[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, k := range kids[p] {
			out = append(out, k)
			queue = append(queue, k)
		}
	}
	return out
}

// parentOf reads a process's parent pid from /proc/PID/stat (the field
// after the state, which follows the command name in parentheses).
func parentOf(pid int) (int, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	return parseStatParent(string(b))
}

// parseStatParent is the parent pid of a /proc/PID/stat line.
func parseStatParent(stat string) (int, bool) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 2 {
		return 0, false
	}
	pp, err := strconv.Atoi(f[1])
	return pp, err == nil
}
