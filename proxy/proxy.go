// Package proxy is the data path: listeners, connections, enforcement.
//
// A Listener accepts IT-side clients (plain TCP or mTLS), bounds them
// (connection caps, handshake, idle and lifetime timeouts), and hands each
// connection to the protocol handler of its configuration (Modbus/TCP or OPC
// UA). The handler frames and decodes every request with package inspect,
// asks the policy.Decider, records the decision with an audit.Recorder and
// forwards only the bytes inspect re-encoded from what it validated — a
// write only after its audit event was written.
//
// The proxy never imports OPA: policy arrives as the policy.Decider
// interface, the audit trail as audit.Recorder, so tests swap in fakes and
// benchmarks isolate costs. The operational log (zap) is separate from the
// audit trail.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/policy"
)

// Options builds a Listener. Listener, Decider and Recorder are required.
type Options struct {
	Listener config.Listener
	Decider  policy.Decider
	Recorder audit.Recorder
	Log      *zap.Logger // operational log; nil discards
	Metrics  *Metrics    // nil: counted but not exported

	// ServerTLS makes the listener terminate mutual TLS with the material
	// of a listener's tls section (what `conduit run` uses). pki verifies
	// the client certificate inside the handshake, in its own
	// VerifyConnection, so that every refusal carries a pki.Reason; crypto/tls
	// then leaves ConnectionState.VerifiedChains empty, and a handshake
	// that completed with ServerTLS's configuration is the proof of a
	// verified certificate. HandshakeReason defaults to the pki.Reason.
	ServerTLS *pki.ServerTLS
	// TLS, when set instead of ServerTLS, makes the listener terminate TLS
	// with a configuration of the caller's. It must require and verify a
	// client certificate (tls.RequireAndVerifyClientCert): the proxy reads
	// the identity from the verified chain and refuses a connection
	// without one.
	TLS *tls.Config
	// HandshakeReason classifies a failed handshake for the audit event
	// (e.g. "revoked", "expired"); nil uses the pki.Reason with ServerTLS,
	// the error text otherwise.
	HandshakeReason func(error) string
	// Identity turns the verified peer certificate into the policy's
	// identity; nil uses pki.IdentityFromCertificate.
	Identity func(tls.ConnectionState) (*pki.Identity, error)

	// Dial connects to the device. Nil dials Listener.Upstream over TCP,
	// wrapped in TLS when UpstreamClientTLS or UpstreamTLS is set.
	Dial func(ctx context.Context) (net.Conn, error)
	// UpstreamClientTLS is the client side of a listener's upstream_tls
	// (pki.NewUpstreamTLS). Its current material is taken at every dial,
	// so a Reload (SIGHUP) reaches the next upstream connection.
	UpstreamClientTLS *pki.ClientTLS
	// UpstreamTLS, instead of UpstreamClientTLS, is a fixed configuration.
	UpstreamTLS *tls.Config

	// Slots is the connection cap shared by all listeners
	// (limits.max_connections); nil means no global cap.
	Slots *Slots

	// ConnIDs numbers connections across listeners (audit
	// conduit.connection_id); nil gives the listener its own counter.
	ConnIDs *atomic.Uint64
}

// Slots is a counting semaphore shared across listeners.
type Slots struct{ ch chan struct{} }

// NewSlots returns a cap of n concurrent connections.
func NewSlots(n int) *Slots { return &Slots{ch: make(chan struct{}, n)} }

func (s *Slots) tryAcquire() bool {
	if s == nil {
		return true
	}
	select {
	case s.ch <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s *Slots) release() {
	if s != nil {
		<-s.ch
	}
}

// ErrClosed is returned by Serve after Shutdown.
var ErrClosed = errors.New("proxy: listener closed")
