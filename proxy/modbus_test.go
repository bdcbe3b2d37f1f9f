package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	mb "github.com/simonvetter/modbus"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/sim"
)

func startPLC(t *testing.T) *sim.PLC {
	t.Helper()
	plc, err := sim.StartPLC(sim.PLCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plc.Close() })
	return plc
}

// client returns a simonvetter/modbus client (an independent Modbus
// implementation) connected through the proxy.
func client(t *testing.T, addr string) *mb.ModbusClient {
	t.Helper()
	c, err := mb.NewClient(&mb.ClientConfiguration{URL: "tcp://" + addr, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestAllowAllRoundTripsEveryCommonFunction(t *testing.T) {
	plc := startPLC(t)
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), allowAll(), rec)
	c := client(t, l.Addr().String())

	if err := c.WriteCoil(3, true); err != nil { // FC 5
		t.Fatal(err)
	}
	if err := c.WriteCoils(10, []bool{true, false, true}); err != nil { // FC 15
		t.Fatal(err)
	}
	if err := c.WriteRegister(12, 700); err != nil { // FC 6
		t.Fatal(err)
	}
	if err := c.WriteRegisters(13, []uint16{1, 2, 3}); err != nil { // FC 16
		t.Fatal(err)
	}
	coils, err := c.ReadCoils(0, 16) // FC 1
	if err != nil {
		t.Fatal(err)
	}
	if !coils[3] || !coils[10] || coils[11] || !coils[12] {
		t.Errorf("coils = %v", coils)
	}
	di, err := c.ReadDiscreteInputs(4, 3) // FC 2
	if err != nil || di[0] || !di[1] || di[2] {
		t.Errorf("discrete inputs = %v, %v", di, err)
	}
	regs, err := c.ReadRegisters(12, 4, mb.HOLDING_REGISTER) // FC 3
	if err != nil || fmt.Sprint(regs) != "[700 1 2 3]" {
		t.Errorf("holding = %v, %v", regs, err)
	}
	in, err := c.ReadRegisters(5, 2, mb.INPUT_REGISTER) // FC 4
	if err != nil || fmt.Sprint(in) != "[1005 1006]" {
		t.Errorf("input = %v, %v", in, err)
	}

	if got := len(plc.Writes()); got != 4 {
		t.Errorf("PLC applied %d writes, want 4", got)
	}
	reqs := rec.byAction(audit.ActionRequest)
	if len(reqs) != 8 {
		t.Fatalf("%d request events, want 8", len(reqs))
	}
	for _, ev := range reqs {
		if !ev.Allowed || ev.DecisionID == "" || ev.Op == nil || ev.Op.Protocol != inspect.ProtocolModbus {
			t.Errorf("event %+v", ev)
		}
	}
	if reqs[0].Op.Name != "write_single_coil" || reqs[0].Op.Modbus.Address != 3 || fmt.Sprint(reqs[0].Op.Modbus.Values) != "[1]" {
		t.Errorf("first event op = %+v", reqs[0].Op)
	}
}

func TestDeniedWriteGetsExceptionAndNeverReachesDevice(t *testing.T) {
	plc := startPLC(t)
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), denyWrites(), rec)
	c := client(t, l.Addr().String())

	if err := c.WriteRegister(12, 700); !errors.Is(err, mb.ErrIllegalFunction) {
		t.Fatalf("denied write: err = %v, want illegal function (exception 1)", err)
	}
	// The connection lives on.
	if _, err := c.ReadRegisters(12, 1, mb.HOLDING_REGISTER); err != nil {
		t.Fatalf("read after deny: %v", err)
	}
	if w := plc.Writes(); len(w) != 0 {
		t.Fatalf("device received %v", w)
	}
	reqs := rec.byAction(audit.ActionRequest)
	if len(reqs) != 2 || reqs[0].Allowed || reqs[0].ExceptionCode != 1 || reqs[0].DenyAction != "exception" || reqs[0].Reason != "writes are denied" {
		t.Fatalf("events = %+v", reqs)
	}
}

