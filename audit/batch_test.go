package audit_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/audit/audittest"
)

// Tests of RecordBatch and of the leader-based group commit (no writer
// goroutine: the caller that finds no write in progress writes).

func TestRecordBatchOneWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	evs := make([]*audit.Event, 10)
	for i := range evs {
		evs[i] = modbusWrite()
		evs[i].DecisionID = decisionID(0, i)
	}
	errs := make([]error, len(evs))
	s.RecordBatch(evs, errs)
	for i, err := range errs {
		if err != nil || evs[i].Seq != uint64(i+1) {
			t.Fatalf("event %d: sequence %d, %v", i, evs[i].Seq, err)
		}
	}
	if st := s.Stats(); st.Writes != 1 || st.Events != 10 {
		t.Errorf("stats %+v, want the batch in one write", st)
	}
	s.Close()
	recs := readFile(t, path)
	if len(recs) != 10 || audittest.CheckSequence(recs) != nil {
		t.Fatalf("%d events", len(recs))
	}
	for i, r := range recs {
		if r.String("event.id") != decisionID(0, i) {
			t.Errorf("line %d is event %s", i, r.String("event.id"))
		}
	}
}

func TestRecordBatchFailsTogether(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fw := &faultWriter{plan: map[int]fault{2: partialENOSPC}}
	audit.SetFileFaults(s, func(w io.Writer) io.Writer { fw.w = w; return fw }, nil)
	var results []result
	for g := range 3 {
		evs := []*audit.Event{modbusWrite(), modbusWrite(), modbusWrite()}
		errs := make([]error, len(evs))
		s.RecordBatch(evs, errs)
		for i, ev := range evs {
			results = append(results, result{g: g, i: i, seq: ev.Seq, err: errs[i]})
			if (errs[i] != nil) != (g == 1) || (g == 1 && !errors.Is(errs[i], syscall.ENOSPC)) {
				t.Errorf("batch %d event %d: %v", g, i, errs[i])
			}
		}
	}
	s.Close()
	// The failed batch left nothing behind, and the next one says what it
	// lost.
	checkPartition(t, results, readFile(t, path))
}

