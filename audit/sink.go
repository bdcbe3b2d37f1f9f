package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Options.
const (
	DefaultMaxBatchBytes  = 1 << 20
	DefaultMaxBatchEvents = 4096
)

// ErrClosed is returned by Record after Close.
var ErrClosed = errors.New("audit: recorder closed")

// Options configures a Sink. The zero value is usable.
type Options struct {
	// Observer is stamped on every event (observer.*).
	Observer Observer
	// Fsync makes every batch durable with fdatasync(2) before the Record
	// calls in it return (file sinks; ignored by writer sinks). Without it
	// a Record returns once write(2) has handed the batch to the kernel:
	// the event survives a crash of the proxy, not of the machine.
	Fsync bool
	// MaxBatchBytes and MaxBatchEvents bound one batch, that is one
	// write(2). A batch that reached either bound takes no more events;
	// Record then waits for the writer to take it (backpressure). At most
	// two batches exist at a time, one being written and one filling, so
	// a sink holds at most about 2 * MaxBatchBytes (plus one event, or one
	// RecordBatch group, which is never split) of encoded events.
	// Defaults: DefaultMaxBatchBytes, DefaultMaxBatchEvents.
	MaxBatchBytes  int
	MaxBatchEvents int
	// Now is the clock for events without a Time; time.Now when nil.
	Now func() time.Time
	// Connections is the number of connections that may be open at once
	// (limits.max_connections): the encoder keeps the encoded constant
	// fields of that many connections (see Encoder.SetConnections).
	// Zero: a default for a few thousand.
	Connections int
	// MaxDelay enables Enqueue: events queued with it are written with
	// the next batch that a Record waits for, or at the latest MaxDelay
	// after they were queued. Zero: Enqueue queues nothing, every event
	// is recorded with a wait.
	MaxDelay time.Duration
}

// Stats counts a sink's work since it was built.
type Stats struct {
	Seq           uint64 // last sequence number assigned
	Events        uint64 // events in batches written successfully
	Batches       uint64 // batches written successfully
	Writes        uint64 // write calls, one per batch (failed ones included)
	Bytes         uint64 // bytes written by successful batches
	Syncs         uint64 // fdatasync calls
	FailedBatches uint64 // batches whose write or fdatasync failed
	FailedEvents  uint64 // events in failed batches: their Record returned an error
}

// EventsPerWrite is the mean number of events per write(2): the effect of
// group commit.
func (s Stats) EventsPerWrite() float64 {
	if s.Writes == 0 {
		return 0
	}
	return float64(s.Events+s.FailedEvents) / float64(s.Writes)
}

// Sink is a Recorder that writes JSON lines to a file (OpenFile) or a
// stream (NewWriter) with group commit: concurrent Record calls are encoded
// into one batch, in the order of their sequence numbers, and the batch is
// written with a single write call (and fdatasync with Options.Fsync).
// Every Record returns after its batch was written, or with the error that
// prevented it.
//
// There is no writer goroutine: the caller that finds no write in progress
// writes its batch itself (the leader), so an uncontended Record costs no
// goroutine hand-off at all. Callers that arrive during a write queue their
// events in the next batch and wait; when the leader is done, it hands the
// next batch to one of its callers, which writes it and hands on in turn.
// One write at a time, batches in sequence order: file order is sequence
// order.
//
// A failed batch (write error, short write, fdatasync error) fails every
// Record in it, and no other. It is not retried: its callers deny their
// operations, so its events, which may say "allowed", must not appear
// later. What the failed write left in the file is removed: the file is
// truncated back to the length it had before the batch (file sinks). When
// that is impossible (a stream, or truncate fails), the next batch starts
// with a newline, so the torn line stays a line of its own and the next
// event starts on a fresh line. The sequence numbers of a failed batch are
// never reused, and the next batch that succeeds carries an
// ActionAuditFailure event naming them (conduit.audit.*), so the gap in
// event.sequence is explained in the trail itself.
type Sink struct {
	enc       *Encoder
	now       func() time.Time
	fsync     bool
	maxBytes  int
	maxEvents int
	name      string // file path or "writer", for errors

	// mu orders events: it guards the sequence number and the filling
	// batch, so file order is sequence order.
	mu      sync.Mutex
	seq     uint64
	cur     *batch
	spare   []byte     // the buffer of the last written batch, for reuse
	lost    *lostRange // failed events not yet reported by a notice
	closed  bool
	writing bool      // a batch is being written (or handed to its writer)
	idle    sync.Cond // signalled when writing becomes false (Close waits)

	// wmu guards the target: the writer holds it for a commit, Reopen and
	// Close to swap or close the target.
	wmu    sync.Mutex
	t      target
	torn   bool // the target ends in a partial line: start the next write with '\n'
	reopen func() (target, error)

	// Deferred events (Enqueue): maxDelay bounds their wait in s.cur;
	// the timer is armed while s.cur holds deferred events that no
	// writer will take, due is set when it fired during a write (the
	// writer then writes s.cur at once), failing while the last write
	// failed (Enqueue refuses until one succeeds).
	maxDelay time.Duration
	timer    *time.Timer
	armed    bool
	due      bool
	failing  bool

	closeOnce sync.Once
	closeErr  error

	stats struct {
		events, batches, writes, bytes, syncs, failedBatches, failedEvents atomic.Uint64
	}
}

