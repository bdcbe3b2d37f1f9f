package audit_test

import (
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/audit/audittest"
)

func openDeferred(t *testing.T, maxDelay time.Duration) (*audit.Sink, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{MaxDelay: maxDelay})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func enqueue(t *testing.T, s *audit.Sink, evs ...*audit.Event) {
	t.Helper()
	errs := make([]error, len(evs))
	if !s.Enqueue(evs, errs) {
		t.Fatal("Enqueue refused the events")
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestEnqueueOffByDefault(t *testing.T) {
	s, path := openDeferred(t, 0)
	ev := modbusWrite()
	if s.Enqueue([]*audit.Event{ev}, make([]error, 1)) {
		t.Fatal("Enqueue queued an event with MaxDelay 0")
	}
	if ev.Seq != 0 {
		t.Fatalf("refused event got sequence %d", ev.Seq)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(readFile(t, path)); n != 0 {
		t.Fatalf("%d events in the file, want 0", n)
	}
}

// A queued event waits for the next recorded one and goes to the file
// before it, in sequence order.
func TestEnqueueRidesWithNextRecord(t *testing.T) {
	s, path := openDeferred(t, time.Hour)
	a, b := modbusWrite(), modbusWrite()
	a.DecisionID, b.DecisionID = "queued", "recorded"
	enqueue(t, s, a)
	if a.Seq != 1 {
		t.Fatalf("queued event has sequence %d, want 1", a.Seq)
	}
	if n := fileSize(t, path); n != 0 {
		t.Fatalf("the queued event was written at once (%d bytes)", n)
	}
	if err := s.Record(b); err != nil {
		t.Fatal(err)
	}
	recs := readFile(t, path)
	if len(recs) != 2 || recs[0].String("event.id") != "queued" || recs[1].String("event.id") != "recorded" {
		t.Fatalf("file after Record: %v", recs)
	}
	if st := s.Stats(); st.Writes != 1 {
		t.Fatalf("%d writes, want 1 (the queued event rides with the recorded one)", st.Writes)
	}
}

// Without a Record, the timer writes queued events.
func TestEnqueueTimer(t *testing.T) {
	s, path := openDeferred(t, 5*time.Millisecond)
	enqueue(t, s, modbusWrite(), modbusWrite())
	waitFor(t, func() bool { return len(readFile(t, path)) == 2 })
	// And again: the timer re-arms for the next queued events.
	enqueue(t, s, modbusWrite())
	waitFor(t, func() bool { return len(readFile(t, path)) == 3 })
	if err := audittest.CheckSequence(readFile(t, path)); err != nil {
		t.Fatal(err)
	}
}

func TestCloseWritesQueued(t *testing.T) {
	s, path := openDeferred(t, time.Hour)
	enqueue(t, s, modbusWrite(), modbusWrite(), modbusWrite())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(readFile(t, path)); n != 3 {
		t.Fatalf("%d events after Close, want 3", n)
	}
	if s.Enqueue([]*audit.Event{modbusWrite()}, make([]error, 1)) {
		t.Fatal("Enqueue after Close queued an event")
	}
}

// A queued event whose write fails is reported by the next batch's
// ActionAuditFailure event, and Enqueue refuses until a write succeeds
// again: while the trail fails, the caller must record and wait (and deny
// when that fails).
func TestEnqueueFailedWrite(t *testing.T) {
	s, path := openDeferred(t, time.Hour)
	fw := &faultWriter{plan: map[int]fault{1: enospc}}
	audit.SetFileFaults(s, func(w io.Writer) io.Writer { fw.w = w; return fw }, nil)
	q := modbusWrite()
	enqueue(t, s, q)
	if err := s.Record(modbusWrite()); err == nil {
		t.Fatal("Record succeeded on a failing write")
	}
	if s.Enqueue([]*audit.Event{modbusWrite()}, make([]error, 1)) {
		t.Fatal("Enqueue queued an event while the trail is failing")
	}
	if err := s.Record(modbusWrite()); err != nil {
		t.Fatalf("Record after recovery: %v", err)
	}
	enqueue(t, s, modbusWrite())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readFile(t, path)
	if err := audittest.CheckSequence(recs); err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Seq() == q.Seq && r.Action() == "request" {
			t.Fatalf("the failed queued event %d is in the file", q.Seq)
		}
	}
	notes := audittest.Filter(recs, audit.ActionAuditFailure)
	if len(notes) != 1 {
		t.Fatalf("%d %s events, want 1", len(notes), audit.ActionAuditFailure)
	}
	if got := notes[0].Uint("conduit.audit.lost_first_sequence"); got != q.Seq {
		t.Errorf("loss starts at %d, want the queued event %d (%v)", got, q.Seq, notes[0])
	}
	if got := notes[0].Uint("conduit.audit.lost_events"); got != 2 {
		t.Errorf("lost count %d, want 2", got)
	}
}

// A failed write of queued events alone (the timer's) is reported too.
func TestEnqueueTimerWriteFails(t *testing.T) {
	s, path := openDeferred(t, 2*time.Millisecond)
	fw := &faultWriter{plan: map[int]fault{1: enospc}}
	audit.SetFileFaults(s, func(w io.Writer) io.Writer { fw.w = w; return fw }, nil)
	enqueue(t, s, modbusWrite())
	waitFor(t, func() bool { return s.Stats().FailedBatches == 1 })
	if err := s.Record(modbusWrite()); err != nil {
		t.Fatal(err)
	}
	// The notice rides with the next batch: before the event when the
	// loss was known as Record queued it, after it when Record queued it
	// while the failed write was being reported.
	recs := readFile(t, path)
	notes := audittest.Filter(recs, audit.ActionAuditFailure)
	if len(recs) != 2 || len(notes) != 1 || notes[0].Uint("conduit.audit.lost_first_sequence") != 1 {
		t.Fatalf("file: %v", recs)
	}
}

// Recorders and enqueuers at once: every event ends up in the file exactly
// once, in sequence order, none lost.
func TestEnqueueConcurrent(t *testing.T) {
	s, path := openDeferred(t, 200*time.Microsecond)
	const g, n = 8, 300
	var wg sync.WaitGroup
	for i := 0; i < g; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < n; j++ {
				ev := modbusWrite()
				ev.DecisionID = decisionID(i, j)
				if (i+j)%3 == 0 {
					if err := s.Record(ev); err != nil {
						t.Error(err)
					}
					continue
				}
				errs := make([]error, 1)
				if !s.Enqueue([]*audit.Event{ev}, errs) || errs[0] != nil {
					t.Errorf("Enqueue: %v", errs[0])
				}
			}
		}()
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readFile(t, path)
	if err := audittest.CheckSequence(recs); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range recs {
		id := r.String("event.id")
		if seen[id] {
			t.Fatalf("event %s twice", id)
		}
		seen[id] = true
	}
	if len(seen) != g*n {
		t.Fatalf("%d events in the file, want %d", len(seen), g*n)
	}
	if st := s.Stats(); st.FailedEvents != 0 {
		t.Fatalf("stats %+v", st)
	}
}