func TestDenyActionsResetAndDrop(t *testing.T) {
	plc := startPLC(t)
	t.Run("reset", func(t *testing.T) {
		l := startProxy(t, listenerConfig(t, plc.Addr(), "    deny_action: reset"), denyWrites(), &memRecorder{})
		c := dialRaw(t, l.Addr().String())
		c.send("0001 0000 0006 01 06 000c 02bc")
		c.expectClosed()
	})
	t.Run("drop", func(t *testing.T) {
		l := startProxy(t, listenerConfig(t, plc.Addr(), "    deny_action: drop"), denyWrites(), &memRecorder{})
		c := dialRaw(t, l.Addr().String())
		c.send("0001 0000 0006 01 06 000c 02bc")
		if b, err := c.tryRecv(300 * time.Millisecond); err == nil {
			t.Fatalf("dropped request answered: % x", b)
		}
		c.send("0002 0000 0006 01 03 000c 0001")
		c.expect("0002 0000 0005 01 03 02 0000")
	})
	t.Run("policy chooses the exception code", func(t *testing.T) {
		d := &funcDecider{fn: func(in *policy.Input) policy.Decision {
			return policy.Decision{Reason: "no", Exception: 2}
		}}
		l := startProxy(t, listenerConfig(t, plc.Addr(), "    deny_exception: 4"), d, &memRecorder{})
		c := dialRaw(t, l.Addr().String())
		c.send("0001 0000 0006 01 03 000c 0001")
		c.expect("0001 0000 0003 01 83 02")
	})
	if len(plc.Writes()) != 0 {
		t.Fatal("a denied write reached the device")
	}
}

func TestAuditFailureDeniesTheOperation(t *testing.T) {
	plc := startPLC(t)
	rec := &memRecorder{fail: func(ev *audit.Event) bool { return ev.Action == audit.ActionRequest }}
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	c.send("0001 0000 0006 01 06 000c 02bc")
	c.expect("0001 0000 0003 01 86 04") // server device failure
	if plc.Requests() != 0 {
		t.Fatal("an operation whose audit event failed reached the device")
	}
}

func TestProtocolViolationGetsConformingExceptionAndConnectionLives(t *testing.T) {
	plc := startPLC(t)
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	c.send("0001 0000 0006 01 03 0000 007e") // read 126 registers
	c.expect("0001 0000 0003 01 83 03")
	c.send("0002 0000 0006 01 05 0001 1234") // FC5 value neither 0 nor FF00
	c.expect("0002 0000 0003 01 85 03")
	c.send("0003 0000 0006 01 03 ffff 0002") // past the address space
	c.expect("0003 0000 0003 01 83 02")
	c.send("0004 0000 0006 01 03 0000 0001")
	c.expect("0004 0000 0005 01 03 02 0000")
	if plc.Requests() != 1 {
		t.Fatalf("device saw %d requests, want only the valid one", plc.Requests())
	}
	denied := 0
	for _, ev := range rec.byAction(audit.ActionRequest) {
		if !ev.Allowed {
			denied++
		}
	}
	if denied != 3 {
		t.Fatalf("%d denied events, want 3", denied)
	}
}

// The libmodbus issue 514 attack: a read whose MBAP length hides a write.
func TestLengthSmugglingClosesOnlyThatConnection(t *testing.T) {
	plc := startPLC(t)
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), allowAll(), rec)
	other := client(t, l.Addr().String())

	c := dialRaw(t, l.Addr().String())
	// MBAP length 0x0c covers FC3 (5 bytes) + a hidden FC6 PDU (5 bytes)...
	c.send("0001 0000 000c 01 03 0000 0001 06 000c 02bc 00")
	c.expectClosed()
	if plc.Requests() != 0 {
		t.Fatal("smuggled frame reached the device")
	}
	mal := rec.byAction(audit.ActionMalformed)
	if len(mal) != 1 || mal[0].Rule != "framing.length_mismatch" {
		t.Fatalf("malformed events = %+v", mal)
	}
	if _, err := other.ReadRegisters(0, 1, mb.HOLDING_REGISTER); err != nil {
		t.Fatalf("other connection harmed: %v", err)
	}
}

func TestUntrustedFramingClosesConnection(t *testing.T) {
	plc := startPLC(t)
	for name, frame := range map[string]string{
		"protocol id not 0": "0001 0001 0006 01 03 0000 0001",
		"length 0xFFFF":     "0001 0000 ffff 01 03 0000 0001",
		"length 1":          "0001 0000 0001 01",
		"http":              "474554202f20485454502f312e310d0a0d0a",
	} {
		t.Run(name, func(t *testing.T) {
			rec := &memRecorder{}
			l := startProxy(t, listenerConfig(t, plc.Addr(), ""), allowAll(), rec)
			c := dialRaw(t, l.Addr().String())
			c.send(frame)
			c.expectClosed()
			waitFor(t, "malformed event", func() bool { return len(rec.byAction(audit.ActionMalformed)) == 1 })
			waitFor(t, "close event", func() bool { return len(rec.byAction(audit.ActionConnectionClose)) == 1 })
		})
	}
	if plc.Requests() != 0 {
		t.Fatal("device saw a request")
	}
}

