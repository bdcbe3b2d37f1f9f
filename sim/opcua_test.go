package sim

import (
	"context"
	"testing"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// The simulated line controller serves the reference policy's nodes to an
// ordinary gopcua client and records what it receives.
func TestOPCUAServerNodes(t *testing.T) {
	s, err := StartOPCUA(OPCUAOptions{CountEvery: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := opcua.NewClient(s.Endpoint(), opcua.SecurityMode(ua.MessageSecurityModeNone), opcua.AutoReconnect(false))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)

	setpoint := ua.MustParseNodeID(OPCUASetpoint)
	write := func(node *ua.NodeID, v any) ua.StatusCode {
		t.Helper()
		resp, err := c.Write(ctx, &ua.WriteRequest{NodesToWrite: []*ua.WriteValue{{
			NodeID: node, AttributeID: ua.AttributeIDValue,
			Value: &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(v)},
		}}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.Results[0]
	}
	if st := write(setpoint, 42.5); st != ua.StatusOK {
		t.Fatalf("write setpoint: %v", st)
	}
	if st := write(setpoint, "not a number"); st != ua.StatusBadTypeMismatch {
		t.Fatalf("write string to setpoint: %v", st)
	}
	if st := write(ua.MustParseNodeID(OPCUAMode), "manual"); st != ua.StatusOK {
		t.Fatalf("write mode: %v", st)
	}
	if st := write(ua.MustParseNodeID(OPCUACounter), uint32(7)); st != ua.StatusBadNotWritable {
		t.Fatalf("write counter: %v", st)
	}
	v, err := c.Node(setpoint).Value(ctx)
	if err != nil || v.Value() != 42.5 {
		t.Fatalf("read setpoint: %v %v", v, err)
	}
	if s.Setpoint() != 42.5 || s.Mode() != "manual" {
		t.Fatalf("server state %v %q", s.Setpoint(), s.Mode())
	}
	if w := s.Writes(); len(w) != 4 || w[0].NodeID != OPCUASetpoint || w[0].Value != 42.5 || w[1].Status != ua.StatusBadTypeMismatch {
		t.Fatalf("writes %+v", w)
	}

	// Browse: Line1 has the variables and the method.
	refs, err := c.Node(ua.MustParseNodeID(OPCUALine1)).References(ctx, id.HasComponent, ua.BrowseDirectionForward, ua.NodeClassAll, true)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, r := range refs {
		names[r.NodeID.NodeID.String()] = true
	}
	for _, n := range []string{OPCUASetpoint, OPCUAMode, OPCUACounter, OPCUAResetCounters} {
		if !names[n] {
			t.Errorf("Line1 does not reference %s (%v)", n, names)
		}
	}

	// The counter counts; ResetCounters resets it.
	deadline := time.Now().Add(5 * time.Second)
	for s.Counter() < 100 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	before := s.Counter()
	res, err := c.Call(ctx, &ua.CallMethodRequest{ObjectID: ua.MustParseNodeID(OPCUALine1), MethodID: ua.MustParseNodeID(OPCUAResetCounters)})
	if err != nil || res.StatusCode != ua.StatusOK {
		t.Fatalf("call: %v %v", res, err)
	}
	if after := s.Counter(); after >= before {
		t.Errorf("counter %d after reset, %d before", after, before)
	}
	res, err = c.Call(ctx, &ua.CallMethodRequest{ObjectID: ua.MustParseNodeID(OPCUASetpoint), MethodID: ua.MustParseNodeID(OPCUAResetCounters)})
	if err != nil || res.StatusCode != ua.StatusBadMethodInvalid {
		t.Fatalf("call on the wrong object: %v %v", res, err)
	}
	if calls := s.Calls(); len(calls) != 2 || calls[0].ObjectID != OPCUALine1 || calls[0].Status != ua.StatusOK {
		t.Fatalf("calls %+v", calls)
	}
}

// A node listed in Unanswered records the write and never answers.
func TestOPCUAServerUnanswered(t *testing.T) {
	s, err := StartOPCUA(OPCUAOptions{Unanswered: []string{OPCUAMode}, CountEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := opcua.NewClient(s.Endpoint(), opcua.AutoReconnect(false), opcua.RequestTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	_, err = c.Write(ctx, &ua.WriteRequest{NodesToWrite: []*ua.WriteValue{{
		NodeID: ua.MustParseNodeID(OPCUAMode), AttributeID: ua.AttributeIDValue,
		Value: &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant("x")},
	}}})
	if err == nil {
		t.Fatal("unanswered write returned")
	}
	if len(s.Writes()) != 1 {
		t.Fatalf("writes %+v", s.Writes())
	}
}
