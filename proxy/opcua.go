package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/inspect/opcua"
	"github.com/conduit-ot/conduit/policy"
)

// opcuaHandler enforces policy on OPC UA binary (opc.tcp), docs/opcua.md.
//
// Per connection, one goroutine reads client chunks, feeds them to an
// inspect/opcua Channel (framing, secure channel state, sequence numbers,
// reassembly under the caps), decodes each complete request, decides,
// audits, and forwards the validated chunks or refuses. The upstream
// connection is dialed when the client's HEL arrives; a second goroutine
// reads the server's chunks through the same Channel, pairs each response
// with its request by RequestId and forwards it.
//
// What a deny does depends on the security mode of the channel:
//
//   - None: the proxy withholds the request, answers with a ServiceFault
//     for its RequestId and RequestHandle, and renumbers the sequence
//     numbers of both directions from then on (receivers reject gaps).
//   - Sign: the proxy cannot forge a signed message nor leave a gap in the
//     signed sequence numbers, so a deny ends the connection (ERR to the
//     client, then close).
//   - SignAndEncrypt: nothing past the security header is readable; the
//     policy decides on the channel's security policy and client
//     certificate, at OpenSecureChannel and for each message, and a deny
//     ends the connection.
type opcuaHandler struct {
	l    *Listener
	lim  opcua.Limits
	mode opcua.SecurityMode // the listener's declared security_mode
	// endpoint is endpoint_url: endpoint URLs in GetEndpoints and
	// CreateSession responses are rewritten to point at it.
	endpoint string
}

// OPC UA status codes the proxy sends (Part 4 §7.34, Part 6 §7.1.5).
const (
	uaBadInternalError           uint32 = 0x80020000
	uaBadTimeout                 uint32 = 0x800A0000
	uaBadServerNotConnected      uint32 = 0x800D0000
	uaBadTooManyOperations       uint32 = 0x80100000
	uaBadSecurityPolicyRejected  uint32 = 0x80550000
	uaBadTCPSecureChannelUnknown uint32 = 0x807F0000
	uaBadSequenceNumberInvalid   uint32 = 0x80880000
)

func newOPCUAHandler(l *Listener) (*opcuaHandler, error) {
	o := l.cfg.OPCUA
	if o == nil {
		o = &config.OPCUA{SecurityMode: config.DefaultOPCUAMode, EndpointURL: "opc.tcp://" + l.cfg.Listen}
	}
	mode, ok := opcua.ParseSecurityMode(o.SecurityMode)
	if !ok {
		return nil, fmt.Errorf("proxy: listener %s: opcua.security_mode %q: use none, sign or sign_and_encrypt", l.cfg.Name, o.SecurityMode)
	}
	if !strings.HasPrefix(o.EndpointURL, "opc.tcp://") {
		return nil, fmt.Errorf("proxy: listener %s: opcua.endpoint_url %q: must be an opc.tcp:// URL", l.cfg.Name, o.EndpointURL)
	}
	return &opcuaHandler{
		l:    l,
		mode: mode,
		lim: opcua.Limits{
			MaxChunkSize:   o.MaxChunkSize,
			MaxMessageSize: o.MaxMessageSize,
			MaxChunkCount:  o.MaxChunkCount,
		}.Normalize(),
		endpoint: o.EndpointURL,
	}, nil
}

// uaPending is a forwarded request waiting for its response.
type uaPending struct {
	service  string // Service.Name, "" when unknown
	handle   uint32 // RequestHandle, for a ServiceFault on timeout
	chID     uint32
	tokID    uint32
	deadline time.Time
	parked   bool // a Publish: the server holds it until it has news
	// session: what an ActivateSession or CloseSession changes once the
	// server accepted it.
	session opcua.SessionChange
}

// uaConn is the per-connection state of the OPC UA handler.
type uaConn struct {
	h *opcuaHandler
	c *Conn

	chMu sync.Mutex // guards ch: both readers feed it
	ch   *opcua.Channel

	// Request path (client reader goroutine only).
	fr       *opcua.Framer
	op       inspect.Operation
	in       policy.Input
	ev       audit.Event
	c2s      opcua.Renumberer
	up       net.Conn
	out      []byte
	opaqueIn bool // an opaque (SignAndEncrypt) client message is in progress
	gotHello bool
	partial  bool // the last client chunk left a message unfinished

	// Toward the client: sequence numbering and writing happen together,
	// so numbers reach the client in order.
	outMu sync.Mutex
	s2c   opcua.Renumberer
	cout  []byte

	mu   sync.Mutex // guards everything below
	pend map[uint32]*uaPending
	// late holds the RequestIds answered with Bad_Timeout whose response
	// may still come: it is dropped when it does, and a request reusing
	// the id is refused, so that it can never be paired with it.
	late      map[uint32]struct{}
	waiting   int // pending requests that are not parked Publishes
	opaqueOut int // opaque requests not yet answered (no request ids)
	sessions  opcua.Sessions
	timer     *time.Timer
	idle      chan struct{}
	acked     bool
}

