package proxy

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/pki"
)

// TestTLSHandshakeMatrix: one real TLS handshake per case to a proxy
// listener wired like `conduit run`. Each refusal is audited with its reason
// and never makes the proxy dial the device; the accepted certificates
// reach the device.
func TestTLSHandshakeMatrix(t *testing.T) {
	ca := newTestCA(t, "Plant")
	other := newTestCA(t, "Intruder")
	impostor := newTestCA(t, "Plant") // same names as ca, other keys
	plc := startPLC(t)
	plc.SetHolding(10, 0x1234)
	dev := startCountingDevice(t, plc.Addr())
	lt := newListenerTLS(t, ca)
	rec := &memRecorder{}
	p := startTLSProxy(t, tlsListenerConfig(t, "plc-tls", dev.addr(), lt.yaml("")), allowAll(), rec, tlsProxyOptions{noWatch: true})

	now := time.Now()
	foreign := other.issue(t, pki.IssueRequest{Name: "intruder", Role: "engineer"})
	lookalike := impostor.issue(t, pki.IssueRequest{Name: "lookalike", Role: "engineer"})
	expired := ca.issue(t, pki.IssueRequest{Name: "expired", Role: "operator", NotBefore: now.Add(-48 * time.Hour), Validity: 24 * time.Hour})
	future := ca.issue(t, pki.IssueRequest{Name: "future", Role: "operator", NotBefore: now.Add(24 * time.Hour), Validity: 24 * time.Hour})
	revoked := ca.issue(t, pki.IssueRequest{Name: "stolen", Role: "engineer"})
	if _, err := ca.Revoke(revoked.Entry.Serial, "key-compromise"); err != nil {
		t.Fatal(err)
	}
	if err := p.st.Reload(); err != nil { // the new crl.pem
		t.Fatal(err)
	}
	valid := ca.issue(t, pki.IssueRequest{Name: "hmi-1"})
	withRole := ca.issue(t, pki.IssueRequest{Name: "op-1", Role: "operator"})

	refusals := []struct {
		name   string
		client *pki.Issued
		tweak  func(*tls.Config)
		reason pki.Reason
	}{
		{"no client certificate", nil, nil, pki.ReasonNoClientCert},
		{"certificate from another CA", foreign, nil, pki.ReasonUnknownCA},
		{"certificate from a CA of the same name", lookalike, nil, pki.ReasonUnknownCA},
		{"expired", expired, nil, pki.ReasonExpired},
		{"not yet valid", future, nil, pki.ReasonNotYetValid},
		{"revoked (CRL)", revoked, nil, pki.ReasonRevoked},
		{"TLS 1.1 offered", valid, func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS11, tls.VersionTLS11 }, pki.ReasonProtocolVersion},
		{"TLS 1.2 offered to a 1.3 listener", valid, func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }, pki.ReasonProtocolVersion},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			before := len(rec.byAction(audit.ActionHandshake))
			cfg := tlsClientConfig(t, tc.client, ca)
			if tc.tweak != nil {
				tc.tweak(cfg)
			}
			if resp, err := readHolding(p.addr(), cfg); err == nil {
				t.Fatalf("refused client got a response: % x", resp)
			}
			waitFor(t, "the refusal's audit event", func() bool { return len(rec.byAction(audit.ActionHandshake)) == before+1 })
			ev := rec.byAction(audit.ActionHandshake)[before]
			if ev.Outcome != audit.OutcomeFailure || !strings.HasPrefix(ev.Reason, string(tc.reason)+": ") {
				t.Fatalf("audit event %s/%s reason %q, want failure with reason %s", ev.Action, ev.Outcome, ev.Reason, tc.reason)
			}
			if ev.Listener != "plc-tls" || !ev.Source.IsValid() || ev.Identity != nil {
				t.Fatalf("audit event listener %q source %v identity %+v", ev.Listener, ev.Source, ev.Identity)
			}
			if tc.client != nil && tc.reason != pki.ReasonProtocolVersion && !strings.Contains(ev.Reason, tc.client.Entry.Serial) {
				t.Fatalf("reason %q does not name the refused certificate's serial %s", ev.Reason, tc.client.Entry.Serial)
			}
		})
	}
	if n := dev.accepted.Load(); n != 0 {
		t.Fatalf("the device accepted %d connections after %d refused handshakes, want 0", n, len(refusals))
	}
	if n := len(rec.byAction(audit.ActionConnectionOpen)); n != 0 {
		t.Fatalf("%d connection-open events for refused clients", n)
	}

	accepted := []struct {
		name   string
		client *pki.Issued
		roles  []string
	}{
		{"valid certificate without role", valid, nil},
		{"valid certificate with role", withRole, []string{"operator"}},
	}
	for i, tc := range accepted {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := readHolding(p.addr(), tlsClientConfig(t, tc.client, ca))
			if err != nil {
				t.Fatalf("valid client refused: %v", err)
			}
			if want := []byte{0, 1, 0, 0, 0, 5, 1, 3, 2, 0x12, 0x34}; string(resp) != string(want) {
				t.Fatalf("response % x, want % x", resp, want)
			}
			if n := dev.accepted.Load(); n != int64(i+1) {
				t.Fatalf("device accepted %d connections, want %d", n, i+1)
			}
			waitFor(t, "the connection-open event", func() bool { return len(rec.byAction(audit.ActionConnectionOpen)) == i+1 })
			ev := rec.byAction(audit.ActionConnectionOpen)[i]
			if ev.Identity == nil || ev.Identity.Serial != tc.client.Entry.Serial || ev.TLSVersion != "1.3" || strings.Join(ev.Identity.Roles, ",") != strings.Join(tc.roles, ",") {
				t.Fatalf("connection-open identity %+v, TLS %q", ev.Identity, ev.TLSVersion)
			}
		})
	}
}

