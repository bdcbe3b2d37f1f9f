package audit

import (
	"io"
	"time"
)

// SetFileFaults puts fault injectors in front of a file sink's current
// file: wrap replaces its writer, sync its fdatasync (given the real one).
// Nil leaves either as it is. Reopen drops them with the old file.
func SetFileFaults(s *Sink, wrap func(io.Writer) io.Writer, sync func(real func() error) error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	ft := s.t.(*fileTarget)
	if wrap != nil {
		ft.w = wrap(ft.f)
	}
	if sync != nil {
		real := func() error { return fdatasync(ft.f) }
		ft.sync = func() error { return sync(real) }
	}
}

// CloseFileUnderSink closes a file sink's file behind its back, as a bug
// elsewhere or a lost mount would.
func CloseFileUnderSink(s *Sink) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.t.(*fileTarget).f.Close()
}

// CachedBases is how many connections' constant fields the encoder holds.
func CachedBases(e *Encoder) int64 { return e.nbases.Load() }

// SinkEncoder is the encoder of a sink.
func SinkEncoder(s *Sink) *Encoder { return s.enc }

// SetUnlinkCheck sets how often a file sink's current file is checked for
// deletion; ExpireUnlinkCheck makes its next batch check.
func SetUnlinkCheck(s *Sink, every time.Duration) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.t.(*fileTarget).checkEvery = every
}

func ExpireUnlinkCheck(s *Sink) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.t.(*fileTarget).checked = time.Time{}
}

// DisableUnlinkWatch stops the inotify watch of a file sink's current
// file: deletions are then seen by the interval check alone.
func DisableUnlinkWatch(s *Sink) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	ft := s.t.(*fileTarget)
	ft.watch.close()
	ft.watch = nil
}

// UnlinkNoticed reports whether the inotify watch of a file sink's current
// file has seen a change not yet acted on.
func UnlinkNoticed(s *Sink) bool {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	w := s.t.(*fileTarget).watch
	return w != nil && w.changed.Load()
}

// UnlinkWatchActive reports whether a file sink's current file has an
// inotify watch (and its goroutine).
func UnlinkWatchActive(s *Sink) bool {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.t.(*fileTarget).watch != nil
}