func (h *opcuaHandler) serve(c *Conn) (reason string) {
	u := &uaConn{
		h:    h,
		c:    c,
		ch:   opcua.NewChannel(opcua.Config{Limits: h.lim, SecurityMode: h.mode}),
		pend: make(map[uint32]*uaPending),
	}
	u.fr = opcua.NewFramer(c.client, u.ch.MaxChunkSize(opcua.ClientToServer))
	u.in = policy.Input{
		Protocol: inspect.ProtocolOPCUA,
		Listener: h.l.cfg.Name,
		Upstream: h.l.cfg.Upstream,
		Client:   c.src,
		Identity: c.identity,
		Op:       &u.op,
	}
	defer func() {
		// A bug must not take the process down nor let a request through:
		// the connection ends, audited (STYLE.md habit 1).
		if p := recover(); p != nil {
			reason = u.c.internalError("client reader", p)
		}
		u.stopTimer()
	}()
	return u.readRequests()
}

// readRequests is the client side loop; it returns the reason the
// connection ends.
func (u *uaConn) readRequests() string {
	c, l := u.c, u.h.l
	// HEL must come within the handshake timeout (Part 6 §7.1.2.3: the
	// first message); after it the idle timeout applies, and a multi-chunk
	// message must be finished within the Channel's message timeout.
	for {
		if c.draining() {
			u.waitIdle()
			return "drained for shutdown"
		}
		deadline := l.cfg.Timeouts.Idle.D()
		switch {
		case !u.gotHello:
			deadline = l.cfg.Timeouts.Handshake.D()
		case u.partial:
			deadline = min(deadline, u.h.lim.MessageTimeout)
		}
		c.client.SetReadDeadline(time.Now().Add(deadline))
		_, chunk, err := u.fr.Next()
		if err != nil {
			return u.readError(err)
		}
		if r := c.closedReason(); r != "" {
			return r // closed by another goroutine: see the Modbus reader
		}
		u.chMu.Lock()
		msg, err := u.ch.Feed(opcua.ClientToServer, chunk)
		maxChunk := u.ch.MaxChunkSize(opcua.ClientToServer)
		u.chMu.Unlock()
		if err != nil {
			return u.malformedClient("framing", err, chunk)
		}
		u.fr.SetMaxChunkSize(maxChunk)
		u.partial = !msg.Complete
		if !msg.Complete && !msg.Opaque {
			// The Channel holds the chunk until the message is complete:
			// nothing is forwarded before the whole request is decided.
			continue
		}
		var reason string
		var ok bool
		switch {
		case msg.Hello != nil:
			u.gotHello = true
			reason, ok = u.hello(msg.Hello)
		case msg.Opaque && msg.Type == opcua.MessageMsg:
			reason, ok = u.opaqueChunk(msg)
		default:
			reason, ok = u.request(msg)
		}
		if !ok {
			return reason
		}
	}
}

func (u *uaConn) readError(err error) string {
	c := u.c
	switch {
	case errors.Is(err, io.EOF):
		u.waitIdle()
		return "client closed"
	case c.draining():
		u.waitIdle()
		return "drained for shutdown"
	case errors.Is(err, os.ErrDeadlineExceeded):
		if !u.gotHello {
			u.sendError(uaBadTimeout, "no HEL within the handshake timeout")
			return "handshake timeout: no HEL"
		}
		if u.partial {
			err := fmt.Errorf("a multi-chunk message was not finished within %s", u.h.lim.MessageTimeout)
			u.malformed("client", "framing", string(opcua.CodeMessageTimeout), err.Error(), nil)
			u.sendError(uaBadTimeout, err.Error())
			return "malformed message from client: " + err.Error()
		}
		return "idle timeout"
	}
	if code := opcua.CodeOf(err); code != "" {
		// The Framer refused a header (type, chunk type, declared size).
		return u.malformedClient("framing", err, nil)
	}
	if r := c.closedReason(); r != "" {
		return r
	}
	return "client read error: " + err.Error()
}

