package proxy

import (
	"crypto/tls"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mb "github.com/simonvetter/modbus"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/pki"
)

// poller reads holding register 10 over one established connection every
// interval until stop, counting answers and failures.
type poller struct {
	client     *mb.ModbusClient
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []error
	stop       chan struct{}
	done       chan struct{}
}

func startPoller(c *mb.ModbusClient, interval time.Duration, want uint16) *poller {
	p := &poller{client: c, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			v, err := c.ReadRegister(10, mb.HOLDING_REGISTER)
			if err == nil && v != want {
				err = errWrongValue
			}
			if err != nil {
				p.failed.Add(1)
				p.mu.Lock()
				p.errs = append(p.errs, err)
				p.mu.Unlock()
				continue
			}
			p.ok.Add(1)
		}
	}()
	return p
}

var errWrongValue = &wrongValue{}

type wrongValue struct{}

func (*wrongValue) Error() string { return "wrong register value" }

// finish stops the poller and fails the test on any failed request.
func (p *poller) finish(t *testing.T) int64 {
	t.Helper()
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.failed.Load(); n != 0 {
		t.Fatalf("%d of %d polls failed: %v", n, n+p.ok.Load(), p.errs)
	}
	return p.ok.Load()
}

// serverSerial makes a new TLS connection and returns the serial of the
// certificate the proxy presents.
func serverSerial(t *testing.T, addr string, cfg *tls.Config) string {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return pki.SerialString(c.ConnectionState().PeerCertificates[0].SerialNumber)
}