func TestSplitAndBatchedFrames(t *testing.T) {
	plc := startPLC(t)
	plc.SetHolding(7, 0xBEEF)
	l := startProxy(t, listenerConfig(t, plc.Addr(), "    max_outstanding: 64"), allowAll(), &memRecorder{})
	c := dialRaw(t, l.Addr().String())

	// One request, one byte per write.
	for _, b := range unhex(t, "0001 0000 0006 01 03 0007 0001") {
		c.Write([]byte{b})
		time.Sleep(time.Millisecond)
	}
	c.expect("0001 0000 0005 01 03 02 beef")

	// 50 pipelined requests in one write.
	var batch []byte
	for i := 0; i < 50; i++ {
		batch = append(batch, unhex(t, fmt.Sprintf("%04x 0000 0006 01 03 0007 0001", 0x100+i))...)
	}
	c.Write(batch)
	seen := map[string]bool{}
	for i := 0; i < 50; i++ {
		r := c.recv()
		seen[fmt.Sprintf("% x", r)] = true
	}
	for i := 0; i < 50; i++ {
		want := fmt.Sprintf("% x", unhex(t, fmt.Sprintf("%04x 0000 0005 01 03 02 beef", 0x100+i)))
		if !seen[want] {
			t.Fatalf("no response %s", want)
		}
	}
}

func TestUnknownFunctionScanIsDeniedByDefault(t *testing.T) {
	plc := startPLC(t)
	// The fake policy is deny-by-default for "other", as the reference
	// policy is.
	d := &funcDecider{fn: func(in *policy.Input) policy.Decision {
		if in.Op.Access == inspect.AccessOther {
			return policy.Decision{Reason: "not allowed"}
		}
		return policy.Decision{Allow: true}
	}}
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), d, &memRecorder{})
	c := dialRaw(t, l.Addr().String())
	known := map[int]bool{1: true, 2: true, 3: true, 4: true, 5: true, 6: true, 7: true, 8: true, 11: true, 12: true, 15: true, 16: true, 17: true, 20: true, 21: true, 22: true, 23: true, 24: true, 43: true}
	for fc := 1; fc < 0x80; fc++ {
		if known[fc] {
			continue
		}
		c.send(fmt.Sprintf("%04x 0000 0004 01 %02x 0000", fc, fc))
		c.expect(fmt.Sprintf("%04x 0000 0003 01 %02x 01", fc, fc|0x80))
	}
	if plc.Requests() != 0 {
		t.Fatal("an unknown function reached the device")
	}
}

func TestUnsolicitedResponseIsDropped(t *testing.T) {
	// A device that answers each request twice: once correctly, then with
	// a transaction id nobody asked for.
	dev := fakeDevice(t, func(req []byte, conn net.Conn) {
		resp := []byte{req[0], req[1], 0, 0, 0, 5, req[6], req[7], 2, 0x12, 0x34}
		conn.Write(resp)
		conn.Write([]byte{0x77, 0x77, 0, 0, 0, 5, req[6], req[7], 2, 0xde, 0xad})
	})
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, dev, ""), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	c.send("0001 0000 0006 01 03 0000 0001")
	c.expect("0001 0000 0005 01 03 02 1234")
	if b, err := c.tryRecv(300 * time.Millisecond); err == nil {
		t.Fatalf("unsolicited response delivered: % x", b)
	}
	c.send("0002 0000 0006 01 03 0000 0001")
	c.expect("0002 0000 0005 01 03 02 1234")
	waitFor(t, "unsolicited events", func() bool { return len(rec.byAction(audit.ActionUnsolicited)) == 2 })
}