// hello dials the server, forwards the client's HEL with the buffer sizes
// clamped to the proxy's limits and starts the upstream reader. The ACK must
// come within the response timeout.
func (u *uaConn) hello(hel *opcua.Hello) (string, bool) {
	c, l := u.c, u.h.l
	up, err := c.dial()
	if err != nil {
		l.metrics.upstreamError("unreachable")
		l.log.Warn("upstream unreachable", zap.Uint64("conn", c.id), zap.Error(err))
		u.sendError(uaBadServerNotConnected, "the server is unreachable")
		return "upstream unreachable: " + err.Error(), false
	}
	u.up = up
	b, err := opcua.ClampHello(*hel, u.h.lim).Encode(u.out[:0])
	if err != nil {
		// DecodeHello accepted the URL; Encode checks the same bounds.
		u.sendError(opcua.StatusBadTCPEndpointURLInvalid, "endpoint url")
		return "HEL cannot be re-encoded: " + err.Error(), false
	}
	u.out = b
	if !u.writeUpstream(u.out) {
		return "upstream write failed", false
	}
	u.mu.Lock()
	u.timer = time.AfterFunc(l.cfg.Timeouts.Response.D(), u.expire)
	u.mu.Unlock()
	go u.readResponses(up)
	return "", true
}

// request enforces one complete client message: OPN, MSG or CLO.
func (u *uaConn) request(msg *opcua.Message) (string, bool) {
	c, l := u.c, u.h.l
	if msg.Aborted {
		// The client gave up a message the proxy held back; the server never
		// saw its chunks, so the abort chunk is withheld too.
		if u.channelMode() != opcua.SecurityModeNone {
			return u.refuseSigned("client aborted a message on a signed channel: withholding it would leave a gap in the signed sequence numbers", 0)
		}
		u.dropChunks(msg)
		return "", true
	}

	u.chMu.Lock()
	info, derr := u.ch.Decode(msg, &u.op)
	mode := u.ch.Security().Mode
	u.chMu.Unlock()
	if derr != nil {
		if opcua.ClosesConnection(derr) {
			// The body does not decode to exactly its length or breaks a
			// cap: nothing of this connection can be trusted any more.
			return u.malformedClient("decode", derr, joinChunks(msg.Chunks)), false
		}
		return u.violation(msg, info, mode, derr)
	}
	if !msg.Opaque {
		u.attachSession(&info)
	}

	if busy, status := u.admit(msg); busy != "" {
		l.metrics.denied.Inc()
		ev := u.requestEvent(policy.Decision{Reason: busy, Rule: "proxy.outstanding"})
		if status == 0 {
			// A duplicate RequestId cannot be paired: fail closed.
			ev.DenyAction = "close"
			ev.StatusCode = opcua.StatusBadTCPInternalError
			c.record(ev)
			u.sendError(opcua.StatusBadTCPInternalError, busy)
			return "request denied: " + busy, false
		}
		return u.refuse(msg, info, mode, ev, status, policy.ActionRefuse)
	}

	d := l.opts.Decider.Decide(context.Background(), &u.in)
	ev := u.requestEvent(d)
	if !d.Allow {
		l.metrics.denied.Inc()
		action := d.Action
		if action == policy.ActionDefault {
			action, _ = policy.ParseAction(l.cfg.DenyAction)
		}
		return u.refuse(msg, info, mode, ev, opcua.StatusBadUserAccessDenied, action)
	}
	// The audit event of an allowed operation is written before it is
	// forwarded (a read's may follow it, audit.read_delay); if it cannot
	// be written, the operation is denied.
	if err := c.recordAllowed(ev); err != nil {
		l.metrics.denied.Inc()
		ev2 := u.requestEvent(policy.Decision{ID: d.ID, Reason: "audit write failed: " + err.Error(), Rule: "proxy.audit"})
		return u.refuse(msg, info, mode, ev2, uaBadInternalError, policy.ActionRefuse)
	}
	l.metrics.allowed.Inc()
	return u.forward(msg, info)
}

