package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
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

// result is what one Record call returned.
type result struct {
	g, i int
	seq  uint64
	err  error
}

// recordConcurrently runs goroutines × perG Record calls and returns every
// result. Each event carries its goroutine and index in conduit.connection_id
// and event.id so that the file can be matched against the callers.
func recordConcurrently(t testing.TB, r audit.Recorder, goroutines, perG int) []result {
	t.Helper()
	out := make([]result, goroutines*perG)
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perG; i++ {
				ev := modbusWrite()
				ev.ConnID = uint64(g + 1)
				ev.DecisionID = decisionID(g, i)
				err := r.Record(ev)
				out[g*perG+i] = result{g: g, i: i, seq: ev.Seq, err: err}
			}
		}()
	}
	wg.Wait()
	return out
}

func decisionID(g, i int) string {
	b, _ := json.Marshal([2]int{g, i})
	return string(b)
}

func readFile(t testing.TB, path string) []audittest.Record {
	t.Helper()
	recs, err := audittest.ReadFile(path)
	if err != nil {
		t.Fatalf("audit file is not clean JSON lines: %v", err)
	}
	return recs
}

func TestFileConcurrentSequence(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "dir")
	path := filepath.Join(dir, "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{Observer: testObserver})
	if err != nil {
		t.Fatal(err)
	}
	const goroutines, perG = 16, 1000
	results := recordConcurrently(t, s, goroutines, perG)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if r.err != nil {
			t.Fatalf("Record(g=%d, i=%d): %v", r.g, r.i, r.err)
		}
	}

	recs := readFile(t, path)
	if len(recs) != goroutines*perG {
		t.Fatalf("file has %d events, want %d", len(recs), goroutines*perG)
	}
	if err := audittest.CheckSequence(recs); err != nil {
		t.Fatal(err)
	}
	// File order is sequence order, the sequence has no gap, and each
	// line is the event its caller was given that sequence number for.
	bySeq := make(map[uint64]result, len(results))
	for _, r := range results {
		bySeq[r.seq] = r
	}
	for n, rec := range recs {
		if rec.Seq() != uint64(n+1) {
			t.Fatalf("line %d has sequence %d", n+1, rec.Seq())
		}
		r := bySeq[rec.Seq()]
		if rec.String("event.id") != decisionID(r.g, r.i) {
			t.Fatalf("sequence %d: event.id %s, caller got it for %s", rec.Seq(), rec.String("event.id"), decisionID(r.g, r.i))
		}
	}
	// Each goroutine's events are in its own order.
	last := make([]uint64, goroutines)
	for _, r := range results {
		if r.seq <= last[r.g] {
			t.Fatalf("goroutine %d: sequence %d after %d", r.g, r.seq, last[r.g])
		}
		last[r.g] = r.seq
	}

	st := s.Stats()
	if st.Events != goroutines*perG || st.Seq != goroutines*perG || st.FailedEvents != 0 {
		t.Errorf("stats %+v", st)
	}
	if st.Writes >= st.Events {
		t.Errorf("no group commit: %d writes for %d events", st.Writes, st.Events)
	}
	t.Logf("%d events in %d writes (%.1f per write)", st.Events, st.Writes, st.EventsPerWrite())

	assertMode(t, path, 0o600)
	assertMode(t, dir, 0o700|os.ModeDir)
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode() & (os.ModePerm | os.ModeDir); got != want {
		t.Errorf("%s: mode %v, want %v", path, got, want)
	}
}

func TestFileFsync(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{Fsync: true})
	if err != nil {
		t.Fatal(err)
	}
	var syncs int
	var mu sync.Mutex
	audit.SetFileFaults(s, nil, func(real func() error) error {
		mu.Lock()
		syncs++
		mu.Unlock()
		return real()
	})
	results := recordConcurrently(t, s, 8, 100)
	for _, r := range results {
		if r.err != nil {
			t.Fatal(r.err)
		}
	}
	st := s.Stats()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if st.Syncs == 0 || st.Syncs != st.Writes || int(st.Syncs) != syncs {
		t.Errorf("fdatasync calls: stats %d, observed %d, writes %d", st.Syncs, syncs, st.Writes)
	}
	if recs := readFile(t, path); len(recs) != 800 {
		t.Errorf("%d events, want 800", len(recs))
	}
}

