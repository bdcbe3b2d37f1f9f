package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/internal/aside"
	"github.com/conduit-ot/conduit/pki"
)

// Listener serves one configured listener.
type Listener struct {
	opts    Options
	cfg     *config.Listener
	log     *zap.Logger
	metrics *listenerMetrics
	handler handler
	slots   *Slots // this listener's max_connections
	connIDs *atomic.Uint64

	// tls is the server configuration (nil: plain TCP). verifiedByPKI:
	// it is a pki.ServerTLS's, which verifies the client certificate in
	// the handshake without filling VerifiedChains (Options.ServerTLS).
	tls           *tls.Config
	verifiedByPKI bool

	ln      net.Listener
	closing atomic.Bool
	done    chan struct{} // closed by Shutdown: drain
	once    sync.Once
	// hsCtx is the parent of every TLS handshake; Shutdown cancels it:
	// a connection still in its handshake has no request in flight, and
	// would be closed once it completes anyway.
	hsCtx    context.Context
	hsCancel context.CancelFunc

	mu    sync.Mutex
	conns map[*Conn]struct{}
	wg    sync.WaitGroup
}

// handler is a protocol's per-connection loop. serve returns when the
// connection is finished, with the reason it ended (audited).
type handler interface {
	serve(c *Conn) (reason string)
}

// New validates opts and builds a Listener; Listen binds it.
func New(opts Options) (*Listener, error) {
	if opts.Decider == nil || opts.Recorder == nil {
		return nil, errors.New("proxy: a Decider and a Recorder are required")
	}
	cfg := opts.Listener
	l := &Listener{
		opts:    opts,
		cfg:     &cfg,
		log:     opts.Log,
		metrics: opts.Metrics.forListener(cfg.Name),
		slots:   NewSlots(cfg.MaxConnections),
		connIDs: opts.ConnIDs,
		done:    make(chan struct{}),
		conns:   make(map[*Conn]struct{}),
	}
	l.hsCtx, l.hsCancel = context.WithCancel(context.Background())
	if l.log == nil {
		l.log = zap.NewNop()
	}
	l.log = l.log.With(zap.String("listener", cfg.Name))
	if l.connIDs == nil {
		l.connIDs = new(atomic.Uint64)
	}
	switch {
	case opts.ServerTLS != nil && opts.TLS != nil:
		return nil, fmt.Errorf("proxy: listener %s: set ServerTLS or TLS, not both", cfg.Name)
	case opts.ServerTLS != nil:
		l.tls, l.verifiedByPKI = opts.ServerTLS.Config(), true
		opts.ServerTLS.OnTrustChange(l.recheckClients)
		if l.opts.HandshakeReason == nil {
			l.opts.HandshakeReason = pkiHandshakeReason
		}
	case opts.TLS != nil:
		if opts.TLS.ClientAuth != tls.RequireAndVerifyClientCert {
			return nil, fmt.Errorf("proxy: listener %s: TLS must require and verify client certificates", cfg.Name)
		}
		l.tls = opts.TLS
	}
	if opts.UpstreamClientTLS != nil && opts.UpstreamTLS != nil {
		return nil, fmt.Errorf("proxy: listener %s: set UpstreamClientTLS or UpstreamTLS, not both", cfg.Name)
	}
	switch cfg.Protocol {
	case config.ProtocolModbus:
		l.handler = newModbusHandler(l)
	case config.ProtocolOPCUA:
		var err error
		if l.handler, err = newOPCUAHandler(l); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("proxy: listener %s: protocol %q is not supported", cfg.Name, cfg.Protocol)
	}
	return l, nil
}

// Name returns the listener's configured name.
func (l *Listener) Name() string { return l.cfg.Name }

// Listen binds the listen address.
func (l *Listener) Listen() error {
	ln, err := net.Listen("tcp", l.cfg.Listen)
	if err != nil {
		return fmt.Errorf("proxy: listener %s: %w", l.cfg.Name, err)
	}
	l.ln = ln
	return nil
}

