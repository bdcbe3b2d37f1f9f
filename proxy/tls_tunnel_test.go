package proxy

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	mb "github.com/simonvetter/modbus"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/pki/tunnel"
)

// startTunnel is `conduit connect` in-process: plain TCP on 127.0.0.1,
// mutual TLS to target presenting is.
func startTunnel(t *testing.T, target string, is *pki.Issued, serverCA *testCA) string {
	t.Helper()
	ctls, err := pki.NewClientTLS(pki.ClientOptions{CertFile: is.ChainFile, KeyFile: is.KeyFile, CAFile: serverCA.rootFile()})
	if err != nil {
		t.Fatal(err)
	}
	tun, err := tunnel.New(tunnel.Config{Target: target, TLS: ctls.Config})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go tun.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		tun.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// TestTunnelGivesLegacyClientMTLS: a plain Modbus/TCP client
// (simonvetter/modbus tcp://) → pki/tunnel (conduit connect) → mTLS
// listener → device. Reads and a write work end to end, and the policy and
// the audit trail see the tunnel's certificate, role included. With a
// revoked certificate the tunnel's connection is refused and audited; the
// legacy client just loses its connection.
func TestTunnelGivesLegacyClientMTLS(t *testing.T) {
	ca := newTestCA(t, "Plant")
	plc := startPLC(t)
	plc.SetHolding(10, 321)
	lt := newListenerTLS(t, ca)
	ids := &identityRecorder{}
	rec := &memRecorder{}
	p := startTLSProxy(t, tlsListenerConfig(t, "plc-mbaps", plc.Addr(), lt.yaml("")), ids, rec, tlsProxyOptions{noWatch: true})

	legacyCert := ca.issue(t, pki.IssueRequest{Name: "legacy-hmi", Role: "engineer"})
	c := client(t, startTunnel(t, p.addr(), legacyCert, ca)) // tcp://, no TLS
	if v, err := c.ReadRegister(10, mb.HOLDING_REGISTER); err != nil || v != 321 {
		t.Fatalf("read through the tunnel: %v, %v", v, err)
	}
	if err := c.WriteRegister(11, 654); err != nil {
		t.Fatalf("write through the tunnel: %v", err)
	}
	if plc.Holding(11) != 654 {
		t.Fatal("the write did not reach the device")
	}
	got := ids.all()
	if len(got) != 2 {
		t.Fatalf("%d decisions, want 2", len(got))
	}
	for _, id := range got {
		if id == nil || id.CommonName != "legacy-hmi" || id.Serial != legacyCert.Entry.Serial || len(id.Roles) != 1 || id.Roles[0] != "engineer" {
			t.Fatalf("the policy saw identity %+v, want the tunnel's certificate", id)
		}
	}
	if ev := rec.byAction(audit.ActionRequest)[1]; ev.Identity == nil || ev.Identity.CommonName != "legacy-hmi" || ev.TLSVersion != "1.3" {
		t.Fatalf("audit event identity %+v TLS %q", ev.Identity, ev.TLSVersion)
	}

	revoked := ca.issue(t, pki.IssueRequest{Name: "old-hmi", Role: "engineer"})
	if _, err := ca.Revoke(revoked.Entry.Serial, "superseded"); err != nil {
		t.Fatal(err)
	}
	if err := p.st.Reload(); err != nil {
		t.Fatal(err)
	}
	raw := dialRaw(t, startTunnel(t, p.addr(), revoked, ca))
	raw.send("0001 0000 0006 01 03 000a 0001")
	raw.expectClosed()
	waitFor(t, "the refusal", func() bool { return len(rec.byAction(audit.ActionHandshake)) == 1 })
	if r := rec.byAction(audit.ActionHandshake)[0].Reason; !strings.HasPrefix(r, "revoked: ") || !strings.Contains(r, revoked.Entry.Serial) {
		t.Fatalf("refusal reason %q", r)
	}
	if len(ids.all()) != 2 {
		t.Fatal("a request from the revoked tunnel reached the policy")
	}
}
