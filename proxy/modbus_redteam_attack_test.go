package proxy

import (
	"bytes"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/policy"
)

// Red-team attacks on the Modbus path that the other tests do not cover.

// lateDevice answers a read of register 0 (value 0xAAAA) only when the
// next request arrives, on the connection the read came on, and then
// answers that request (value 0xBBBB) at once: a device whose answer comes
// after the proxy's response timeout.
func lateDevice(t *testing.T) string {
	type held struct {
		conn net.Conn
		resp []byte
	}
	var mu sync.Mutex
	var late []held
	return fakeDevice(t, func(req []byte, conn net.Conn) {
		v := byte(0xBB)
		if req[8] == 0 && req[9] == 0 {
			v = 0xAA
		}
		resp := []byte{req[0], req[1], 0, 0, 0, 5, req[6], req[7], 2, v, v}
		mu.Lock()
		defer mu.Unlock()
		if v == 0xAA {
			late = append(late, held{conn, resp})
			return
		}
		for _, h := range late {
			h.conn.Write(h.resp)
		}
		late = nil
		conn.Write(resp)
	})
}

func lateEvent(t *testing.T, rec *memRecorder, frame string) bool {
	for _, ev := range rec.byAction(audit.ActionUnsolicited) {
		if bytes.Equal(ev.Bytes, unhex(t, frame)) {
			return true
		}
	}
	return false
}

// A late answer is dropped, audited, and frees its transaction id.
func TestLateAnswerIsDroppedAndAudited(t *testing.T) {
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, lateDevice(t), "    timeouts:\n      response: 200ms"), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	c.send("0005 0000 0006 01 03 0000 0001")
	c.expect("0005 0000 0003 01 83 0b")
	c.send("0006 0000 0006 01 03 0010 0001")
	c.expect("0006 0000 0005 01 03 02 bbbb")
	waitFor(t, "the late answer's event", func() bool { return lateEvent(t, rec, "0005 0000 0005 01 03 02 aaaa") })
	c.send("0005 0000 0006 01 03 0010 0001")
	c.expect("0005 0000 0005 01 03 02 bbbb")
}

// A late answer must never be paired with a later request that reuses its
// transaction id: the client would read one register's value as another's.
//
// The device holds its answer to the read of register 0 past the response
// timeout; the client, told 0x0B, reads register 0x10 with the same
// transaction id (clients that number every request 1, or wrap, do). The
// device sends the late answer, then the answer to the second read.
// Before the fix the late answer (0xAAAA) was delivered as the value of
// register 0x10 and the true answer was dropped as unsolicited.
func TestLateAnswerIsNotPairedWithAReusedTransactionID(t *testing.T) {
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, lateDevice(t), "    timeouts:\n      response: 200ms"), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	for round := 0; round < 3; round++ {
		c.send("0001 0000 0006 01 03 0000 0001")
		c.expect("0001 0000 0003 01 83 0b")
		c.send("0001 0000 0006 01 03 0010 0001")
		got := c.recv()
		if bytes.Equal(got, unhex(t, "0001 0000 0005 01 03 02 aaaa")) {
			t.Fatalf("round %d: the late answer to register 0 was delivered as the answer to register 0x10", round)
		}
		if !bytes.Equal(got, unhex(t, "0001 0000 0005 01 03 02 bbbb")) {
			t.Fatalf("round %d: answer % x", round, got)
		}
	}
	// Requests with other ids still work on the same client connection.
	c.send("0002 0000 0006 01 03 0010 0001")
	c.expect("0002 0000 0005 01 03 02 bbbb")
	if evs := rec.byAction(audit.ActionConnectionClose); len(evs) != 0 {
		t.Fatalf("client connection closed: %+v", evs)
	}
}

// Timed-out requests whose answers never come still count against
// max_outstanding (the slot table stays bounded), and do not lock the
// client out: once they fill it, the device connection holding them is
// dropped and the next request goes out on a new one.
func TestStaleSlotsAreBoundedAndRecycled(t *testing.T) {
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, lateDevice(t), "    max_outstanding: 2\n    timeouts:\n      response: 200ms"), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	c.send("0001 0000 0006 01 03 0000 0001")
	c.expect("0001 0000 0003 01 83 0b")
	c.send("0002 0000 0006 01 03 0000 0001")
	c.expect("0002 0000 0003 01 83 0b")
	c.send("0003 0000 0006 01 03 0010 0001")
	c.expect("0003 0000 0005 01 03 02 bbbb")
	for _, frame := range []string{"0001 0000 0005 01 03 02 aaaa", "0002 0000 0005 01 03 02 aaaa"} {
		if lateEvent(t, rec, frame) {
			t.Fatalf("late answer %s read from a device connection that was dropped", frame)
		}
	}
}

