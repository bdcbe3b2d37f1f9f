package audit

import (
	"os"
	"syscall"
)

// fdatasync flushes f's data, and the metadata needed to read it back (the
// size), without the timestamps fsync would also write (fdatasync(2)).
func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}

// unlinked reports whether f's file has no name left (deleted while open).
// An error is "no": the write that follows reports it.
func unlinked(f *os.File) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	var st syscall.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Fstat(int(fd), &st) }); err != nil || serr != nil {
		return false
	}
	return st.Nlink == 0
}
