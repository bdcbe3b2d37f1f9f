package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/conduit-ot/conduit/audit/audittest"
)

// The demo is the README's first command: it must keep working, and its
// claims must be true of the audit trail it leaves.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole demo")
	}
	auditFile := filepath.Join(t.TempDir(), "audit.jsonl")
	var out bytes.Buffer
	if err := runDemo(context.Background(), &out, auditFile); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"DENIED  write_single_register unit=1 function=6 table=holding_registers address=12 quantity=1 values=[5000]",
		"DENIED  diagnostics unit=1 function=8 subfunction=4",
		"DENIED  write ns=2;s=Line1.Setpoint=5000",
		"The PLC received 1 write(s): holding_registers 12 = [500];",
		"Demo finished",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q\n%s", want, out.String())
		}
	}
	recs, err := audittest.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := audittest.CheckSequence(recs); err != nil {
		t.Fatal(err)
	}
	// audit/FIELDS.md: a request event's outcome is success when allowed,
	// failure when denied, so that a SIEM finds denials by event.outcome.
	for _, r := range audittest.Filter(recs, "request") {
		want := "failure"
		if r.HasType("allowed") {
			want = "success"
		}
		if got := r.String("event.outcome"); got != want {
			t.Errorf("request event %d (%s): event.outcome %q, want %q", r.Seq(), r.String("event.reason"), got, want)
		}
	}
	if n := len(audittest.AllowedWrites(recs)); n != 3 { // Modbus FC 6, OPC UA write, OPC UA call
		t.Errorf("%d allowed write events, want 3", n)
	}
}
