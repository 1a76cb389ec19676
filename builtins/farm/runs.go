package farm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The run record: a run of a recipe over a node set keeps, in the cache,
//
//	runs/DATE-RECIPE/             (mode 0700; DATE as 20060102-150405)
//	runs/DATE-RECIPE/N.log        node N's whole output, trace lines included, secrets masked
//	runs/DATE-RECIPE/summary.json the outcome (RunSummary)
//
// Folders are made 0700 and files 0600, through an os.Root on the cache:
// no symbolic link is followed (runs itself must be a folder, and every
// file is created new).

// RunsDir is the cache's runs folder.
func (f *Farm) RunsDir() string { return filepath.Join(f.Config.CacheDir(), "runs") }

// RunSummary is summary.json: one run of a recipe over a node set. Its
// JSON shape is stable (documented in the README); fields are only ever
// added.
type RunSummary struct {
	// Run is the run's folder name, DATE-RECIPE.
	Run string `json:"run"`
	// Recipe is the recipe as named on the command line (enrol, my.star).
	Recipe string `json:"recipe"`
	// Args are the recipe's arguments as given; Set the node set.
	Args []string `json:"args"`
	Set  string   `json:"set"`
	// Started is when the run began (RFC 3339).
	Started time.Time `json:"started"`
	// Finished is false while the run goes on (or when it was killed).
	Finished bool    `json:"finished"`
	Seconds  float64 `json:"seconds"`
	// Exit is pifarm's exit status: 0 when every node succeeded, 1 when
	// any failed; -1 until the run finished.
	Exit  int           `json:"exit"`
	Nodes []NodeSummary `json:"nodes"`
}

// NodeSummary is one node's outcome in a run.
type NodeSummary struct {
	Node  int    `json:"node"`
	Alias string `json:"alias"`
	// Exit: 0 success, 1 failure, 2 usage error, -1 not run (or not yet
	// finished).
	Exit    int     `json:"exit"`
	Seconds float64 `json:"seconds"`
	// Error is the failure's cause in one line ("" on success).
	Error string `json:"error"`
	// Log is the node's log file, relative to the run's folder (N.log).
	Log string `json:"log"`
}

// RunRecord writes one run's record.
type RunRecord struct {
	// Dir is the run's folder (absolute).
	Dir  string
	Name string
	root *os.Root // the run's folder
}

// runNameRE keeps a recipe name usable in a folder name.
var runNameRE = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// NewRunRecord makes the folder of a run of recipe begun at started,
// runs/DATE-RECIPE (DATE-RECIPE-2, -3, ... when taken), mode 0700, and
// the runs folder when missing.
func (f *Farm) NewRunRecord(recipe string, started time.Time) (*RunRecord, error) {
	runs, err := f.openRuns(true)
	if err != nil {
		return nil, err
	}
	defer runs.Close()
	base := started.Format("20060102-150405") + "-" + strings.Trim(runNameRE.ReplaceAllString(recipe, "_"), "_.")
	for i := 1; i < 1000; i++ {
		name := base
		if i > 1 {
			name = fmt.Sprintf("%s-%d", base, i)
		}
		err := runs.Mkdir(name, 0o700)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("record the run in %s: %w", f.RunsDir(), err)
		}
		root, err := runs.OpenRoot(name)
		if err != nil {
			return nil, fmt.Errorf("record the run in %s: %w", f.RunsDir(), err)
		}
		return &RunRecord{Dir: filepath.Join(f.RunsDir(), name), Name: name, root: root}, nil
	}
	return nil, fmt.Errorf("record the run in %s: %s and 998 more are taken; remove old runs", f.RunsDir(), base)
}

// openRuns opens the runs folder (made 0700 when missing and
// create is set), refusing a symbolic link there.
func (f *Farm) openRuns(create bool) (*os.Root, error) {
	dir := f.Config.CacheDir()
	cache, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("the cache folder %s: %w", dir, err)
	}
	defer cache.Close()
	if create {
		if err := cache.Mkdir("runs", 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("make %s: %w", f.RunsDir(), err)
		}
	}
	fi, err := cache.Lstat("runs")
	if err != nil {
		return nil, fmt.Errorf("the runs folder %s: %w", f.RunsDir(), err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("the runs folder %s is not a folder (%s): pifarm keeps its run records there and follows no link; move it away", f.RunsDir(), fi.Mode().Type())
	}
	runs, err := cache.OpenRoot("runs")
	if err != nil {
		return nil, fmt.Errorf("the runs folder %s: %w", f.RunsDir(), err)
	}
	if got, err := runs.Stat("."); err != nil || !os.SameFile(fi, got) {
		runs.Close()
		return nil, fmt.Errorf("the runs folder %s changed while it was opened; try again", f.RunsDir())
	}
	return runs, nil
}

// Log creates node id's log file, N.log, mode 0600 (a new file: nothing
// that is there already, a symbolic link included, is written through).
func (r *RunRecord) Log(id int) (io.WriteCloser, error) {
	name := strconv.Itoa(id) + ".log"
	fh, err := r.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("node %d's log %s: %w", id, filepath.Join(r.Dir, name), err)
	}
	return fh, nil
}

