package runtime

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"pifarm/builtins/farm"
	"pifarm/builtins/trace"
)

// runsUsage is the command line of `pifarm runs`.
const runsUsage = "usage: pifarm runs [--all] [--json] [RUN [NODE]]   (RUN: a run's folder name, a prefix of it, or last)"

// runsShown is how many runs `pifarm runs` lists without --all.
const runsShown = 20

// runsCmd is `pifarm runs`: the recent runs over node sets (newest
// first), one run's outcome per node (RUN), or a node's log (RUN NODE).
func (rt *Runtime) runsCmd(args []string, stdout, stderr io.Writer) int {
	all, asJSON := false, false
	var pos []string
	for _, a := range args {
		switch {
		case a == "--all":
			all = true
		case a == "--json":
			asJSON = true
		case a == "-h" || a == "--help":
			fmt.Fprintln(stdout, runsUsage)
			return ExitOK
		case strings.HasPrefix(a, "-"):
			fmt.Fprintf(stderr, "pifarm: runs: unknown option %s\n%s\n", a, runsUsage)
			return ExitUsage
		default:
			pos = append(pos, a)
		}
	}
	if len(pos) > 2 {
		fmt.Fprintf(stderr, "pifarm: runs: unexpected argument %q\n%s\n", pos[2], runsUsage)
		return ExitUsage
	}
	f := rt.Farm
	if len(pos) == 0 {
		runs, err := f.Runs()
		if err != nil {
			fmt.Fprintf(stderr, "pifarm: runs: %v\n", err)
			return ExitFailed
		}
		if !all && len(runs) > runsShown {
			runs = runs[:runsShown]
		}
		switch {
		case asJSON:
			if runs == nil {
				runs = []*farm.RunSummary{}
			}
			writeJSON(stdout, runs)
		case len(runs) == 0:
			fmt.Fprintf(stdout, "no runs recorded in %s (a recipe run over a node set records one)\n", f.RunsDir())
		default:
			fmt.Fprint(stdout, runsTable(runs))
		}
		return ExitOK
	}
	s, err := f.FindRun(pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "pifarm: runs: %v\n", err)
		return ExitUsage
	}
	if len(pos) == 1 {
		if asJSON {
			writeJSON(stdout, s)
		} else {
			fmt.Fprint(stdout, runTable(f, s))
		}
		return ExitOK
	}
	if asJSON {
		fmt.Fprintf(stderr, "pifarm: runs: --json is for the lists of runs and nodes; a node's log is text\n")
		return ExitUsage
	}
	id, err := runNode(f, s, pos[1])
	if err != nil {
		fmt.Fprintf(stderr, "pifarm: runs: %v\n", err)
		return ExitUsage
	}
	data, err := f.ReadRunLog(s.Run, id)
	if err != nil {
		fmt.Fprintf(stderr, "pifarm: runs: %v\n", err)
		return ExitFailed
	}
	stdout.Write(data)
	return ExitOK
}

// runNode finds the node ref (id or alias) among the nodes of run s.
func runNode(f *farm.Farm, s *farm.RunSummary, ref string) (int, error) {
	var known []string
	for _, n := range s.Nodes {
		if strconv.Itoa(n.Node) == strings.TrimSpace(ref) || strings.EqualFold(n.Alias, strings.TrimSpace(ref)) {
			return n.Node, nil
		}
		known = append(known, fmt.Sprintf("%d=%s", n.Node, n.Alias))
	}
	return 0, trace.Usagef("run %s has no node %q (its nodes: %s)", s.Run, ref, strings.Join(known, ", "))
}

// runsTable lists runs: folder, recipe, node set, start, outcome, seconds.
func runsTable(runs []*farm.RunSummary) string {
	rows := [][]string{{"run", "recipe", "nodes", "started", "result", "seconds"}}
	for _, s := range runs {
		rows = append(rows, []string{s.Run, s.Recipe, s.Set, s.Started.Local().Format("2006-01-02 15:04:05"), runResult(s), fmt.Sprintf("%.1f", s.Seconds)})
	}
	return textTable(rows)
}

// runResult is a run's outcome in a few words: "3 ok", "2 ok, 1 failed",
// "unfinished".
func runResult(s *farm.RunSummary) string {
	if !s.Finished {
		return "unfinished"
	}
	ok, failed, notRun := 0, 0, 0
	for _, n := range s.Nodes {
		switch n.Exit {
		case 0:
			ok++
		case -1:
			notRun++
		default:
			failed++
		}
	}
	parts := []string{fmt.Sprintf("%d ok", ok)}
	if failed > 0 {
		parts = append(parts, fmt.Sprintf("%d failed", failed))
	}
	if notRun > 0 {
		parts = append(parts, fmt.Sprintf("%d not run", notRun))
	}
	return strings.Join(parts, ", ")
}

// runTable is one run: what ran, then each node's outcome and log.
func runTable(f *farm.Farm, s *farm.RunSummary) string {
	var b strings.Builder
	fmt.Fprintf(&b, "run %s: %s\n", s.Run, strings.TrimSpace("pifarm run "+s.Recipe+" "+trace.Join(s.Args)))
	fmt.Fprintf(&b, "started %s, %s, %.1f s\n\n", s.Started.Local().Format("2006-01-02 15:04:05"), runResult(s), s.Seconds)
	rows := [][]string{{"node", "result", "seconds", "log", "cause"}}
	for _, n := range s.Nodes {
		r := &nodeResult{Exit: n.Exit}
		word := resultWord(r)
		if !s.Finished && n.Exit == -1 {
			word = "unfinished"
		}
		log := filepath.Join(f.RunsDir(), s.Run, n.Log)
		if _, err := os.Lstat(log); err != nil {
			log = "-"
		}
		rows = append(rows, []string{fmt.Sprintf("<%d> %s", n.Node, n.Alias), word, fmt.Sprintf("%.1f", n.Seconds), log, n.Error})
	}
	b.WriteString(textTable(rows))
	return b.String()
}

// writeJSON writes v as indented JSON (HTML characters as they are).
func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