// target is where a sink's batches go.
type target interface {
	Write(p []byte) (int, error)
	// Sync makes what was written durable.
	Sync() error
	// Rollback removes the last n bytes written (a failed batch), or says
	// why it cannot.
	Rollback(n int) error
	// EndsTorn reports whether what is already there ends in a partial
	// line.
	EndsTorn() (bool, error)
	Close() error
}

// batch is a group of encoded events written with one write call.
type batch struct {
	// buf holds the encoded events after a reserved first byte, '\n',
	// which is written only when the target ends in a torn line.
	buf    []byte
	events int // events from Record callers
	total  int // all events, the notice included
	first  uint64
	last   uint64
	notice *lostRange // the loss this batch's ActionAuditFailure event reports
	err    error

	// The channels are made (under Sink.mu, while the batch is filling)
	// only for callers that wait: an uncontended Record needs none.
	taken chan struct{} // closed when the batch stops filling (a full queue waits for it)
	lead  chan struct{} // one token: the waiting caller that receives it writes the batch
	done  chan struct{} // closed when err is final
}

// initialBatchCap is the first capacity of a batch buffer; buffers grow as
// needed and are reused, so this only saves the first few reallocations.
const initialBatchCap = 64 << 10

func newSink(t target, name string, opts Options) *Sink {
	s := &Sink{
		enc:       NewEncoder(opts.Observer),
		now:       opts.Now,
		fsync:     opts.Fsync,
		maxBytes:  opts.MaxBatchBytes,
		maxEvents: opts.MaxBatchEvents,
		maxDelay:  opts.MaxDelay,
		name:      name,
		t:         t,
	}
	s.enc.SetConnections(opts.Connections)
	if s.maxDelay > 0 {
		s.timer = time.AfterFunc(time.Hour, s.flushDeferred)
		s.timer.Stop()
	}
	s.idle.L = &s.mu
	if s.now == nil {
		s.now = time.Now
	}
	if s.maxBytes <= 0 {
		s.maxBytes = DefaultMaxBatchBytes
	}
	if s.maxEvents <= 0 {
		s.maxEvents = DefaultMaxBatchEvents
	}
	s.cur = s.newBatchLocked()
	return s
}

// NewWriter returns a Sink writing to w, typically os.Stdout for the demo.
// Options.Fsync is ignored, Reopen does nothing and Close does not close w.
// A failed write cannot be taken back from a stream: the next batch starts
// with a newline instead (see Sink).
func NewWriter(w io.Writer, opts Options) *Sink {
	s := newSink(writerTarget{w}, "writer", opts)
	s.fsync = false
	return s
}

// Record writes ev and returns when it is written (see Sink). It assigns
// ev.Seq and, when zero, ev.Time. An error means the event is not in the
// trail: the caller must deny the operation.
func (s *Sink) Record(ev *Event) error {
	return s.RecordContext(context.Background(), ev)
}

