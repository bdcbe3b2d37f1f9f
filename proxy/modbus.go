package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/inspect/modbus"
	"github.com/conduit-ot/conduit/policy"
)

// modbusHandler enforces policy on Modbus/TCP.
//
// Per connection, one goroutine reads client requests: frame (by the MBAP
// length only), decode and validate, decide, audit, then refuse or forward
// the re-encoded request. A second goroutine, started with the upstream
// connection, reads device responses, pairs each with its request by
// transaction id, validates it against that request and forwards it
// re-encoded. Requests are pipelined: up to max_outstanding may be in flight.
//
// Both sides work in bursts: when one read brought several whole frames
// (a pipelining client, a device answering several requests at once),
// every frame of the burst is handled before the next read, and what goes
// out is written once. A burst of requests is decided request by request,
// its audit events are recorded together (one wait for the audit trail,
// audit.RecordBatch), then the allowed requests go to the device in one
// write and the refusals to the client in another. Nothing changes for a
// single request: each one still has its own decision, audit event and
// answer; a denied one is never forwarded; an allowed one is forwarded only
// after its event was written, and is refused if that failed.
type modbusHandler struct {
	l *Listener
}

func newModbusHandler(l *Listener) *modbusHandler { return &modbusHandler{l: l} }

// framerSize is the read buffer of each side's framer: room for a burst of
// dozens of small requests or responses (a maximal ADU is 260 bytes), an
// eighth of the Framer's default, which matters with thousands of mostly
// idle connections.
const framerSize = 512

// maxBurst bounds the requests handled before their events are recorded
// and they are forwarded: it bounds the memory of a connection's burst
// (about 0.5 KiB a request) and how long the first of them waits.
const maxBurst = 32

// pending is a forwarded request waiting for its response. The request ADU
// is copied in, so the client framer can move on.
//
// A request whose response timed out stays as a stale slot: its answer may
// still come, and it must then be dropped, not paired with a later request
// that reuses the transaction id. A stale slot is freed by that late
// answer, or by dropping the device connection it was sent on (see
// retireStale).
type pending struct {
	used     bool
	stale    bool     // answered with 0x0B; waiting only for a late answer
	up       net.Conn // the device connection it was sent on
	tid      uint16
	deadline time.Time
	n        int
	adu      [modbus.MaxADULen]byte
}

// mbRequest is one request of a burst, from its decoding until it was
// forwarded or refused. req.Data aliases the client framer's buffer, which
// does not move during a burst (the framer reads only when it has no whole
// frame left).
type mbRequest struct {
	req modbus.Request
	op  inspect.Operation
	ev  audit.Event
	// What happens once the event is recorded: forward (allowed), or
	// answer with exception code (refuse != 0), or nothing (drop).
	forward bool
	refuse  uint8
	adu     []byte // forwarded: the re-encoded request, in toDev
}

// mbConn is the per-connection state of the Modbus handler.
type mbConn struct {
	h *modbusHandler
	c *Conn

	// Request path (client reader goroutine only).
	framer *modbus.Framer
	in     policy.Input
	burst  []mbRequest // grows to the deepest burst seen
	evs    []*audit.Event
	errs   []error
	toDev  []byte    // the burst's re-encoded requests, one write
	toCli  []byte    // the burst's refusals, one write
	readDL time.Time // the client read (idle) deadline last set
	upDL   time.Time // the upstream write deadline last set
	dlUp   net.Conn  // the upstream connection upDL is for
	// end is set by a request after which the connection ends: it is
	// acted on once the burst before it is recorded and forwarded.
	end struct {
		reason    string
		malformed *modbus.FramingError
		frame     []byte
		reset     bool
	}

	mu       sync.Mutex // guards everything below
	pend     []pending  // grows to the requests in flight
	inflight int        // forwarded, waiting for the device (used pend slots)
	stale    int        // stale pend slots (timed out, see pending)
	// answering counts requests paired with their response (or expired,
	// or failed) whose answer is not yet written to the client: a drain
	// or half-close waits for them too.
	answering int
	up        net.Conn
	timer     *time.Timer // expires pending requests
	timerAt   time.Time   // when timer fires; zero: stopped
	idle      chan struct{}
}

