package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mb "github.com/simonvetter/modbus"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/pki"
)

const recheckPrefix = "client certificate no longer trusted after a TLS reload: "

// closeReasons maps connection id to the reason of its connection-close
// event.
func closeReasons(rec *memRecorder) map[uint64]string {
	out := map[uint64]string{}
	for _, ev := range rec.byAction(audit.ActionConnectionClose) {
		out[ev.ConnID] = ev.Reason
	}
	return out
}

// connOf returns the id of the connection over which the client with
// common name cn made its requests.
func connOf(t *testing.T, rec *memRecorder, cn string) uint64 {
	t.Helper()
	for _, ev := range rec.byAction(audit.ActionRequest) {
		if ev.Identity != nil && ev.Identity.CommonName == cn {
			return ev.ConnID
		}
	}
	t.Fatalf("no request event of %s", cn)
	return 0
}

// startRecheckProxy serves an mTLS listener (allow all, CRL checked) in
// front of a PLC whose holding register 10 is 0xBEEF.
func startRecheckProxy(t *testing.T, o tlsProxyOptions) (*testCA, *listenerTLS, *memRecorder, *tlsProxy) {
	t.Helper()
	ca := newTestCA(t, "Plant")
	plc := startPLC(t)
	plc.SetHolding(10, 0xBEEF)
	lt := newListenerTLS(t, ca)
	lt.setCRLs(t, ca)
	rec := &memRecorder{}
	return ca, lt, rec, startTLSProxy(t, tlsListenerConfig(t, "plc-tls", plc.Addr(), lt.yaml("")), allowAll(), rec, o)
}

func readOnce(c *mb.ModbusClient) error {
	v, err := c.ReadRegister(10, mb.HOLDING_REGISTER)
	if err == nil && v != 0xBEEF {
		err = errWrongValue
	}
	return err
}

