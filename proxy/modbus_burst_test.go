package proxy

import (
	"bytes"
	"fmt"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/policy"
)

// Pipelined requests are handled in bursts (modbus.go): every request of a
// burst is decided on its own, their events are recorded with one wait, the
// allowed ones go to the device in one write. These tests check that the
// per-request guarantees hold inside a burst.

// batchRecorder is a memRecorder that is also an audit.BatchRecorder: it
// remembers the size of every batch, can hold batches until released, and
// fail the events fail chooses.
type batchRecorder struct {
	memRecorder
	hold    chan struct{} // non-nil: RecordBatch waits until it is closed
	entered chan struct{} // signalled when a RecordBatch starts waiting

	bmu     sync.Mutex
	batches []int
}

func (r *batchRecorder) RecordBatch(evs []*audit.Event, errs []error) {
	r.bmu.Lock()
	r.batches = append(r.batches, len(evs))
	r.bmu.Unlock()
	if r.hold != nil {
		select {
		case r.entered <- struct{}{}:
		default:
		}
		<-r.hold
	}
	for i, ev := range evs {
		errs[i] = r.Record(ev)
	}
}

func (r *batchRecorder) sizes() []int {
	r.bmu.Lock()
	defer r.bmu.Unlock()
	return append([]int(nil), r.batches...)
}

// burst is requests written to the proxy with one write: one TCP segment
// on loopback, read by the proxy at once.
func burst(t *testing.T, c *rawConn, frames ...string) {
	t.Helper()
	var b []byte
	for _, f := range frames {
		b = append(b, unhex(t, f)...)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// recvAll reads n responses and returns them as hex, sorted.
func recvAll(c *rawConn, n int) []string {
	c.t.Helper()
	var got []string
	for range n {
		got = append(got, fmt.Sprintf("%x", c.recv()))
	}
	sort.Strings(got)
	return got
}

func sortedHex(t *testing.T, frames ...string) []string {
	var out []string
	for _, f := range frames {
		out = append(out, fmt.Sprintf("%x", unhex(t, f)))
	}
	sort.Strings(out)
	return out
}

func TestBurstDecidedRequestByRequest(t *testing.T) {
	plc := startPLC(t)
	plc.SetHolding(7, 0xBEEF)
	rec := &batchRecorder{}
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), denyWrites(), rec)
	c := dialRaw(t, l.Addr().String())
	burst(t, c,
		"0001 0000 0006 01 03 0007 0001", // read: allowed
		"0002 0000 0006 01 06 000c 02bc", // write: denied, exception 1
		"0003 0000 0006 01 03 0007 0001", // read: allowed
		"0004 0000 0006 01 06 000d 02bc", // write: denied
		"0005 0000 0006 01 03 ffff 0002", // read past 0xFFFF: protocol violation, exception 2
		"0006 0000 0006 01 03 0007 0001", // read: allowed
	)
	got := recvAll(c, 6)
	want := sortedHex(t,
		"0001 0000 0005 01 03 02 beef",
		"0002 0000 0003 01 86 01",
		"0003 0000 0005 01 03 02 beef",
		"0004 0000 0003 01 86 01",
		"0005 0000 0003 01 83 02",
		"0006 0000 0005 01 03 02 beef",
	)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("responses\n got %v\nwant %v", got, want)
	}
	if w := plc.Writes(); len(w) != 0 {
		t.Fatalf("denied writes reached the device: %v", w)
	}
	// One event per request, in request order, each with its own decision.
	reqs := rec.byAction(audit.ActionRequest)
	if len(reqs) != 6 {
		t.Fatalf("%d request events", len(reqs))
	}
	ids := map[string]bool{}
	for i, ev := range reqs {
		allowed := i == 0 || i == 2 || i == 5
		if ev.Allowed != allowed || ids[ev.DecisionID] {
			t.Errorf("event %d: allowed %v, decision %q", i, ev.Allowed, ev.DecisionID)
		}
		if ev.DecisionID != "" {
			ids[ev.DecisionID] = true
		}
	}
	if reqs[1].ExceptionCode != 1 || reqs[4].ExceptionCode != 2 || reqs[4].Rule != "protocol.illegal_data_address" && reqs[4].Rule == "" {
		t.Errorf("refusal events: %+v, %+v", reqs[1], reqs[4])
	}
	// The burst's events were recorded together.
	if s := rec.sizes(); len(s) == 0 || s[0] != 6 {
		t.Errorf("batches %v, want the six events in one", s)
	}
}

