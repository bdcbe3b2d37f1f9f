//go:build !unix

package pki

// lockDir is a no-op where flock(2) does not exist: run one `conduit pki`
// command at a time there.
func lockDir(string) (func(), error) { return func() {}, nil }