func (h *modbusHandler) serve(c *Conn) (reason string) {
	m := newMbConn(h, c)
	defer func() {
		// A bug (here, in the parser or in a Decider) must not take the
		// process down nor let a request through: the connection ends,
		// audited, as on the OPC UA side.
		if p := recover(); p != nil {
			reason = m.c.internalError("client reader", p)
		}
		m.stopTimer()
	}()
	return m.readRequests()
}

// newMbConn is not inlined into serve, whose frame stays under every
// request's on the client reader's stack.
//
//go:noinline
func newMbConn(h *modbusHandler, c *Conn) *mbConn {
	m := &mbConn{
		h:      h,
		c:      c,
		framer: modbus.NewFramerSize(c.client, framerSize),
	}
	m.in = policy.Input{
		Protocol: inspect.ProtocolModbus,
		Listener: h.l.cfg.Name,
		Upstream: h.l.cfg.Upstream,
		Client:   c.src,
		Identity: c.identity,
	}
	return m
}

// coarse is how much later than asked a deadline may be set, so that it is
// refreshed at most once per that period instead of once per frame: setting
// a deadline re-arms a runtime timer. A deadline so set fires between d and
// d + d/8 (at most one second more).
func coarse(d time.Duration) time.Duration { return min(d/8, time.Second) }

// refresh returns the deadline to set for a timeout of d from now, or the
// zero time when the one set (at) is still late enough.
func refresh(at, now time.Time, d time.Duration) time.Time {
	want := now.Add(d)
	if !at.Before(want) {
		return time.Time{}
	}
	return want.Add(coarse(d))
}

// readRequests is the client side loop; it returns the reason the
// connection ends.
func (m *mbConn) readRequests() string {
	c, l := m.c, m.h.l
	idle := l.cfg.Timeouts.Idle.D()
	for {
		if c.draining() {
			m.waitIdle()
			return "drained for shutdown"
		}
		if m.framer.Buffered() == 0 {
			if dl := refresh(m.readDL, time.Now(), idle); !dl.IsZero() {
				c.client.SetReadDeadline(dl)
				m.readDL = dl
				// startDrain's immediate deadline must not be lost.
				if c.draining() {
					continue
				}
			}
		}
		adu, err := m.framer.Next()
		if err != nil {
			return m.readError(err)
		}
		if r := c.closedReason(); r != "" {
			// Closed by another goroutine (a TLS reload that withdrew
			// the certificate, the lifetime limit): what crypto/tls had
			// buffered before the close is not decided.
			return r
		}
		m.burst = m.burst[:0]
		more := m.take(adu)
		for more && len(m.burst) < maxBurst && m.whole() {
			adu, _ = m.framer.Next() // a whole frame is buffered: no read, no error
			more = m.take(adu)
		}
		if !m.flush() {
			return ""
		}
		if !more {
			return m.ended()
		}
	}
}

// whole reports whether the client framer holds a whole frame: then Next
// returns it without reading.
func (m *mbConn) whole() bool {
	n, err := modbus.FrameLength(m.framer.Pending())
	return n > 0 && err == nil
}

func (m *mbConn) readError(err error) string {
	c := m.c
	switch {
	case errors.Is(err, io.EOF):
		m.waitIdle()
		return "client closed"
	case c.draining():
		m.waitIdle()
		return "drained for shutdown"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "idle timeout"
	}
	var fe *modbus.FramingError
	if errors.As(err, &fe) {
		m.malformed("client", fe.Reason, fe.Error(), m.framer.Pending())
		return "malformed frame from client: " + fe.Error()
	}
	if r := c.closedReason(); r != "" {
		return r
	}
	return "client read error: " + err.Error()
}