// Addr returns the bound address (after Listen).
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Serve accepts connections until Shutdown. Temporary accept errors (for
// example out of file descriptors) back off instead of spinning.
func (l *Listener) Serve() error {
	if l.ln == nil {
		if err := l.Listen(); err != nil {
			return err
		}
	}
	var backoff time.Duration
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			if l.closing.Load() {
				return ErrClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("proxy: listener %s: accept: %w", l.cfg.Name, err)
			}
			// EMFILE, ENFILE, ECONNABORTED ...: wait and retry.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("accept failed; backing off", zap.Error(err), zap.Duration("backoff", backoff))
			select {
			case <-time.After(backoff):
			case <-l.done:
				return ErrClosed
			}
			continue
		}
		backoff = 0
		l.wg.Add(1)
		go l.handle(raw)
	}
}

// Shutdown stops accepting, lets every connection finish the requests it
// has in flight, and closes what is left when ctx ends. It is safe to call
// more than once.
func (l *Listener) Shutdown(ctx context.Context) error {
	l.once.Do(func() {
		l.closing.Store(true)
		close(l.done)
		l.hsCancel()
		if l.ln != nil {
			l.ln.Close()
		}
		l.mu.Lock()
		for c := range l.conns {
			c.startDrain()
		}
		l.mu.Unlock()
	})
	finished := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
		l.mu.Lock()
		for c := range l.conns {
			// A reset: a TLS close_notify to each client that does not
			// read could hold the shutdown 5 s per connection.
			c.reset("shutdown deadline")
		}
		l.mu.Unlock()
		<-finished
		return ctx.Err()
	}
}

func (l *Listener) handle(raw net.Conn) {
	defer l.wg.Done()
	c := l.admit(raw)
	if c == nil {
		return
	}
	var releaseOnce sync.Once
	release := func() {
		releaseOnce.Do(func() {
			l.slots.release()
			l.opts.Slots.release()
		})
	}
	defer release()

	// The handshake and the connection-open event run aside: signature
	// checks and certificate parsing grow a goroutine's stack to tens of
	// KiB, and encoding and writing an audit event to 8 KiB, which this
	// goroutine, serving the connection for hours, would keep.
	if !l.openAside(c, raw) {
		return
	}
	var lifetime *time.Timer
	if d := l.cfg.Timeouts.MaxLifetime.D(); d > 0 {
		lifetime = time.AfterFunc(d, func() { c.close("maximum connection lifetime reached") })
	}

	reason := l.handler.serve(c)

	if lifetime != nil {
		lifetime.Stop()
	}
	if r := c.closedReason(); r != "" {
		reason = r
	}
	c.close(reason)
	l.metrics.conns.Dec()
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	release() // before the event, so that whoever reads it can connect again
	c.record(&audit.Event{Action: audit.ActionConnectionClose, Outcome: audit.OutcomeSuccess, Reason: reason})
}

// admit takes a slot of each connection cap and sets up the Conn of an
// accepted connection; nil: a cap was reached and the connection was
// refused. It is not inlined into handle: handle's frame stays on the
// stack of the goroutine serving the connection, under every request's.
//
//go:noinline
func (l *Listener) admit(raw net.Conn) *Conn {
	src := addrPort(raw.RemoteAddr())
	if !l.opts.Slots.tryAcquire() {
		l.refuse(raw, src, "global connection limit reached")
		return nil
	}
	if !l.slots.tryAcquire() {
		l.opts.Slots.release()
		l.refuse(raw, src, "listener connection limit reached")
		return nil
	}
	c := &Conn{
		l:       l,
		id:      l.connIDs.Add(1),
		client:  raw,
		tcp:     tcpConn(raw),
		src:     src,
		dst:     addrPortString(l.cfg.Upstream),
		drainCh: make(chan struct{}),
		start:   time.Now(),
	}
	if tc := c.tcp; tc != nil {
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(30 * time.Second)
	}
	return c
}

