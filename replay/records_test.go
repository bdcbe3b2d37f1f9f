package replay

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// TestAppendJSONMatchesEncodingJSON: the hand-written encoder produces the
// document encoding/json makes of a Record.
func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	ts := time.Date(2026, 5, 4, 10, 0, 0, 123456789, time.UTC)
	for _, r := range []Record{
		{
			Type: "operation", Seq: 7, Time: ts, File: "a \"b\"\\c.pcap", Flow: 3, Client: "10.0.0.1:40000", Server: "[::1]:502",
			Offset: 1234, Input: json.RawMessage(`{"protocol":"modbus","modbus":{"values":[1,2]}}`),
			Decision: &RecordDecision{Allow: false, Reason: "write of 5000 to holding_registers 15 exceeds max 1000\n\t<&>", Rule: "conduit.modbus.value",
				ID: "x-1", Revision: "sha256:ab", Action: "reset", ExceptionCode: 3, Policy: true, Error: "timeout"},
			Response: &RecordResponse{Status: "exception", Time: ts.Add(time.Millisecond), ExceptionCode: 2},
		},
		{
			Type: "operation", Seq: 8, Time: ts, Client: "c", Server: "s",
			Decision: &RecordDecision{Allow: true, Reason: "ok"},
			Response: &RecordResponse{Status: "fault", StatusCode: StatusName(0x803B0000), Reason: "r", Error: "e"},
		},
		{Type: "operation", Seq: 9, Time: ts, Decision: &RecordDecision{Reason: "x\x01\x7f"}, Response: &RecordResponse{Status: "none"}},
		{
			Type: "problem", Time: ts, File: "f", Flow: 1, Direction: "client->server", Offset: 0,
			Problem: &RecordProblem{Kind: "malformed", Reason: "bad_protocol_id", Detail: "invalid \xff utf-8 \u2028", Length: 18, Bytes: "0001"},
		},
	} {
		want, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		got := r.AppendJSON(nil)
		var a, b any
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, got)
		}
		json.Unmarshal(want, &b)
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if !bytes.Equal(ja, jb) || got[len(got)-1] != '\n' {
			t.Errorf("AppendJSON\n%s\nencoding/json\n%s", got, want)
		}
	}
}