// ended acts on m.end once the burst before it is done, and returns the
// reason the connection ends.
func (m *mbConn) ended() string {
	e := &m.end
	switch {
	case e.malformed != nil:
		m.malformed("client", e.malformed.Reason, e.malformed.Error(), e.frame)
	case e.reset:
		m.c.reset(e.reason)
	}
	return e.reason
}

// take decodes, validates and decides one framed request and adds it to
// the burst. false: the connection ends after the burst (m.end says why).
func (m *mbConn) take(adu []byte) bool {
	l := m.h.l
	if len(m.burst) == cap(m.burst) {
		m.burst = append(m.burst, mbRequest{})
	} else {
		m.burst = m.burst[:len(m.burst)+1]
	}
	r := &m.burst[len(m.burst)-1]
	r.op.Reset()
	r.forward, r.refuse = false, 0
	if _, err := r.req.Decode(adu); err != nil {
		return m.invalid(r, adu, err)
	}
	r.req.Operation(&r.op)

	// Pairing needs a free slot and a transaction id not already in flight.
	if busy := m.admit(r); busy != "" {
		m.busy(r, busy)
		return true
	}

	m.in.Op = &r.op
	d := l.opts.Decider.Decide(context.Background(), &m.in)
	m.in.Op = nil
	setRequestEvent(r, &d)
	if d.Allow {
		// Forwarded once its audit event is written (flush).
		r.forward = true
		return true
	}
	l.metrics.denied.Inc()
	action := d.Action
	if action == policy.ActionDefault {
		action, _ = policy.ParseAction(l.cfg.DenyAction)
	}
	code := d.Exception
	if code == 0 {
		code = l.cfg.DenyException
	}
	r.ev.DenyAction = action.String()
	switch action {
	case policy.ActionReset:
		m.end.reset = true
		m.end.reason = "request denied with reset: " + d.Reason
		return false
	case policy.ActionDrop:
	default:
		r.ev.ExceptionCode = code
		r.refuse = code
	}
	return true
}

// invalid handles a request that did not decode: the connection ends
// after the burst (false) on a framing error, the request is refused on a
// protocol error. Kept out of take, like busy: the rare paths' temporaries
// would otherwise enlarge take's stack frame, on every reader's stack.
//
//go:noinline
func (m *mbConn) invalid(r *mbRequest, adu []byte, err error) bool {
	var fe *modbus.FramingError
	if errors.As(err, &fe) {
		// The MBAP length and the PDU disagree (e.g. a read whose length
		// hides a second PDU): nothing about this connection's framing
		// can be trusted any more.
		m.burst = m.burst[:len(m.burst)-1]
		m.end.malformed, m.end.frame = fe, adu
		m.end.reason = "malformed frame from client: " + fe.Error()
		return false
	}
	var pe *modbus.ProtocolError
	if !errors.As(err, &pe) {
		pe = &modbus.ProtocolError{Exception: modbus.ExServerDeviceFailure, Reason: "decode", Detail: err.Error()}
	}
	// A well-framed request that breaks the protocol's rules gets the
	// answer a conforming device would give, and is never forwarded.
	r.req.Operation(&r.op)
	setRequestEvent(r, &policy.Decision{Reason: inspect.ViolationReason(pe), Rule: inspect.ViolationRule(pe.Reason)})
	r.ev.ExceptionCode = pe.Exception
	r.refuse = pe.Exception
	m.h.l.metrics.denied.Inc()
	return true
}

// busy refuses a request that cannot be paired with its response (see
// admit).
//
//go:noinline
func (m *mbConn) busy(r *mbRequest, reason string) {
	setRequestEvent(r, &policy.Decision{Reason: reason, Rule: "proxy.outstanding"})
	r.ev.ExceptionCode = modbus.ExServerDeviceBusy
	r.refuse = modbus.ExServerDeviceBusy
	m.h.l.metrics.denied.Inc()
}