// RecordContext is Record with a bound on the wait for room in a full
// queue (backpressure). ctx is consulted only before the event is queued:
// once it has a sequence number it is written, and RecordContext waits for
// the outcome, so that an event in the trail is never one whose caller was
// told it failed (or the reverse).
func (s *Sink) RecordContext(ctx context.Context, ev *Event) error {
	evs, errs := [1]*Event{ev}, [1]error{}
	s.record(ctx, evs[:], errs[:])
	return errs[0]
}

// RecordBatch records evs in this order, in one batch (a group is never
// split across two writes), and returns when the batch was written: errs[i]
// is the outcome of evs[i] (len(errs) must be len(evs)). Every event that
// was encoded shares the batch's outcome; an event that could not be
// encoded has its own error and is not in the trail. One wait instead of
// len(evs): the proxy records the events of a pipelined burst of requests
// together.
func (s *Sink) RecordBatch(evs []*Event, errs []error) {
	s.record(context.Background(), evs, errs)
}

func (s *Sink) record(ctx context.Context, evs []*Event, errs []error) {
	s.mu.Lock()
	if s.closed || s.full(s.cur) {
		if !s.waitRoomLocked(ctx, errs) {
			return
		}
	}
	b := s.cur
	if s.lost != nil {
		s.appendNoticeLocked(b)
	}
	queued := 0
	for i, ev := range evs {
		errs[i] = s.appendLocked(b, ev)
		if errs[i] == nil {
			queued++
		}
	}
	b.events += queued
	// The notice may be queued even if no event could be encoded: it must
	// be written all the same.
	lead := !s.writing && b.total > 0
	if lead {
		s.takeLocked()
	} else if queued > 0 && b.done == nil {
		b.done, b.lead = make(chan struct{}), make(chan struct{}, 1)
	}
	s.mu.Unlock()
	switch {
	case lead:
		closeIf(b.taken)
		s.write(b)
	case queued > 0:
		select {
		case <-b.done:
		case <-b.lead:
			s.write(b)
		}
	default:
		return
	}
	for i := range errs {
		if errs[i] == nil {
			errs[i] = b.err
		}
	}
}

// Enqueue queues evs, in this order, without waiting for their write: they
// get their sequence numbers now, and are written with the next batch that
// a Record waits for, or at the latest Options.MaxDelay later. errs[i]
// (len(errs) == len(evs)) is set when evs[i] could not be encoded: it is
// not in the trail. It returns false, having queued nothing, when it
// cannot promise that: MaxDelay is zero, the sink is closed, its last
// write failed, or the queue is full; the caller then records the events
// with RecordBatch and waits.
//
// A queued event whose write fails later is reported like any failed
// event, by the ActionAuditFailure event of the next batch that succeeds;
// what the caller did meanwhile cannot be undone. The proxy queues events
// only for operations it may carry out before their record is written
// (allowed reads): an allowed write always waits.
func (s *Sink) Enqueue(evs []*Event, errs []error) bool {
	if s.maxDelay <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.failing || s.lost != nil || s.full(s.cur) {
		return false
	}
	b := s.cur
	for i, ev := range evs {
		errs[i] = s.appendLocked(b, ev)
	}
	if !s.armed && !s.due && b.total > 0 {
		s.armed = true
		s.timer.Reset(s.maxDelay)
	}
	return true
}

// flushDeferred writes the queued events when their time is up: at once if
// no batch is being written, else by the writer when its write is done.
func (s *Sink) flushDeferred() {
	s.mu.Lock()
	s.armed = false
	if s.closed || s.cur.total == 0 {
		s.mu.Unlock()
		return
	}
	if s.writing {
		s.due = true
		s.mu.Unlock()
		return
	}
	if s.lost != nil {
		s.appendNoticeLocked(s.cur)
	}
	b := s.takeLocked()
	s.mu.Unlock()
	closeIf(b.taken)
	s.write(b)
}

// takeLocked makes the caller the writer of the filling batch, which it
// returns, and starts a new one.
func (s *Sink) takeLocked() *batch {
	b := s.cur
	s.writing = true
	s.cur = s.newBatchLocked()
	s.due = false
	return b
}

