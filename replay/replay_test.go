package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/replay/internal/synth"
)

// denyWrites is a Decider that denies writes and records what it was asked.
type denyWrites struct{ inputs []string }

func (d *denyWrites) Decide(_ context.Context, in *policy.Input) policy.Decision {
	doc, err := policy.DocumentJSON(in)
	if err != nil {
		panic(err)
	}
	d.inputs = append(d.inputs, string(doc))
	if in.Op.Access == inspect.AccessWrite {
		return policy.Decision{ID: "d", Reason: "writes are denied", Rule: "test.writes", Exception: 2}
	}
	return policy.Decision{ID: "d", Allow: true, Reason: "ok"}
}

func TestReplayDecidesLikeTheProxy(t *testing.T) {
	path := writeCapture(t, func(w *synth.Writer) {
		c := w.Conn(ap("10.0.0.1:40000"), ap("10.0.0.2:502"))
		must(t, c.Handshake())
		must(t, c.Send(synth.ToServer, append(append(readHR, writeHR...), readZero...)))
		must(t, c.Send(synth.ToClient, append(slices.Clone(readHRr), hexb("0004 0000 0003 01 83 03")...)))
		must(t, c.Send(synth.ToServer, readCoils))
		must(t, c.Send(synth.ToClient, readCoilsExc))
		must(t, c.Close())
	})
	d := &denyWrites{}
	var recs []Record
	rep, err := Replay(context.Background(), []string{path}, Options{Decider: d, Records: func(r *Record) { recs = append(recs, *r) }})
	if err != nil {
		t.Fatal(err)
	}
	// The policy is asked about 3 operations; the FC 3 with quantity 0 is
	// refused as a protocol violation without asking it.
	if len(d.inputs) != 3 {
		t.Fatalf("decider asked %d times", len(d.inputs))
	}
	var in map[string]any
	if err := json.Unmarshal([]byte(d.inputs[1]), &in); err != nil {
		t.Fatal(err)
	}
	client := in["client"].(map[string]any)
	if in["listener"] != "modbus-10.0.0.2-502" || in["upstream"] != "10.0.0.2:502" || in["protocol"] != "modbus" ||
		client["address"] != "10.0.0.1" || client["port"] != 40000.0 || client["identity"] != nil {
		t.Errorf("input %s", d.inputs[1])
	}
	if rep.Operations != 4 || rep.Allowed != 2 || rep.Denied != 2 || rep.ProtocolViolations != 1 || !rep.WouldDeny() {
		t.Errorf("report %+v", rep)
	}
	if len(rep.Denials) != 2 || rep.Denials[0].Rule != "protocol.bad_quantity" && rep.Denials[1].Rule != "protocol.bad_quantity" {
		t.Errorf("denials %+v", rep.Denials)
	}
	if rep.Responses.Paired != 3 || rep.Responses.Exceptions != 2 || rep.Responses.Unanswered != 1 || rep.Responses.ExceptionCodes[3] != 1 {
		t.Errorf("responses %+v", rep.Responses)
	}

	// Records: in request order, each with its response.
	if len(recs) != 4 {
		t.Fatalf("%d records", len(recs))
	}
	type got struct {
		name, resp string
		allow      bool
		policy     bool
		exc        uint8
	}
	var gs []got
	for _, r := range recs {
		var doc struct {
			Operation struct{ Name string }
		}
		if err := json.Unmarshal(r.Input, &doc); err != nil {
			t.Fatal(err)
		}
		gs = append(gs, got{doc.Operation.Name, r.Response.Status, r.Decision.Allow, r.Decision.Policy, r.Response.ExceptionCode})
		if r.Type != "operation" || r.Flow != 1 || r.Client != "10.0.0.1:40000" || r.Time.IsZero() {
			t.Errorf("record %+v", r)
		}
	}
	want := []got{
		{"read_holding_registers", "ok", true, true, 0},
		{"write_single_register", "none", false, true, 0},
		{"read_holding_registers", "exception", false, false, 3},
		{"read_coils", "exception", true, true, 2},
	}
	if !slices.Equal(gs, want) {
		t.Errorf("records\n got %+v\nwant %+v", gs, want)
	}
	if recs[1].Decision.Reason != "writes are denied" || recs[1].Decision.ExceptionCode != 2 || recs[2].Decision.Rule != "protocol.bad_quantity" ||
		!strings.HasPrefix(recs[2].Decision.Reason, "protocol violation: modbus: protocol: bad_quantity") {
		t.Errorf("decisions %+v %+v", recs[1].Decision, recs[2].Decision)
	}

	var text bytes.Buffer
	rep.Policy = "test decider"
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"operations  4 decided: 2 allowed, 2 denied (1 protocol violations refused without the policy)",
		"LISTENER               PROTOCOL  FLOWS  OPERATIONS  ALLOWED  DENIED\nmodbus-10.0.0.2-502 *  modbus        1           4        2       2",
		"modbus       3  read_holding_registers      2        1       1          1         0",
		"     1  test.writes            writes are denied",
		"exceptions: 2 illegal data address ×1, 3 illegal data value ×1",
		"RESULT: 2 of 4 operations would be DENIED (exit status 1)",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, text.String())
		}
	}
}

func TestReplayNeedsDecider(t *testing.T) {
	if _, err := Replay(context.Background(), nil, Options{}); err == nil {
		t.Error("no error without a Decider")
	}
}