// setRequestEvent fills r.ev in place, field by field: an audit.Event
// literal would first be built in a temporary of more than 300 bytes in
// the frame of each caller it is inlined into.
func setRequestEvent(r *mbRequest, d *policy.Decision) {
	ev := &r.ev
	*ev = audit.Event{}
	ev.Action = audit.ActionRequest
	// No Outcome: the encoder derives it from the decision (success if
	// allowed, failure if denied), as audit/FIELDS.md says.
	ev.Reason = d.Reason
	ev.DecisionID = d.ID
	ev.Allowed = d.Allow
	ev.DryRun = d.DryRun
	ev.Rule = d.Rule
	ev.Revision = d.Revision
	ev.Op = &r.op
}

// admit checks that r can be paired with its response: against the
// requests in flight and those of the burst that will be.
func (m *mbConn) admit(r *mbRequest) string {
	limit := m.h.l.cfg.MaxOutstanding
	tid := r.req.TransactionID
	queued := 0
	for i := range m.burst[:len(m.burst)-1] {
		if q := &m.burst[i]; q.forward && q.req.ExpectsResponse() {
			queued++
			if q.req.TransactionID == tid {
				return fmt.Sprintf("transaction id %d is already in flight", tid)
			}
		}
	}
	m.mu.Lock()
	p := m.findLocked(tid)
	if p != nil && p.stale {
		// The id timed out but the device may still answer it: that
		// answer must not be paired with this request. Drop the device
		// connection it was sent on, so it can never arrive.
		up := p.up
		m.mu.Unlock()
		m.retireStale(up)
		m.mu.Lock()
		p = m.findLocked(tid)
	}
	if m.inflight+queued+m.stale >= limit && m.stale > 0 {
		// Stale slots count: a device that never answers must not make
		// the table grow. Free them with their connections.
		m.mu.Unlock()
		m.retireStale(nil)
		m.mu.Lock()
		p = m.findLocked(tid)
	}
	defer m.mu.Unlock()
	if m.inflight+queued+m.stale >= limit {
		return fmt.Sprintf("outstanding request limit (%d) reached", limit)
	}
	if p != nil {
		return fmt.Sprintf("transaction id %d is already in flight", tid)
	}
	return ""
}

// retireStale drops the device connection up (nil: every connection that
// holds a stale slot), so that no late answer can arrive on it; the
// requests still in flight on it are answered with 0x0B.
func (m *mbConn) retireStale(up net.Conn) {
	var ups []net.Conn
	m.mu.Lock()
	for i := range m.pend {
		p := &m.pend[i]
		if p.used && p.stale && (up == nil || p.up == up) && !slices.Contains(ups, p.up) {
			ups = append(ups, p.up)
		}
	}
	m.mu.Unlock()
	for _, u := range ups {
		m.h.l.log.Info("dropping the device connection: a timed-out request's answer may still come", zap.Uint64("conn", m.c.id))
		m.upstreamFailed(u, modbus.ExGatewayTargetFailedToRespond)
	}
}

// flush records the burst's audit events with one wait, forwards the
// allowed requests whose event was written in one write to the device, and
// sends the refusals in one write to the client. false when the client
// cannot be written to.
func (m *mbConn) flush() bool {
	c, l := m.c, m.h.l
	if len(m.burst) == 0 {
		return true
	}
	m.evs = m.evs[:0]
	for i := range m.burst {
		ev := &m.burst[i].ev
		c.stamp(ev)
		m.evs = append(m.evs, ev)
	}
	if cap(m.errs) < len(m.evs) {
		m.errs = make([]error, len(m.evs), cap(m.evs))
	}
	m.errs = m.errs[:len(m.evs)]
	if !m.readsOnly() || !audit.Enqueue(l.opts.Recorder, m.evs, m.errs) {
		audit.RecordBatch(l.opts.Recorder, m.evs, m.errs)
	}
	forward := 0
	for i, err := range m.errs {
		r := &m.burst[i]
		if err != nil {
			c.auditFailed(&r.ev, err)
			if r.forward {
				// The audit event of an allowed operation is written
				// before it is forwarded; if it cannot be written, the
				// operation is denied.
				r.forward, r.refuse = false, modbus.ExServerDeviceFailure
				l.metrics.denied.Inc()
			}
		}
		if r.forward {
			l.metrics.allowed.Inc()
			forward++
		}
	}
	if forward > 0 {
		m.forward()
	}

	m.toCli = m.toCli[:0]
	for i := range m.burst {
		if r := &m.burst[i]; r.refuse != 0 {
			m.toCli = r.req.AppendException(m.toCli, r.refuse)
		}
	}
	if len(m.toCli) > 0 {
		return c.writeClient(m.toCli) == nil
	}
	return true
}