// openAside runs open on a goroutine of its own (package aside). A bug in
// it (the handshake, the identity, the event) ends this connection,
// audited, instead of the process — as a panic in a protocol handler does.
func (l *Listener) openAside(c *Conn, raw net.Conn) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			resetClose(raw)
			c.internalError("connection open", p)
			l.mu.Lock()
			_, registered := l.conns[c]
			delete(l.conns, c)
			l.mu.Unlock()
			if registered {
				l.metrics.conns.Dec()
			}
			ok = false
		}
	}()
	return aside.Run(func() bool { return l.open(c, raw) })
}

// open completes the TLS handshake (if any), registers the connection for
// Shutdown and records its opening. false: the connection was refused and
// closed.
func (l *Listener) open(c *Conn, raw net.Conn) bool {
	if l.tls != nil && !l.handshake(c, raw) {
		return false
	}
	l.mu.Lock()
	if l.closing.Load() {
		l.mu.Unlock()
		raw.Close()
		return false
	}
	l.conns[c] = struct{}{}
	l.mu.Unlock()
	l.metrics.accepted.Inc()
	l.metrics.conns.Inc()
	c.record(&audit.Event{Action: audit.ActionConnectionOpen, Outcome: audit.OutcomeSuccess})
	if st := l.opts.ServerTLS; st != nil && st.TrustGeneration() != c.trustGen {
		// The client CA bundle or the CRL changed during the handshake,
		// which may have used the old material; recheckClients may have
		// run before the connection was registered.
		l.recheck([]*Conn{c})
	}
	return true
}