func TestDevFullENOSPC(t *testing.T) {
	s, err := audit.OpenFile("/dev/full", audit.Options{})
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer s.Close()
	for i := 0; i < 3; i++ {
		ev := modbusWrite()
		err := s.Record(ev)
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Record on /dev/full = %v, want ENOSPC", err)
		}
	}
	if st := s.Stats(); st.FailedBatches != 3 || st.Events != 0 {
		t.Errorf("stats %+v", st)
	}
}

// fault is what faultWriter does to one write call.
type fault int

const (
	pass          fault = iota
	enospc              // write nothing, fail with ENOSPC
	partialENOSPC       // write half the batch, then fail with ENOSPC
	partialNoErr        // write half the batch and report it without error
)

// faultWriter applies a planned fault to chosen write calls (1-based).
type faultWriter struct {
	w    io.Writer
	mu   sync.Mutex
	call int
	plan map[int]fault
}

func (f *faultWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	f.call++
	ft := f.plan[f.call]
	f.mu.Unlock()
	switch ft {
	case enospc:
		return 0, syscall.ENOSPC
	case partialENOSPC:
		n, err := f.w.Write(p[:len(p)/2])
		if err != nil {
			return n, err
		}
		return n, syscall.ENOSPC
	case partialNoErr:
		return f.w.Write(p[:len(p)/2])
	}
	return f.w.Write(p)
}

// checkPartition verifies that the callers told of a failure are exactly
// the events missing from the trail, and that the trail explains the gap.
func checkPartition(t *testing.T, results []result, recs []audittest.Record) {
	t.Helper()
	if err := audittest.CheckSequence(recs); err != nil {
		t.Fatal(err)
	}
	inFile := make(map[uint64]bool)
	var lostCount uint64
	var lostSeqs []uint64
	for _, r := range recs {
		inFile[r.Seq()] = true
		if r.Action() == audit.ActionAuditFailure {
			lostCount += r.Uint("conduit.audit.lost_events")
			first, last := r.Uint("conduit.audit.lost_first_sequence"), r.Uint("conduit.audit.lost_last_sequence")
			for s := first; s <= last; s++ {
				lostSeqs = append(lostSeqs, s)
			}
			if r.String("event.reason") == "" {
				t.Errorf("audit failure event without reason")
			}
		}
	}
	failed := 0
	var failedSeqs []uint64
	for _, r := range results {
		switch {
		case r.err == nil && !inFile[r.seq]:
			t.Errorf("sequence %d: Record succeeded but the event is not in the file", r.seq)
		case r.err != nil && inFile[r.seq]:
			t.Errorf("sequence %d: Record failed (%v) but the event is in the file", r.seq, r.err)
		case r.err != nil:
			failed++
			failedSeqs = append(failedSeqs, r.seq)
		}
	}
	if failed == 0 {
		t.Fatalf("no Record failed: the fault was not injected")
	}
	// Every sequence number is accounted for: in the file, or reported
	// lost by an audit-write-failure event.
	max := recs[len(recs)-1].Seq()
	lost := make(map[uint64]bool)
	for _, s := range lostSeqs {
		lost[s] = true
	}
	for s := uint64(1); s <= max; s++ {
		if !inFile[s] && !lost[s] {
			t.Errorf("sequence %d is neither in the file nor reported lost", s)
		}
	}
	for _, s := range failedSeqs {
		if !lost[s] {
			t.Errorf("failed sequence %d not reported lost", s)
		}
	}
	if lostCount < uint64(failed) {
		t.Errorf("reported %d lost events, %d Record calls failed", lostCount, failed)
	}
}

func TestFileWriteFaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		plan map[int]fault
		is   error
	}{
		{"enospc", map[int]fault{3: enospc}, syscall.ENOSPC},
		{"short write with error", map[int]fault{3: partialENOSPC}, syscall.ENOSPC},
		{"short write without error", map[int]fault{3: partialNoErr}, io.ErrShortWrite},
		{"consecutive failures", map[int]fault{3: partialENOSPC, 4: enospc, 5: partialNoErr}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			s, err := audit.OpenFile(path, audit.Options{})
			if err != nil {
				t.Fatal(err)
			}
			fw := &faultWriter{plan: tc.plan}
			audit.SetFileFaults(s, func(w io.Writer) io.Writer { fw.w = w; return fw }, nil)
			results := recordConcurrently(t, s, 8, 200)
			// The writer has recovered: a further event succeeds.
			if err := s.Record(modbusWrite()); err != nil {
				t.Fatalf("Record after recovery: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			for _, r := range results {
				if r.err != nil && tc.is != nil && !errors.Is(r.err, tc.is) {
					t.Errorf("Record error %v, want %v", r.err, tc.is)
				}
			}
			recs := readFile(t, path) // strict: no torn line left behind
			checkPartition(t, results, recs)
			st := s.Stats()
			if st.FailedBatches != uint64(len(tc.plan)) {
				t.Errorf("failed batches %d, want %d", st.FailedBatches, len(tc.plan))
			}
			if n := len(audittest.Filter(recs, audit.ActionAuditFailure)); n == 0 {
				t.Errorf("no %s event", audit.ActionAuditFailure)
			}
		})
	}
}

func TestFileFsyncFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{Fsync: true})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := 0
	audit.SetFileFaults(s, nil, func(real func() error) error {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n == 2 {
			return syscall.EIO
		}
		return real()
	})
	results := recordConcurrently(t, s, 4, 50)
	if err := s.Record(modbusWrite()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, r := range results {
		if r.err != nil && !errors.Is(r.err, syscall.EIO) {
			t.Errorf("Record error %v, want EIO", r.err)
		}
	}
	// The batch whose fdatasync failed was written, then truncated away.
	checkPartition(t, results, readFile(t, path))
}

func TestFileClosedUnderSink(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ok := modbusWrite()
	if err := s.Record(ok); err != nil {
		t.Fatal(err)
	}
	if err := audit.CloseFileUnderSink(s); err != nil {
		t.Fatal(err)
	}
	bad := modbusWrite()
	if err := s.Record(bad); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Record on a closed file = %v, want os.ErrClosed", err)
	}
	if err := s.Reopen(); err != nil {
		t.Fatal(err)
	}
	again := modbusWrite()
	if err := s.Record(again); err != nil {
		t.Fatalf("Record after Reopen: %v", err)
	}
	s.Close()
	recs := readFile(t, path)
	checkPartition(t, []result{{seq: ok.Seq}, {seq: bad.Seq, err: errors.New("failed")}, {seq: again.Seq}}, recs)
	if len(recs) != 3 || recs[1].Action() != audit.ActionAuditFailure || recs[1].Uint("conduit.audit.lost_first_sequence") != bad.Seq {
		t.Errorf("want event, failure notice for %d, event; got %v", bad.Seq, recs)
	}
}