// violation refuses a well-framed request that could not be decoded.
func (u *uaConn) violation(msg *opcua.Message, info opcua.RequestInfo, mode opcua.SecurityMode, derr error) (string, bool) {
	u.h.l.metrics.denied.Inc()
	status := opcua.StatusBadDecodingError
	if errors.Is(derr, opcua.ErrUnknownService) {
		status = opcua.StatusBadServiceUnsupported
	}
	ev := u.requestEvent(policy.Decision{Reason: inspect.ViolationReason(derr), Rule: inspect.ViolationRule(string(opcua.CodeOf(derr)))})
	return u.refuse(msg, info, mode, ev, status, policy.ActionRefuse)
}

// refuse audits a denied request and applies the deny action the channel's
// security mode allows.
func (u *uaConn) refuse(msg *opcua.Message, info opcua.RequestInfo, mode opcua.SecurityMode, ev *audit.Event, status uint32, action policy.Action) (string, bool) {
	c := u.c
	if mode != opcua.SecurityModeNone || msg.Type != opcua.MessageMsg {
		// Signed or encrypted: the proxy can neither forge a signed
		// ServiceFault nor withhold a chunk without leaving a gap in the
		// signed sequence numbers. An OPN or CLO has no ServiceFault to
		// answer with. The connection ends.
		if action == policy.ActionReset {
			ev.DenyAction = action.String()
			c.record(ev)
			c.reset("request denied: " + ev.Reason)
			return "request denied with reset: " + ev.Reason, false
		}
		ev.DenyAction = "close"
		ev.StatusCode = status // in the ERR
		c.record(ev)
		u.sendError(status, ev.Reason)
		return fmt.Sprintf("request denied on a %s channel: %s", channelKind(mode, msg), ev.Reason), false
	}
	ev.DenyAction = action.String()
	if action == policy.ActionRefuse {
		ev.StatusCode = status
	}
	c.record(ev)
	switch action {
	case policy.ActionReset:
		c.reset("request denied: " + ev.Reason)
		return "request denied with reset: " + ev.Reason, false
	case policy.ActionDrop:
		u.dropChunks(msg)
		return "", true
	}
	u.dropChunks(msg)
	if !u.injectFault(msg.SecureChannelID, msg.TokenID, msg.RequestID, info.RequestHandle, status) {
		return "client write failed", false
	}
	return "", true
}

func channelKind(mode opcua.SecurityMode, msg *opcua.Message) string {
	if msg.Type != opcua.MessageMsg && mode == opcua.SecurityModeNone {
		return "none (" + msg.Type.String() + ")"
	}
	return mode.String()
}

// refuseSigned ends a connection whose channel cannot be repaired.
func (u *uaConn) refuseSigned(reason string, status uint32) (string, bool) {
	if status == 0 {
		status = opcua.StatusBadTCPInternalError
	}
	ev := audit.Event{Action: audit.ActionMalformed, Outcome: audit.OutcomeFailure, Reason: "client: " + reason, Rule: "proxy.signed"}
	u.c.record(&ev)
	u.sendError(status, reason)
	return reason, false
}

// opaqueChunk handles a client MSG chunk on a SignAndEncrypt channel. The
// policy decides at the first chunk of each message on what the channel
// shows (security policy, client certificate); the chunks are forwarded as
// they come, since nothing in them can be checked.
func (u *uaConn) opaqueChunk(msg *opcua.Message) (string, bool) {
	c, l := u.c, u.h.l
	if !u.opaqueIn {
		u.chMu.Lock()
		u.ch.FillOpaque(opcua.MessageMsg, u.ch.Security(), &u.op)
		u.chMu.Unlock()
		u.mu.Lock()
		busy := u.opaqueOut >= l.cfg.MaxOutstanding
		u.mu.Unlock()
		if busy {
			ev := u.requestEvent(policy.Decision{Reason: fmt.Sprintf("outstanding request limit (%d) reached", l.cfg.MaxOutstanding), Rule: "proxy.outstanding"})
			ev.DenyAction = "close"
			c.record(ev)
			l.metrics.denied.Inc()
			u.sendError(uaBadTooManyOperations, ev.Reason)
			return "request denied on a sign_and_encrypt channel: " + ev.Reason, false
		}
		d := l.opts.Decider.Decide(context.Background(), &u.in)
		ev := u.requestEvent(d)
		if !d.Allow {
			l.metrics.denied.Inc()
			return u.refuse(msg, opcua.RequestInfo{}, opcua.SecurityModeSignAndEncrypt, ev, opcua.StatusBadUserAccessDenied, d.Action)
		}
		if err := c.record(ev); err != nil {
			l.metrics.denied.Inc()
			u.sendError(uaBadInternalError, "audit write failed")
			return "audit write failed: " + err.Error(), false
		}
		l.metrics.allowed.Inc()
	}
	u.opaqueIn = !msg.Complete
	if msg.Complete && !msg.Aborted {
		u.mu.Lock()
		u.opaqueOut++
		u.mu.Unlock()
	}
	for _, ch := range msg.Chunks {
		if !u.writeUpstream(ch) {
			return "upstream write failed", false
		}
	}
	return "", true
}

