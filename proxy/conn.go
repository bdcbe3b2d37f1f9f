package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/internal/aside"
	"github.com/conduit-ot/conduit/pki"
)

// Conn is one client connection and, once dialed, its upstream connection.
// The protocol handler owns the reading; Conn owns closing, draining, the
// client write lock and the audit fields every event of the connection
// shares.
type Conn struct {
	l          *Listener
	id         uint64
	client     net.Conn // *tls.Conn when TLS is on
	tcp        *net.TCPConn
	src, dst   netip.AddrPort
	identity   *pki.Identity
	tlsVersion string
	start      time.Time
	// verified is when the client certificate was verified, trustGen the
	// pki.ServerTLS trust generation its handshake began under
	// (Listener.recheckClients).
	verified time.Time
	trustGen uint64

	drainCh   chan struct{}
	drainOnce sync.Once
	closeOnce sync.Once
	reason    atomic.Pointer[string]

	wmu sync.Mutex // serializes writes to the client
	wdl time.Time  // the client write deadline last set (under wmu)

	upMu     sync.Mutex
	upstream net.Conn
}

// startDrain asks the handler to stop reading new requests and finish the
// ones in flight: the pending read returns at once.
func (c *Conn) startDrain() {
	c.drainOnce.Do(func() {
		close(c.drainCh)
		c.client.SetReadDeadline(time.Now())
	})
}

func (c *Conn) draining() bool {
	select {
	case <-c.drainCh:
		return true
	default:
		return false
	}
}

// close closes both sides; the first reason given is the one audited.
func (c *Conn) close(reason string) {
	c.closeOnce.Do(func() {
		c.reason.CompareAndSwap(nil, &reason)
		c.client.Close()
		c.upMu.Lock()
		if c.upstream != nil {
			c.upstream.Close()
		}
		c.upMu.Unlock()
	})
}

// reset closes the client connection with a TCP reset (deny action
// "reset").
//
// The TCP socket is reset first (resetClose): a reset sends no TLS
// close_notify, which could wait up to 5 s for a client that does not read
// (crypto/tls's Close).
func (c *Conn) reset(reason string) {
	c.reason.CompareAndSwap(nil, &reason)
	resetClose(c.client)
	c.close(reason)
}

func (c *Conn) closedReason() string {
	if r := c.reason.Load(); r != nil {
		return *r
	}
	return ""
}

// writeClient writes one whole frame to the client. Writes come from the
// request reader (refusals) and the response reader (answers), so they are
// serialized; a client that stops reading is cut off after the response
// timeout instead of blocking the connection forever.
//
// The deadline is refreshed coarsely (see refresh): a write that blocks is
// cut off after between one and 1.125 response timeouts.
func (c *Conn) writeClient(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if dl := refresh(c.wdl, time.Now(), c.l.cfg.Timeouts.Response.D()); !dl.IsZero() {
		c.client.SetWriteDeadline(dl)
		c.wdl = dl
	}
	_, err := c.client.Write(b)
	return err
}

// dial connects to the device under the connect timeout, with TLS when the
// listener has upstream_tls (the material current at this dial). The
// connection is registered so close() also closes it.
//
// The dial runs on a goroutine of its own, for the reason the handshake
// does (Listener.handle): the resolver, the connect and a TLS handshake
// grow a stack to 8 KiB or more, which the calling reader goroutine would
// then keep for the life of the connection. A panic is passed back, to the
// caller's recover.
func (c *Conn) dial() (net.Conn, error) {
	type result struct {
		up  net.Conn
		err error
	}
	r := aside.Run(func() result {
		up, err := c.dialDevice()
		return result{up, err}
	})
	return r.up, r.err
}

