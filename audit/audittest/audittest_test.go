package audittest_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/audit/audittest"
	"github.com/conduit-ot/conduit/inspect"
)

func write(allowed, dryRun bool, access inspect.Access) *audit.Event {
	return &audit.Event{
		Action: audit.ActionRequest, Allowed: allowed, DryRun: dryRun,
		Source:   netip.MustParseAddrPort("10.0.0.1:1000"),
		Protocol: inspect.ProtocolModbus,
		Op: &inspect.Operation{Protocol: inspect.ProtocolModbus, Access: access, Name: "write_single_register",
			Modbus: inspect.Modbus{Unit: 1, Function: 6, Table: inspect.TableHoldingRegisters, Address: 7, Quantity: 1, Values: []uint16{42}}},
	}
}

func TestMemoryKeepsCopiesAndDecodedRecords(t *testing.T) {
	m := audittest.NewMemory()
	ev := write(true, false, inspect.AccessWrite)
	if err := m.Record(ev); err != nil {
		t.Fatal(err)
	}
	if ev.Seq != 1 || ev.Time.IsZero() {
		t.Errorf("Record did not assign Seq/Time: %d %v", ev.Seq, ev.Time)
	}
	// The decoder reuses its scratch: the recorded copy must not change.
	ev.Op.Modbus.Values[0] = 999
	got := m.Events()
	if len(got) != 1 || got[0].Op.Modbus.Values[0] != 42 {
		t.Fatalf("recorded event changed with the caller's operation: %+v", got)
	}
	recs := m.Records()
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	r := recs[0]
	if r.Seq() != 1 || r.Action() != "request" || !r.HasType("allowed") || !r.AllowedWrite() {
		t.Errorf("decoded record: %v", r)
	}
	if cats := r.Strings("event.category"); len(cats) != 1 || cats[0] != "network" || r.Bool("conduit.dry_run") {
		t.Errorf("accessors: %v", r)
	}
	if r.Uint("modbus.address") != 7 || r.String("source.ip") != "10.0.0.1" || r.Has("tls") {
		t.Errorf("decoded fields: %v", r)
	}
	m.Reset()
	if m.Len() != 0 {
		t.Error("Reset kept events")
	}
	m.Record(write(false, false, inspect.AccessWrite))
	if r := m.Records()[0]; r.Seq() != 2 || r.AllowedWrite() || !r.HasType("denied") {
		t.Errorf("after Reset: %v", r)
	}
}

func TestMemoryWait(t *testing.T) {
	m := audittest.NewMemory()
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Millisecond)
			m.Record(write(true, false, inspect.AccessRead))
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	recs, err := m.Wait(ctx, 5)
	if err != nil || len(recs) != 5 {
		t.Fatalf("Wait: %d, %v", len(recs), err)
	}
	if err := audittest.CheckSequence(recs); err != nil {
		t.Error(err)
	}
	wg.Wait()
	short, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	if recs, err := m.Wait(short, 6); !errors.Is(err, context.DeadlineExceeded) || len(recs) != 5 {
		t.Errorf("Wait beyond the events: %d, %v", len(recs), err)
	}
}

func TestFailing(t *testing.T) {
	f := audittest.NewFailing(nil)
	if err := f.Record(write(true, false, inspect.AccessWrite)); !errors.Is(err, audittest.ErrInjected) {
		t.Errorf("Failing.Record = %v", err)
	}
	custom := errors.New("disk on fire")
	g := audittest.NewFailing(custom)
	g.Record(write(true, false, inspect.AccessWrite))
	if err := g.Record(write(false, false, inspect.AccessWrite)); err != custom {
		t.Errorf("Failing.Record = %v", err)
	}
	if g.Calls() != 2 || len(g.Attempts()) != 2 || g.Attempts()[1].Allowed {
		t.Errorf("calls %d attempts %+v", g.Calls(), g.Attempts())
	}
}

func TestRecorderFunc(t *testing.T) {
	errWrites := errors.New("writes fail")
	r := audittest.RecorderFunc(func(ev *audit.Event) error {
		if ev.Op != nil && ev.Op.Access == inspect.AccessWrite {
			return errWrites
		}
		return nil
	})
	if r.Record(write(true, false, inspect.AccessRead)) != nil || r.Record(write(true, false, inspect.AccessWrite)) != errWrites {
		t.Error("RecorderFunc did not call the function")
	}
}

func TestDiscardForBenchmarks(t *testing.T) {
	d := audittest.NewDiscardForBenchmarks()
	a, b := write(true, false, inspect.AccessWrite), write(true, false, inspect.AccessWrite)
	if d.Record(a) != nil || d.Record(b) != nil || a.Seq != 1 || b.Seq != 2 {
		t.Errorf("sequence %d %d", a.Seq, b.Seq)
	}
}

func TestParseLinesStrict(t *testing.T) {
	for _, tc := range []struct {
		name, in, err string
		n             int
	}{
		{"good", `{"event":{"sequence":1}}` + "\n" + `{"event":{"sequence":2}}` + "\n", "", 2},
		{"empty", "", "", 0},
		{"torn tail", `{"event":{"sequence":1}}` + "\n" + `{"event":{"seq`, "line 2: no final newline", 1},
		{"two objects on a line", `{"a":1}{"b":2}` + "\n", "line 1: more than one", 0},
		{"not an object", `[1,2]` + "\n", "line 1: not a JSON object", 0},
		{"null", "null\n", "line 1: not a JSON object", 0},
		{"blank line", `{"a":1}` + "\n\n", "line 2", 1},
		{"garbage after object", `{"a":1} x` + "\n", "line 1", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := audittest.ParseLines(strings.NewReader(tc.in))
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("err = %v, want %q", err, tc.err)
			}
			if len(recs) != tc.n {
				t.Errorf("%d records before the error, want %d", len(recs), tc.n)
			}
		})
	}
}

func TestCheckSequenceAndAllowedWrites(t *testing.T) {
	m := audittest.NewMemory()
	m.Record(write(true, false, inspect.AccessWrite))  // allowed write
	m.Record(write(false, false, inspect.AccessWrite)) // denied write
	m.Record(write(true, true, inspect.AccessWrite))   // dry run: forwarded
	m.Record(write(true, false, inspect.AccessRead))   // allowed read
	m.Record(&audit.Event{Action: audit.ActionConnectionClose})
	recs := m.Records()
	if err := audittest.CheckSequence(recs); err != nil {
		t.Fatal(err)
	}
	if n := len(audittest.AllowedWrites(recs)); n != 2 {
		t.Errorf("AllowedWrites = %d, want 2", n)
	}
	if n := len(audittest.Filter(recs, audit.ActionConnectionClose)); n != 1 {
		t.Errorf("Filter = %d", n)
	}
	swapped := []audittest.Record{recs[1], recs[0]}
	if audittest.CheckSequence(swapped) == nil {
		t.Error("CheckSequence accepted a decreasing sequence")
	}
	if audittest.CheckSequence([]audittest.Record{{}}) == nil {
		t.Error("CheckSequence accepted a record without sequence")
	}
}

func TestReadFile(t *testing.T) {
	path := t.TempDir() + "/audit.jsonl"
	s, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := s.Record(write(i != 1, false, inspect.AccessWrite)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	recs, err := audittest.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 || audittest.CheckSequence(recs) != nil || len(audittest.AllowedWrites(recs)) != 2 {
		t.Errorf("ReadFile: %v", recs)
	}
	if _, err := audittest.ReadFile(path + ".missing"); err == nil {
		t.Error("ReadFile of a missing file succeeded")
	}
}