// waitRoomLocked waits, s.mu held, until the batch being filled has room
// or the sink is closed or ctx ends; false: it filled errs and released
// s.mu. It is a function of its own, not inlined into record, whose stack
// frame stays small for the goroutine reading a connection (see
// commitFailed).
//
//go:noinline
func (s *Sink) waitRoomLocked(ctx context.Context, errs []error) bool {
	for {
		if s.closed {
			s.mu.Unlock()
			for i := range errs {
				errs[i] = ErrClosed
			}
			return false
		}
		if !s.full(s.cur) {
			return true
		}
		if s.cur.taken == nil {
			s.cur.taken = make(chan struct{})
		}
		taken := s.cur.taken
		s.mu.Unlock()
		select {
		case <-taken:
		case <-ctx.Done():
			for i := range errs {
				errs[i] = fmt.Errorf("audit: %s: queue full: %w", s.name, ctx.Err())
			}
			return false
		}
		s.mu.Lock()
	}
}

func (s *Sink) full(b *batch) bool {
	return b.total >= s.maxEvents || len(b.buf)-1 >= s.maxBytes
}

// appendLocked gives ev the next sequence number and encodes it into b.
func (s *Sink) appendLocked(b *batch, ev *Event) error {
	s.seq++
	ev.Seq = s.seq
	if ev.Time.IsZero() {
		ev.Time = s.now()
	}
	n := len(b.buf)
	buf, err := s.enc.AppendEvent(b.buf, ev)
	if err != nil {
		// Nothing of it is in the batch: take the number back.
		s.seq--
		ev.Seq = 0
		b.buf = buf[:n]
		return fmt.Errorf("audit: encode: %w", err)
	}
	b.buf = buf
	if b.first == 0 {
		b.first = s.seq
	}
	b.last = s.seq
	b.total++
	return nil
}

// appendNoticeLocked moves the unreported loss into an ActionAuditFailure
// event in b. If b fails too, its writer puts the loss back (write).
func (s *Sink) appendNoticeLocked(b *batch) {
	l := s.lost
	ev := &Event{Action: ActionAuditFailure, Outcome: OutcomeFailure, Reason: l.Reason, lost: l}
	if s.appendLocked(b, ev) == nil {
		s.lost = nil
		// A batch can carry two notices when a batch failed while it was
		// filling; if it fails, both losses are unreported again.
		if b.notice != nil {
			m := *l
			m.merge(b.notice)
			l = &m
		}
		b.notice = l
	}
}

func (s *Sink) newBatchLocked() *batch {
	buf := s.spare
	s.spare = nil
	if buf == nil {
		buf = make([]byte, 1, initialBatchCap)
	}
	buf = buf[:1]
	buf[0] = '\n'
	return &batch{buf: buf}
}

func closeIf(ch chan struct{}) {
	if ch != nil {
		close(ch)
	}
}

// write writes b, which its caller took from s.cur with s.writing set, and
// reports the result to the batch's callers. Then, if events queued up in
// the meantime, it takes their batch and hands it to one of its callers
// (who are waiting for it anyway), or writes it itself when no caller
// waits for it (a notice alone); otherwise it clears s.writing.
func (s *Sink) write(b *batch) {
	for {
		err := s.commit(b)

		s.mu.Lock()
		s.failing = err != nil
		if err != nil {
			l := lostRange{First: b.first, Last: b.last, Count: uint64(b.total), Reason: err.Error()}
			l.merge(b.notice) // the notice was lost too: its loss is still unreported
			l.merge(s.lost)
			s.lost = &l
		}
		// Keep the buffer for the next batch unless one huge event grew it.
		if cap(b.buf) <= 2*s.maxBytes+initialBatchCap {
			s.spare = b.buf
		}
		b.buf = nil
		next := s.cur
		switch {
		case next.total == 0 || next.events == 0 && next.notice == nil && s.lost == nil && !s.due && !s.full(next):
			// Nothing queued, or deferred events only, whose timer is
			// armed: they wait for the next Record or the timer.
			next = nil
			s.writing = false
			s.idle.Broadcast()
		default:
			if s.lost != nil {
				// The loss rides with the next batch: its callers
				// appended their events before this one failed, and
				// a batch of deferred events alone has no caller.
				s.appendNoticeLocked(next)
			}
			s.takeLocked()
		}
		s.mu.Unlock()

		// b and next are no longer filling: their channels are final.
		b.err = err
		if next == nil {
			closeIf(b.done)
			return
		}
		closeIf(next.taken)
		if next.events > 0 {
			// Its callers wait (they made next.lead): one of them
			// writes it. The send never blocks: it is the one token.
			next.lead <- struct{}{}
			closeIf(b.done)
			return
		}
		closeIf(b.done)
		b = next
	}
}

