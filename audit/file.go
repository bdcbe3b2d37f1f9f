package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// OpenFile returns a Sink appending to the file at path (see Sink). The
// file is created with mode 0600, and its missing parent directories with
// 0700; an existing file is appended to, never truncated, and the sequence
// continues after the last event in it, so sequence numbers stay strictly
// increasing within the file across restarts. If the file ends in a torn
// line (the machine stopped during a write), the first batch starts with a
// newline; the torn line is left as evidence.
//
// The proxy calls Reopen on SIGHUP after logrotate renamed the file, and
// Close on shutdown. A file deleted under the sink is created again by the
// next batch (Linux: an inotify watch on the file flags the change of its
// link count; the count is also read at least every 50 ms), and the events
// written since the last check are copied into it.
func OpenFile(path string, opts Options) (*Sink, error) {
	f, seq, torn, err := openAuditFile(path, opts.Fsync)
	if err != nil {
		return nil, err
	}
	s := newSink(newFileTarget(f), path, opts)
	s.seq = seq
	s.torn = torn
	s.reopen = func() (target, error) {
		f, _, err := createOrOpen(path, os.O_RDWR, opts.Fsync)
		if err != nil {
			return nil, err
		}
		return newFileTarget(f), nil
	}
	return s, nil
}

// openAuditFile opens path for appending and reads the last sequence number
// in it.
func openAuditFile(path string, fsync bool) (f *os.File, seq uint64, torn bool, err error) {
	// Read and write: a deleted file's last events are read back (Unlinked).
	f, created, err := createOrOpen(path, os.O_RDWR, fsync)
	if err != nil {
		return nil, 0, false, err
	}
	if created {
		return f, 0, false, nil
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, false, fmt.Errorf("audit: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Size() == 0 {
		return f, 0, false, nil
	}
	seq, torn, err = lastSequence(path, fi.Size())
	if err != nil {
		f.Close()
		return nil, 0, false, fmt.Errorf("audit: %s: %w", path, err)
	}
	return f, seq, torn, nil
}

// createOrOpen opens path for appending with access mode (os.O_WRONLY or
// os.O_RDWR), creating it (and its directory) if needed.
func createOrOpen(path string, mode int, fsync bool) (f *os.File, created bool, err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("audit: %w", err)
	}
	created = true
	f, err = os.OpenFile(path, mode|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		created = false
		f, err = os.OpenFile(path, mode|os.O_APPEND, 0)
	}
	if err != nil {
		return nil, false, fmt.Errorf("audit: %w", err)
	}
	if created && fsync {
		// The new directory entry must survive a crash as much as the
		// events written to the file.
		if err := syncDir(dir); err != nil {
			f.Close()
			return nil, false, fmt.Errorf("audit: sync directory of %s: %w", path, err)
		}
	}
	return f, created, nil
}

// maxTailScan bounds how far back lastSequence looks for the last event.
const maxTailScan = 64 << 20

// lastSequence returns the largest event.sequence among the last complete
// lines of the file, and whether the file ends in a partial line. It reads
// backwards from the end, doubling the window, and stops at the first line
// that is an event with a sequence number.
func lastSequence(path string, size int64) (seq uint64, torn bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	var last [1]byte
	if _, err := f.ReadAt(last[:], size-1); err != nil {
		return 0, false, err
	}
	torn = last[0] != '\n'
	for window := int64(64 << 10); ; window *= 2 {
		start := max(size-window, 0)
		buf := make([]byte, size-start)
		if _, err := f.ReadAt(buf, start); err != nil && err != io.EOF {
			return 0, false, err
		}
		// Drop the torn tail, and the first, possibly partial, line of
		// the window unless the window starts the file.
		if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
			buf = buf[:i]
		} else {
			buf = buf[:0]
		}
		complete := start == 0
		for len(buf) > 0 {
			i := bytes.LastIndexByte(buf, '\n')
			if i < 0 && !complete {
				break
			}
			line := buf[i+1:]
			buf = buf[:max(i, 0)]
			var ev struct {
				Event struct {
					Sequence uint64 `json:"sequence"`
				} `json:"event"`
			}
			if json.Unmarshal(line, &ev) == nil && ev.Event.Sequence != 0 {
				return ev.Event.Sequence, torn, nil
			}
		}
		if complete {
			return 0, false, errors.New("no audit event with a sequence number in a non-empty file; move it aside")
		}
		if window >= maxTailScan {
			return 0, false, fmt.Errorf("no audit event with a sequence number in the last %d bytes; move the file aside", window)
		}
	}
}

