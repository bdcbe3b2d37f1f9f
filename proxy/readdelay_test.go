package proxy

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"
	mb "github.com/simonvetter/modbus"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/audit/audittest"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/sim"
)

// deferredSink is a file sink whose queued events wait an hour: an event
// the proxy queued instead of waiting for is visibly not in the file.
func deferredSink(t *testing.T) (*audit.Sink, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := audit.OpenFile(path, audit.Options{MaxDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func requestRecords(t *testing.T, path string) []audittest.Record {
	t.Helper()
	recs, err := audittest.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := audittest.CheckSequence(recs); err != nil {
		t.Fatal(err)
	}
	return audittest.Filter(recs, audit.ActionRequest)
}

// With audit.read_delay, an allowed read is answered without waiting for
// its event's write; an allowed write still waits for its own event (and
// takes the queued read events with it), so the device never sees a write
// that is not in the file.
func TestAllowedReadsDoNotWaitWritesDo(t *testing.T) {
	plc := startPLC(t)
	sink, path := deferredSink(t)
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), allowAll(), sink)
	c := client(t, l.Addr().String())

	for range 3 {
		if _, err := c.ReadRegisters(0, 2, mb.HOLDING_REGISTER); err != nil {
			t.Fatal(err)
		}
	}
	if recs := requestRecords(t, path); len(recs) != 0 {
		t.Fatalf("%d request events written before any waited-for event: the reads waited", len(recs))
	}
	if err := c.WriteRegister(12, 700); err != nil {
		t.Fatal(err)
	}
	recs := requestRecords(t, path)
	if len(recs) != 4 {
		t.Fatalf("%d request events after the write, want the 3 reads and the write", len(recs))
	}
	for i, r := range recs[:3] {
		if r.String("conduit.operation.access") != "read" || !r.HasType("allowed") {
			t.Fatalf("event %d: %v", i, r)
		}
	}
	if !recs[3].AllowedWrite() {
		t.Fatalf("last event is not the allowed write: %v", recs[3])
	}
	if w := plc.Writes(); len(w) != 1 {
		t.Fatalf("device writes %v", w)
	}
}

// A denied read waits for its event: a refusal is always on file before
// the client hears it.
func TestDeniedReadWaits(t *testing.T) {
	plc := startPLC(t)
	sink, path := deferredSink(t)
	d := &funcDecider{fn: func(in *policy.Input) policy.Decision {
		return policy.Decision{Allow: false, Reason: "no reads of this one"}
	}}
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), d, sink)
	c := client(t, l.Addr().String())
	if _, err := c.ReadRegisters(0, 2, mb.HOLDING_REGISTER); !errors.Is(err, mb.ErrIllegalFunction) {
		t.Fatalf("denied read: %v", err)
	}
	recs := requestRecords(t, path)
	if len(recs) != 1 || !recs[0].HasType("denied") {
		t.Fatalf("events on file when the refusal arrived: %v", recs)
	}
}

// A pipelined burst with a write in it waits as a whole.
func TestBurstWithAWriteWaits(t *testing.T) {
	plc := startPLC(t)
	sink, path := deferredSink(t)
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), allowAll(), sink)
	c := dialRaw(t, l.Addr().String())
	c.send("0001 0000 0006 01 03 000c 0001" + "0002 0000 0006 01 06 000c 02bc")
	got := map[string]bool{}
	for range 2 {
		got[string(c.recv())] = true
	}
	if recs := requestRecords(t, path); len(recs) != 2 {
		t.Fatalf("%d request events on file after the burst's answers, want 2", len(recs))
	}
	if w := plc.Writes(); len(w) != 1 {
		t.Fatalf("device writes %v", w)
	}
}

// The same for OPC UA: a Read service is answered without waiting for its
// event, a Write waits for its own (and writes the Read's before it).
func TestOPCUAReadsDoNotWaitWritesDo(t *testing.T) {
	srv := startSimUA(t, sim.OPCUAOptions{CountEvery: -1})
	sink, path := deferredSink(t)
	l := startUAProxy(t, uaListenerConfig(t, srv.Addr(), "", ""), referencePolicy(t), sink, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := gopcuaClient(t, ctx, proxyURL(l))
	served := func(service string) int {
		n := 0
		for _, r := range requestRecords(t, path) {
			if r.String("opcua.service") == service {
				n++
			}
		}
		return n
	}
	req := &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{{NodeID: ua.MustParseNodeID(sim.OPCUASetpoint), AttributeID: ua.AttributeIDValue}}}
	if _, err := c.Read(ctx, req); err != nil {
		t.Fatal(err)
	}
	if n := served("Read"); n != 0 {
		t.Fatalf("the Read's event was written before its answer (%d on file): it waited", n)
	}
	if resp, err := c.Write(ctx, writeReq(sim.OPCUASetpoint, 600.0)); err != nil || resp.Results[0] != ua.StatusOK {
		t.Fatalf("allowed write: %v %v", resp, err)
	}
	// gopcua's Connect reads too: every Read so far rides with the Write.
	if served("Read") < 1 || served("Write") != 1 {
		t.Fatalf("after the write: %d Read, %d Write events on file, want ≥ 1 and 1", served("Read"), served("Write"))
	}
}
