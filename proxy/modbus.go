package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
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
type modbusHandler struct {
	l *Listener
}

func newModbusHandler(l *Listener) *modbusHandler { return &modbusHandler{l: l} }

// pending is a forwarded request waiting for its response. The request ADU
// is copied in, so the client framer can move on.
type pending struct {
	used     bool
	tid      uint16
	deadline time.Time
	n        int
	adu      [modbus.MaxADULen]byte
}

// mbConn is the per-connection state of the Modbus handler.
type mbConn struct {
	h *modbusHandler
	c *Conn

	// Request path (client reader goroutine only).
	framer *modbus.Framer
	req    modbus.Request
	op     inspect.Operation
	in     policy.Input
	ev     audit.Event
	out    []byte // scratch for encoded frames to the client or device

	mu       sync.Mutex // guards everything below
	pend     []pending  // allocated on the first forward
	inflight int
	up       net.Conn
	timer    *time.Timer // fires at the oldest pending deadline
	idle     chan struct{}
}

func (h *modbusHandler) serve(c *Conn) string {
	m := &mbConn{
		h:      h,
		c:      c,
		framer: modbus.NewFramer(c.client),
		out:    make([]byte, 0, modbus.MaxADULen),
	}
	m.in = policy.Input{
		Protocol: inspect.ProtocolModbus,
		Listener: h.l.cfg.Name,
		Upstream: h.l.cfg.Upstream,
		Client:   c.src,
		Identity: c.identity,
		Op:       &m.op,
	}
	reason := m.readRequests()
	m.stopTimer()
	return reason
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
		c.client.SetReadDeadline(time.Now().Add(idle))
		adu, err := m.framer.Next()
		if err != nil {
			return m.readError(err)
		}
		if reason, ok := m.handleRequest(adu); !ok {
			return reason
		}
	}
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

// handleRequest enforces one framed request. ok is false when the connection
// must end.
func (m *mbConn) handleRequest(adu []byte) (reason string, ok bool) {
	c, l := m.c, m.h.l
	m.op.Reset()
	if _, err := m.req.Decode(adu); err != nil {
		var fe *modbus.FramingError
		if errors.As(err, &fe) {
			// The MBAP length and the PDU disagree (e.g. a read whose length
			// hides a second PDU): nothing about this connection's framing
			// can be trusted any more.
			m.malformed("client", fe.Reason, fe.Error(), adu)
			return "malformed frame from client: " + fe.Error(), false
		}
		var pe *modbus.ProtocolError
		if !errors.As(err, &pe) {
			pe = &modbus.ProtocolError{Exception: modbus.ExServerDeviceFailure, Reason: "decode", Detail: err.Error()}
		}
		// A well-framed request that breaks the protocol's rules gets the
		// answer a conforming device would give, and is never forwarded.
		m.req.Operation(&m.op)
		ev := m.requestEvent(policy.Decision{Reason: "protocol violation: " + pe.Error(), Rule: "protocol." + pe.Reason})
		ev.ExceptionCode = pe.Exception
		c.record(ev)
		l.metrics.denied.Inc()
		return "", m.refuseWith(pe.Exception)
	}
	m.req.Operation(&m.op)

	// Pairing needs a free slot and a transaction id not already in flight.
	if busy := m.admit(); busy != "" {
		ev := m.requestEvent(policy.Decision{Reason: busy, Rule: "proxy.outstanding"})
		ev.ExceptionCode = modbus.ExServerDeviceBusy
		c.record(ev)
		l.metrics.denied.Inc()
		return "", m.refuseWith(modbus.ExServerDeviceBusy)
	}

	d := l.opts.Decider.Decide(context.Background(), &m.in)
	ev := m.requestEvent(d)
	if !d.Allow {
		return m.deny(ev, d)
	}
	// The audit event of an allowed operation is written before it is
	// forwarded; if it cannot be written, the operation is denied.
	if err := c.record(ev); err != nil {
		l.metrics.denied.Inc()
		return "", m.refuseWith(modbus.ExServerDeviceFailure)
	}
	l.metrics.allowed.Inc()
	return m.forward()
}

// deny records the refusal and applies the deny action.
func (m *mbConn) deny(ev *audit.Event, d policy.Decision) (string, bool) {
	c, l := m.c, m.h.l
	l.metrics.denied.Inc()
	action := d.Action
	if action == policy.ActionDefault {
		action, _ = policy.ParseAction(l.cfg.DenyAction)
	}
	code := d.Exception
	if code == 0 {
		code = l.cfg.DenyException
	}
	ev.DenyAction = action.String()
	if action == policy.ActionRefuse {
		ev.ExceptionCode = code
	}
	c.record(ev)
	switch action {
	case policy.ActionReset:
		c.reset("request denied: " + d.Reason)
		return "request denied with reset: " + d.Reason, false
	case policy.ActionDrop:
		return "", true
	default:
		return "", m.refuseWith(code)
	}
}