// TestTLSMinVersion12: a listener with min_version "1.2" accepts a TLS 1.2
// client and still refuses TLS 1.1.
func TestTLSMinVersion12(t *testing.T) {
	ca := newTestCA(t, "Plant")
	plc := startPLC(t)
	lt := newListenerTLS(t, ca)
	rec := &memRecorder{}
	p := startTLSProxy(t, tlsListenerConfig(t, "plc-tls", plc.Addr(), lt.yaml("1.2")), allowAll(), rec, tlsProxyOptions{noWatch: true})
	client := ca.issue(t, pki.IssueRequest{Name: "hmi", Role: "operator"})

	cfg := tlsClientConfig(t, client, ca)
	cfg.MaxVersion = tls.VersionTLS12
	if _, err := readHolding(p.addr(), cfg); err != nil {
		t.Fatalf("TLS 1.2 client refused by a min_version 1.2 listener: %v", err)
	}
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS11, tls.VersionTLS11
	if _, err := readHolding(p.addr(), cfg); err == nil {
		t.Fatal("TLS 1.1 client accepted")
	}
	waitFor(t, "the refusal", func() bool { return len(rec.byAction(audit.ActionHandshake)) == 1 })
	if r := rec.byAction(audit.ActionHandshake)[0].Reason; !strings.HasPrefix(r, string(pki.ReasonProtocolVersion)) {
		t.Fatalf("reason %q", r)
	}
	if opens := rec.byAction(audit.ActionConnectionOpen); len(opens) != 1 || opens[0].TLSVersion != "1.2" {
		t.Fatalf("connection-open events %+v", opens)
	}
}

// TestNewRefusesTLSThatDoesNotVerify: a caller's own TLS configuration must
// make crypto/tls verify client certificates; ServerTLS and TLS exclude
// each other.
func TestNewRefusesTLSThatDoesNotVerify(t *testing.T) {
	lc := listenerConfig(t, "127.0.0.1:1", "")
	for _, auth := range []tls.ClientAuthType{tls.NoClientCert, tls.RequestClientCert, tls.RequireAnyClientCert, tls.VerifyClientCertIfGiven} {
		if _, err := New(Options{Listener: lc, Decider: allowAll(), Recorder: &memRecorder{}, TLS: &tls.Config{ClientAuth: auth}}); err == nil {
			t.Errorf("ClientAuth %v accepted", auth)
		}
	}
	ca := newTestCA(t, "Plant")
	lt := newListenerTLS(t, ca)
	lc = tlsListenerConfig(t, "plc-tls", "127.0.0.1:1", lt.yaml(""))
	st, err := pki.NewServerTLS(t.Context(), lc.TLS, pki.ServerOptions{NoWatch: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := New(Options{Listener: lc, Decider: allowAll(), Recorder: &memRecorder{}, ServerTLS: st, TLS: &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert}}); err == nil {
		t.Error("ServerTLS and TLS both accepted")
	}
	if _, err := New(Options{Listener: lc, Decider: allowAll(), Recorder: &memRecorder{}, ServerTLS: st}); err != nil {
		t.Errorf("ServerTLS refused: %v", err)
	}
}

// TestTLSHandshakeTimeout: a client that connects and never completes the
// handshake is cut at timeouts.handshake, audited as handshake_timeout,
// and never makes the proxy dial.
func TestTLSHandshakeTimeout(t *testing.T) {
	ca := newTestCA(t, "Plant")
	plc := startPLC(t)
	dev := startCountingDevice(t, plc.Addr())
	lt := newListenerTLS(t, ca)
	rec := &memRecorder{}
	p := startTLSProxy(t, tlsListenerConfig(t, "plc-tls", dev.addr(), lt.yaml("")+"    timeouts:\n      handshake: 200ms\n"), allowAll(), rec, tlsProxyOptions{noWatch: true})
	start := time.Now()
	c := dialRaw(t, p.addr())
	c.send("0001 0000 0006 01 03 000a 0001") // Modbus where a ClientHello belongs
	c.expectClosed()
	silent := dialRaw(t, p.addr()) // says nothing at all
	silent.expectClosed()
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("closed after %s", el)
	}
	waitFor(t, "two refusals", func() bool { return len(rec.byAction(audit.ActionHandshake)) == 2 })
	codes := map[string]bool{}
	for _, ev := range rec.byAction(audit.ActionHandshake) {
		code, _, _ := strings.Cut(ev.Reason, ": ")
		codes[code] = true
	}
	if !codes[string(pki.ReasonHandshakeTimeout)] || !codes[string(pki.ReasonHandshakeFailed)] {
		t.Fatalf("reason codes %v, want handshake_failed (not TLS) and handshake_timeout", codes)
	}
	if n := dev.accepted.Load(); n != 0 {
		t.Fatalf("the device accepted %d connections", n)
	}
}
