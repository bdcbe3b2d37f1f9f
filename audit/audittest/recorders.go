package audittest

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/conduit-ot/conduit/audit"
)

// Memory is a Recorder that keeps every event in memory, in sequence order,
// both as a deep copy of the Event and as the Record a SIEM would decode
// from the line the real encoder writes. Proxy tests assert on either.
// Record assigns Seq and Time like a Sink and never fails (unless the
// encoder produced something other than one JSON line, a bug worth a
// failure).
type Memory struct {
	enc *audit.Encoder

	mu      sync.Mutex
	seq     uint64
	events  []audit.Event
	records []Record
	changed chan struct{} // closed and replaced on every Record
}

// NewMemory returns an empty Memory recorder.
func NewMemory() *Memory {
	return &Memory{
		enc:     audit.NewEncoder(audit.Observer{Hostname: "audittest", Version: "test"}),
		changed: make(chan struct{}),
	}
}

// Record implements audit.Recorder.
func (m *Memory) Record(ev *audit.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	ev.Seq = m.seq
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	line, err := m.enc.AppendEvent(nil, ev)
	if err != nil {
		m.seq--
		return err
	}
	if bytes.Count(line, []byte("\n")) != 1 {
		m.seq--
		return errLine
	}
	rec, err := ParseLine(line)
	if err != nil {
		m.seq--
		return errors.Join(errLine, err)
	}
	m.events = append(m.events, cloneEvent(ev))
	m.records = append(m.records, rec)
	close(m.changed)
	m.changed = make(chan struct{})
	return nil
}

// cloneEvent copies ev so that it survives the decoder reusing the
// Operation's slices (inspect.Operation: "copy to retain").
func cloneEvent(ev *audit.Event) audit.Event {
	c := *ev
	if ev.Op != nil {
		c.Op = ev.Op.Clone()
	}
	if ev.Identity != nil {
		id := *ev.Identity
		c.Identity = &id
	}
	c.Bytes = append([]byte(nil), ev.Bytes...)
	return c
}

// Events returns copies of the recorded events, in order.
func (m *Memory) Events() []audit.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]audit.Event(nil), m.events...)
}

// Records returns the decoded JSON of the recorded events, in order.
func (m *Memory) Records() []Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Record(nil), m.records...)
}

// Len returns the number of recorded events.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.records)
}

// Reset forgets the recorded events; the sequence goes on.
func (m *Memory) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.events, m.records = nil, nil
}

// Wait returns the records once there are at least n, or the context's
// error with the records so far. For proxy tests whose events are recorded
// by connection goroutines.
func (m *Memory) Wait(ctx context.Context, n int) ([]Record, error) {
	for {
		m.mu.Lock()
		if len(m.records) >= n {
			recs := append([]Record(nil), m.records...)
			m.mu.Unlock()
			return recs, nil
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return m.Records(), ctx.Err()
		}
	}
}

// ErrInjected is the error a Failing recorder returns by default.
var ErrInjected = errors.New("audittest: injected audit failure")

// Failing is a Recorder that always fails, to test that the proxy denies
// (fails closed) when the audit trail cannot be written. It keeps copies of
// the events it was asked to record.
type Failing struct {
	err error

	mu       sync.Mutex
	attempts []audit.Event
	calls    atomic.Int64
}

// NewFailing returns a Failing recorder returning err, or ErrInjected when
// err is nil.
func NewFailing(err error) *Failing {
	if err == nil {
		err = ErrInjected
	}
	return &Failing{err: err}
}

// Record implements audit.Recorder: it never writes and always fails.
func (f *Failing) Record(ev *audit.Event) error {
	f.calls.Add(1)
	f.mu.Lock()
	f.attempts = append(f.attempts, cloneEvent(ev))
	f.mu.Unlock()
	return f.err
}

// Calls returns how many times Record was called.
func (f *Failing) Calls() int { return int(f.calls.Load()) }

// Attempts returns copies of the events Record was called with.
func (f *Failing) Attempts() []audit.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]audit.Event(nil), f.attempts...)
}

// RecorderFunc adapts a function to audit.Recorder, e.g. to fail only some
// events.
type RecorderFunc func(ev *audit.Event) error

// Record calls f(ev).
func (f RecorderFunc) Record(ev *audit.Event) error { return f(ev) }

// DiscardForBenchmarks is a Recorder that assigns the sequence number and
// time and encodes the event like a Sink, then throws the line away. It
// exists to measure the proxy without disk I/O; it keeps no audit trail
// and must never be wired into a running proxy.
type DiscardForBenchmarks struct {
	enc *audit.Encoder
	mu  sync.Mutex
	seq uint64
	buf []byte
}

// NewDiscardForBenchmarks returns a DiscardForBenchmarks recorder.
func NewDiscardForBenchmarks() *DiscardForBenchmarks {
	return &DiscardForBenchmarks{enc: audit.NewEncoder(audit.Observer{Hostname: "bench", Version: "bench"})}
}

// Record implements audit.Recorder.
func (d *DiscardForBenchmarks) Record(ev *audit.Event) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.seq++
	ev.Seq = d.seq
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	var err error
	d.buf, err = d.enc.AppendEvent(d.buf[:0], ev)
	return err
}

var (
	_ audit.Recorder = (*Memory)(nil)
	_ audit.Recorder = (*Failing)(nil)
	_ audit.Recorder = RecorderFunc(nil)
	_ audit.Recorder = (*DiscardForBenchmarks)(nil)
)