// A device response whose MBAP length and PDU disagree (a read answer whose
// length hides more bytes) cannot be trusted: like a client frame of that
// kind it closes that connection, here the device one, with an audit
// event; the client gets 0x0B and its connection lives on.
func TestDeviceLengthSmugglingDropsTheDeviceConnection(t *testing.T) {
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	dev := fakeDevice(t, func(req []byte, conn net.Conn) {
		mu.Lock()
		first := len(conns) == 0
		conns[conn] = true
		mu.Unlock()
		if first {
			// Byte count 2, but the MBAP length covers 4 more bytes.
			conn.Write([]byte{req[0], req[1], 0, 0, 0, 9, req[6], req[7], 2, 0x12, 0x34, 0x00, 0x02, 0x00, 0x00})
			return
		}
		conn.Write([]byte{req[0], req[1], 0, 0, 0, 5, req[6], req[7], 2, 0x12, 0x34})
	})
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, dev, ""), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	c.send("0001 0000 0006 01 03 0000 0001")
	c.expect("0001 0000 0003 01 83 0b")
	c.send("0002 0000 0006 01 03 0000 0001")
	c.expect("0002 0000 0005 01 03 02 1234")
	mu.Lock()
	n := len(conns)
	mu.Unlock()
	if n != 2 {
		t.Fatalf("the device saw %d connections; the one that sent an untrusted frame must be dropped", n)
	}
	found := false
	for _, ev := range rec.byAction(audit.ActionMalformed) {
		if ev.Rule == "framing.length_mismatch" && ev.Outcome == audit.OutcomeFailure {
			found = true
		}
	}
	if !found {
		t.Fatalf("no framing event for the device's frame: %+v", rec.byAction(audit.ActionMalformed))
	}
}

// A device that sends part of a frame and stalls leaves its connection's
// framing stuck: every later answer on it would be misframed or never
// come. The requests time out (0x0B); once their stale slots fill
// max_outstanding, the connection is dropped and the next request goes out
// on a new one. Before, every later request on that client connection
// timed out for as long as it lived.
func TestDeviceStallingMidFrameIsRecycled(t *testing.T) {
	var mu sync.Mutex
	var first net.Conn
	dev := fakeDevice(t, func(req []byte, conn net.Conn) {
		mu.Lock()
		if first == nil {
			first = conn
		}
		stuck := conn == first
		mu.Unlock()
		if stuck {
			if req[1] == 1 {
				conn.Write(req[:3]) // part of a header, then nothing
			}
			return
		}
		conn.Write([]byte{req[0], req[1], 0, 0, 0, 5, req[6], req[7], 2, 0x12, 0x34})
	})
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, dev, "    max_outstanding: 2\n    timeouts:\n      response: 200ms"), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	c.send("0001 0000 0006 01 03 0000 0001")
	c.expect("0001 0000 0003 01 83 0b")
	c.send("0002 0000 0006 01 03 0000 0001")
	c.expect("0002 0000 0003 01 83 0b")
	c.send("0003 0000 0006 01 03 0000 0001")
	c.expect("0003 0000 0005 01 03 02 1234")
}

// A panic while a request is handled (here in a Decider; the same holds
// for a parser bug) ends that connection, audited, and forwards nothing;
// the process and the other connections go on. Before, the Modbus handler
// had no recover (the OPC UA one had): one bad request took the whole
// proxy down.
func TestPanicEndsOnlyThatConnection(t *testing.T) {
	plc := startPLC(t)
	d := &funcDecider{fn: func(in *policy.Input) policy.Decision {
		if in.Op.Access == inspect.AccessWrite {
			panic("decider bug")
		}
		return policy.Decision{Allow: true, Reason: "read"}
	}}
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), d, rec)
	bystander := dialRaw(t, l.Addr().String())
	bystander.send("0001 0000 0006 01 03 0000 0001")
	bystander.expect("0001 0000 0005 01 03 02 0000")
	c := dialRaw(t, l.Addr().String())
	c.send("0001 0000 0006 01 06 0001 0005")
	c.expectClosed()
	if plc.Requests() != 1 {
		t.Fatalf("the device received %d requests, want only the bystander's read", plc.Requests())
	}
	waitFor(t, "the panic's event", func() bool {
		for _, ev := range rec.byAction(audit.ActionMalformed) {
			if ev.Rule == "proxy.panic" && strings.Contains(ev.Reason, "decider bug") {
				return true
			}
		}
		return false
	})
	bystander.send("0002 0000 0006 01 03 0000 0001")
	bystander.expect("0002 0000 0005 01 03 02 0000")
}
