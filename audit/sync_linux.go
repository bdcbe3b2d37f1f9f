package audit

import (
	"fmt"
	"os"
	"sync/atomic"
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

// attribWatch is an inotify watch on a file's inode for the changes that
// unlinking or renaming it makes (IN_ATTRIB: the link count; IN_MOVE_SELF,
// IN_DELETE_SELF), read by a goroutine of its own that only raises a flag:
// the write path looks at the flag (an atomic load) instead of making an
// fstat(2) before every batch. Our own writes raise IN_MODIFY, which is
// not watched.
type attribWatch struct {
	f       *os.File
	changed atomic.Bool
}

// watchAttrib starts watching f's inode; nil when inotify is not available
// (the caller then checks on its interval alone).
func watchAttrib(f *os.File) *attribWatch {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	var path string
	rc.Control(func(fd uintptr) { path = fmt.Sprintf("/proc/self/fd/%d", fd) })
	ifd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		return nil
	}
	if _, err := syscall.InotifyAddWatch(ifd, path, syscall.IN_ATTRIB|syscall.IN_MOVE_SELF|syscall.IN_DELETE_SELF); err != nil {
		syscall.Close(ifd)
		return nil
	}
	w := &attribWatch{f: os.NewFile(uintptr(ifd), "inotify")}
	go func() {
		buf := make([]byte, 1024)
		for {
			n, err := w.f.Read(buf)
			if n > 0 {
				w.changed.Store(true)
			}
			if err != nil {
				return
			}
		}
	}()
	return w
}

// take reports whether the file's attributes changed since the last call.
func (w *attribWatch) take() bool { return w != nil && w.changed.Swap(false) }

func (w *attribWatch) close() {
	if w != nil {
		w.f.Close()
	}
}