// WriteSummary writes summary.json (replacing it: a temporary file made
// new, then renamed over it).
func (r *RunRecord) WriteSummary(s *RunSummary) error {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s); err != nil {
		return err
	}
	data := []byte(b.String())
	tmp := fmt.Sprintf(".summary.json.%d.tmp", os.Getpid())
	r.root.Remove(tmp)
	fh, err := r.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", filepath.Join(r.Dir, "summary.json"), err)
	}
	_, werr := fh.Write(data)
	if cerr := fh.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = r.root.Rename(tmp, "summary.json")
	}
	if werr != nil {
		r.root.Remove(tmp)
		return fmt.Errorf("write %s: %w", filepath.Join(r.Dir, "summary.json"), werr)
	}
	return nil
}

// Close lets the run's folder go.
func (r *RunRecord) Close() error { return r.root.Close() }

// Runs reads the summaries of the recorded runs, newest first; a folder
// without a readable summary.json is left out. No runs folder: none.
func (f *Farm) Runs() ([]*RunSummary, error) {
	if _, err := os.Lstat(f.RunsDir()); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	runs, err := f.openRuns(false)
	if err != nil {
		return nil, err
	}
	defer runs.Close()
	dir, err := runs.Open(".")
	if err != nil {
		return nil, err
	}
	names, err := dir.Readdirnames(-1)
	dir.Close()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.RunsDir(), err)
	}
	var out []*RunSummary
	for _, name := range names {
		if s, err := readSummary(runs, name); err == nil {
			out = append(out, s)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Started.Equal(out[j].Started) {
			return out[i].Started.After(out[j].Started)
		}
		return out[i].Run > out[j].Run
	})
	return out, nil
}

// readSummary reads name/summary.json below runs, following no link.
func readSummary(runs *os.Root, name string) (*RunSummary, error) {
	if fi, err := runs.Lstat(name); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a run folder", name)
	}
	fh, err := runs.OpenFile(filepath.Join(name, "summary.json"), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	var s RunSummary
	if err := json.NewDecoder(io.LimitReader(fh, 16<<20)).Decode(&s); err != nil {
		return nil, fmt.Errorf("%s/summary.json: %w", name, err)
	}
	s.Run = name
	return &s, nil
}

// FindRun finds a recorded run by folder name, by a prefix of one (the
// newest run it begins), or "last" (the newest run). None found is an
// error listing what to give.
func (f *Farm) FindRun(ref string) (*RunSummary, error) {
	runs, err := f.Runs()
	if err != nil {
		return nil, err
	}
	if len(runs) == 0 {
		return nil, fmt.Errorf("no runs recorded in %s (a recipe run over a node set records one)", f.RunsDir())
	}
	if ref == "last" {
		return runs[0], nil
	}
	for _, s := range runs {
		if s.Run == ref {
			return s, nil
		}
	}
	for _, s := range runs {
		if strings.HasPrefix(s.Run, ref) {
			return s, nil
		}
	}
	return nil, fmt.Errorf("no run %q in %s (pifarm runs lists them; \"last\" is the newest)", ref, f.RunsDir())
}

// ReadRunLog returns node id's log of the run named run (a folder name),
// following no link.
func (f *Farm) ReadRunLog(run string, id int) ([]byte, error) {
	runs, err := f.openRuns(false)
	if err != nil {
		return nil, err
	}
	defer runs.Close()
	if fi, err := runs.Lstat(run); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("no run folder %s in %s", run, f.RunsDir())
	}
	p := filepath.Join(run, strconv.Itoa(id)+".log")
	fh, err := runs.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("node %d's log of run %s: %w", id, run, err)
	}
	defer fh.Close()
	return io.ReadAll(fh)
}

// LastRun is the newest recorded run in which node id took part, with the
// node's outcome; nil, nil when there is none.
func (f *Farm) LastRun(id int) (*RunSummary, *NodeSummary, error) {
	runs, err := f.Runs()
	if err != nil {
		return nil, nil, err
	}
	for _, s := range runs {
		for i := range s.Nodes {
			if s.Nodes[i].Node == id {
				return s, &s.Nodes[i], nil
			}
		}
	}
	return nil, nil, nil
}

// LastRuns is, for every node that took part in a recorded run, the
// newest such run and the node's outcome in it: what LastRun gives, for
// all nodes at one reading of the records.
func (f *Farm) LastRuns() (map[int]LastRunOf, error) {
	runs, err := f.Runs()
	if err != nil {
		return nil, err
	}
	out := map[int]LastRunOf{}
	for _, s := range runs {
		for _, n := range s.Nodes {
			if _, seen := out[n.Node]; !seen {
				out[n.Node] = LastRunOf{Run: s, Node: n}
			}
		}
	}
	return out, nil
}

// LastRunOf is a node's newest recorded run and its outcome there.
type LastRunOf struct {
	Run  *RunSummary
	Node NodeSummary
}