// readsOnly reports whether every request of the burst is an allowed read:
// such a burst may be forwarded before its events are written (the
// recorder then writes them within its bound, audit.read_delay). A burst
// with anything else in it — a write, a denial, a request dropped — waits
// for its events, as the durability rule requires for writes.
func (m *mbConn) readsOnly() bool {
	for i := range m.burst {
		if r := &m.burst[i]; !r.forward || !mayGoFirst(&r.ev) {
			return false
		}
	}
	return true
}

// forward sends the burst's allowed requests, re-encoded, to the device in
// one write, dialing it first if needed, and registers them for pairing. A
// request that cannot be forwarded is refused (r.refuse).
func (m *mbConn) forward() {
	l := m.h.l
	up, err := m.upstream()
	if err != nil {
		m.unreachable(err)
		return
	}
	m.toDev = m.toDev[:0]
	for i := range m.burst {
		r := &m.burst[i]
		if !r.forward {
			continue
		}
		start := len(m.toDev)
		out, err := r.req.Append(m.toDev)
		if err != nil {
			// Append re-runs Decode's validation; a request that decoded
			// cannot fail here. Fail closed if it ever does.
			m.reencodeFailed(r, err)
			m.toDev = m.toDev[:start]
			continue
		}
		m.toDev = out
		r.adu = out[start:] // re-sliced below: toDev may still move
	}
	// The ADUs, now that toDev stops moving.
	off := 0
	for i := range m.burst {
		if r := &m.burst[i]; r.forward {
			n := len(r.adu)
			r.adu = m.toDev[off : off+n : off+n]
			off += n
		}
	}
	if len(m.toDev) == 0 {
		return
	}

	now := time.Now()
	resp := l.cfg.Timeouts.Response.D()
	deadline := now.Add(resp)
	m.mu.Lock()
	for i := range m.burst {
		r := &m.burst[i]
		if !r.forward {
			continue
		}
		if !r.req.ExpectsResponse() {
			// FC 8/04 (force listen only mode) gets no answer: waiting for
			// one would only end in a gateway timeout.
			continue
		}
		p := m.freeLocked()
		p.used, p.stale, p.up = true, false, up
		p.tid = r.req.TransactionID
		p.n = copy(p.adu[:], r.adu)
		p.deadline = deadline
		m.inflight++
	}
	if m.inflight > 0 && m.timerAt.IsZero() {
		m.armTimerLocked(deadline)
	}
	m.mu.Unlock()

	if up != m.dlUp {
		m.dlUp, m.upDL = up, time.Time{}
	}
	if dl := refresh(m.upDL, now, resp); !dl.IsZero() {
		up.SetWriteDeadline(dl)
		m.upDL = dl
	}
	if _, err := up.Write(m.toDev); err != nil {
		m.writeFailed(up, err)
	}
}

// The failure paths of forward are functions of their own, not inlined:
// the zap fields of their log calls would otherwise take room in
// forward's frame, on the client reader's stack at every forward.

//go:noinline
func (m *mbConn) unreachable(err error) {
	l := m.h.l
	l.metrics.upstreamError("unreachable")
	l.log.Warn("upstream unreachable", zap.Uint64("conn", m.c.id), zap.Error(err))
	for i := range m.burst {
		if r := &m.burst[i]; r.forward {
			r.forward, r.refuse = false, modbus.ExGatewayPathUnavailable
		}
	}
}

//go:noinline
func (m *mbConn) reencodeFailed(r *mbRequest, err error) {
	m.h.l.log.Error("re-encoding a validated request failed", zap.Error(err))
	r.forward, r.refuse = false, modbus.ExServerDeviceFailure
}