// TestWriterTornLine covers the case where a failed write cannot be taken
// back (a stream): the next batch starts with a newline, so exactly one
// line, the torn one, is not JSON, and every acknowledged event is intact.
func TestWriterTornLine(t *testing.T) {
	var out bytes.Buffer
	fw := &faultWriter{w: &out, plan: map[int]fault{2: partialENOSPC}}
	s := audit.NewWriter(fw, audit.Options{})
	var results []result
	for i := 0; i < 5; i++ {
		ev := modbusWrite()
		err := s.Record(ev)
		results = append(results, result{i: i, seq: ev.Seq, err: err})
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if results[1].err == nil {
		t.Fatal("second Record did not fail")
	}
	lines := bytes.Split(bytes.TrimSuffix(out.Bytes(), []byte("\n")), []byte("\n"))
	var recs []audittest.Record
	torn := 0
	for _, l := range lines {
		rec, err := audittest.ParseLine(l)
		if err != nil {
			torn++
			continue
		}
		recs = append(recs, rec)
	}
	if torn != 1 {
		t.Fatalf("%d torn lines, want 1:\n%s", torn, out.Bytes())
	}
	checkPartition(t, results, recs)
}

func TestReopenAfterRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var errs []error
	var mu sync.Mutex
	// Keep recording while the file is rotated.
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := s.Record(modbusWrite()); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	waitFor(t, func() bool { return s.Stats().Seq >= 50 })
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond) // some events still go to the renamed file
	if err := s.Reopen(); err != nil {
		t.Fatal(err)
	}
	reopened := s.Stats().Seq
	waitFor(t, func() bool { return s.Stats().Seq >= reopened+50 })
	close(stop)
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if len(errs) > 0 {
		t.Fatalf("Record errors: %v", errs[0])
	}
	old, cur := readFile(t, rotated), readFile(t, path)
	if len(old) == 0 || len(cur) == 0 {
		t.Fatalf("old file %d events, new file %d", len(old), len(cur))
	}
	all := append(old, cur...)
	if err := audittest.CheckSequence(all); err != nil {
		t.Fatal(err)
	}
	if first, last := cur[0].Seq(), old[len(old)-1].Seq(); first != last+1 {
		t.Errorf("new file starts at %d, old ended at %d", first, last)
	}
	if got := uint64(len(all)); all[len(all)-1].Seq() != got {
		t.Errorf("%d events, last sequence %d", got, all[len(all)-1].Seq())
	}
	assertMode(t, path, 0o600)
}