func (u *uaConn) channelMode() opcua.SecurityMode {
	u.chMu.Lock()
	defer u.chMu.Unlock()
	return u.ch.Security().Mode
}

// attachSession gives the operation the session its AuthenticationToken
// names, as ActivateSession established it on this connection
// (opcua.Sessions). An ActivateSession request carries the identity it
// asks for instead.
func (u *uaConn) attachSession(info *opcua.RequestInfo) {
	u.mu.Lock()
	u.sessions.Attach(&u.op, info)
	u.mu.Unlock()
}

// admit checks that the request can be paired with its response: a free
// slot (max_outstanding) and a RequestId not already in flight. status is
// the ServiceFault for a request over the limit, 0 for one that cannot be
// paired at all.
func (u *uaConn) admit(msg *opcua.Message) (reason string, status uint32) {
	if msg.Opaque || msg.Type == opcua.MessageClose {
		return "", 0 // opaque OPN: no RequestId to pair by; CLO: no response
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, dup := u.pend[msg.RequestID]; dup {
		return fmt.Sprintf("request id %d is already in flight", msg.RequestID), 0
	}
	if _, late := u.late[msg.RequestID]; late {
		return fmt.Sprintf("request id %d timed out and its response may still come", msg.RequestID), 0
	}
	if len(u.pend) >= u.h.l.cfg.MaxOutstanding {
		return fmt.Sprintf("outstanding request limit (%d) reached", u.h.l.cfg.MaxOutstanding), uaBadTooManyOperations
	}
	return "", 0
}

// forward registers the request for pairing and sends its validated chunks
// to the server, renumbered on a None channel.
func (u *uaConn) forward(msg *opcua.Message, info opcua.RequestInfo) (string, bool) {
	l := u.h.l
	if msg.Opaque {
		u.mu.Lock()
		u.opaqueOut++ // an opaque OPN expects one response
		u.mu.Unlock()
	} else if msg.Type != opcua.MessageClose {
		p := &uaPending{handle: info.RequestHandle, chID: msg.SecureChannelID, tokID: msg.TokenID}
		timeout := l.cfg.Timeouts.Response.D()
		if info.Service != nil {
			p.service = info.Service.Name
			if info.Service.Name == "Publish" {
				// The server holds a Publish until it has notifications or
				// a keep-alive is due; the client's TimeoutHint says how
				// long it is prepared to wait.
				p.parked = true
				timeout = max(timeout, time.Duration(info.TimeoutHint)*time.Millisecond)
				if info.TimeoutHint == 0 {
					timeout = max(timeout, l.cfg.Timeouts.Idle.D())
				}
			}
			p.session = opcua.SessionChangeOf(&u.op, &info)
		}
		p.deadline = time.Now().Add(timeout)
		u.addPending(msg.RequestID, p)
	}
	renumber := !msg.Opaque && u.channelMode() == opcua.SecurityModeNone
	for _, ch := range msg.Chunks {
		if renumber {
			seq, err := opcua.SequenceNumber(ch)
			if err != nil {
				// The Channel validated this chunk: fail closed if not.
				return u.malformedClient("framing", err, ch), false
			}
			if out := u.c2s.Forward(seq); out != seq {
				opcua.SetSequenceNumber(ch, out)
			}
		}
		if !u.writeUpstream(ch) {
			return "upstream write failed", false
		}
	}
	return "", true
}

// dropChunks withholds a None channel's message from the server; the
// client→server numbers are renumbered from here on.
func (u *uaConn) dropChunks(msg *opcua.Message) {
	for _, ch := range msg.Chunks {
		seq, _ := opcua.SequenceNumber(ch)
		u.c2s.Drop(seq)
	}
}

// injectFault answers a withheld request with a ServiceFault, numbered in
// the server→client sequence.
func (u *uaConn) injectFault(chID, tokID, reqID, handle, status uint32) bool {
	u.outMu.Lock()
	defer u.outMu.Unlock()
	seq, ok := u.s2c.Inject()
	if !ok {
		// No server chunk yet, so no number to follow: cannot happen after
		// the OPN response. Fail closed.
		u.c.close("cannot number a ServiceFault before the server's first message")
		return false
	}
	u.cout = opcua.AppendServiceFault(u.cout[:0], opcua.FaultParams{
		SecureChannelID: chID, TokenID: tokID, SequenceNumber: seq,
		RequestID: reqID, RequestHandle: handle, Timestamp: time.Now(), Status: status,
	})
	if err := u.c.writeClient(u.cout); err != nil {
		u.c.close("client write failed: " + err.Error())
		return false
	}
	return true
}

// sendError sends an ERR to the client (Part 6 §7.1.2.5) before the proxy
// closes the connection. Best effort: the connection ends either way.
func (u *uaConn) sendError(status uint32, reason string) {
	u.outMu.Lock()
	defer u.outMu.Unlock()
	u.cout = opcua.EncodeError(u.cout[:0], status, reason)
	u.c.writeClient(u.cout)
}

func (u *uaConn) writeUpstream(b []byte) bool {
	l := u.h.l
	u.up.SetWriteDeadline(time.Now().Add(l.cfg.Timeouts.Response.D()))
	if _, err := u.up.Write(b); err != nil {
		l.metrics.upstreamError("write")
		l.log.Warn("upstream write failed", zap.Uint64("conn", u.c.id), zap.Error(err))
		u.c.close("upstream write failed: " + err.Error())
		return false
	}
	return true
}

func (u *uaConn) requestEvent(d policy.Decision) *audit.Event {
	u.ev = audit.Event{
		Action: audit.ActionRequest,
		// No Outcome: the encoder derives it from the decision (success
		// if allowed, failure if denied), as audit/FIELDS.md says.
		Reason:     d.Reason,
		DecisionID: d.ID,
		Allowed:    d.Allow,
		DryRun:     d.DryRun,
		Rule:       d.Rule,
		Revision:   d.Revision,
		Op:         &u.op,
	}
	return &u.ev
}

// malformedClient audits a client chunk or message that cannot be trusted,
// sends the ERR the protocol allows and ends the connection.
func (u *uaConn) malformedClient(stage string, err error, frame []byte) string {
	code := opcua.CodeOf(err)
	u.malformed("client", stage, string(code), err.Error(), frame)
	u.sendError(errStatus(code), err.Error())
	return "malformed message from client: " + err.Error()
}

// malformed audits a chunk or message whose framing or encoding could not
// be trusted. It runs on either reader goroutine.
func (u *uaConn) malformed(direction, stage, code, msg string, frame []byte) {
	u.h.l.metrics.malformed(direction)
	ev := audit.Event{
		Action:  audit.ActionMalformed,
		Outcome: audit.OutcomeFailure,
		Reason:  direction + ": " + msg,
		Rule:    stage + "." + code,
		Bytes:   frame,
	}
	u.c.record(&ev)
}

// errStatus is the ERR status for a Channel or decode error.
func errStatus(code opcua.Code) uint32 {
	switch code {
	case opcua.CodeBadMessageType, opcua.CodeBadChunkType, opcua.CodeChunkTooSmall:
		return opcua.StatusBadTCPMessageTypeInvalid
	case opcua.CodeChunkTooLarge, opcua.CodeMessageSize, opcua.CodeChunkCount, opcua.CodeOpenRequests:
		return opcua.StatusBadTCPMessageTooLarge
	case opcua.CodeSequence:
		return uaBadSequenceNumberInvalid
	case opcua.CodeChannelMismatch:
		return uaBadTCPSecureChannelUnknown
	case opcua.CodeSecurityMismatch, opcua.CodeUnsupportedPolicy:
		return uaBadSecurityPolicyRejected
	case opcua.CodeMessageTimeout:
		return uaBadTimeout
	case opcua.CodeInvalidHello:
		return opcua.StatusBadProtocolVersionUnsupported
	case opcua.CodeTruncated, opcua.CodeTrailingBytes, opcua.CodeInvalidEncoding, opcua.CodeArrayTooLong,
		opcua.CodeDepthExceeded, opcua.CodeTooManyValues, opcua.CodeUnknownExtObject:
		return opcua.StatusBadDecodingError
	}
	return opcua.StatusBadTCPInternalError
}

func joinChunks(chunks [][]byte) []byte {
	if len(chunks) == 1 {
		return chunks[0]
	}
	var b []byte
	for _, c := range chunks {
		b = append(b, c...)
	}
	return b
}
