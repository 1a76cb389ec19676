package runtime

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	xssh "golang.org/x/crypto/ssh"
	"pifarm/builtins/console/fakeguest"
)

// The environment of TestFleetServe: the nodes it serves ("BASE:N,..."; node
// i of a group answers on BASE+i) and the authorized_keys line of the
// user's key.
const fleetServeEnv, fleetKeyEnv = "PIFARM_TEST_FLEET_SERVE", "PIFARM_TEST_FLEET_KEY"

// TestFleetServe is no test of its own: BenchmarkFleetStatusApart runs the
// test binary again with fleetServeEnv set, so that the fleet's SSH servers
// (their half of every key exchange, and the sh and df each command starts)
// run in a process of their own and the benchmark's CPU time is pifarm's
// alone. It serves until its standard input closes.
func TestFleetServe(t *testing.T) {
	spec := os.Getenv(fleetServeEnv)
	if spec == "" {
		t.Skip("the SSH servers of BenchmarkFleetStatusApart, run as a process of its own")
	}
	key, _, _, _, err := xssh.ParseAuthorizedKey([]byte(os.Getenv(fleetKeyEnv)))
	if err != nil {
		t.Fatalf("%s: %v", fleetKeyEnv, err)
	}
	for _, group := range strings.Split(spec, ",") {
		var base, n int
		if _, err := fmt.Sscanf(group, "%d:%d", &base, &n); err != nil {
			t.Fatalf("%s=%s: %v", fleetServeEnv, spec, err)
		}
		for id := 1; id <= n; id++ {
			hostKey := fakeguest.NewHostKey(t, false)
			s := fakeguest.NewSSHServerWith(t, fmt.Sprintf("127.0.0.1:%d", base+id), func(s *fakeguest.SSHServer) {
				fakeIdentity(t, s, fmt.Sprintf("n%d", id), hostKey.PublicKey())
			}, hostKey)
			s.Authorize(key)
		}
	}
	fmt.Println("serving")
	io.Copy(io.Discard, os.Stdin)
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFleetStatusApart is BenchmarkFleetStatus with the SSH servers
// in another process (TestFleetServe): it reports the whole command's time
// over one node and over 100, their ratio, and pifarm's own CPU time per
// run of each (what the servers spend is not in it), which tells pifarm's
// cost per node from the servers'.
func BenchmarkFleetStatusApart(b *testing.B) {
	key := fleetKey(b)
	all := func(n int) []int {
		ids := make([]int, n)
		for i := range ids {
			ids[i] = i + 1
		}
		return ids
	}
	const base1, base100 = fleetSSHBase + 400, fleetSSHBase + 600
	one, hundred := newFleetAt(b, 1, base1, 0, key, all(1)...), newFleetAt(b, 100, base100, 0, key, all(100)...)
	cmd := exec.Command(os.Args[0], "-test.run=^TestFleetServe$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d:1,%d:100", fleetServeEnv, base1, base100),
		fleetKeyEnv+"="+strings.TrimSpace(string(xssh.MarshalAuthorizedKey(key))))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); cmd.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "serving\n" {
		b.Fatalf("the servers' process: %q %v", line, err)
	}
	for _, f := range []*fleet{one, hundred} {
		// the first run records the host keys
		if o, e, code := f.run(b, nil, "run", "status"); code != 0 || strings.Count(o, "  key  ") != strings.Count(o, "\n")-1 {
			b.Fatalf("exit %d\n%s%s", code, o, e)
		}
	}
	var t1, t100, c1, c100 time.Duration
	b.ResetTimer()
	for range b.N {
		t0, cpu0 := time.Now(), cpuTime()
		one.run(b, nil, "run", "status")
		t1 += time.Since(t0)
		c1 += cpuTime() - cpu0
		t0, cpu0 = time.Now(), cpuTime()
		hundred.run(b, nil, "run", "status")
		t100 += time.Since(t0)
		c100 += cpuTime() - cpu0
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(ms(t1), "ms/1-node")
	b.ReportMetric(ms(t100), "ms/100-nodes")
	b.ReportMetric(float64(t100)/float64(t1), "ratio")
	b.ReportMetric(ms(c1), "cpu-ms/1-node")
	b.ReportMetric(ms(c100), "cpu-ms/100-nodes")
}