// A reload that revokes a certificate, or takes its CA out of the client
// CA bundle, cuts the connections already established with it; the other
// clients' connections go on. Clients: simonvetter/modbus's mbaps client
// over real TLS 1.3 handshakes.
func TestTLSReloadCutsConnectionsOfWithdrawnCertificates(t *testing.T) {
	ca := newTestCA(t, "Plant")
	ca2 := newTestCA(t, "Contractor")
	plc := startPLC(t)
	plc.SetHolding(10, 0xBEEF)
	lt := newListenerTLS(t, ca)
	lt.setClientCAs(t, ca, ca2)
	lt.setCRLs(t, ca, ca2)
	rec := &memRecorder{}
	p := startTLSProxy(t, tlsListenerConfig(t, "plc-tls", plc.Addr(), lt.yaml("")), allowAll(), rec, tlsProxyOptions{noWatch: true})

	revokedCert := ca.issue(t, pki.IssueRequest{Name: "scada", Role: "operator"})
	keptCert := ca.issue(t, pki.IssueRequest{Name: "hmi", Role: "operator"})
	foreignCert := ca2.issue(t, pki.IssueRequest{Name: "vendor", Role: "operator"})
	revoked := mbapsClient(t, p.addr(), revokedCert, ca)
	revoked2 := mbapsClient(t, p.addr(), revokedCert, ca) // a second connection of the same certificate
	kept := mbapsClient(t, p.addr(), keptCert, ca)
	foreign := mbapsClient(t, p.addr(), foreignCert, ca)
	for name, c := range map[string]*mb.ModbusClient{"scada": revoked, "scada (2)": revoked2, "hmi": kept, "vendor": foreign} {
		if err := readOnce(c); err != nil {
			t.Fatalf("%s before the reloads: %v", name, err)
		}
	}
	scadaConns := map[uint64]bool{}
	for _, ev := range rec.byAction(audit.ActionRequest) {
		if ev.Identity.CommonName == "scada" {
			scadaConns[ev.ConnID] = true
		}
	}
	if len(scadaConns) != 2 {
		t.Fatalf("scada's requests came over %d connections, want 2", len(scadaConns))
	}

	// 1. A revocation (the CRL file rewritten, then a reload).
	if _, err := ca.Revoke(revokedCert.Entry.Serial, "key-compromise"); err != nil {
		t.Fatal(err)
	}
	lt.setCRLs(t, ca, ca2)
	if err := p.st.Reload(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*mb.ModbusClient{"scada": revoked, "scada (2)": revoked2} {
		if err := readOnce(c); err == nil {
			t.Errorf("%s: the revoked certificate's established connection still answers", name)
		}
	}
	for name, c := range map[string]*mb.ModbusClient{"hmi": kept, "vendor": foreign} {
		if err := readOnce(c); err != nil {
			t.Errorf("%s after the revocation: %v", name, err)
		}
	}
	waitFor(t, "the cut connections' close events", func() bool {
		r := closeReasons(rec)
		for id := range scadaConns {
			if r[id] == "" {
				return false
			}
		}
		return true
	})
	reasons := closeReasons(rec)
	for id := range scadaConns {
		want := recheckPrefix + string(pki.ReasonRevoked) + ": "
		if !strings.HasPrefix(reasons[id], want) || !strings.Contains(reasons[id], revokedCert.Entry.Serial) {
			t.Errorf("connection %d closed with reason %q, want %q… naming serial %s", id, reasons[id], want, revokedCert.Entry.Serial)
		}
	}

	// 2. A CA taken out of the bundle: its clients are cut.
	vendorConn := connOf(t, rec, "vendor")
	lt.setClientCAs(t, ca)
	if err := p.st.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := readOnce(foreign); err == nil {
		t.Error("vendor: a client of the CA taken out of the bundle still answers")
	}
	if err := readOnce(kept); err != nil {
		t.Errorf("hmi after the bundle change: %v", err)
	}
	waitFor(t, "vendor's close event", func() bool { return closeReasons(rec)[vendorConn] != "" })
	if r := closeReasons(rec)[vendorConn]; !strings.HasPrefix(r, recheckPrefix+string(pki.ReasonUnknownCA)+": ") {
		t.Errorf("vendor's connection closed with reason %q", r)
	}

	// 3. A reload that changes nothing about trust cuts nobody.
	if err := p.st.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := readOnce(kept); err != nil {
		t.Errorf("hmi after a reload with no change: %v", err)
	}
	if r, ok := closeReasons(rec)[connOf(t, rec, "hmi")]; ok {
		t.Errorf("hmi's connection was closed: %q", r)
	}
}

// A handshake that verified the certificate with the material of before a
// reload, and completed after the reload's recheck of the established
// connections, is rechecked when its connection is registered: the client
// below is held inside its handshake (after the server chose its
// configuration, before it sent its certificate) while the certificate is
// revoked.
func TestTLSReloadDuringHandshakeIsRechecked(t *testing.T) {
	ca, lt, rec, p := startRecheckProxy(t, tlsProxyOptions{noWatch: true})

	is := ca.issue(t, pki.IssueRequest{Name: "scada", Role: "operator"})
	kp := keyPair(t, is)
	asked := make(chan struct{})
	proceed := make(chan struct{})
	cfg := &tls.Config{RootCAs: certPool(ca), ServerName: "127.0.0.1",
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			close(asked)
			<-proceed
			return &kp, nil
		}}
	type dialed struct {
		c   *tls.Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", p.addr(), cfg)
		done <- dialed{c, err}
	}()
	<-asked
	if _, err := ca.Revoke(is.Entry.Serial, "key-compromise"); err != nil {
		t.Fatal(err)
	}
	lt.setCRLs(t, ca)
	if err := p.st.Reload(); err != nil {
		t.Fatal(err)
	}
	close(proceed)
	d := <-done
	if d.err != nil {
		t.Fatalf("the handshake failed (it should have used the material of before the reload): %v", d.err)
	}
	defer d.c.Close()
	resp, err := roundTrip(d.c, []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 10, 0, 1})
	if err == nil {
		t.Fatalf("the revoked certificate's connection answered: % x", resp)
	}
	// A reset: no TLS close_notify first (sending one can wait seconds
	// for a client that does not read), so no clean EOF.
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Errorf("the cut connection ended with %v, want a reset", err)
	}
	waitFor(t, "the close event", func() bool {
		for _, r := range closeReasons(rec) {
			if strings.HasPrefix(r, recheckPrefix+string(pki.ReasonRevoked)) {
				return true
			}
		}
		return false
	})
	if n := len(rec.byAction(audit.ActionRequest)); n != 0 {
		t.Errorf("%d requests of the revoked client were decided", n)
	}
}

// A bug while a connection opens (here the identity function panics, after
// a real TLS handshake) ends that connection, audited, and not the
// process: the next connection is served.
func TestPanicWhileOpeningEndsOnlyThatConnection(t *testing.T) {
	var calls atomic.Int32
	ca, _, rec, p := startRecheckProxy(t, tlsProxyOptions{
		noWatch: true,
		identity: func(st tls.ConnectionState) (*pki.Identity, error) {
			if calls.Add(1) == 1 {
				panic("identity bug")
			}
			return pki.IdentityFromCertificate(st.PeerCertificates[0])
		},
	})
	cfg := tlsClientConfig(t, ca.issue(t, pki.IssueRequest{Name: "scada", Role: "operator"}), ca)
	if _, err := readHolding(p.addr(), cfg); err == nil {
		t.Fatal("the connection whose opening panicked was served")
	}
	resp, err := readHolding(p.addr(), cfg)
	if err != nil || len(resp) != 11 || resp[9] != 0xBE || resp[10] != 0xEF {
		t.Fatalf("the next connection: % x, %v", resp, err)
	}
	waitFor(t, "the panic's audit event", func() bool {
		for _, ev := range rec.byAction(audit.ActionMalformed) {
			if ev.Rule == "proxy.panic" && strings.Contains(ev.Reason, "internal error in connection open: identity bug") {
				return true
			}
		}
		return false
	})
	p.Listener.mu.Lock()
	defer p.Listener.mu.Unlock()
	if n := len(p.Listener.conns); n > 1 {
		t.Errorf("%d connections registered, the panicked one left behind", n)
	}
}