// refuseWith answers the current request with an exception; false when the
// client cannot be written to.
func (m *mbConn) refuseWith(code uint8) bool {
	m.out = m.req.AppendException(m.out[:0], code)
	return m.c.writeClient(m.out) == nil
}

func (m *mbConn) requestEvent(d policy.Decision) *audit.Event {
	m.ev = audit.Event{
		Action:     audit.ActionRequest,
		Outcome:    audit.OutcomeSuccess,
		Reason:     d.Reason,
		DecisionID: d.ID,
		Allowed:    d.Allow,
		DryRun:     d.DryRun,
		Rule:       d.Rule,
		Revision:   d.Revision,
		Op:         &m.op,
	}
	return &m.ev
}

// malformed audits a frame whose framing could not be trusted. It runs on
// either reader goroutine, so it does not use the request path's event.
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

// admit checks that the request can be paired with its response.
func (m *mbConn) admit() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.inflight >= m.h.l.cfg.MaxOutstanding {
		return fmt.Sprintf("outstanding request limit (%d) reached", m.h.l.cfg.MaxOutstanding)
	}
	tid := m.req.TransactionID
	for i := range m.pend {
		if m.pend[i].used && m.pend[i].tid == tid {
			return fmt.Sprintf("transaction id %d is already in flight", tid)
		}
	}
	return ""
}