// TestRecordBatchConcurrentFaults mixes Record and RecordBatch callers with
// failing writes: every caller learns the fate of exactly its events, each
// group has consecutive sequence numbers and one outcome.
func TestRecordBatchConcurrentFaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{MaxBatchEvents: 16})
	if err != nil {
		t.Fatal(err)
	}
	fw := &faultWriter{plan: map[int]fault{3: enospc, 7: partialENOSPC, 8: partialNoErr, 20: enospc}}
	audit.SetFileFaults(s, func(w io.Writer) io.Writer { fw.w = w; return fw }, nil)
	const goroutines, rounds = 8, 100
	var mu sync.Mutex
	var results []result
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for round := range rounds {
				n := 1 + r.IntN(8)
				evs := make([]*audit.Event, n)
				for i := range evs {
					evs[i] = modbusWrite()
					evs[i].DecisionID = decisionID(g, round*8+i)
				}
				errs := make([]error, n)
				if n == 1 && r.IntN(2) == 0 {
					errs[0] = s.Record(evs[0])
				} else {
					s.RecordBatch(evs, errs)
				}
				for i := range evs {
					if evs[i].Seq != evs[0].Seq+uint64(i) || (errs[i] == nil) != (errs[0] == nil) {
						t.Errorf("group of %d: event %d has sequence %d after %d, error %v after %v",
							n, i, evs[i].Seq, evs[0].Seq, errs[i], errs[0])
					}
				}
				mu.Lock()
				for i, ev := range evs {
					results = append(results, result{g: g, i: round*8 + i, seq: ev.Seq, err: errs[i]})
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := s.Record(modbusWrite()); err != nil {
		t.Fatalf("Record after the faults: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readFile(t, path)
	checkPartition(t, results, recs)
	// Events written are the callers' own, in their order.
	bySeq := map[uint64]result{}
	for _, r := range results {
		bySeq[r.seq] = r
	}
	for _, rec := range recs {
		if rec.Action() == audit.ActionAuditFailure {
			continue
		}
		if r, ok := bySeq[rec.Seq()]; ok && rec.String("event.id") != decisionID(r.g, r.i) {
			t.Fatalf("sequence %d holds %s, its caller sent %s", rec.Seq(), rec.String("event.id"), decisionID(r.g, r.i))
		}
	}
	t.Logf("%+v", s.Stats())
}

// TestNoWriterGoroutine: an uncontended Record writes its own batch; the
// sink starts no goroutine but the one that reads its file's inotify
// watch (Linux), which only raises a flag.
func TestNoWriterGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for range 5 {
		if err := s.Record(modbusWrite()); err != nil {
			t.Fatal(err)
		}
	}
	// A short-lived goroutine (the encoder's first build of a
	// connection's fields runs on one) may still be exiting: wait for it,
	// a writer goroutine would stay.
	watch := 0
	if audit.UnlinkWatchActive(s) {
		watch = 1
	}
	n := runtime.NumGoroutine()
	for deadline := time.Now().Add(2 * time.Second); n > before+watch && time.Now().Before(deadline); n = runtime.NumGoroutine() {
		time.Sleep(time.Millisecond)
	}
	if n > before+watch {
		t.Errorf("%d goroutines after OpenFile and Record, %d before (the inotify watch's included)", n, before)
	}
	if st := s.Stats(); st.Writes != 5 {
		t.Errorf("stats %+v: want one write per uncontended Record", st)
	}
}

// TestHandOffWhileBlocked: callers that arrive while the leader is stuck
// in a write queue behind it, and one of them writes their batch when the
// leader is done.
func TestHandOffWhileBlocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	block := &blockingWriter{release: release, started: make(chan struct{}, 100)}
	audit.SetFileFaults(s, func(w io.Writer) io.Writer { block.w = w; return block }, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 33)
	wg.Add(1)
	go func() { defer wg.Done(); errs <- s.Record(modbusWrite()) }()
	<-block.started
	for range 32 {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- s.Record(modbusWrite()) }()
	}
	waitFor(t, func() bool { return s.Stats().Seq == 33 })
	if st := s.Stats(); st.Writes != 1 {
		t.Fatalf("stats %+v while the first write blocks", st)
	}
	// Let every write through from now on.
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Writes != 2 || st.Events != 33 {
		t.Errorf("stats %+v: want the 32 queued events in the second write", st)
	}
	s.Close()
	if recs := readFile(t, path); len(recs) != 33 || audittest.CheckSequence(recs) != nil {
		t.Errorf("%d events", len(recs))
	}
}

// TestCloseReportsLastLoss: a loss with no batch after it is reported by
// Close, so the gap in event.sequence is explained even at the end.
func TestCloseReportsLastLoss(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fw := &faultWriter{plan: map[int]fault{2: enospc}}
	audit.SetFileFaults(s, func(w io.Writer) io.Writer { fw.w = w; return fw }, nil)
	ok, bad := modbusWrite(), modbusWrite()
	if err := s.Record(ok); err != nil {
		t.Fatal(err)
	}
	if err := s.Record(bad); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Record = %v, want ENOSPC", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readFile(t, path)
	checkPartition(t, []result{{seq: ok.Seq}, {seq: bad.Seq, err: errors.New("failed")}}, recs)
	if len(recs) != 2 || recs[1].Action() != audit.ActionAuditFailure {
		t.Errorf("want the event and the failure notice, got %d records", len(recs))
	}
}

