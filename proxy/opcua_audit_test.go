package proxy

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/audit/audittest"
	"github.com/conduit-ot/conduit/sim"
)

// The production path: reference policy and the audit file. The trail as
// written on disk shows the OPC UA operation, the session and the status
// the client received.
func TestOPCUAAuditFile(t *testing.T) {
	srv := startSimUA(t, sim.OPCUAOptions{CountEvery: -1})
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	sink, err := audit.OpenFile(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := startUAProxy(t, uaListenerConfig(t, srv.Addr(), "", ""), referencePolicy(t), sink, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := gopcuaClient(t, ctx, proxyURL(l))
	if resp, err := c.Write(ctx, writeReq(sim.OPCUASetpoint, 600.0)); err != nil || resp.Results[0] != ua.StatusOK {
		t.Fatalf("allowed write: %v %v", resp, err)
	}
	if _, err := c.Write(ctx, writeReq(sim.OPCUASetpoint, 1001.0)); !errors.Is(err, ua.StatusBadUserAccessDenied) {
		t.Fatalf("denied write: %v", err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	recs, err := audittest.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := audittest.CheckSequence(recs); err != nil {
		t.Fatal(err)
	}
	var allowed, denied audittest.Record
	for _, r := range audittest.Filter(recs, audit.ActionRequest) {
		if r.String("opcua.service") != "Write" {
			continue
		}
		if r.HasType("allowed") {
			allowed = r
		} else {
			denied = r
		}
	}
	if allowed == nil || denied == nil {
		t.Fatalf("write events missing in %d records", len(recs))
	}
	if !allowed.AllowedWrite() || allowed.String("opcua.session.identity_type") != "anonymous" || allowed.Has("opcua.status_code") {
		t.Errorf("allowed write record: %v", allowed)
	}
	w, _ := denied.Get("opcua.writes")
	items, _ := w.([]any)
	if len(items) != 1 {
		t.Fatalf("denied record writes: %v", w)
	}
	item, _ := items[0].(map[string]any)
	if denied.String("opcua.status_code") != "0x801F0000" || denied.String("opcua.status_name") != "BadUserAccessDenied" ||
		item["node_id"] != sim.OPCUASetpoint || fmt.Sprint(item["value"]) != "1001" || denied.String("conduit.deny_action") != "exception" {
		t.Errorf("denied write record: %v", denied)
	}
	if srv.Setpoint() != 600 {
		t.Errorf("server setpoint %v", srv.Setpoint())
	}
}
