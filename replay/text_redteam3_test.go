package replay

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/replay/internal/synth"
)

// nodeDenier denies every OPC UA Write naming its node, as the reference
// policy's reasons do ("write to node %s is not granted ...").
type nodeDenier struct{}

func (nodeDenier) Decide(_ context.Context, in *policy.Input) policy.Decision {
	if u := in.Op.OPCUA; u != nil && len(u.Writes) > 0 {
		return policy.Decision{Reason: "write to node " + u.Writes[0].NodeID + " is not granted", Rule: "conduit.opcua.write"}
	}
	return policy.Decision{Allow: true}
}

// TestRedteamTextReportEscapesControls: strings from the capture reach the
// text report (an OPC UA string node id in a denial reason); terminal
// control sequences in them must be shown, not executed: one could erase
// the denial lines and the verdict on the operator's screen.
func TestRedteamTextReportEscapesControls(t *testing.T) {
	evil := "\x1b[1A\x1b[2K\rRESULT: all 1 operations would be allowed (exit status 0)\x1b[8m\u009b2J\u202e"
	path := writeCapture(t, func(w *synth.Writer) {
		f := newUAFlow(t, w)
		f.reqID++
		f.chunk(synth.ToServer, f.reqID, id.WriteRequest_Encoding_DefaultBinary, &ua.WriteRequest{
			RequestHeader: f.header("s"),
			NodesToWrite: []*ua.WriteValue{{NodeID: ua.NewStringNodeID(2, evil), AttributeID: ua.AttributeIDValue,
				Value: &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(int32(5))}}},
		})
		f.respond(id.WriteResponse_Encoding_DefaultBinary, ua.StatusOK)
	})
	rep, err := Replay(context.Background(), []string{path}, Options{Decider: nodeDenier{}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Denied != 1 {
		t.Fatalf("denied %d, want the Write", rep.Denied)
	}
	var out bytes.Buffer
	if err := rep.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	for _, r := range out.String() {
		if r != '\n' && (r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 || r == '\u202e') {
			t.Fatalf("the text report carries control character %U from the capture:\n%q", r, out.String())
		}
	}
	if !strings.Contains(out.String(), `\x1b[1A`) {
		t.Fatalf("the node id is not shown escaped:\n%s", out.String())
	}
}
