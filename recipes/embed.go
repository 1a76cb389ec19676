// Package recipes holds pifarm's bundled recipes, their Starlark library
// (lib/), the guest file trees (guest/) and the test guest builder
// (testguest/), embedded into the pifarm binary.
package recipes

import "embed"

// FS is what pifarm ships of recipes/. A folder joins the pattern once it
// holds files (an empty or missing folder would break the build).
//
//go:embed *.star lib guest
var FS embed.FS
