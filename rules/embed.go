// Package rules is Conduit's reference policy: Rego modules of package
// conduit, their Rego tests, and example grants (data.json) for the demo
// listeners. A security team forks this directory into its own policy
// repository; README.md describes the data format.
//
// The files are embedded so that `conduit demo` and `conduit policy test`
// work from any directory.
package rules

import "embed"

// FS holds the reference policy: *.rego (tests included) and data.json.
//
//go:embed *.rego data.json
var FS embed.FS
