package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/inspect/opcua"
)

// The server side of an OPC UA connection: ACK, OPN responses, responses
// paired with their requests, endpoint URL rewriting, response timeouts.

// readResponses reads the server's chunks until the upstream connection
// ends; the client connection ends with it (an OPC UA session cannot move
// to a new TCP connection behind the client's back).
func (u *uaConn) readResponses(up net.Conn) {
	c, l := u.c, u.h.l
	defer func() {
		if p := recover(); p != nil {
			u.c.internalError("upstream reader", p)
		}
	}()
	fr := opcua.NewFramer(up, u.h.lim.MaxChunkSize)
	for {
		_, chunk, err := fr.Next()
		if err != nil {
			if opcua.CodeOf(err) != "" {
				u.malformedServer("framing", err, nil)
				return
			}
			reason := "server closed the connection"
			if !errors.Is(err, io.EOF) {
				reason = "upstream read error: " + err.Error()
				if c.closedReason() == "" && !errors.Is(err, net.ErrClosed) {
					l.log.Info("upstream connection ended", zap.Uint64("conn", c.id), zap.Error(err))
				}
			}
			c.close(reason)
			return
		}
		u.chMu.Lock()
		msg, err := u.ch.Feed(opcua.ServerToClient, chunk)
		maxChunk := u.ch.MaxChunkSize(opcua.ServerToClient)
		u.chMu.Unlock()
		if err != nil {
			u.malformedServer("framing", err, chunk)
			return
		}
		fr.SetMaxChunkSize(maxChunk)
		if !u.response(msg) {
			return
		}
	}
}

// response handles one server message (or, on an opaque channel, chunk).
// false ends the connection.
func (u *uaConn) response(msg *opcua.Message) bool {
	c := u.c
	switch {
	case msg.Acknowledge != nil:
		u.mu.Lock()
		u.acked = true
		u.rearmLocked()
		u.mu.Unlock()
		ack := opcua.ClampAcknowledge(*msg.Acknowledge, u.h.lim)
		return u.toClient(ack.Encode(nil))
	case msg.Error != nil:
		// The server refuses the connection: pass its ERR on and close.
		u.toClient(opcua.EncodeError(nil, msg.Error.Error, msg.Error.Reason))
		c.close(fmt.Sprintf("server sent ERR 0x%08X: %s", msg.Error.Error, msg.Error.Reason))
		return false
	case msg.Opaque:
		// An OPN response under a security policy, or any chunk of a
		// SignAndEncrypt channel: nothing to pair by or check.
		if msg.Complete {
			u.mu.Lock()
			if u.opaqueOut > 0 {
				u.opaqueOut--
			}
			u.rearmLocked()
			u.mu.Unlock()
		}
		return u.forwardChunks(msg.Chunks, false)
	case !msg.Complete:
		return true // the Channel holds it until the final chunk
	}

	mode := u.channelMode()
	u.mu.Lock()
	p := u.pend[msg.RequestID]
	if p != nil {
		delete(u.pend, msg.RequestID)
		if !p.parked {
			u.waiting--
		}
		u.rearmLocked()
	}
	u.mu.Unlock()
	late := false
	if p == nil {
		u.mu.Lock()
		if _, late = u.late[msg.RequestID]; late {
			delete(u.late, msg.RequestID)
		}
		u.mu.Unlock()
	}
	if p == nil {
		// Unsolicited, late (after a response timeout) or duplicated:
		// never delivered to the client.
		reason := fmt.Sprintf("response with request id %d matches no request in flight", msg.RequestID)
		if late {
			reason = fmt.Sprintf("late response with request id %d, after its response timeout: dropped", msg.RequestID)
		}
		ev := audit.Event{Action: audit.ActionUnsolicited, Outcome: audit.OutcomeFailure,
			Reason: reason, Bytes: joinChunks(msg.Chunks)}
		c.record(&ev)
		if mode != opcua.SecurityModeNone {
			u.sendError(opcua.StatusBadTCPInternalError, "unsolicited response on a signed channel")
			c.close("unsolicited response on a signed channel")
			return false
		}
		u.dropServerChunks(msg)
		return true
	}
	if msg.Aborted {
		// The server gave up the response; the Channel held back its
		// earlier chunks, so only the abort reaches the client.
		if mode != opcua.SecurityModeNone {
			u.sendError(opcua.StatusBadTCPInternalError, "server aborted a response on a signed channel")
			c.close("server aborted a response on a signed channel")
			return false
		}
		u.outMu.Lock()
		u.s2c.Drop(msg.SequenceNumber)
		u.outMu.Unlock()
		return u.forwardChunks(msg.Chunks, true)
	}
	if msg.Type.Secure() && msg.Body != nil {
		// Nothing reaches the client that the proxy did not understand:
		// the response must decode exactly as a standard service
		// response (structures of the server's own namespace are passed
		// by their length). A server that sends anything else is not
		// trusted any more.
		if err := opcua.ValidateResponse(msg.Body, u.h.lim); err != nil {
			u.malformedServer("response", err, joinChunks(msg.Chunks))
			return false
		}
	}
	if msg.Type == opcua.MessageMsg {
		u.session(p, msg.Body)
		if mode == opcua.SecurityModeNone && (p.service == "GetEndpoints" || p.service == "CreateSession" || p.service == "FindServers") {
			return u.rewriteEndpoints(msg)
		}
	}
	return u.forwardChunks(msg.Chunks, mode == opcua.SecurityModeNone)
}