func TestCloseFlushesPending(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The first write blocks, so the queue fills while Close is called.
	release := make(chan struct{})
	block := &blockingWriter{release: release, started: make(chan struct{}, 1)}
	audit.SetFileFaults(s, func(w io.Writer) io.Writer { block.w = w; return block }, nil)
	var wg sync.WaitGroup
	results := make([]result, 64)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev := modbusWrite()
			err := s.Record(ev)
			results[i] = result{i: i, seq: ev.Seq, err: err}
		}()
	}
	<-block.started
	waitFor(t, func() bool { return s.Stats().Seq >= 10 })
	closed := make(chan error)
	go func() { closed <- s.Close() }()
	time.Sleep(5 * time.Millisecond) // Close is waiting for the writer
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	recs := readFile(t, path)
	inFile := map[uint64]bool{}
	for _, r := range recs {
		inFile[r.Seq()] = true
	}
	written := 0
	for _, r := range results {
		switch {
		case r.err == nil:
			written++
			if !inFile[r.seq] {
				t.Errorf("acknowledged event %d missing after Close", r.seq)
			}
		case errors.Is(r.err, audit.ErrClosed):
			if r.seq != 0 {
				t.Errorf("refused event got sequence %d", r.seq)
			}
		default:
			t.Errorf("Record: %v", r.err)
		}
	}
	if written != len(recs) || written < 10 {
		t.Errorf("%d acknowledged, %d in file", written, len(recs))
	}
	if err := s.Record(modbusWrite()); !errors.Is(err, audit.ErrClosed) {
		t.Errorf("Record after Close = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestResumeSequence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	for round := 0; round < 2; round++ {
		s, err := audit.OpenFile(path, audit.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 10; i++ {
			if err := s.Record(modbusWrite()); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
	}
	recs := readFile(t, path)
	if err := audittest.CheckSequence(recs); err != nil || recs[19].Seq() != 20 {
		t.Fatalf("after restart: %v, last %d", err, recs[len(recs)-1].Seq())
	}

	// A torn tail (the machine stopped mid-write): the next event starts
	// on a new line and the sequence continues after the last whole event.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"event":{"sequence":21,"act`)
	f.Close()
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ev := modbusWrite()
	if err := s.Record(ev); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if ev.Seq != 21 {
		t.Errorf("sequence after torn tail %d, want 21", ev.Seq)
	}
	data, _ := os.ReadFile(path)
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	if len(lines) != 22 {
		t.Fatalf("%d lines, want 22", len(lines))
	}
	if _, err := audittest.ParseLine(lines[20]); err == nil {
		t.Errorf("torn line parsed")
	}
	if rec, err := audittest.ParseLine(lines[21]); err != nil || rec.Seq() != 21 {
		t.Errorf("line after torn line: %v", err)
	}

	// A non-empty file without any event is refused, not appended to
	// with a restarted sequence.
	junk := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(junk, []byte("not an audit file\n"), 0o600)
	if _, err := audit.OpenFile(junk, audit.Options{}); err == nil {
		t.Error("OpenFile accepted a file without events")
	}
}

// The audit file deleted under a running sink (rm, a cleanup job): every
// write to the unlinked file succeeded, so traffic went on while its events
// went to a file nobody could read and that vanished at close. The sink
// notices the deletion through an inotify watch (and, failing that, a
// link-count check at most every 50 ms), creates the file again and
// copies into it what was written since the last check found the file
// linked, so the sequence continues without a gap; if the file cannot be
// created (a file stands where its directory was), the batch fails.
func TestFileDeletedUnderSink(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the link count is read on Linux")
	}
	dir := filepath.Join(t.TempDir(), "audit")
	path := filepath.Join(dir, "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	audit.SetUnlinkCheck(s, time.Hour) // the watch alone
	record := func(want uint64) {
		t.Helper()
		ev := modbusWrite()
		if err := s.Record(ev); err != nil || ev.Seq != want {
			t.Fatalf("event %d: seq %d, %v", want, ev.Seq, err)
		}
	}
	seqs := func() []uint64 {
		t.Helper()
		var out []uint64
		for _, r := range readFile(t, path) {
			out = append(out, r.Seq())
		}
		return out
	}
	for i := uint64(1); i <= 3; i++ {
		record(i) // the first batch checks: linked, empty
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return audit.UnlinkNoticed(s) })
	record(4)
	if got := seqs(); !slices.Equal(got, []uint64{1, 2, 3, 4}) {
		t.Fatalf("after the deletion the file holds events %v, want 1-4 (those written since the last check, and the new one)", got)
	}
	assertMode(t, path, 0o600)

	// Deleted again, and its directory replaced by a file: nowhere to
	// write, so the event fails and its caller denies; so does the next.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return audit.UnlinkNoticed(s) })
	for range 2 {
		if err := s.Record(modbusWrite()); err == nil || !strings.Contains(err.Error(), "deleted") {
			t.Fatalf("Record with the file deleted and no way to create it: %v", err)
		}
	}
	// The directory is back: the next batch creates the file, with the
	// events of the file without a name (1-4) first.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	ev := modbusWrite()
	if err := s.Record(ev); err != nil {
		t.Fatal(err)
	}
	if got := seqs(); len(got) < 2 || got[0] != 1 || got[len(got)-1] != ev.Seq {
		t.Fatalf("the recreated file holds events %v", got)
	}
}

// Without the inotify watch, the link count is read at most every 50 ms:
// events written to the file without a name before that check are copied
// into the new one.
func TestFileDeletedUnderSinkIntervalCheck(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the link count is read on Linux")
	}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	audit.DisableUnlinkWatch(s)
	audit.SetUnlinkCheck(s, time.Hour) // checks only when the test says
	record := func(want uint64) {
		t.Helper()
		ev := modbusWrite()
		if err := s.Record(ev); err != nil || ev.Seq != want {
			t.Fatalf("event %d: seq %d, %v", want, ev.Seq, err)
		}
	}
	for i := uint64(1); i <= 3; i++ {
		record(i)
	}
	audit.ExpireUnlinkCheck(s)
	record(4) // checked before it: linked, with events 1-3
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	record(5) // not checked: to the file without a name
	record(6)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the file is back before a check: %v", err)
	}
	audit.ExpireUnlinkCheck(s)
	record(7)
	var seqs []uint64
	for _, r := range readFile(t, path) {
		seqs = append(seqs, r.Seq())
	}
	if !slices.Equal(seqs, []uint64{4, 5, 6, 7}) {
		t.Fatalf("after the deletion the file holds events %v, want 4-7 (those written since the last check, and the new one)", seqs)
	}
}

