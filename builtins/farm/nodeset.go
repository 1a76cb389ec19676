package farm

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"pifarm/builtins/trace"
)

// A node set names several nodes of the node table at once, wherever a
// recipe takes an instance: a comma-separated list of items, each
//
//	2, entwo     one node by id or alias (as Farm.Resolve)
//	1-4          the nodes whose ids lie in the range (both ends included)
//	all          every node
//	qemu         the QEMU guests (nodes without lan_mac)
//	hardware     the hardware boxes (nodes with lan_mac)
//	@rack1       the nodes whose tags (config.star's node(tags = [...])) hold rack1
//
// The nodes selected are ordered by id, each once. Blanks around items are
// ignored. The words all, qemu and hardware cannot be aliases.

// SetWords are the node-set words that select by kind; no alias may be one.
var SetWords = []string{"all", "qemu", "hardware"}

// ItemKind is what one item of a node set names.
type ItemKind int

// The kinds of node-set items.
const (
	ItemRef      ItemKind = iota // one node: Text is an id or alias
	ItemRange                    // ids Lo..Hi
	ItemAll                      // every node
	ItemQEMU                     // the QEMU guests
	ItemHardware                 // the hardware boxes
	ItemTag                      // the nodes tagged Text
)

// SetItem is one comma-separated item of a node set.
type SetItem struct {
	Kind   ItemKind
	Text   string // ItemRef: the id or alias; ItemTag: the tag (without @)
	Lo, Hi int    // ItemRange
}

// tagRE is what a tag looks like (config.star and @TAG alike).
var tagRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// rangeRE is an id range: two whole numbers joined by '-'.
var rangeRE = regexp.MustCompile(`^([0-9]+)\s*-\s*([0-9]+)$`)

// setWord is the kind of a set word (case-insensitive), or false.
func setWord(s string) (ItemKind, bool) {
	switch strings.ToLower(s) {
	case "all":
		return ItemAll, true
	case "qemu":
		return ItemQEMU, true
	case "hardware":
		return ItemHardware, true
	}
	return 0, false
}

// ParseNodeSet parses a node set into its items, checking its syntax only
// (whether the ids, aliases and tags exist is Farm.Select's business). An
// empty set or item, a range whose start exceeds its end and a malformed
// tag are usage errors naming the item and the accepted forms.
func ParseNodeSet(expr string) ([]SetItem, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, trace.Usagef("empty node set: name nodes by id or alias, or write a set such as 1-4, 1,3,entwo, all, qemu, hardware or @TAG")
	}
	var items []SetItem
	for _, raw := range strings.Split(expr, ",") {
		s := strings.TrimSpace(raw)
		if s == "" {
			return nil, trace.Usagef("node set %q: an empty item between commas (write e.g. 1,3 or 1-4)", expr)
		}
		if k, ok := setWord(s); ok {
			items = append(items, SetItem{Kind: k, Text: strings.ToLower(s)})
			continue
		}
		if tag, ok := strings.CutPrefix(s, "@"); ok {
			if !tagRE.MatchString(tag) {
				return nil, trace.Usagef("node set %q: %q is not a tag (after @: letters, digits, '_', '.', '-', beginning with a letter or digit)", expr, s)
			}
			items = append(items, SetItem{Kind: ItemTag, Text: tag})
			continue
		}
		if m := rangeRE.FindStringSubmatch(s); m != nil {
			lo, err1 := strconv.Atoi(m[1])
			hi, err2 := strconv.Atoi(m[2])
			if err1 != nil || err2 != nil {
				return nil, trace.Usagef("node set %q: range %q: an id is too large", expr, s)
			}
			if lo > hi {
				return nil, trace.Usagef("node set %q: range %q runs backwards (write %d-%d)", expr, s, hi, lo)
			}
			items = append(items, SetItem{Kind: ItemRange, Lo: lo, Hi: hi})
			continue
		}
		if strings.ContainsAny(s, " \t\n") {
			return nil, trace.Usagef("node set %q: %q is not an id, alias, range, set word or @TAG (separate items with commas)", expr, s)
		}
		items = append(items, SetItem{Kind: ItemRef, Text: s})
	}
	return items, nil
}