// TestTLSReloadUnderTraffic: a Modbus/TCP Security client polls at 20
// requests/s over one established connection while the server certificate,
// the client CA bundle and the CRL are replaced on disk — the first two
// followed by Reload (what SIGHUP calls), the CRL picked up by the file
// watch alone. No poll fails and the connection is never replaced; new
// connections get the new server certificate, a client of the newly
// trusted CA gets in, and the revoked certificates (the poller's own among
// them) are refused on their next connection, audited as revoked.
func TestTLSReloadUnderTraffic(t *testing.T) {
	ca := newTestCA(t, "Plant")
	ca2 := newTestCA(t, "Plant 2") // the CA that the bundle comes to trust
	plc := startPLC(t)
	plc.SetHolding(10, 0xBEEF)
	lt := newListenerTLS(t, ca)
	lt.setCRLs(t, ca)
	rec := &memRecorder{}
	p := startTLSProxy(t, tlsListenerConfig(t, "plc-tls", plc.Addr(), lt.yaml("")), allowAll(), rec, tlsProxyOptions{})

	pollCert := ca.issue(t, pki.IssueRequest{Name: "scada", Role: "operator"})
	other := ca.issue(t, pki.IssueRequest{Name: "hmi", Role: "operator"})
	newcomer := ca2.issue(t, pki.IssueRequest{Name: "historian", Role: "operator"})
	probe := tlsClientConfig(t, other, ca)

	if _, err := readHolding(p.addr(), probe); err != nil {
		t.Fatalf("before the reloads: %v", err)
	}
	if _, err := readHolding(p.addr(), tlsClientConfig(t, newcomer, ca)); err == nil {
		t.Fatal("a client of a CA not yet in the bundle was accepted")
	}
	oldSerial := serverSerial(t, p.addr(), probe)

	pl := startPoller(mbapsClient(t, p.addr(), pollCert, ca), 50*time.Millisecond, 0xBEEF)
	pause := func() { time.Sleep(400 * time.Millisecond) }
	pause()

	// 1. The server certificate: re-issued in place (key, then chain).
	ca.serverCert(t, "proxy")
	if err := p.st.Reload(); err != nil {
		t.Fatal(err)
	}
	if s := serverSerial(t, p.addr(), probe); s == oldSerial {
		t.Fatal("new connections still get the old server certificate")
	}
	pause()

	// 2. The client CA bundle (and the CRL file with the new CA's CRL).
	lt.setCRLs(t, ca, ca2)
	lt.setClientCAs(t, ca, ca2)
	if err := p.st.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := readHolding(p.addr(), tlsClientConfig(t, newcomer, ca)); err != nil {
		t.Fatalf("a client of the newly trusted CA: %v", err)
	}
	pause()

	// 3. A revocation of another certificate: only the file watch
	// reloads the CRL; the poller's connection goes on.
	if _, err := ca.Revoke(other.Entry.Serial, "key-compromise"); err != nil {
		t.Fatal(err)
	}
	lt.setCRLs(t, ca, ca2)
	waitFor(t, "the watched CRL to refuse the revoked client", func() bool {
		_, err := readHolding(p.addr(), probe)
		return err != nil
	})
	pause()

	polls := pl.finish(t)
	if polls < 20 {
		t.Fatalf("only %d polls succeeded", polls)
	}

	// 4. The poller's certificate is revoked: its established connection
	// is cut (TestTLSReloadCutsConnectionsOfWithdrawnCertificates has the
	// details), its next one is refused.
	if _, err := ca.Revoke(pollCert.Entry.Serial, "key-compromise"); err != nil {
		t.Fatal(err)
	}
	lt.setCRLs(t, ca, ca2)
	waitFor(t, "the watched CRL to cut the poller's connection", func() bool {
		return readOnce(pl.client) != nil
	})
	kp := keyPair(t, pollCert)
	fresh, err := mb.NewClient(&mb.ClientConfiguration{URL: "tcp+tls://" + p.addr(), Timeout: 2 * time.Second, TLSClientCert: &kp, TLSRootCAs: certPool(ca)})
	if err != nil {
		t.Fatal(err)
	}
	if err := fresh.Open(); err == nil {
		_, err = fresh.ReadRegister(10, mb.HOLDING_REGISTER)
		fresh.Close()
		if err == nil {
			t.Fatal("the revoked poller certificate made a new connection")
		}
	}

	var pollConns []uint64
	for _, ev := range rec.byAction(audit.ActionRequest) {
		if ev.Identity != nil && ev.Identity.CommonName == "scada" && !slices.Contains(pollConns, ev.ConnID) {
			pollConns = append(pollConns, ev.ConnID)
		}
	}
	if len(pollConns) != 1 {
		t.Fatalf("the poller's requests came over connections %v, want one", pollConns)
	}
	// The probe is refused at its handshake — or, when its handshake
	// began before the reload and ended after it, cut as soon as its
	// connection is registered; the fresh poller is refused at its
	// handshake.
	waitFor(t, "the refusals' audit events", func() bool {
		probe, poller := 0, 0
		for _, ev := range rec.all() {
			revoked := ev.Action == audit.ActionHandshake && strings.HasPrefix(ev.Reason, string(pki.ReasonRevoked)+": ") ||
				ev.Action == audit.ActionConnectionClose && strings.HasPrefix(ev.Reason, recheckPrefix+string(pki.ReasonRevoked)+": ")
			switch {
			case !revoked:
			case strings.Contains(ev.Reason, other.Entry.Serial):
				probe++
			case ev.Action == audit.ActionHandshake && strings.Contains(ev.Reason, pollCert.Entry.Serial):
				poller++
			}
		}
		return probe >= 1 && poller >= 1
	})
	for _, ev := range rec.byAction(audit.ActionHandshake) {
		if strings.HasPrefix(ev.Reason, string(pki.ReasonRevoked)) && !strings.Contains(ev.Reason, other.Entry.Serial) && !strings.Contains(ev.Reason, pollCert.Entry.Serial) {
			t.Errorf("revoked refusal of an unexpected certificate: %s", ev.Reason)
		}
	}

	p.mu.Lock()
	var changed []string
	for _, r := range p.reloads {
		if r.Err != nil {
			t.Errorf("reload error: %v", r.Err)
		}
		changed = append(changed, r.Changed...)
	}
	p.mu.Unlock()
	for _, m := range []string{pki.MaterialCertificate, pki.MaterialClientCA, pki.MaterialCRL} {
		if !slices.Contains(changed, m) {
			t.Errorf("no reload swapped in %s (reloads: %v)", m, changed)
		}
	}
}