func TestBackpressure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{MaxBatchEvents: 2})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	block := &blockingWriter{release: release, started: make(chan struct{}, 100)}
	audit.SetFileFaults(s, func(w io.Writer) io.Writer { block.w = w; return block }, nil)

	var wg sync.WaitGroup
	record := func() {
		defer wg.Done()
		if err := s.Record(modbusWrite()); err != nil {
			t.Error(err)
		}
	}
	wg.Add(1)
	go record() // the batch being written, blocked
	<-block.started
	wg.Add(2)
	go record() // the filling batch, now full
	go record()
	waitFor(t, func() bool { return s.Stats().Seq == 3 })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	ev := modbusWrite()
	err = s.RecordContext(ctx, ev)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RecordContext on a full queue = %v, want deadline exceeded", err)
	}
	if ev.Seq != 0 {
		t.Errorf("refused event got sequence %d", ev.Seq)
	}
	close(release)
	wg.Wait()
	s.Close()
	recs := readFile(t, path)
	if len(recs) != 3 || audittest.CheckSequence(recs) != nil {
		t.Errorf("file: %d events", len(recs))
	}
}

type blockingWriter struct {
	w       io.Writer
	release chan struct{}
	started chan struct{}
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	select {
	case b.started <- struct{}{}:
	default:
	}
	<-b.release
	return b.w.Write(p)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestWriterSink(t *testing.T) {
	var out bytes.Buffer
	s := audit.NewWriter(&out, audit.Options{Observer: testObserver, Now: func() time.Time { return testTime }})
	results := recordConcurrently(t, s, 4, 25)
	s.Close()
	recs, err := audittest.ParseLines(&out)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 100 || audittest.CheckSequence(recs) != nil {
		t.Fatalf("%d records", len(recs))
	}
	for _, r := range results {
		if r.err != nil {
			t.Fatal(r.err)
		}
	}
}

func TestRecordSetsTime(t *testing.T) {
	var out bytes.Buffer
	s := audit.NewWriter(&out, audit.Options{Now: func() time.Time { return testTime }})
	ev := modbusWrite()
	ev.Time = time.Time{}
	if err := s.Record(ev); err != nil {
		t.Fatal(err)
	}
	kept := modbusWrite()
	kept.Time = time.Date(2020, 1, 2, 3, 4, 5, 6, time.FixedZone("CET", 3600))
	if err := s.Record(kept); err != nil {
		t.Fatal(err)
	}
	s.Close()
	recs, err := audittest.ParseLines(&out)
	if err != nil {
		t.Fatal(err)
	}
	if got := recs[0].String("@timestamp"); got != "2026-03-14T09:26:53.589793238Z" {
		t.Errorf("zero time: @timestamp %s", got)
	}
	if got := recs[1].String("@timestamp"); got != "2020-01-02T02:04:05.000000006Z" {
		t.Errorf("given time: @timestamp %s (want UTC)", got)
	}
}

func TestMulti(t *testing.T) {
	a, b := audittest.NewMemory(), audittest.NewMemory()
	m := audit.Multi(a, b)
	ev := modbusWrite()
	if err := m.Record(ev); err != nil {
		t.Fatal(err)
	}
	if a.Len() != 1 || b.Len() != 1 {
		t.Fatalf("tee wrote %d and %d", a.Len(), b.Len())
	}
	if a.Records()[0].String("@timestamp") != b.Records()[0].String("@timestamp") {
		t.Error("copies differ in time")
	}

	fail := audittest.NewFailing(nil)
	after := audittest.NewMemory()
	m = audit.Multi(a, fail, after)
	if err := m.Record(modbusWrite()); !errors.Is(err, audittest.ErrInjected) {
		t.Fatalf("Multi with a failing recorder = %v", err)
	}
	if after.Len() != 0 {
		t.Error("recorder after the failing one was written")
	}
	if fail.Calls() != 1 || len(fail.Attempts()) != 1 {
		t.Errorf("failing recorder calls %d", fail.Calls())
	}
	if err := audit.Multi().Record(modbusWrite()); err == nil {
		t.Error("empty Multi succeeded")
	}
}

func TestStatsEventsPerWrite(t *testing.T) {
	st := audit.Stats{Events: 90, FailedEvents: 10, Writes: 20}
	if got := st.EventsPerWrite(); got != 5 {
		t.Errorf("EventsPerWrite = %v", got)
	}
	if (audit.Stats{}).EventsPerWrite() != 0 {
		t.Error("EventsPerWrite of nothing")
	}
}