//go:noinline
func (m *mbConn) writeFailed(up net.Conn, err error) {
	m.h.l.metrics.upstreamError("write")
	m.h.l.log.Warn("upstream write failed", zap.Uint64("conn", m.c.id), zap.Error(err))
	m.upstreamFailed(up, modbus.ExGatewayPathUnavailable)
}

// freeLocked returns an unused pending slot, growing the table as needed:
// a connection holds as many as it ever had in flight.
func (m *mbConn) freeLocked() *pending {
	for i := range m.pend {
		if !m.pend[i].used {
			return &m.pend[i]
		}
	}
	m.pend = append(m.pend, pending{})
	return &m.pend[len(m.pend)-1]
}

// malformed audits a frame whose framing could not be trusted. It runs on
// either reader goroutine, so it does not use the request path's events.
func (m *mbConn) malformed(direction, code, msg string, frame []byte) {
	m.h.l.metrics.malformed(direction)
	ev := audit.Event{
		Action:  audit.ActionMalformed,
		Outcome: audit.OutcomeFailure,
		Reason:  direction + ": " + msg,
		Rule:    "framing." + code,
		Bytes:   frame,
	}
	m.c.record(&ev)
}

// upstream returns the device connection, dialing it on first use (or
// after a failure) and starting its response reader.
func (m *mbConn) upstream() (net.Conn, error) {
	m.mu.Lock()
	up := m.up
	m.mu.Unlock()
	if up != nil {
		return up, nil
	}
	up, err := m.c.dial()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.up = up
	m.mu.Unlock()
	go m.readResponses(up)
	return up, nil
}

// readResponses pairs device responses with pending requests until the
// upstream connection fails or closes. Every response a read brought is
// answered before the next read, in one write to the client.
func (m *mbConn) readResponses(up net.Conn) {
	c, l := m.c, m.h.l
	defer func() {
		if p := recover(); p != nil {
			m.c.internalError("upstream reader", p)
		}
	}()
	rr := &responseReader{m: m, up: up, framer: modbus.NewFramerSize(up, framerSize)}
	for {
		adu, err := rr.framer.Next()
		if err != nil {
			var fe *modbus.FramingError
			if errors.As(err, &fe) {
				m.malformed("upstream", fe.Reason, fe.Error(), rr.framer.Pending())
			} else if c.closedReason() == "" && !errors.Is(err, net.ErrClosed) {
				l.log.Info("upstream connection ended", zap.Uint64("conn", c.id), zap.Error(err))
			}
			m.upstreamFailed(up, modbus.ExGatewayTargetFailedToRespond)
			return
		}
		rr.out, rr.answered = rr.out[:0], 0
		trusted := rr.take(adu)
		for trusted {
			n, err := modbus.FrameLength(rr.framer.Pending())
			if n == 0 || err != nil {
				break
			}
			adu, _ = rr.framer.Next()
			trusted = rr.take(adu)
		}
		if !trusted {
			// The device's framing cannot be trusted any more: drop its
			// connection, as a client's would be, before the client hears
			// the answers of this read, so that a request it sends next
			// dials again instead of going out on this connection.
			m.upstreamFailed(up, modbus.ExGatewayTargetFailedToRespond)
		}
		if len(rr.out) > 0 {
			if err := c.writeClient(rr.out); err != nil {
				c.close("client write failed: " + err.Error())
				return
			}
		}
		m.release(rr.answered)
		if !trusted {
			return
		}
	}
}

// responseReader is the state of the response side (its goroutine only).
type responseReader struct {
	m        *mbConn
	up       net.Conn // the device connection read
	framer   *modbus.Framer
	req      modbus.Request
	resp     modbus.Response
	out      []byte // the answers of one read, one write to the client
	answered int    // requests answered in out
	scratch  [modbus.MaxADULen]byte
}

