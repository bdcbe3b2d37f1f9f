package audit_test

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/pki"
)

// The fast path for Modbus request events (encode_fast.go) must write
// exactly the bytes zap writes. This compares the two on generated events
// that reach every field, every branch and every escaping rule.
func TestFastPathMatchesZap(t *testing.T) {
	fast := audit.NewEncoder(testObserver)
	slow := audit.NewEncoder(testObserver)
	audit.SetSlowPath(slow, true)
	r := rand.New(rand.NewPCG(7, 8))
	strs := []string{"", "plain", `quote " and \ backslash`, "new\nline\ttab\rcr", "ctl \x00\x01\x1f\x7f",
		"invalid \xff\xfe utf-8 \xe2\x82", "ünïcødé € 𝄞", "\u2028\u2029<script>&amp;", "a"}
	pick := func() string { return strs[r.IntN(len(strs))] }
	ids := []*pki.Identity{nil, testIdentity(), {CommonName: pick(), Roles: []string{pick(), pick()}}, {CommonName: "x"}}
	addrs := []netip.AddrPort{{}, netip.MustParseAddrPort("10.1.2.7:50123"), netip.MustParseAddrPort("[fe80::1%eth0]:502"),
		netip.MustParseAddrPort("[::ffff:10.0.0.1]:1")}
	times := []time.Time{{}, testTime, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		time.Date(2026, 1, 2, 3, 4, 5, 120000000, time.FixedZone("X", 3600)), time.Unix(0, 1)}
	tables := []inspect.Table{inspect.TableNone, inspect.TableCoils, inspect.TableDiscreteInputs,
		inspect.TableHoldingRegisters, inspect.TableInputRegisters, inspect.TableFile, inspect.TableFIFO}
	functions := []uint8{1, 2, 3, 4, 5, 6, 8, 15, 16, 20, 21, 22, 23, 24, 43, 99}
	var buf1, buf2 []byte
	fastCount := 0
	for i := range 20000 {
		m := inspect.Modbus{
			Unit: uint8(r.IntN(256)), Function: functions[r.IntN(len(functions))],
			Subfunction: uint16(r.IntN(3) * 7), HasSubfunction: r.IntN(2) == 0,
			Table: tables[r.IntN(len(tables))], Address: uint16(r.IntN(65536)), Quantity: uint16(r.IntN(200)),
			AndMask: uint16(r.IntN(65536)), OrMask: uint16(r.IntN(65536)),
			ReadAddress: uint16(r.IntN(100)), ReadQuantity: uint16(r.IntN(100)),
			DeviceIDCode: uint8(r.IntN(5)), ObjectID: uint8(r.IntN(256)),
		}
		if r.IntN(3) == 0 {
			m.Subfunction = 14
		}
		for range r.IntN(4) {
			m.Values = append(m.Values, uint16(r.IntN(65536)))
		}
		for range r.IntN(3) {
			fr := inspect.FileRecord{File: uint16(r.IntN(10)), Record: uint16(r.IntN(1000)), Length: uint16(r.IntN(5))}
			for range r.IntN(3) {
				fr.Values = append(fr.Values, uint16(r.IntN(65536)))
			}
			m.FileRecords = append(m.FileRecords, fr)
		}
		ev := &audit.Event{
			Seq: uint64(r.IntN(3)) * uint64(r.Uint32()), Time: times[r.IntN(len(times))],
			Action: audit.ActionRequest, Outcome: []string{"", audit.OutcomeSuccess, audit.OutcomeFailure, pick()}[r.IntN(4)],
			Reason: pick(), DecisionID: pick(), Allowed: r.IntN(2) == 0, DryRun: r.IntN(4) == 0,
			Rule: pick(), Revision: pick(), DenyAction: []string{"", "exception", "reset", pick()}[r.IntN(4)],
			Listener: pick(), ConnID: uint64(r.IntN(3)) * uint64(r.Uint32()),
			Source: addrs[r.IntN(len(addrs))], Dest: addrs[r.IntN(len(addrs))],
			Protocol: []string{"", inspect.ProtocolModbus}[r.IntN(2)], Identity: ids[r.IntN(len(ids))],
			TLSVersion:    []string{"", "1.3", pick()}[r.IntN(3)],
			Op:            &inspect.Operation{Protocol: inspect.ProtocolModbus, Access: inspect.Access(r.IntN(5)), Name: pick(), Modbus: m},
			ExceptionCode: uint8(r.IntN(3)) * uint8(r.IntN(256)),
		}
		var err1, err2 error
		buf1, err1 = fast.AppendEvent(buf1[:0], ev)
		buf2, err2 = slow.AppendEvent(buf2[:0], ev)
		if err1 != nil || err2 != nil {
			t.Fatalf("event %d: errors %v, %v", i, err1, err2)
		}
		if !bytes.Equal(buf1, buf2) {
			t.Fatalf("event %d: fast path differs from zap:\nfast %s\n zap %s", i, buf1, buf2)
		}
		if !json.Valid(buf1) {
			t.Fatalf("event %d: invalid JSON %s", i, buf1)
		}
		fastCount++
	}
	if fastCount == 0 {
		t.Fatal("no event compared")
	}
}

// Events off the fast path (other actions, OPC UA, frames) are zap's alone:
// the encoder gives the same bytes with the fast path on or off.
func TestFastPathLeavesOtherEventsToZap(t *testing.T) {
	fast := audit.NewEncoder(testObserver)
	slow := audit.NewEncoder(testObserver)
	audit.SetSlowPath(slow, true)
	open := modbusWrite()
	open.Action, open.Op, open.DecisionID = audit.ActionConnectionOpen, nil, ""
	malformed := modbusWrite()
	malformed.Action, malformed.Bytes = audit.ActionMalformed, []byte{1, 2, 3}
	withFrame := modbusWrite()
	withFrame.Bytes = []byte{0, 1, 0, 0, 0, 6}
	for i, ev := range []*audit.Event{open, malformed, withFrame, opcuaWrite()} {
		a, _ := fast.AppendEvent(nil, ev)
		b, _ := slow.AppendEvent(nil, ev)
		if !bytes.Equal(a, b) {
			t.Errorf("event %d:\n%s\n%s", i, a, b)
		}
	}
}