// IsNodeSet reports whether expr is written as a node set (a list, a
// range, a set word or a tag) rather than as one id or alias: a recipe
// that takes one instance runs once per node of a set. An alias holding
// '-' ("en-one") is an alias, not a range; a malformed set counts as a set
// (Select then says what is wrong with it).
func IsNodeSet(expr string) bool {
	s := strings.TrimSpace(expr)
	if strings.Contains(s, ",") || strings.HasPrefix(s, "@") || rangeRE.MatchString(s) {
		return true
	}
	_, ok := setWord(s)
	return ok
}

// Select resolves ref, one id or alias or a node set, to the nodes it
// names, ordered by id, each once. An unknown id, alias or tag is a usage
// error naming it and what the table holds; a range or tag that selects no
// node of the table is one too.
func (f *Farm) Select(ref string) ([]*Node, error) {
	if !IsNodeSet(ref) && strings.TrimSpace(ref) != "" {
		n, err := f.Resolve(ref)
		if err != nil {
			return nil, err
		}
		return []*Node{n}, nil
	}
	items, err := ParseNodeSet(ref)
	if err != nil {
		return nil, err
	}
	chosen := map[int]*Node{}
	for _, it := range items {
		var got []*Node
		switch it.Kind {
		case ItemRef:
			n, err := f.Resolve(it.Text)
			if err != nil {
				return nil, fmt.Errorf("node set %q: %w", ref, err)
			}
			got = []*Node{n}
		case ItemRange:
			for _, n := range f.Nodes() {
				if n.ID >= it.Lo && n.ID <= it.Hi {
					got = append(got, n)
				}
			}
			if len(got) == 0 {
				return nil, trace.Usagef("node set %q: no node has an id in %d-%d (ids: %s)", ref, it.Lo, it.Hi, f.ids())
			}
		case ItemAll:
			got = f.Nodes()
		case ItemQEMU, ItemHardware:
			for _, n := range f.Nodes() {
				if (n.Kind() == "hardware") == (it.Kind == ItemHardware) {
					got = append(got, n)
				}
			}
		case ItemTag:
			for _, n := range f.Nodes() {
				if n.HasTag(it.Text) {
					got = append(got, n)
				}
			}
			if len(got) == 0 {
				return nil, trace.Usagef("node set %q: no node is tagged %q in %s (%s)", ref, it.Text, f.Config.Path, f.tagList())
			}
		}
		for _, n := range got {
			chosen[n.ID] = n
		}
	}
	out := make([]*Node, 0, len(chosen))
	for _, n := range chosen {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// tagList names the tags of the node table, for errors.
func (f *Farm) tagList() string {
	seen := map[string]bool{}
	var tags []string
	for _, n := range f.Nodes() {
		for _, t := range n.Tags {
			if !seen[t] {
				seen[t] = true
				tags = append(tags, "@"+t)
			}
		}
	}
	if len(tags) == 0 {
		return "no node has tags: give them with node(..., tags = [\"rack1\"])"
	}
	sort.Strings(tags)
	return "tags: " + strings.Join(tags, ", ")
}

// Kind is "hardware" for a hardware box (a node with lan_mac), else "qemu".
func (n *Node) Kind() string {
	if n.LANMAC != "" {
		return "hardware"
	}
	return "qemu"
}

// HasTag reports whether the node carries tag (compared case-insensitively).
func (n *Node) HasTag(tag string) bool {
	for _, t := range n.Tags {
		if strings.EqualFold(t, tag) {
			return true
		}
	}
	return false
}

// Label is how pifarm names a node in messages and prefixes: "<2> entwo".
func (n *Node) Label() string { return fmt.Sprintf("<%d> %s", n.ID, n.Alias) }
