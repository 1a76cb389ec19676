package net

import (
	"fmt"
	"io"
	"os"
	"sort"

	"pifarm/builtins/trace"
)

// Main is the hidden subcommand `pifarm net STEP LINK [ARG] [--user U]
// [--group G] [--netns NS]` that performs exactly one Step with netlink and
// returns the exit status (0 done, 1 failed, 2 usage). pifarm runs it
// through the configured privilege command (`sudo pifarm net tap-add q0tap1
// --user alice --group alice`) when it lacks CAP_NET_ADMIN itself. main.go
// wires it: `if len(os.Args) > 1 && os.Args[1] == "net" {
// os.Exit(net.Main(os.Args[2:])) }`.
func Main(args []string) int { return run(args, os.Stderr) }

func run(args []string, stderr io.Writer) int {
	s, err := ParseStep(args)
	if err != nil {
		fmt.Fprintf(stderr, "pifarm net: %v\nusage: pifarm net STEP LINK [ARG] [--netns NS], one of:\n", err)
		verbs := make([]string, 0, len(Verbs))
		for v := range Verbs {
			verbs = append(verbs, v)
		}
		sort.Strings(verbs)
		for _, v := range verbs {
			fmt.Fprintf(stderr, "  %s\n", Verbs[v].Doc)
		}
		return 2
	}
	if !HasNetAdmin() {
		fmt.Fprintf(stderr, "pifarm net: %s: needs CAP_NET_ADMIN (run it as root)\n", trace.Join(s.IP()))
		return 1
	}
	if err := s.Apply(); err != nil {
		fmt.Fprintf(stderr, "pifarm net: %s: %v\n", trace.Join(s.IP()), err)
		return 1
	}
	return 0
}
