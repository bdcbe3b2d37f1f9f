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

// linkCount returns the link count and size of f's file (a link count of 0:
// deleted while open). ok false: it could not be read; the write that
// follows reports what is wrong.
func linkCount(f *os.File) (nlink uint64, size int64, ok bool) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var st syscall.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Fstat(int(fd), &st) }); err != nil || serr != nil {
		return 0, 0, false
	}
	return uint64(st.Nlink), st.Size, true
}
