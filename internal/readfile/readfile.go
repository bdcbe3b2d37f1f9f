// Package readfile reads the files an operator points Conduit at (policy
// bundles, TLS material) with the bounds a long-running appliance needs:
// only regular files, and only up to a size. A FIFO would block a reload
// forever, a device such as /dev/zero would grow memory until the process
// dies, and neither is what a policy or a certificate ever is.
package readfile

import (
	"fmt"
	"io"
	"io/fs"
	"os"
)

// Regular returns the content of the regular file at path (a symlink to
// one is followed) if it has at most limit bytes. Anything else — a
// missing file, a directory, a FIFO, a device, a file larger than limit,
// or one that grew past it while being read — is an error naming path.
func Regular(path string, limit int64) ([]byte, error) {
	// Stat before opening: opening a FIFO blocks until it has a writer.
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := check(path, fi, limit); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Again on what was opened: the name may have been replaced since.
	if fi, err = f.Stat(); err != nil {
		return nil, err
	}
	if err := check(path, fi, limit); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: grew past %d bytes while being read", path, limit)
	}
	return b, nil
}

func check(path string, fi fs.FileInfo, limit int64) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %s, not a regular file", path, Kind(fi.Mode()))
	}
	if fi.Size() > limit {
		return fmt.Errorf("%s: %d bytes, more than the %d allowed", path, fi.Size(), limit)
	}
	return nil
}

// Kind names the type of a file that is not a regular file.
func Kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "a special file"
}