// fileTarget is an append-only file.
type fileTarget struct {
	f *os.File
	// w is f, or in tests a fault injector in front of it.
	w io.Writer
	// sync is fdatasync of f, or in tests a fault injector.
	sync func() error

	// The deletion check (Unlinked) runs when watch says the file's link
	// count or name changed, and at least once per checkEvery: checked is
	// when it last found the file linked, and mark the file's size then.
	// What lies after mark may have been written to a file without a
	// name.
	watch      *attribWatch
	checkEvery time.Duration
	checked    time.Time
	mark       int64
}

// unlinkCheckEvery is how often a batch checks that the audit file still
// has a name when the inotify watch has said nothing (or is not
// available). A check costs an fstat(2), about a third of a one-event
// write at depth 1 when made before every batch (BenchmarkRecordBatchFile:
// 4.5 -> 3.3 µs); nothing is lost by checking less often, since what was
// written after the last check is copied into the new file.
const unlinkCheckEvery = 50 * time.Millisecond

func newFileTarget(f *os.File) *fileTarget {
	return &fileTarget{f: f, w: f, watch: watchAttrib(f), checkEvery: unlinkCheckEvery}
}

func (t *fileTarget) Write(p []byte) (int, error) { return t.w.Write(p) }

func (t *fileTarget) Sync() error {
	if t.sync != nil {
		return t.sync()
	}
	return fdatasync(t.f)
}

// Rollback truncates the file by the n bytes a failed batch wrote. With
// O_APPEND the file offset is the end of what this process just wrote, so
// the length before the batch is offset - n even if the file was truncated
// behind our back (logrotate copytruncate).
func (t *fileTarget) Rollback(n int) error {
	if n == 0 {
		return nil
	}
	pos, err := t.f.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	if pos < int64(n) {
		return fmt.Errorf("offset %d is before the %d bytes written", pos, n)
	}
	return t.f.Truncate(pos - int64(n))
}

func (t *fileTarget) Close() error {
	t.watch.close()
	return t.f.Close()
}

// Unlinked reports whether the file was deleted while open (Linux), looking
// when the inotify watch saw its link count change and at least once per
// checkEvery (once it found the file deleted: at every call, until the
// sink has replaced it). since is what was written
// to the file after the last check that found it linked: events that may
// be in a file without a name, for the new file. err: since could not be
// read back.
func (t *fileTarget) Unlinked(now time.Time) (since []byte, gone bool, err error) {
	if !t.watch.take() && !t.checked.IsZero() && now.Sub(t.checked) < t.checkEvery {
		return nil, false, nil
	}
	nlink, size, ok := linkCount(t.f)
	if !ok {
		return nil, false, nil
	}
	if nlink > 0 {
		t.checked, t.mark = now, size
		return nil, false, nil
	}
	t.checked = time.Time{}
	from := min(t.mark, size) // a truncation (copytruncate) may have shrunk it
	if size-from > maxCopyForward {
		return nil, true, fmt.Errorf("%d bytes written since the last check, more than %d", size-from, maxCopyForward)
	}
	since = make([]byte, size-from)
	if _, err := t.f.ReadAt(since, from); err != nil {
		return nil, true, err
	}
	return since, true, nil
}

// maxCopyForward bounds what Unlinked reads back: at most checkEvery of
// writing, far less than this at any rate the proxy can sustain.
const maxCopyForward = 256 << 20

// EndsTorn reads the file's last byte (Reopen opens it for reading and
// writing): not a newline means a partial line.
func (t *fileTarget) EndsTorn() (bool, error) {
	fi, err := t.f.Stat()
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() || fi.Size() == 0 {
		return false, nil
	}
	var last [1]byte
	if _, err := t.f.ReadAt(last[:], fi.Size()-1); err != nil {
		return false, err
	}
	return last[0] != '\n', nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