func (c *Conn) dialDevice() (net.Conn, error) {
	l := c.l
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.Timeouts.Connect.D())
	defer cancel()
	var up net.Conn
	var err error
	if l.opts.Dial != nil {
		up, err = l.opts.Dial(ctx)
	} else {
		var d net.Dialer
		up, err = d.DialContext(ctx, "tcp", l.cfg.Upstream)
		cfg := l.opts.UpstreamTLS
		if ct := l.opts.UpstreamClientTLS; ct != nil {
			cfg = ct.Config(l.cfg.Upstream)
		}
		if err == nil && cfg != nil {
			tc := tls.Client(up, cfg)
			if err = tc.HandshakeContext(ctx); err != nil {
				up.Close()
			} else {
				up = tc
			}
		}
	}
	if err != nil {
		return nil, err
	}
	if ap := addrPort(up.RemoteAddr()); ap.IsValid() {
		c.dst = ap
	}
	c.upMu.Lock()
	defer c.upMu.Unlock()
	if c.closedReason() != "" {
		up.Close()
		return nil, net.ErrClosed
	}
	if c.upstream != nil {
		c.upstream.Close()
	}
	c.upstream = up
	return up, nil
}

// dropUpstream closes the upstream connection after a failure; the next
// forwarded request dials again.
func (c *Conn) dropUpstream(up net.Conn) {
	c.upMu.Lock()
	if c.upstream == up {
		c.upstream = nil
	}
	c.upMu.Unlock()
	up.Close()
}

// record fills the fields every event of this connection shares and writes
// the event. The error matters to the caller only before a forward: a
// failed audit write denies the operation.
// internalError turns a panic recovered on one of the connection's
// goroutines (a bug in a handler, a parser or a Decider) into a closed
// connection and an audit event (rule proxy.panic): the process and the
// other connections go on, and nothing is forwarded.
func (c *Conn) internalError(where string, p any) string {
	reason := fmt.Sprintf("internal error in %s: %v", where, p)
	c.l.log.Error("handler panic", zap.Uint64("conn", c.id), zap.String("protocol", c.l.cfg.Protocol),
		zap.String("where", where), zap.Any("panic", p), zap.Stack("stack"))
	ev := audit.Event{Action: audit.ActionMalformed, Outcome: audit.OutcomeFailure, Reason: reason, Rule: "proxy.panic"}
	c.record(&ev)
	c.close(reason)
	return reason
}

func (c *Conn) record(ev *audit.Event) error {
	c.stamp(ev)
	err := c.l.opts.Recorder.Record(ev)
	if err != nil {
		c.auditFailed(ev, err)
	}
	return err
}

// recordAllowed records the event of an allowed operation that is about to
// be forwarded. An allowed read may be forwarded before its event is
// written: when the recorder queues it (audit.read_delay), recordAllowed
// returns at once and the event follows within the recorder's bound.
// Anything else, writes above all, waits for its event's write.
func (c *Conn) recordAllowed(ev *audit.Event) error {
	if mayGoFirst(ev) {
		c.stamp(ev)
		evs, errs := [1]*audit.Event{ev}, [1]error{}
		if audit.Enqueue(c.l.opts.Recorder, evs[:], errs[:]) {
			if errs[0] != nil {
				c.auditFailed(ev, errs[0])
			}
			return errs[0]
		}
	}
	return c.record(ev)
}

// mayGoFirst reports whether the operation of ev may be forwarded before ev
// is written (audit.read_delay): an allowed read. Writes, every other
// operation and denials (monitor mode's forwarded reads included) wait.
func mayGoFirst(ev *audit.Event) bool {
	return ev.Allowed && ev.Op != nil && ev.Op.Access == inspect.AccessRead
}

// stamp fills the fields every event of this connection shares.
func (c *Conn) stamp(ev *audit.Event) {
	l := c.l
	ev.Listener = l.cfg.Name
	ev.ConnID = c.id
	ev.Source = c.src
	ev.Dest = c.dst
	ev.Protocol = l.cfg.Protocol
	ev.Identity = c.identity
	ev.TLSVersion = c.tlsVersion
}

// auditFailed counts and logs an event that could not be written.
func (c *Conn) auditFailed(ev *audit.Event, err error) {
	c.l.metrics.auditFails.Inc()
	c.l.log.Error("audit write failed", zap.Uint64("conn", c.id), zap.String("action", ev.Action), zap.Error(err))
}