func (l *lostRange) merge(o *lostRange) {
	if o == nil {
		return
	}
	l.First = min(l.First, o.First)
	l.Last = max(l.Last, o.Last)
	l.Count += o.Count
}

// commit writes b to the target; see Sink for what a failure leaves.
func (s *Sink) commit(b *batch) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.stats.writes.Add(1)
	if s.t == nil {
		s.fail(b)
		return ErrClosed
	}
	if err := s.replaceUnlinkedLocked(); err != nil {
		return s.recreateFailed(b, err)
	}
	data := b.buf[1:]
	if s.torn {
		data = b.buf
	}
	n, err := s.t.Write(data)
	if err == nil && n < len(data) {
		err = io.ErrShortWrite
	}
	op := "write"
	if err == nil && s.fsync {
		s.stats.syncs.Add(1)
		op = "fdatasync"
		err = s.t.Sync()
	}
	if err == nil {
		s.torn = false
		s.stats.batches.Add(1)
		s.stats.events.Add(uint64(b.total))
		s.stats.bytes.Add(uint64(len(data)))
		return nil
	}
	return s.commitFailed(b, op, n, len(data), err)
}

// recreateFailed fails b, which could not be written: the file was deleted
// and could not be created again. Not inlined, like commitFailed.
//
//go:noinline
func (s *Sink) recreateFailed(b *batch, err error) error {
	s.fail(b)
	return fmt.Errorf("audit: write %s (sequence %d..%d): %w", s.name, b.first, b.last, err)
}

// commitFailed is commit's failure path: b is failed and what was written
// of it discarded. It is a function of its own, not inlined, to keep
// commit's stack frame small: the request path writes the audit trail on
// the goroutine reading a connection, whose stack stays as large as the
// deepest call it ever made (see proxy.Listener.handle).
//
//go:noinline
func (s *Sink) commitFailed(b *batch, op string, n, size int, err error) error {
	s.fail(b)
	werr := fmt.Errorf("audit: %s %s (sequence %d..%d): %w", op, s.name, b.first, b.last, err)
	if rerr := s.t.Rollback(n); rerr != nil {
		switch {
		case n == 0:
			// nothing written: the target is as it was
		case n < size:
			s.torn = true
		default:
			s.torn = false // all written, newline included; fdatasync failed
		}
		if errors.Is(rerr, errStream) {
			return werr
		}
		return errors.Join(werr, fmt.Errorf("audit: discard failed batch: %w", rerr))
	}
	if n > 0 && s.fsync {
		// Make the truncation durable too, best effort: the batch was
		// never acknowledged, a crash should not bring it back.
		_ = s.t.Sync()
	}
	return werr
}

// replaceUnlinkedLocked creates the file again when it was deleted under
// the sink (rm, a cleanup job): events written to a file without a name
// are gone when it is closed, although every write succeeds. The events
// written since the file was last seen with its name are copied into the
// new file, which then continues the sequence, as after Reopen. If the new
// file cannot be created or the copy fails, the batch fails (its callers
// deny) and the next one tries again. s.wmu is held.
func (s *Sink) replaceUnlinkedLocked() error {
	u, ok := s.t.(interface {
		Unlinked(time.Time) ([]byte, bool, error)
	})
	if !ok || s.reopen == nil {
		return nil
	}
	since, gone, err := u.Unlinked(time.Now())
	if !gone {
		return nil
	}
	if err != nil {
		return fmt.Errorf("the file was deleted; reading back its last events: %w", err)
	}
	t, err := s.reopen()
	if err != nil {
		return fmt.Errorf("the file was deleted and cannot be created again: %w", err)
	}
	torn, err := t.EndsTorn()
	if err == nil && len(since) > 0 {
		data := since
		if torn {
			data = append([]byte{'\n'}, since...)
		}
		var n int
		n, err = t.Write(data)
		if err == nil && n < len(data) {
			err = io.ErrShortWrite
		}
		if err != nil {
			_ = t.Rollback(n)
		}
		torn = s.torn // the copy ends as the old file did
	}
	if err != nil {
		_ = t.Close()
		return fmt.Errorf("the file was deleted and cannot be created again: %w", err)
	}
	old := s.t
	s.t, s.torn = t, torn
	_ = old.Close()
	return nil
}

