//go:build !linux

package audit

import "os"

// fdatasync falls back to fsync where fdatasync(2) is not available.
func fdatasync(f *os.File) error { return f.Sync() }

// linkCount is not read where it is not portable: a deleted file is not
// detected.
func linkCount(*os.File) (nlink uint64, size int64, ok bool) { return 0, 0, false }

// attribWatch is not available: a deleted file is not detected.
type attribWatch struct{}

func watchAttrib(*os.File) *attribWatch { return nil }
func (w *attribWatch) take() bool       { return false }
func (w *attribWatch) close()           {}