func TestBurstAuditFailureRefusesItsAllowedRequests(t *testing.T) {
	plc := startPLC(t)
	// The audit trail fails the events of odd transaction ids.
	rec := &batchRecorder{memRecorder: memRecorder{fail: func(ev *audit.Event) bool {
		return ev.Action == audit.ActionRequest && ev.Op.Modbus.Address%2 == 1
	}}}
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	burst(t, c,
		"0001 0000 0006 01 06 000a 0001", // write 10: audited, forwarded
		"0002 0000 0006 01 06 000b 0002", // write 11: audit fails, refused (4)
		"0003 0000 0006 01 06 000c 0003", // write 12: forwarded
		"0004 0000 0006 01 06 000d 0004", // write 13: refused
	)
	got := recvAll(c, 4)
	want := sortedHex(t,
		"0001 0000 0006 01 06 000a 0001",
		"0002 0000 0003 01 86 04",
		"0003 0000 0006 01 06 000c 0003",
		"0004 0000 0003 01 86 04",
	)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("responses\n got %v\nwant %v", got, want)
	}
	writes := plc.Writes()
	if len(writes) != 2 {
		t.Fatalf("device applied %v, want the two audited writes", writes)
	}
	for _, w := range writes {
		if fmt.Sprint(w) == "" {
			continue
		}
	}
	// Only what was audited is in the trail.
	for _, ev := range rec.byAction(audit.ActionRequest) {
		if ev.Op.Modbus.Address%2 == 1 {
			t.Errorf("failed event in the trail: %+v", ev)
		}
	}
}

func TestBurstForwardedOnlyAfterItsEventsAreWritten(t *testing.T) {
	plc := startPLC(t)
	rec := &batchRecorder{hold: make(chan struct{}), entered: make(chan struct{}, 1)}
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	burst(t, c,
		"0001 0000 0006 01 06 000a 0001",
		"0002 0000 0006 01 06 000b 0002",
		"0003 0000 0006 01 06 000c 0003",
	)
	select {
	case <-rec.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the burst was never recorded")
	}
	// The audit trail holds the burst: nothing may reach the device.
	time.Sleep(100 * time.Millisecond)
	if w := plc.Writes(); len(w) != 0 {
		t.Fatalf("writes reached the device before their events were written: %v", w)
	}
	close(rec.hold)
	recvAll(c, 3)
	if w := plc.Writes(); len(w) != 3 {
		t.Fatalf("device applied %v", w)
	}
}

func TestBurstResetEndsAfterTheRequestsBeforeIt(t *testing.T) {
	plc := startPLC(t)
	plc.SetHolding(7, 0xBEEF)
	rec := &batchRecorder{}
	l := startProxy(t, listenerConfig(t, plc.Addr(), "    deny_action: reset"), denyWrites(), rec)
	c := dialRaw(t, l.Addr().String())
	burst(t, c,
		"0001 0000 0006 01 03 0007 0001", // read: allowed (its answer may be cut off by the reset)
		"0002 0000 0006 01 06 000c 02bc", // write: denied with reset
		"0003 0000 0006 01 06 000d 02bc", // never handled
	)
	// The read's answer may arrive before the reset, or be cut off by it;
	// nothing else may.
	if got, err := c.tryRecv(3 * time.Second); err == nil {
		if w := unhex(t, "0001 0000 0005 01 03 02 beef"); !bytes.Equal(got, w) {
			t.Fatalf("before the reset: % x, want nothing or % x", got, w)
		}
		c.expectClosed()
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("connection still open (read timed out)")
	}
	waitFor(t, "the close event", func() bool { return len(rec.byAction(audit.ActionConnectionClose)) == 1 })
	reqs := rec.byAction(audit.ActionRequest)
	if len(reqs) != 2 || !reqs[0].Allowed || reqs[1].Allowed || reqs[1].DenyAction != "reset" {
		t.Fatalf("events %+v", reqs)
	}
	if len(plc.Writes()) != 0 {
		t.Fatal("a write reached the device")
	}
}

func TestBurstMalformedFrameEndsAfterTheRequestsBeforeIt(t *testing.T) {
	plc := startPLC(t)
	rec := &batchRecorder{}
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	burst(t, c,
		"0001 0000 0006 01 06 000a 0001",      // write: allowed, forwarded
		"0002 0000 0008 01 03 0000 0001 0000", // a read whose MBAP length hides more: malformed
	)
	c.expectClosed()
	waitFor(t, "the close event", func() bool { return len(rec.byAction(audit.ActionConnectionClose)) == 1 })
	all := rec.all()
	var actions []string
	for _, ev := range all {
		actions = append(actions, ev.Action)
	}
	want := []string{audit.ActionConnectionOpen, audit.ActionRequest, audit.ActionMalformed, audit.ActionConnectionClose}
	if fmt.Sprint(actions) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", actions, want)
	}
	waitFor(t, "the write at the device", func() bool { return len(plc.Writes()) == 1 })
}

func TestHalfCloseAnswersEveryRequestInFlight(t *testing.T) {
	// A device that answers every request a little later, each on its own.
	dev := fakeDevice(t, func(req []byte, conn net.Conn) {
		time.Sleep(20 * time.Millisecond)
		conn.Write([]byte{req[0], req[1], 0, 0, 0, 5, req[6], req[7], 2, 0, 1})
	})
	l := startProxy(t, listenerConfig(t, dev, ""), allowAll(), &batchRecorder{})
	for round := range 5 {
		c := dialRaw(t, l.Addr().String())
		var frames []string
		for i := range 8 {
			frames = append(frames, fmt.Sprintf("%04x 0000 0006 01 03 0000 0001", i+1))
		}
		burst(t, c, frames...)
		c.Conn.(*net.TCPConn).CloseWrite()
		got := recvAll(c, 8)
		if len(got) != 8 {
			t.Fatalf("round %d: %d answers", round, len(got))
		}
		c.expectClosed()
	}
}