// recheckClients runs after a reload changed the client CA bundle or the
// CRL (pki.ServerTLS.OnTrustChange): every established connection whose
// certificate the new material refuses — revoked, or its CA no longer
// trusted — is closed. A connection is only as trusted as a new handshake
// with the same certificate, made when it was verified, would be now.
func (l *Listener) recheckClients() {
	l.mu.Lock()
	conns := make([]*Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	l.recheck(conns)
}

func (l *Listener) recheck(conns []*Conn) {
	st := l.opts.ServerTLS
	// Many connections share a certificate: verify each chain once.
	seen := make(map[string]error)
	for _, c := range conns {
		tc, ok := c.client.(*tls.Conn)
		if !ok {
			continue
		}
		chain := tc.ConnectionState().PeerCertificates
		if len(chain) == 0 {
			continue
		}
		// Every connection of a chain was verified within the chain's
		// validity and before the new CRL's next update: one of their
		// verification times judges them all.
		var key []byte
		for _, cert := range chain {
			key = append(key, cert.Raw...)
		}
		err, ok := seen[string(key)]
		if !ok {
			err = st.Recheck(chain, c.verified)
			seen[string(key)] = err
		}
		if err == nil {
			continue
		}
		reason := "client certificate no longer trusted after a TLS reload: " + l.opts.HandshakeReason(err)
		l.log.Warn("closing a connection whose client certificate the reloaded material refuses",
			zap.Uint64("connection_id", c.id), zap.Stringer("client", c.src), zap.Error(err))
		l.metrics.refused("recheck")
		c.reset(reason)
	}
}

// refuse closes a connection over a limit; the audit event lets the SOC see
// a connection flood.
func (l *Listener) refuse(raw net.Conn, src netip.AddrPort, reason string) {
	l.metrics.refused("limit")
	resetClose(raw)
	ev := audit.Event{
		Action: audit.ActionConnectionOpen, Outcome: audit.OutcomeFailure, Reason: reason,
		Listener: l.cfg.Name, Source: src, Dest: addrPortString(l.cfg.Upstream), Protocol: l.cfg.Protocol,
	}
	if err := l.opts.Recorder.Record(&ev); err != nil {
		l.log.Error("audit write failed", zap.Error(err))
	}
}

// handshake runs the TLS handshake under the handshake timeout and reads the
// verified identity. Nothing is dialed before it succeeds.
func (l *Listener) handshake(c *Conn, raw net.Conn) bool {
	var verr error
	if st := l.opts.ServerTLS; st != nil {
		c.trustGen = st.TrustGeneration()
	}
	tc := tls.Server(raw, keepVerifyError(l.tls, &verr, &c.verified))
	ctx, cancel := context.WithTimeout(l.hsCtx, l.cfg.Timeouts.Handshake.D())
	defer cancel()
	fail := func(reason string, err error) bool {
		l.metrics.refused("handshake")
		resetClose(raw)
		ev := audit.Event{Action: audit.ActionHandshake, Outcome: audit.OutcomeFailure, Reason: reason}
		c.record(&ev)
		l.log.Info("TLS handshake refused", zap.Stringer("client", c.src), zap.String("reason", reason), zap.Error(err))
		return false
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		if verr != nil && ctx.Err() != nil {
			// The certificate was refused, then the handshake was
			// cancelled (Shutdown) before it returned: crypto/tls
			// reports the cancellation, the trail wants the refusal.
			err = verr
		}
		reason := err.Error()
		if l.opts.HandshakeReason != nil {
			reason = l.opts.HandshakeReason(err)
		}
		return fail(reason, err)
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 || (len(st.VerifiedChains) == 0 && !l.verifiedByPKI) {
		return fail("no verified client certificate", nil)
	}
	identity := l.opts.Identity
	if identity == nil {
		identity = func(st tls.ConnectionState) (*pki.Identity, error) {
			return pki.IdentityFromCertificate(st.PeerCertificates[0])
		}
	}
	id, err := identity(st)
	if err != nil {
		return fail("client identity: "+err.Error(), err)
	}
	c.client = tc
	c.identity = id
	c.tlsVersion = tlsVersionName(st.Version)
	return true
}

// pkiHandshakeReason is the audit reason of a handshake refused by a
// pki.ServerTLS configuration: the stable code first, then the detail
// (subject and serial of a refused certificate).
func pkiHandshakeReason(err error) string {
	return string(pki.ReasonOf(err)) + ": " + err.Error()
}

func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "1.3"
	case tls.VersionTLS12:
		return "1.2"
	case tls.VersionTLS11:
		return "1.1"
	case tls.VersionTLS10:
		return "1.0"
	}
	return fmt.Sprintf("0x%04x", v)
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return addrPortString(a.String())
}

func addrPortString(s string) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(s)
	return ap
}

func tcpConn(c net.Conn) *net.TCPConn {
	tc, _ := c.(*net.TCPConn)
	return tc
}

// resetClose closes c with a TCP reset (SO_LINGER 0) so the peer learns at
// once that the connection was refused.
func resetClose(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// keepVerifyError returns a configuration that serves as cfg does and
// stores in *verr the error with which cfg's VerifyConnection refused the
// client and in *at when it verified the certificate (the handshake
// goroutine writes them, the same goroutine reads them after the
// handshake). cfg as it is when there is nothing to wrap.
func keepVerifyError(cfg *tls.Config, verr *error, at *time.Time) *tls.Config {
	wrap := func(c *tls.Config) *tls.Config {
		if c == nil || c.VerifyConnection == nil {
			return c
		}
		w := c.Clone()
		verify := c.VerifyConnection
		w.VerifyConnection = func(cs tls.ConnectionState) error {
			*at = time.Now()
			err := verify(cs)
			if err != nil {
				*verr = err
			}
			return err
		}
		return w
	}
	if cfg.GetConfigForClient == nil {
		return wrap(cfg)
	}
	w := cfg.Clone()
	get := cfg.GetConfigForClient
	w.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		c, err := get(h)
		if err != nil || c == nil {
			return c, err
		}
		return wrap(c), nil
	}
	return w
}
