package proxy

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/pki"
)

// A client refused by the certificate check while Shutdown cancels the
// handshakes in progress: crypto/tls then returns the context's error, not
// the verifier's. The trail keeps the refusal's reason.
func TestRefusalReasonSurvivesShutdownDuringHandshake(t *testing.T) {
	ca := newTestCA(t, "Plant")
	other := newTestCA(t, "Intruder")
	plc := startPLC(t)
	lt := newListenerTLS(t, ca)
	rec := &memRecorder{}
	var p *tlsProxy
	var once sync.Once
	stopped := make(chan struct{})
	p = startTLSProxy(t, tlsListenerConfig(t, "plc-tls", plc.Addr(), lt.yaml("")), allowAll(), rec, tlsProxyOptions{
		noWatch: true,
		onReject: func(*pki.HandshakeError) {
			once.Do(func() {
				// Shutdown cancels the handshake context; let crypto/tls's
				// watcher see it before the verification returns.
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					p.Shutdown(ctx)
					close(stopped)
				}()
				time.Sleep(200 * time.Millisecond)
			})
		},
	})
	foreign := other.issue(t, pki.IssueRequest{Name: "intruder"})
	if resp, err := readHolding(p.addr(), tlsClientConfig(t, foreign, ca)); err == nil {
		t.Fatalf("refused client got a response: % x", resp)
	}
	<-stopped
	waitFor(t, "the refusal's audit event", func() bool { return len(rec.byAction(audit.ActionHandshake)) == 1 })
	if r := rec.byAction(audit.ActionHandshake)[0].Reason; !strings.HasPrefix(r, string(pki.ReasonUnknownCA)+": ") {
		t.Fatalf("refusal audited as %q, want %s", r, pki.ReasonUnknownCA)
	}
}