func TestOutstandingLimit(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	received := 0
	dev := fakeDevice(t, func(req []byte, conn net.Conn) {
		mu.Lock()
		received++
		mu.Unlock()
		<-release
		conn.Write([]byte{req[0], req[1], 0, 0, 0, 5, req[6], req[7], 2, 0, 1})
	})
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, dev, "    max_outstanding: 4"), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	var batch []byte
	for i := 0; i < 20; i++ {
		batch = append(batch, unhex(t, fmt.Sprintf("%04x 0000 0006 01 03 0000 0001", i))...)
	}
	c.Write(batch)
	// 16 are refused at once with exception 6 (server device busy).
	for i := 4; i < 20; i++ {
		c.expect(fmt.Sprintf("%04x 0000 0003 01 83 06", i))
	}
	close(release)
	got := map[string]bool{}
	for i := 0; i < 4; i++ {
		got[fmt.Sprintf("% x", c.recv())] = true
	}
	for i := 0; i < 4; i++ {
		if want := fmt.Sprintf("% x", unhex(t, fmt.Sprintf("%04x 0000 0005 01 03 02 0001", i))); !got[want] {
			t.Fatalf("missing response %s in %v", want, got)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if received != 4 {
		t.Fatalf("device received %d requests, want 4", received)
	}
}

func TestGatewayExceptions(t *testing.T) {
	t.Run("unreachable", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now
		l := startProxy(t, listenerConfig(t, addr, ""), allowAll(), &memRecorder{})
		c := dialRaw(t, l.Addr().String())
		c.send("0001 0000 0006 01 03 0000 0001")
		c.expect("0001 0000 0003 01 83 0a")
	})
	t.Run("timeout", func(t *testing.T) {
		dev := fakeDevice(t, func(req []byte, conn net.Conn) {}) // never answers
		l := startProxy(t, listenerConfig(t, dev, "    timeouts:\n      response: 200ms"), allowAll(), &memRecorder{})
		c := dialRaw(t, l.Addr().String())
		c.send("0001 0000 0006 01 03 0000 0001")
		c.expect("0001 0000 0003 01 83 0b")
	})
}

func TestConnectionLimitAndIdleTimeout(t *testing.T) {
	plc := startPLC(t)
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, plc.Addr(), "    max_connections: 1\n    timeouts:\n      idle: 300ms"), allowAll(), rec)
	first := dialRaw(t, l.Addr().String())
	first.send("0001 0000 0006 01 03 0000 0001")
	first.expect("0001 0000 0005 01 03 02 0000")
	// Over the limit: accepted and reset at once (the reset may even beat
	// the end of the client's connect).
	if conn, err := net.DialTimeout("tcp", l.Addr().String(), 2*time.Second); err == nil {
		t.Cleanup(func() { conn.Close() })
		(&rawConn{t: t, Conn: conn}).expectClosed()
	}
	first.expectClosed() // idle timeout
	waitFor(t, "the first connection's slot", func() bool { return len(rec.byAction(audit.ActionConnectionClose)) == 1 })
	third := dialRaw(t, l.Addr().String())
	third.send("0001 0000 0006 01 03 0000 0001")
	third.expect("0001 0000 0005 01 03 02 0000")
	refused := 0
	for _, ev := range rec.byAction(audit.ActionConnectionOpen) {
		if ev.Outcome == audit.OutcomeFailure {
			refused++
		}
	}
	if refused != 1 {
		t.Fatalf("%d refused connection events, want 1", refused)
	}
}

// fakeDevice serves raw requests with handle, for device misbehaviour that
// no real implementation produces on purpose.
func fakeDevice(t *testing.T, handle func(req []byte, conn net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				for {
					hdr := make([]byte, 6)
					if _, err := io.ReadFull(conn, hdr); err != nil {
						return
					}
					body := make([]byte, int(hdr[4])<<8|int(hdr[5]))
					if _, err := io.ReadFull(conn, body); err != nil {
						return
					}
					go handle(append(hdr, body...), conn)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// Shutdown's deadline: a request the device never answers keeps its
// connection in the drain; when the deadline passes, what is left is reset
// (a TLS close_notify could wait seconds per client that does not read),
// audited with the reason "shutdown deadline", and Shutdown returns.
func TestShutdownDeadlineResetsWhatIsLeft(t *testing.T) {
	dev := fakeDevice(t, func(req []byte, conn net.Conn) {}) // never answers
	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, dev, "    timeouts:\n      response: 30s"), allowAll(), rec)
	c := dialRaw(t, l.Addr().String())
	c.send("0001 0000 0006 01 03 0000 0001")
	waitFor(t, "the request to be forwarded", func() bool { return len(rec.byAction(audit.ActionRequest)) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := l.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the deadline", err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 16)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the client's connection ended with %v, want a reset", err)
	}
	closes := rec.byAction(audit.ActionConnectionClose)
	if len(closes) != 1 || closes[0].Reason != "shutdown deadline" {
		t.Errorf("close events %+v, want one with reason shutdown deadline", closes)
	}
}
