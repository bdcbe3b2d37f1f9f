package audit_test

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/conduit-ot/conduit/audit"
)

// With limits.max_connections above the default cache bound, every live
// connection keeps its encoded constant fields: the cache is not emptied
// and refilled on every event (which would re-encode each connection's
// certificate each time).
func TestEncoderCacheFollowsConnectionLimit(t *testing.T) {
	const conns = 6000
	for _, tc := range []struct {
		connections int
		wantAll     bool
	}{{0, false}, {conns, true}} {
		s, err := audit.OpenFile(filepath.Join(t.TempDir(), "audit.jsonl"), audit.Options{Connections: tc.connections})
		if err != nil {
			t.Fatal(err)
		}
		evs := make([]*audit.Event, conns)
		for i := range evs {
			ev := modbusWrite()
			ev.Action, ev.Op, ev.Outcome = audit.ActionConnectionOpen, nil, audit.OutcomeSuccess
			ev.Source = netip.AddrPortFrom(netip.MustParseAddr("10.1.2.7"), uint16(10000+i))
			evs[i] = ev
		}
		s.RecordBatch(evs, make([]error, conns))
		got := audit.CachedBases(audit.SinkEncoder(s))
		if all := got == conns; all != tc.wantAll {
			t.Errorf("Connections %d: %d of %d connections cached", tc.connections, got, conns)
		}
		s.Close()
	}
}