// take pairs one device response with its request, validates it and
// appends the re-encoded response, or an exception, to out. false: the
// response's MBAP length and PDU disagree, so the device connection's
// framing cannot be trusted any more.
func (rr *responseReader) take(adu []byte) bool {
	m, l := rr.m, rr.m.h.l
	tid := uint16(adu[0])<<8 | uint16(adu[1]) // the Framer returned a whole ADU
	m.mu.Lock()
	p := m.findOnLocked(tid, rr.up)
	if p != nil && p.stale {
		// The late answer to a request that timed out: its client got
		// 0x0B already.
		p.used, p.stale, p.up = false, false, nil
		m.stale--
		m.mu.Unlock()
		m.upstreamEvent(audit.ActionUnsolicited, fmt.Sprintf("late response with transaction id %d, after its response timeout: dropped", tid), adu)
		return true
	}
	var n int
	if p != nil {
		// Paired: the slot is free for a new request with this id. The
		// request still counts as in flight until its answer is written.
		n = copy(rr.scratch[:], p.adu[:p.n])
		p.used, p.up = false, nil
		m.inflight--
		m.answering++
	}
	m.mu.Unlock()
	if p == nil {
		// Unsolicited, duplicated, or late on a connection already
		// dropped: never delivered to the client.
		m.upstreamEvent(audit.ActionUnsolicited, fmt.Sprintf("response with transaction id %d matches no request in flight", tid), adu)
		return true
	}
	rr.answered++
	if _, err := rr.req.Decode(rr.scratch[:n]); err != nil {
		// Cannot happen: the request was decoded before it was forwarded.
		// Fail closed anyway: an exception from what the header says.
		rr.out = modbus.AppendException(rr.out, tid, rr.scratch[6], rr.scratch[7], modbus.ExServerDeviceFailure)
		return true
	}
	if _, err := rr.resp.Decode(adu, &rr.req); err != nil {
		l.metrics.upstreamError("bad_response")
		rr.out = rr.req.AppendException(rr.out, modbus.ExGatewayTargetFailedToRespond)
		var fe *modbus.FramingError
		if errors.As(err, &fe) {
			m.malformed("upstream", fe.Reason, fe.Error(), adu)
			return false
		}
		m.upstreamEvent(audit.ActionMalformed, "invalid response from device: "+err.Error(), adu)
		return true
	}
	out, err := rr.resp.Append(rr.out)
	if err != nil {
		m.upstreamEvent(audit.ActionMalformed, "response cannot be re-encoded: "+err.Error(), adu)
		rr.out = rr.req.AppendException(rr.out, modbus.ExGatewayTargetFailedToRespond)
		return true
	}
	rr.out = out
	return true
}

// upstreamEvent audits something the device sent that was not delivered.
func (m *mbConn) upstreamEvent(action, reason string, frame []byte) {
	ev := audit.Event{Action: action, Outcome: audit.OutcomeFailure, Reason: reason, Bytes: frame}
	m.c.record(&ev)
}

func (m *mbConn) findLocked(tid uint16) *pending {
	for i := range m.pend {
		if m.pend[i].used && m.pend[i].tid == tid {
			return &m.pend[i]
		}
	}
	return nil
}

// findOnLocked finds the request with transaction id tid sent on the device
// connection up: an answer read on one connection never pairs with a
// request sent on another.
func (m *mbConn) findOnLocked(tid uint16, up net.Conn) *pending {
	if p := m.findLocked(tid); p != nil && p.up == up {
		return p
	}
	return nil
}

// release counts n requests as answered: their answers were written to the
// client (or could not be).
func (m *mbConn) release(n int) {
	if n == 0 {
		return
	}
	m.mu.Lock()
	m.answering -= n
	if m.inflight == 0 && m.answering == 0 && m.idle != nil {
		close(m.idle)
		m.idle = nil
	}
	m.mu.Unlock()
}