func TestDeviceBurstAnsweredInOrder(t *testing.T) {
	// A device that answers two requests with one write, the second first.
	var mu sync.Mutex
	var held []byte
	dev := fakeDevice(t, func(req []byte, conn net.Conn) {
		resp := []byte{req[0], req[1], 0, 0, 0, 5, req[6], req[7], 2, 0, req[1]}
		mu.Lock()
		defer mu.Unlock()
		if held == nil {
			held = resp
			return
		}
		conn.Write(append(resp, held...))
		held = nil
	})
	rec := &batchRecorder{}
	l := startProxy(t, listenerConfig(t, dev, ""), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	burst(t, c, "0001 0000 0006 01 03 0000 0001", "0002 0000 0006 01 03 0000 0001")
	got := recvAll(c, 2)
	want := sortedHex(t, "0001 0000 0005 01 03 02 0001", "0002 0000 0005 01 03 02 0002")
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("responses %v, want %v", got, want)
	}
	if n := len(rec.byAction(audit.ActionUnsolicited)); n != 0 {
		t.Errorf("%d unsolicited events", n)
	}
}

func TestBurstTransactionIDInFlightTwice(t *testing.T) {
	release := make(chan struct{})
	dev := fakeDevice(t, func(req []byte, conn net.Conn) {
		<-release
		conn.Write([]byte{req[0], req[1], 0, 0, 0, 5, req[6], req[7], 2, 0, 1})
	})
	rec := &batchRecorder{}
	l := startProxy(t, listenerConfig(t, dev, ""), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	// The same transaction id twice in one burst: the second cannot be
	// paired and is refused as busy, never forwarded.
	burst(t, c, "0007 0000 0006 01 03 0000 0001", "0007 0000 0006 01 03 0001 0001")
	c.expect("0007 0000 0003 01 83 06")
	close(release)
	c.expect("0007 0000 0005 01 03 02 0001")
	reqs := rec.byAction(audit.ActionRequest)
	if len(reqs) != 2 || !reqs[0].Allowed || reqs[1].Allowed || reqs[1].Rule != "proxy.outstanding" {
		t.Fatalf("events %+v", reqs)
	}
	_ = inspect.AccessRead
	_ = policy.Decision{}
}

func TestRefreshIsCoarse(t *testing.T) {
	now := time.Unix(1000, 0)
	d := 5 * time.Minute
	dl := refresh(time.Time{}, now, d)
	if want := now.Add(d + time.Second); !dl.Equal(want) {
		t.Fatalf("first deadline %v, want %v", dl, want)
	}
	// Within the slack nothing is set; past it, a new deadline.
	if got := refresh(dl, now.Add(999*time.Millisecond), d); !got.IsZero() {
		t.Errorf("refreshed after 999ms: %v", got)
	}
	if got := refresh(dl, now.Add(1001*time.Millisecond), d); got.IsZero() || got.Before(now.Add(1001*time.Millisecond+d)) {
		t.Errorf("deadline after 1001ms: %v", got)
	}
	// Short timeouts get a proportional slack: never less than asked.
	if got := refresh(time.Time{}, now, 200*time.Millisecond); !got.Equal(now.Add(225 * time.Millisecond)) {
		t.Errorf("200ms timeout: deadline %v", got.Sub(now))
	}
}

func TestResponseTimeoutOfALaterRequest(t *testing.T) {
	// The device answers the first request only. The timer, armed for the
	// first request's deadline, must still expire the second one at its
	// own deadline, not earlier.
	var mu sync.Mutex
	first := true
	dev := fakeDevice(t, func(req []byte, conn net.Conn) {
		mu.Lock()
		answer := first
		first = false
		mu.Unlock()
		if answer {
			conn.Write([]byte{req[0], req[1], 0, 0, 0, 5, req[6], req[7], 2, 0, 1})
		}
	})
	l := startProxy(t, listenerConfig(t, dev, "    timeouts:\n      response: 300ms"), allowAll(), &batchRecorder{})
	c := dialRaw(t, l.Addr().String())
	c.send("0001 0000 0006 01 03 0000 0001")
	c.expect("0001 0000 0005 01 03 02 0001")
	time.Sleep(150 * time.Millisecond)
	sent := time.Now()
	c.send("0002 0000 0006 01 03 0000 0001")
	c.expect("0002 0000 0003 01 83 0b")
	if waited := time.Since(sent); waited < 300*time.Millisecond {
		t.Errorf("gateway timeout after %v, before the 300ms response timeout", waited)
	}
}
