// Package tunnel is the client side of `conduit connect`: it accepts plain
// TCP from a legacy Modbus client on its own host and carries each
// connection over mutual TLS to the Conduit appliance, like ghostunnel's
// client mode. It is a relay: it does not look at the bytes.
//
// Each accepted connection gets its own TLS connection (dial timeout,
// handshake under a deadline). Data is copied both ways; when one side
// finishes sending, the other is told with a half-close (TCP FIN toward the
// legacy client, TLS close_notify then FIN toward the appliance), and the
// pair is closed when both directions are done or either fails. The number
// of concurrent connections is bounded: over the limit, a new connection is
// accepted and closed at once, so the legacy client sees a clean refusal
// instead of hanging in the listen backlog.
package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults.
const (
	DefaultMaxConns         = 64
	DefaultDialTimeout      = 5 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	// closeTimeout bounds how long a half-closed pair waits for the other
	// direction to finish before both sides are closed.
	DefaultCloseTimeout = 30 * time.Second
)

// Config configures a Tunnel.
type Config struct {
	Target string // appliance host:port
	// TLS returns the client TLS config for Target (a *pki.ClientTLS's
	// Config method). Called per connection, so a reload takes effect on
	// the next connection.
	TLS func(addr string) *tls.Config

	MaxConns         int           // default 64
	DialTimeout      time.Duration // TCP connect to Target; default 5s
	HandshakeTimeout time.Duration // TLS handshake; default 10s
	CloseTimeout     time.Duration // after one side half-closes; default 30s
	Logger           *slog.Logger  // nil: discard
}

// Tunnel relays plain TCP connections to Target over mTLS.
type Tunnel struct {
	cfg    Config
	log    *slog.Logger
	slots  chan struct{}
	active atomic.Int64

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
	ln       net.Listener
	wg       sync.WaitGroup
	shutdown chan struct{} // closed when accepting stops (Shutdown or Close)
	stopOnce sync.Once
}

// stopAccepting closes the listener; Serve then returns nil. Callers hold mu.
func (t *Tunnel) stopAccepting() {
	t.stopOnce.Do(func() {
		close(t.shutdown)
		if t.ln != nil {
			t.ln.Close()
		}
	})
}

// New checks cfg and fills defaults.
func New(cfg Config) (*Tunnel, error) {
	if cfg.Target == "" {
		return nil, errors.New("tunnel: no target address")
	}
	if _, _, err := net.SplitHostPort(cfg.Target); err != nil {
		return nil, fmt.Errorf("tunnel: target %q: %w", cfg.Target, err)
	}
	if cfg.TLS == nil {
		return nil, errors.New("tunnel: no TLS configuration")
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
	}
	t := &Tunnel{cfg: cfg, log: cfg.Logger, slots: make(chan struct{}, cfg.MaxConns), conns: map[net.Conn]struct{}{}, shutdown: make(chan struct{})}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	return t, nil
}

// Active is the number of relayed connections.
func (t *Tunnel) Active() int { return int(t.active.Load()) }

// Serve accepts on l until Close. It returns nil after Close.
func (t *Tunnel) Serve(l net.Listener) error {
	t.mu.Lock()
	select {
	case <-t.shutdown:
		t.mu.Unlock()
		return errors.New("tunnel: closed")
	default:
	}
	t.ln = l
	t.mu.Unlock()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			select {
			case <-t.shutdown:
				return nil
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("tunnel: accept: %w", err)
			}
			// Out of descriptors (EMFILE, ENFILE), of kernel memory
			// (ENOBUFS, ENOMEM) or another transient error: back off
			// instead of spinning or giving up (the proxy's listener
			// does the same).
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t.log.Warn("accept failed; retrying", "err", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-t.shutdown:
				return nil
			}
			continue
		}
		backoff = 0
		select {
		case t.slots <- struct{}{}:
		default:
			t.log.Warn("connection limit reached; refusing", "client", c.RemoteAddr().String(), "max", t.cfg.MaxConns)
			c.Close()
			continue
		}
		if !t.track(c, true) {
			<-t.slots
			c.Close()
			return nil
		}
		t.wg.Add(1)
		t.active.Add(1)
		go func() {
			defer func() {
				t.active.Add(-1)
				t.track(c, false)
				<-t.slots
				t.wg.Done()
			}()
			t.handle(c)
		}()
	}
}

func (t *Tunnel) track(c net.Conn, add bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if add {
		if t.closed {
			return false
		}
		t.conns[c] = struct{}{}
	} else {
		delete(t.conns, c)
	}
	return true
}

// Close stops accepting and closes every relayed connection.
func (t *Tunnel) Close() error {
	t.mu.Lock()
	if !t.closed {
		t.closed = true
		t.stopAccepting()
		for c := range t.conns {
			c.Close()
		}
	}
	t.mu.Unlock()
	t.wg.Wait()
	return nil
}

// Shutdown stops accepting and waits for the relayed connections to end on
// their own, or for ctx; then it closes what is left.
func (t *Tunnel) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	t.stopAccepting()
	t.mu.Unlock()
	done := make(chan struct{})
	go func() {
		for t.Active() > 0 {
			select {
			case <-ctx.Done():
				close(done)
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		close(done)
	}()
	<-done
	err := ctx.Err()
	t.Close()
	return err
}

func (t *Tunnel) handle(plain net.Conn) {
	defer plain.Close()
	log := t.log.With("client", plain.RemoteAddr().String())
	d := net.Dialer{Timeout: t.cfg.DialTimeout}
	raw, err := d.Dial("tcp", t.cfg.Target)
	if err != nil {
		log.Warn("dial failed", "target", t.cfg.Target, "err", err)
		return
	}
	t.track(raw, true)
	defer t.track(raw, false)
	tc := tls.Client(raw, t.cfg.TLS(t.cfg.Target))
	defer tc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), t.cfg.HandshakeTimeout)
	err = tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		log.Warn("TLS handshake failed", "target", t.cfg.Target, "err", err)
		return
	}
	log.Debug("relaying", "target", t.cfg.Target, "tls", tls.VersionName(tc.ConnectionState().Version))

	errc := make(chan error, 2)
	go func() { // legacy client -> appliance
		_, err := io.Copy(tc, plain)
		if err == nil {
			// The client is done sending: close_notify, then FIN, so the
			// appliance sees end-of-stream but can still answer.
			err = tc.CloseWrite()
			if cw, ok := raw.(interface{ CloseWrite() error }); ok && err == nil {
				err = cw.CloseWrite()
			}
		}
		errc <- err
	}()
	go func() { // appliance -> legacy client
		_, err := io.Copy(plain, tc)
		if err == nil {
			if cw, ok := plain.(interface{ CloseWrite() error }); ok {
				err = cw.CloseWrite()
			}
		}
		errc <- err
	}()
	first := <-errc
	if first != nil {
		// One direction broke: nothing more can be delivered reliably.
		log.Debug("relay error", "err", first)
		return
	}
	// One direction ended cleanly; give the other a bounded time.
	timer := time.NewTimer(t.cfg.CloseTimeout)
	defer timer.Stop()
	select {
	case err := <-errc:
		if err != nil {
			log.Debug("relay error", "err", err)
		}
	case <-timer.C:
		log.Debug("half-closed connection timed out")
	}
}