func TestMultiRecordBatch(t *testing.T) {
	first := audittest.NewMemory()
	second := audittest.NewMemory()
	failOdd := audittest.RecorderFunc(func(ev *audit.Event) error {
		if ev.ConnID%2 == 1 {
			return audittest.ErrInjected
		}
		return first.Record(ev)
	})
	m := audit.Multi(failOdd, second).(audit.BatchRecorder)
	evs := make([]*audit.Event, 6)
	for i := range evs {
		evs[i] = modbusWrite()
		evs[i].ConnID = uint64(i)
		evs[i].Time = time.Unix(int64(i), 0)
	}
	errs := make([]error, len(evs))
	m.RecordBatch(evs, errs)
	for i, err := range errs {
		if (err != nil) != (i%2 == 1) || (err != nil && !errors.Is(err, audittest.ErrInjected)) {
			t.Errorf("event %d: %v", i, err)
		}
	}
	// What the first recorder refused is not given to the second.
	if first.Len() != 3 || second.Len() != 3 {
		t.Errorf("recorded %d and %d, want 3 and 3", first.Len(), second.Len())
	}
	for _, ev := range second.Events() {
		if ev.ConnID%2 == 1 {
			t.Errorf("the second recorder got event %d", ev.ConnID)
		}
	}
	var none []error = make([]error, 2)
	audit.Multi().(audit.BatchRecorder).RecordBatch([]*audit.Event{modbusWrite(), modbusWrite()}, none)
	if none[0] == nil || none[1] == nil {
		t.Error("an empty Multi recorded a batch")
	}
}

// Reopen without a rotation (the same file, e.g. after a truncation) finds
// the partial line another writer left and starts the next batch on a new
// line.
func TestReopenSameFileTornTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Record(modbusWrite()); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"event":{"sequence":99,"act`)
	f.Close()
	if err := s.Reopen(); err != nil {
		t.Fatal(err)
	}
	ev := modbusWrite()
	if err := s.Record(ev); err != nil {
		t.Fatal(err)
	}
	if err := s.Reopen(); err != nil { // not torn now: no blank line
		t.Fatal(err)
	}
	if err := s.Record(modbusWrite()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	data, _ := os.ReadFile(path)
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	if len(lines) != 4 {
		t.Fatalf("%d lines:\n%s", len(lines), data)
	}
	if _, err := audittest.ParseLine(lines[1]); err == nil {
		t.Error("the torn line parsed")
	}
	for _, i := range []int{0, 2, 3} {
		if _, err := audittest.ParseLine(lines[i]); err != nil {
			t.Errorf("line %d: %v", i+1, err)
		}
	}
}

// brokenWriter fails every write, as standard output does once its reader
// is gone.
type brokenWriter struct{}

func (brokenWriter) Write([]byte) (int, error) { return 0, syscall.EPIPE }

// A tee whose copy fails after the file write succeeded: the caller is
// told recording failed (and refuses the operations), and the file, which
// says "allowed" of them, gets an audit-write-failure event naming their
// sequence numbers — for one event and for a batch.
func TestMultiReportsWhatALaterRecorderFailed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	file, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := audit.Multi(file, audit.NewWriter(brokenWriter{}, audit.Options{}))
	if err := m.Record(modbusWrite()); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("Record = %v, want the copy's broken pipe", err)
	}
	evs := []*audit.Event{modbusWrite(), modbusWrite(), modbusWrite()}
	errs := make([]error, len(evs))
	m.(audit.BatchRecorder).RecordBatch(evs, errs)
	for i, err := range errs {
		if !errors.Is(err, syscall.EPIPE) {
			t.Errorf("batch event %d: %v", i, err)
		}
	}
	if err := file.Close(); err != nil {
		t.Fatal(err)
	}
	recs, err := audittest.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := audittest.CheckSequence(recs); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, r.Action())
	}
	want := []string{"request", "audit-write-failure", "request", "request", "request", "audit-write-failure"}
	if !slices.Equal(got, want) {
		t.Fatalf("file holds %v, want %v", got, want)
	}
	for i, span := range map[int]string{1: "event.sequence 1 of this trail", 5: "event.sequence 3..5 of this trail"} {
		r := recs[i]
		if reason := r.String("event.reason"); !strings.HasPrefix(reason, span) || !strings.Contains(reason, "refused") || !strings.Contains(reason, "broken pipe") {
			t.Errorf("notice %d: reason %q, want it to start with %q, say refused and why", r.Seq(), reason, span)
		}
		if r.String("event.outcome") != "failure" {
			t.Errorf("notice %d: outcome %s", r.Seq(), r.String("event.outcome"))
		}
	}
}