// session tracks what ActivateSession and CloseSession did, from the
// server's answer.
func (u *uaConn) session(p *uaPending, body []byte) {
	if p.session.IsZero() {
		return // the response need not be decoded
	}
	rh, err := opcua.DecodeResponseHeader(body)
	if err != nil {
		return
	}
	u.mu.Lock()
	u.sessions.Response(p.session, rh)
	u.mu.Unlock()
}

// rewriteEndpoints points the endpoint and discovery URLs of a
// GetEndpoints, CreateSession or FindServers response at the proxy, so that
// a client that discovers through the proxy (FindServers → a DiscoveryUrl →
// GetEndpoints → an EndpointUrl) keeps connecting through it.
func (u *uaConn) rewriteEndpoints(msg *opcua.Message) bool {
	target := endpointURL(u.h.endpoint, u.c.client.LocalAddr())
	ok, err := u.rewriteLocked(msg, target)
	if err != nil {
		u.malformedServer("rewrite", err, joinChunks(msg.Chunks))
	}
	return ok
}

func (u *uaConn) rewriteLocked(msg *opcua.Message, target string) (bool, error) {
	u.outMu.Lock()
	defer u.outMu.Unlock()
	u.chMu.Lock()
	out, changed, err := u.ch.RewriteEndpoints(u.cout[:0], msg, func(old string) string { return rewriteURL(old, target) }, func() uint32 {
		seq, _ := u.s2c.Inject() // started: the OPN response came first
		return seq
	})
	u.chMu.Unlock()
	if err != nil {
		return false, err
	}
	if !changed {
		return u.forwardChunksLocked(msg.Chunks, true), nil
	}
	// The rewritten body was re-chunked and numbered by Inject; the
	// original chunks are withheld.
	for range msg.Chunks {
		u.s2c.Drop(msg.SequenceNumber)
	}
	u.cout = out
	if err := u.c.writeClient(out); err != nil {
		u.c.close("client write failed: " + err.Error())
		return false, nil
	}
	return true, nil
}

// endpointURL is endpoint_url for a client that reached the proxy at
// local. An unspecified host (endpoint_url defaults to opc.tcp://<listen>,
// and listen may be 0.0.0.0:4841) or port 0 (a test listener on :0) is
// replaced by the address the client actually connected to.
func endpointURL(endpoint string, local net.Addr) string {
	rest, ok := strings.CutPrefix(endpoint, "opc.tcp://")
	if !ok || local == nil {
		return endpoint
	}
	hostport, path, hasPath := strings.Cut(rest, "/")
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return endpoint
	}
	lhost, lport, err := net.SplitHostPort(local.String())
	if err != nil {
		return endpoint
	}
	changed := false
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
		host, changed = lhost, true
	}
	if port == "0" {
		port, changed = lport, true
	}
	if !changed {
		return endpoint
	}
	u := "opc.tcp://" + net.JoinHostPort(host, port)
	if hasPath {
		u += "/" + path
	}
	return u
}

// rewriteURL replaces the scheme and authority of an endpoint URL with
// those of target and keeps the server's path, unless target has a path
// of its own.
func rewriteURL(old, target string) string {
	trest, _ := strings.CutPrefix(target, "opc.tcp://")
	if strings.Contains(trest, "/") {
		return target
	}
	rest, ok := strings.CutPrefix(old, "opc.tcp://")
	if !ok {
		return target
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return target + rest[i:]
	}
	return target
}

// forwardChunks sends server chunks to the client, renumbered on a None
// channel.
func (u *uaConn) forwardChunks(chunks [][]byte, renumber bool) bool {
	u.outMu.Lock()
	defer u.outMu.Unlock()
	return u.forwardChunksLocked(chunks, renumber)
}

func (u *uaConn) forwardChunksLocked(chunks [][]byte, renumber bool) bool {
	for _, ch := range chunks {
		if renumber {
			seq, err := opcua.SequenceNumber(ch)
			if err != nil {
				u.c.close("server chunk without a sequence number: " + err.Error())
				return false
			}
			if out := u.s2c.Forward(seq); out != seq {
				opcua.SetSequenceNumber(ch, out)
			}
		}
		if err := u.c.writeClient(ch); err != nil {
			u.c.close("client write failed: " + err.Error())
			return false
		}
	}
	return true
}

