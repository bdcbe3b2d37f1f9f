package audit_test

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/pki"
)

// BenchmarkEncode measures encoding one request event (Modbus FC16 with two
// values and a TLS identity) into a reused buffer.
//
// "connection" is the steady state: the events of one connection share the
// listener, addresses and *pki.Identity, whose encoding is cached.
// "first-event-of-connection" gives every event a new identity, so the
// static part is encoded (and cached) every time.
func BenchmarkEncode(b *testing.B) {
	b.Run("connection", func(b *testing.B) {
		enc := audit.NewEncoder(testObserver)
		ev := modbusWrite()
		ev.Seq = 1
		buf := make([]byte, 0, 4096)
		var err error
		b.ReportAllocs()
		for b.Loop() {
			buf, err = enc.AppendEvent(buf[:0], ev)
			if err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(int64(len(buf)))
	})
	b.Run("first-event-of-connection", func(b *testing.B) {
		enc := audit.NewEncoder(testObserver)
		ids := make([]*pki.Identity, 10000) // more than the cache holds
		for i := range ids {
			ids[i] = testIdentity()
		}
		ev := modbusWrite()
		ev.Seq = 1
		buf := make([]byte, 0, 4096)
		var err error
		i := 0
		b.ReportAllocs()
		for b.Loop() {
			ev.Identity = ids[i%len(ids)]
			i++
			buf, err = enc.AppendEvent(buf[:0], ev)
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("opcua-write", func(b *testing.B) {
		enc := audit.NewEncoder(testObserver)
		ev := opcuaWrite()
		buf := make([]byte, 0, 4096)
		var err error
		b.ReportAllocs()
		for b.Loop() {
			buf, err = enc.AppendEvent(buf[:0], ev)
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRecordFile measures Record through a file sink with 1, 8 and 64
// concurrent callers, each reusing one event as a connection would, with
// and without fdatasync. It reports events/s and the mean number of events
// per write(2), the effect of group commit.
func BenchmarkRecordFile(b *testing.B) {
	for _, fsync := range []bool{false, true} {
		for _, goroutines := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("fsync=%v/goroutines=%d", fsync, goroutines), func(b *testing.B) {
				benchmarkRecord(b, fsync, goroutines)
			})
		}
	}
}

// BenchmarkEnqueueFile: events queued without a wait (allowed reads with
// audit.read_delay), every fifth one recorded with a wait (a write), as in
// the harness's 20 % write mix.
func BenchmarkEnqueueFile(b *testing.B) {
	for _, goroutines := range []int{1, 8} {
		b.Run(fmt.Sprintf("goroutines=%d", goroutines), func(b *testing.B) {
			benchmarkEvents(b, false, goroutines, time.Millisecond)
		})
	}
}

func benchmarkRecord(b *testing.B, fsync bool, goroutines int) {
	benchmarkEvents(b, fsync, goroutines, 0)
}

func benchmarkEvents(b *testing.B, fsync bool, goroutines int, maxDelay time.Duration) {
	path := filepath.Join(b.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{Observer: testObserver, Fsync: fsync, MaxDelay: maxDelay})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev := modbusWrite()
			ev.ConnID = uint64(g)
			evs, errs := []*audit.Event{ev}, make([]error, 1)
			for n := next.Add(1); n <= int64(b.N); n = next.Add(1) {
				ev.Time = time.Time{} // the sink's clock, as in the proxy
				if maxDelay > 0 && n%5 != 0 && s.Enqueue(evs, errs) {
					if errs[0] != nil {
						b.Error(errs[0])
						return
					}
					continue
				}
				if err := s.Record(ev); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	st := s.Stats()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(st.EventsPerWrite(), "events/write")
}

// BenchmarkRecordBatchFile is the audit trail's share of a pipelined burst
// (harness depth 8): one caller records 8 request events with one
// RecordBatch, i.e. 8 encodings and one write(2) to the file. ns/op is per
// event: the least that recording costs one request at depth 8, against
// which HAProxy's whole per-request cost is set in docs/benchmarks.md.
func BenchmarkRecordBatchFile(b *testing.B) {
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "audit.jsonl")
			s, err := audit.OpenFile(path, audit.Options{Observer: testObserver})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			evs := make([]*audit.Event, n)
			for i := range evs {
				evs[i] = modbusWrite()
			}
			errs := make([]error, n)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				ev := evs[i%n]
				ev.Time = time.Time{}
				if i%n != n-1 {
					continue
				}
				for _, ev := range evs {
					ev.Time = time.Time{}
				}
				s.RecordBatch(evs, errs)
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