// upstreamFailed drops the device connection and answers every request in
// flight on it with code; the next request dials again. The stale slots of
// the connection are freed: no late answer can come any more.
func (m *mbConn) upstreamFailed(up net.Conn, code uint8) {
	m.mu.Lock()
	if m.up == up {
		m.up = nil
	}
	for i := range m.pend {
		if p := &m.pend[i]; p.used && p.stale && p.up == up {
			p.used, p.stale, p.up = false, false, nil
			m.stale--
		}
	}
	failed := m.takeAllLocked(func(p *pending) bool { return p.up == up }, false)
	m.mu.Unlock()
	m.c.dropUpstream(up)
	m.answerFailed(failed, code)
}

// takeAllLocked frees the pending requests that match (stale: keeps their
// slots as stale ones) and returns copies of their ADUs; they stay in
// flight until answerFailed answered them.
func (m *mbConn) takeAllLocked(match func(*pending) bool, stale bool) [][]byte {
	var taken [][]byte
	for i := range m.pend {
		p := &m.pend[i]
		if p.used && !p.stale && match(p) {
			taken = append(taken, append([]byte(nil), p.adu[:p.n]...))
			if stale {
				p.stale = true
				m.stale++
			} else {
				p.used, p.up = false, nil
			}
			m.inflight--
			m.answering++
		}
	}
	return taken
}

// answerFailed answers the requests adus with exception code, in one write.
func (m *mbConn) answerFailed(adus [][]byte, code uint8) {
	if len(adus) == 0 {
		return
	}
	var req modbus.Request
	var out []byte
	for _, adu := range adus {
		if _, err := req.Decode(adu); err != nil {
			continue
		}
		out = req.AppendException(out, code)
	}
	m.c.writeClient(out)
	m.release(len(adus))
}

// armTimerLocked schedules expire at (or after) the oldest pending
// deadline. The timer is not moved when a request completes: it fires at
// a deadline that may have gone, finds nothing expired and re-arms for the
// oldest request still pending; so a request pays for no timer operation.
// The upstream reader never uses read deadlines: a deadline firing
// mid-frame would lose framing state.
func (m *mbConn) armTimerLocked(at time.Time) {
	m.timerAt = at
	d := time.Until(at)
	if m.timer == nil {
		m.timer = time.AfterFunc(d, m.expire)
		return
	}
	m.timer.Reset(d)
}

// expire answers requests whose response did not come in time with
// exception 0x0B, as a gateway does. Their slots stay, stale, until the
// late answer comes (dropped) or their device connection is dropped.
func (m *mbConn) expire() {
	defer func() {
		if p := recover(); p != nil {
			m.c.internalError("response timer", p)
		}
	}()
	now := time.Now()
	m.mu.Lock()
	m.timerAt = time.Time{}
	expired := m.takeAllLocked(func(p *pending) bool { return !p.deadline.After(now) }, true)
	var oldest time.Time
	for i := range m.pend {
		if p := &m.pend[i]; p.used && !p.stale && (oldest.IsZero() || p.deadline.Before(oldest)) {
			oldest = p.deadline
		}
	}
	if !oldest.IsZero() {
		m.armTimerLocked(oldest)
	} else {
		// Nothing in flight: let the timer go with the connection's
		// activity (a connection idle for hours keeps none).
		m.timer = nil
	}
	m.mu.Unlock()
	if len(expired) > 0 {
		m.h.l.metrics.upstreamError("timeout")
		m.h.l.log.Info("upstream response timeout", zap.Uint64("conn", m.c.id), zap.Int("requests", len(expired)))
	}
	m.answerFailed(expired, modbus.ExGatewayTargetFailedToRespond)
}

func (m *mbConn) stopTimer() {
	m.mu.Lock()
	if m.timer != nil {
		m.timer.Stop()
		m.timerAt = time.Time{}
	}
	m.mu.Unlock()
}

// waitIdle waits until every request in flight is answered (or expired by
// the response timeout), so a client's half-close or a drain loses nothing.
func (m *mbConn) waitIdle() {
	m.mu.Lock()
	if m.inflight == 0 && m.answering == 0 {
		m.mu.Unlock()
		return
	}
	if m.idle == nil {
		m.idle = make(chan struct{})
	}
	ch := m.idle
	m.mu.Unlock()
	<-ch
}