// dropServerChunks withholds a server message on a None channel.
func (u *uaConn) dropServerChunks(msg *opcua.Message) {
	u.outMu.Lock()
	defer u.outMu.Unlock()
	for range msg.Chunks {
		u.s2c.Drop(msg.SequenceNumber)
	}
}

func (u *uaConn) toClient(b []byte) bool {
	u.outMu.Lock()
	defer u.outMu.Unlock()
	if err := u.c.writeClient(b); err != nil {
		u.c.close("client write failed: " + err.Error())
		return false
	}
	return true
}

// malformedServer audits a server chunk that cannot be trusted; the client
// gets an ERR and both connections close.
func (u *uaConn) malformedServer(stage string, err error, frame []byte) {
	u.h.l.metrics.upstreamError("bad_response")
	u.malformed("upstream", stage, string(opcua.CodeOf(err)), err.Error(), frame)
	u.sendError(opcua.StatusBadTCPInternalError, "invalid message from the server")
	u.c.close("malformed message from upstream: " + err.Error())
}

func (u *uaConn) addPending(reqID uint32, p *uaPending) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pend[reqID] = p
	if !p.parked {
		u.waiting++
	}
	u.rearmLocked()
}

// rearmLocked schedules the timer at the earliest deadline: the ACK while
// it is awaited, else the oldest pending request.
func (u *uaConn) rearmLocked() {
	if u.waiting == 0 && u.idle != nil {
		close(u.idle)
		u.idle = nil
	}
	if u.timer == nil {
		return
	}
	if !u.acked {
		return // the ACK timer set by hello stays
	}
	var oldest time.Time
	for _, p := range u.pend {
		if oldest.IsZero() || p.deadline.Before(oldest) {
			oldest = p.deadline
		}
	}
	if oldest.IsZero() {
		u.timer.Stop()
		return
	}
	u.timer.Reset(time.Until(oldest))
}

// uaMaxLate bounds the RequestIds a connection remembers as timed out
// (uaConn.late).
const uaMaxLate = 1024

type expired struct {
	reqID uint32
	p     *uaPending
}

// expire answers requests the server did not answer in time: on a None
// channel with a ServiceFault Bad_Timeout (the late answer is dropped as
// unsolicited), on a signed one by closing the connection. Without an ACK
// in time the connection closes with ERR Bad_Timeout.
func (u *uaConn) expire() {
	defer func() {
		// As on the readers: a bug ends this connection, audited, not the
		// process (the timer runs on a goroutine of its own).
		if p := recover(); p != nil {
			u.c.internalError("response timer", p)
		}
	}()
	c, l := u.c, u.h.l
	now := time.Now()
	u.mu.Lock()
	if !u.acked {
		u.mu.Unlock()
		l.metrics.upstreamError("timeout")
		u.sendError(uaBadTimeout, "the server did not acknowledge HEL in time")
		c.close("upstream timeout: no ACK")
		return
	}
	var late []expired
	for reqID, p := range u.pend {
		if !p.deadline.After(now) {
			late = append(late, expired{reqID, p})
			delete(u.pend, reqID)
			if !p.parked {
				u.waiting--
			}
			if u.late == nil {
				u.late = make(map[uint32]struct{})
			}
			u.late[reqID] = struct{}{}
		}
	}
	tooMany := len(u.late) > uaMaxLate
	u.rearmLocked()
	u.mu.Unlock()
	if len(late) == 0 {
		return
	}
	if tooMany {
		// Every unanswered request is remembered until its answer comes;
		// a server that answers none cannot make that grow without bound.
		reason := fmt.Sprintf("more than %d requests left unanswered by the server", uaMaxLate)
		l.metrics.upstreamError("timeout")
		u.sendError(uaBadTimeout, reason)
		c.close("upstream response timeout: " + reason)
		return
	}
	l.metrics.upstreamError("timeout")
	l.log.Info("upstream response timeout", zap.Uint64("conn", c.id), zap.Int("requests", len(late)))
	if u.channelMode() != opcua.SecurityModeNone {
		u.sendError(uaBadTimeout, "the server did not answer in time")
		c.close(fmt.Sprintf("upstream response timeout on a signed channel (%s, request id %d)", late[0].p.service, late[0].reqID))
		return
	}
	for _, e := range late {
		if !u.injectFault(e.p.chID, e.p.tokID, e.reqID, e.p.handle, uaBadTimeout) {
			return
		}
	}
}

func (u *uaConn) stopTimer() {
	u.mu.Lock()
	if u.timer != nil {
		u.timer.Stop()
	}
	u.mu.Unlock()
}

// waitIdle waits until every request in flight is answered or expired, so
// that a client's half-close or a drain loses nothing. Parked Publish
// requests do not count: the server holds them by design.
func (u *uaConn) waitIdle() {
	u.mu.Lock()
	if u.waiting == 0 {
		u.mu.Unlock()
		return
	}
	if u.idle == nil {
		u.idle = make(chan struct{})
	}
	ch := u.idle
	u.mu.Unlock()
	<-ch
}