func (s *Sink) fail(b *batch) {
	s.stats.failedBatches.Add(1)
	s.stats.failedEvents.Add(uint64(b.total))
}

// Reopen reopens the file at the sink's path, for log rotation: after the
// file was renamed, it creates a new one and continues the sequence there.
// Events already queued go to the new file. If the new file cannot be
// opened, the sink keeps writing to the old one and Reopen returns the
// error. For a writer sink Reopen does nothing.
//
// Writes go on while Reopen opens the new file and closes the old one:
// only the swap holds the write lock. Opening may create a directory and
// sync it, and closing may take long: ext4 writes out the delayed
// allocations of a file that was truncated when a descriptor of it is
// closed (auto_da_alloc), and with a busy trail that is hundreds of
// megabytes, during which every audited request would wait.
func (s *Sink) Reopen() error {
	if s.reopen == nil {
		return nil
	}
	t, err := s.reopen()
	if err != nil {
		return fmt.Errorf("audit: reopen %s: %w", s.name, err)
	}
	s.wmu.Lock()
	if s.t == nil {
		s.wmu.Unlock()
		_ = t.Close()
		return ErrClosed
	}
	// Under the lock: no batch of ours is half written to the file (it
	// may be the file we were writing, when it was not renamed).
	torn, err := t.EndsTorn()
	if err != nil {
		s.wmu.Unlock()
		_ = t.Close()
		return fmt.Errorf("audit: reopen %s: %w", s.name, err)
	}
	old := s.t
	s.t, s.torn = t, torn
	s.wmu.Unlock()
	// Every batch written to the old file was already synced when Fsync
	// is set; closing it cannot lose an acknowledged event.
	_ = old.Close()
	return nil
}

// Close writes the events already queued, then closes the file. Record
// returns ErrClosed afterwards. Close is idempotent.
func (s *Sink) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		if s.timer != nil {
			s.timer.Stop()
		}
		// Whatever is queued is written by the writer in progress, which
		// hands on until nothing is left.
		for s.writing {
			s.idle.Wait()
		}
		// A loss not yet reported (the last batch failed) is, now.
		if s.lost != nil {
			s.appendNoticeLocked(s.cur)
		}
		b := s.cur
		if b.total > 0 {
			s.takeLocked()
		}
		s.mu.Unlock()
		if b.total > 0 {
			closeIf(b.taken)
			s.write(b)
		}

		s.wmu.Lock()
		defer s.wmu.Unlock()
		if err := s.t.Close(); err != nil {
			s.closeErr = fmt.Errorf("audit: close %s: %w", s.name, err)
		}
		s.t = nil
	})
	return s.closeErr
}

// Stats returns the sink's counters.
func (s *Sink) Stats() Stats {
	s.mu.Lock()
	seq := s.seq
	s.mu.Unlock()
	return Stats{
		Seq:           seq,
		Events:        s.stats.events.Load(),
		Batches:       s.stats.batches.Load(),
		Writes:        s.stats.writes.Load(),
		Bytes:         s.stats.bytes.Load(),
		Syncs:         s.stats.syncs.Load(),
		FailedBatches: s.stats.failedBatches.Load(),
		FailedEvents:  s.stats.failedEvents.Load(),
	}
}

// writerTarget is a stream: nothing to sync, nothing to take back, and not
// ours to close.
type writerTarget struct{ w io.Writer }

var errStream = errors.New("cannot truncate a stream")

func (t writerTarget) Write(p []byte) (int, error) { return t.w.Write(p) }
func (t writerTarget) Sync() error                 { return nil }
func (t writerTarget) Close() error                { return nil }
func (t writerTarget) EndsTorn() (bool, error)     { return false, nil }
func (t writerTarget) Rollback(n int) error {
	if n == 0 {
		return nil
	}
	return errStream
}

var (
	_ BatchRecorder = (*Sink)(nil)
	_ Enqueuer      = (*Sink)(nil)
)