// forward sends the re-encoded request to the device, dialing it first if
// needed, and registers it for pairing.
func (m *mbConn) forward() (string, bool) {
	c, l := m.c, m.h.l
	up, err := m.upstream()
	if err != nil {
		l.metrics.upstreamError("unreachable")
		l.log.Warn("upstream unreachable", zap.Uint64("conn", c.id), zap.Error(err))
		return "", m.refuseWith(modbus.ExGatewayPathUnavailable)
	}
	out, err := m.req.Append(m.out[:0])
	if err != nil {
		// Append re-runs Decode's validation; a request that decoded
		// cannot fail here. Fail closed if it ever does.
		l.log.Error("re-encoding a validated request failed", zap.Error(err))
		return "", m.refuseWith(modbus.ExServerDeviceFailure)
	}
	m.out = out

	if !m.req.ExpectsResponse() {
		// FC 8/04 (force listen only mode) gets no answer: waiting for one
		// would only end in a gateway timeout.
		up.SetWriteDeadline(time.Now().Add(l.cfg.Timeouts.Response.D()))
		if _, err := up.Write(m.out); err != nil {
			m.upstreamFailed(up, modbus.ExGatewayPathUnavailable)
		}
		return "", true
	}

	m.mu.Lock()
	if m.pend == nil {
		m.pend = make([]pending, l.cfg.MaxOutstanding)
	}
	var p *pending
	for i := range m.pend {
		if !m.pend[i].used {
			p = &m.pend[i]
			break
		}
	}
	p.used = true
	p.tid = m.req.TransactionID
	p.n = copy(p.adu[:], m.out)
	p.deadline = time.Now().Add(l.cfg.Timeouts.Response.D())
	m.inflight++
	if m.inflight == 1 {
		m.armTimer(p.deadline)
	}
	m.mu.Unlock()

	up.SetWriteDeadline(time.Now().Add(l.cfg.Timeouts.Response.D()))
	if _, err := up.Write(m.out); err != nil {
		l.metrics.upstreamError("write")
		l.log.Warn("upstream write failed", zap.Uint64("conn", c.id), zap.Error(err))
		m.upstreamFailed(up, modbus.ExGatewayPathUnavailable)
	}
	return "", true
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
// upstream connection fails or closes.
func (m *mbConn) readResponses(up net.Conn) {
	c, l := m.c, m.h.l
	framer := modbus.NewFramer(up)
	var req modbus.Request
	var resp modbus.Response
	out := make([]byte, 0, modbus.MaxADULen)
	var scratch [modbus.MaxADULen]byte
	for {
		adu, err := framer.Next()
		if err != nil {
			var fe *modbus.FramingError
			if errors.As(err, &fe) {
				m.malformed("upstream", fe.Reason, fe.Error(), framer.Pending())
			} else if c.closedReason() == "" && !errors.Is(err, net.ErrClosed) {
				l.log.Info("upstream connection ended", zap.Uint64("conn", c.id), zap.Error(err))
			}
			m.upstreamFailed(up, modbus.ExGatewayTargetFailedToRespond)
			return
		}
		tid := uint16(adu[0])<<8 | uint16(adu[1]) // the Framer returned a whole ADU
		m.mu.Lock()
		p := m.find(tid)
		var n int
		if p != nil {
			n = copy(scratch[:], p.adu[:p.n])
		}
		m.mu.Unlock()
		if p == nil {
			// Unsolicited, late (after a response timeout) or duplicated:
			// never delivered to the client.
			m.upstreamEvent(audit.ActionUnsolicited, fmt.Sprintf("response with transaction id %d matches no request in flight", tid), adu)
			continue
		}
		if _, err := req.Decode(scratch[:n]); err != nil {
			// Cannot happen: the request was decoded before it was
			// forwarded. Fail closed anyway.
			m.complete(tid, nil, modbus.ExServerDeviceFailure)
			continue
		}
		if _, err := resp.Decode(adu, &req); err != nil {
			m.upstreamEvent(audit.ActionMalformed, "invalid response from device: "+err.Error(), adu)
			l.metrics.upstreamError("bad_response")
			m.complete(tid, &req, modbus.ExGatewayTargetFailedToRespond)
			continue
		}
		out, err = resp.Append(out[:0])
		if err != nil {
			m.upstreamEvent(audit.ActionMalformed, "response cannot be re-encoded: "+err.Error(), adu)
			m.complete(tid, &req, modbus.ExGatewayTargetFailedToRespond)
			continue
		}
		m.complete(tid, nil, 0)
		if err := c.writeClient(out); err != nil {
			c.close("client write failed: " + err.Error())
			return
		}
	}
}

// upstreamEvent audits something the device sent that was not delivered.
func (m *mbConn) upstreamEvent(action, reason string, frame []byte) {
	ev := audit.Event{Action: action, Outcome: audit.OutcomeFailure, Reason: reason, Bytes: frame}
	m.c.record(&ev)
}

func (m *mbConn) find(tid uint16) *pending {
	for i := range m.pend {
		if m.pend[i].used && m.pend[i].tid == tid {
			return &m.pend[i]
		}
	}
	return nil
}

// complete releases the pending request tid; with a non-nil req it also
// answers the client with exception code (the request's header and
// function come from req).
func (m *mbConn) complete(tid uint16, req *modbus.Request, code uint8) {
	m.mu.Lock()
	if p := m.find(tid); p != nil {
		p.used = false
		m.inflight--
		m.rearmLocked()
	}
	m.mu.Unlock()
	if req != nil {
		m.c.writeClient(req.AppendException(make([]byte, 0, 9), code))
	}
}

// upstreamFailed drops the device connection and answers every request in
// flight with code; the next request dials again.
func (m *mbConn) upstreamFailed(up net.Conn, code uint8) {
	m.mu.Lock()
	if m.up == up {
		m.up = nil
	}
	failed := m.takeAllLocked(func(*pending) bool { return true })
	m.mu.Unlock()
	m.c.dropUpstream(up)
	m.answerFailed(failed, code)
}

// takeAllLocked removes the pending requests that match and returns copies
// of their ADUs.
func (m *mbConn) takeAllLocked(match func(*pending) bool) [][]byte {
	var taken [][]byte
	for i := range m.pend {
		p := &m.pend[i]
		if p.used && match(p) {
			taken = append(taken, append([]byte(nil), p.adu[:p.n]...))
			p.used = false
			m.inflight--
		}
	}
	m.rearmLocked()
	return taken
}

func (m *mbConn) answerFailed(adus [][]byte, code uint8) {
	var req modbus.Request
	for _, adu := range adus {
		if _, err := req.Decode(adu); err != nil {
			continue
		}
		if m.c.writeClient(req.AppendException(make([]byte, 0, 9), code)) != nil {
			return
		}
	}
}

// armTimer schedules expiry of the oldest pending request. The upstream
// reader never uses read deadlines: a deadline firing mid-frame would lose
// framing state.
func (m *mbConn) armTimer(at time.Time) {
	d := time.Until(at)
	if m.timer == nil {
		m.timer = time.AfterFunc(d, m.expire)
		return
	}
	m.timer.Reset(d)
}

func (m *mbConn) rearmLocked() {
	if m.inflight == 0 {
		if m.timer != nil {
			m.timer.Stop()
		}
		if m.idle != nil {
			close(m.idle)
			m.idle = nil
		}
		return
	}
	var oldest time.Time
	for i := range m.pend {
		if p := &m.pend[i]; p.used && (oldest.IsZero() || p.deadline.Before(oldest)) {
			oldest = p.deadline
		}
	}
	m.armTimer(oldest)
}

// expire answers requests whose response did not come in time with
// exception 0x0B, as a gateway does.
func (m *mbConn) expire() {
	now := time.Now()
	m.mu.Lock()
	expired := m.takeAllLocked(func(p *pending) bool { return !p.deadline.After(now) })
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
	}
	m.mu.Unlock()
}

// waitIdle waits until every request in flight is answered (or expired by
// the response timeout), so a client's half-close or a drain loses nothing.
func (m *mbConn) waitIdle() {
	m.mu.Lock()
	if m.inflight == 0 {
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
