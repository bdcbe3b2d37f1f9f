package replay

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/gopcua/opcua/id"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/inspect/capture"
	"github.com/conduit-ot/conduit/inspect/opcua"
	"github.com/conduit-ot/conduit/policy"
)

// uaDecoder decodes one OPC UA binary flow with the proxy's decoders:
// opcua.Split cuts each direction into chunks, one opcua.Channel tracks the
// connection (handshake, secure channel, chunk reassembly) and
// Channel.Decode makes the operation of every complete client message.
// Responses are paired with requests by request id; ActivateSession and
// CloseSession responses maintain the sessions whose identity later
// requests carry, with the proxy's opcua.Sessions.
type uaDecoder struct {
	s      *stream
	ch     *opcua.Channel // nil until the first chunk, and after a gap
	mode   opcua.SecurityMode
	strict bool      // the channel is started from the handshake: no mid-stream leniency
	now    time.Time // capture time of the chunk being fed (the channel's clock)
	dirs   [2]uaHalf

	in policy.Input
	op inspect.Operation
	rq Request // handed to the sink, reused

	pend     map[uint32]uaPending
	early    []uaEarly // responses waiting for a request, oldest first
	sessions opcua.Sessions
}

type uaHalf struct {
	buf       []byte // bytes of an incomplete chunk
	bufOff    int64
	resync    bool
	dead      bool
	framed    bool
	malformed int
}

// uaPending is a request waiting for its response.
type uaPending struct {
	seq     uint64
	kind    OpKind
	service string
	typeID  uint32
	session opcua.SessionChange // ActivateSession, CloseSession
}

// Binary encoding ids: a response's id is its request's + 3 (Part 6 §5.2.2.15,
// e.g. ReadRequest 631, ReadResponse 634).
const (
	responseIDOffset = 3
	serviceFaultID   = id.ServiceFault_Encoding_DefaultBinary
)

func newOPCUADecoder(s *stream) *uaDecoder {
	u := &uaDecoder{
		s:      s,
		mode:   s.l.mode,
		strict: !s.f.MidStream,
		pend:   map[uint32]uaPending{},
	}
	u.in = policy.Input{
		Protocol: inspect.ProtocolOPCUA,
		Listener: s.f.Listener,
		Upstream: s.f.Upstream,
		Client:   s.f.Client,
		Op:       &u.op,
	}
	return u
}

func (u *uaDecoder) gap(dir capture.Dir) {
	h := &u.dirs[dir]
	if h.dead {
		return
	}
	h.resync = true
	// Sequence numbers and partial messages cannot survive a hole: start
	// a new channel, leniently, at the next chunk.
	u.restart()
}

func (u *uaDecoder) data(dir capture.Dir, b []byte, off int64, ts time.Time) {
	h := &u.dirs[dir]
	if h.dead {
		return
	}
	if h.resync && len(h.buf) > 0 {
		u.skipped(dir, h.buf, h.bufOff, ts, "gap")
		h.buf = h.buf[:0]
	}
	u.now = ts
	if len(u.early) > 0 {
		u.expireEarly(ts)
	}
	if len(h.buf) == 0 {
		n, ok := u.chunks(dir, b, off, ts)
		if ok && n < len(b) {
			h.buf = append(h.buf[:0], b[n:]...)
			h.bufOff = off + int64(n)
		}
		return
	}
	h.buf = append(h.buf, b...)
	n, ok := u.chunks(dir, h.buf, h.bufOff, ts)
	if !ok {
		h.buf = h.buf[:0]
		return
	}
	rest := copy(h.buf, h.buf[n:])
	h.buf = h.buf[:rest]
	h.bufOff += int64(n)
}

// chunks feeds every complete chunk at the start of b to the channel and
// returns the bytes used; ok is false when the rest of b must be dropped.
func (u *uaDecoder) chunks(dir capture.Dir, b []byte, off int64, ts time.Time) (int, bool) {
	pos := 0
	for pos < len(b) {
		lim := u.s.l.limits.Normalize().MaxChunkSize
		if u.ch != nil {
			lim = u.ch.MaxChunkSize(opcua.Direction(dir))
		}
		n, _, err := opcua.Split(b[pos:], lim)
		if err == nil && n == 0 {
			break
		}
		if err == nil {
			err = u.chunk(dir, b[pos:pos+n], off+int64(pos), ts)
		}
		if err != nil {
			u.malformed(dir, b[pos:], off+int64(pos), ts, err)
			return pos, false
		}
		u.dirs[dir].resync = false
		u.dirs[dir].framed = true
		pos += n
	}
	return pos, true
}

// channel returns the flow's channel, starting one at its first chunk.
// A flow picked up mid-way (or after a gap) gets a lenient channel
// (AllowMidStream); its security mode is the listener's, or, for a
// synthetic listener, guessed from the first secure chunk: a plaintext
// service type id means None, anything else SignAndEncrypt.
func (u *uaDecoder) channel(chunk []byte) *opcua.Channel {
	if u.ch != nil {
		return u.ch
	}
	mode := u.mode
	if !u.strict && u.s.l.synthetic && mode == opcua.SecurityModeSignAndEncrypt && plaintextMSG(chunk) {
		mode = opcua.SecurityModeNone
	}
	u.ch = opcua.NewChannel(opcua.Config{
		Limits:         u.s.l.limits,
		SecurityMode:   mode,
		Now:            func() time.Time { return u.now },
		AllowMidStream: !u.strict,
	})
	return u.ch
}

// plaintextMSG reports a MSG or CLO chunk whose body, after the symmetric
// and sequence headers, starts with the four-byte numeric NodeId of a known
// request or response: it is not encrypted.
func plaintextMSG(chunk []byte) bool {
	const body = opcua.HeaderSize + 8 + 8 // channel and token ids, sequence header
	if len(chunk) < body+4 || (string(chunk[:3]) != "MSG" && string(chunk[:3]) != "CLO") {
		return false
	}
	if chunk[body] != 0x01 || chunk[body+1] != 0x00 {
		return false
	}
	tid := uint32(binary.LittleEndian.Uint16(chunk[body+2:]))
	return opcua.LookupService(tid) != nil || opcua.LookupService(tid-responseIDOffset) != nil || tid == serviceFaultID
}

// chunk feeds one chunk; the error is one the proxy closes the connection
// for.
func (u *uaDecoder) chunk(dir capture.Dir, chunk []byte, off int64, ts time.Time) error {
	ch := u.channel(chunk)
	msg, err := ch.Feed(opcua.Direction(dir), chunk)
	if err != nil {
		return err
	}
	if !msg.Complete {
		return nil
	}
	if msg.Type == opcua.MessageError {
		// The server ends the connection with a UA-TCP error.
		u.s.f.Responses++
		u.s.p.sink.response(&Response{
			Flow: u.s.f, Time: ts, Offset: off, Protocol: inspect.ProtocolOPCUA,
			Message: "ERR", Fault: true, Status: msg.Error.Error,
		})
		return nil
	}
	if !msg.Type.Secure() || msg.Aborted {
		return nil
	}
	if dir == capture.ClientToServer {
		return u.request(ch, msg, off, ts)
	}
	u.response(msg, off, ts)
	return nil
}

func (u *uaDecoder) request(ch *opcua.Channel, msg *opcua.Message, off int64, ts time.Time) error {
	info, derr := ch.Decode(msg, &u.op)
	if derr != nil && opcua.ClosesConnection(derr) {
		return derr
	}
	if derr == nil && !msg.Opaque {
		u.sessions.Attach(&u.op, &info)
	}
	p := u.s.p
	rq := &u.rq
	*rq = Request{
		Seq:    p.nextSeq(),
		Flow:   u.s.f,
		Time:   ts,
		Offset: off,
		Input:  &u.in,
		Key:    msg.RequestID,
		Op:     opKind(&u.op),

		ExpectsResponse: !msg.Opaque && msg.Type != opcua.MessageClose,
	}
	if derr != nil {
		rq.Refused = derr
		rq.Rule = inspect.ViolationRule(string(opcua.CodeOf(derr)))
	}
	u.s.f.Requests++
	p.sink.request(rq)
	if !rq.ExpectsResponse {
		return nil // nothing to pair by (opaque), no response (CLO)
	}
	pd := uaPending{seq: rq.Seq, kind: rq.Op, typeID: info.TypeID}
	if info.Service != nil {
		pd.service = info.Service.Name
	}
	if derr == nil {
		// A request refused as a protocol violation is never forwarded by
		// the proxy: it changes no session, whatever the server answered.
		pd.session = opcua.SessionChangeOf(&u.op, &info)
	}
	if old, dup := u.pend[msg.RequestID]; dup {
		p.sink.unanswered(u.s.f, old.seq)
	} else if len(u.pend) >= maxPending {
		u.dropOldest()
	}
	u.pend[msg.RequestID] = pd
	if len(u.early) > 0 {
		u.pairEarly(msg.RequestID, ts)
	}
	return nil
}

func (u *uaDecoder) dropOldest() {
	var oldest uint32
	var seq uint64
	for k, p := range u.pend {
		if seq == 0 || p.seq < seq {
			oldest, seq = k, p.seq
		}
	}
	delete(u.pend, oldest)
	u.s.p.sink.unanswered(u.s.f, seq)
}

func (u *uaDecoder) response(msg *opcua.Message, off int64, ts time.Time) {
	if msg.Opaque {
		u.s.f.Responses++
		u.s.p.sink.response(&Response{Flow: u.s.f, Time: ts, Offset: off, Protocol: inspect.ProtocolOPCUA,
			Message: msg.Type.String(), Opaque: true})
		return
	}
	e := uaEarly{requestID: msg.RequestID, message: msg.Type.String(), off: off, ts: ts}
	e.rh, e.err = opcua.DecodeResponseHeader(msg.Body)
	if p, ok := u.pend[msg.RequestID]; ok {
		delete(u.pend, msg.RequestID)
		u.emitResponse(&e, &p)
		return
	}
	// Nothing in flight with its request id: wait for a request captured
	// before it, as for Modbus (the request may be held behind a hole).
	if len(u.early) >= maxEarlyResponses {
		u.giveUpEarly()
	}
	u.early = append(u.early, e)
}

// uaEarly is a response with what replay needs of it once paired.
type uaEarly struct {
	requestID uint32
	message   string
	off       int64
	ts        time.Time
	rh        opcua.ResponseHeader
	err       error
}

// pairEarly pairs the request just added with a response that came first
// but was captured after it.
func (u *uaDecoder) pairEarly(reqID uint32, reqTS time.Time) {
	for i := range u.early {
		e := u.early[i]
		if e.requestID == reqID && !e.ts.Before(reqTS) {
			p := u.pend[reqID]
			delete(u.pend, reqID)
			u.early = append(u.early[:i], u.early[i+1:]...)
			u.emitResponse(&e, &p)
			return
		}
	}
}

func (u *uaDecoder) expireEarly(now time.Time) {
	for len(u.early) > 0 && now.Sub(u.early[0].ts) > earlyWait {
		u.giveUpEarly()
	}
}

// giveUpEarly reports the oldest early response as unsolicited.
func (u *uaDecoder) giveUpEarly() {
	e := u.early[0]
	u.early = u.early[1:]
	u.emitResponse(&e, nil)
}

// emitResponse pairs e with p (nil: unsolicited), checks that the response
// type answers the request, tracks sessions and hands it to the sink.
func (u *uaDecoder) emitResponse(e *uaEarly, p *uaPending) {
	rs := Response{Flow: u.s.f, Time: e.ts, Offset: e.off, Protocol: inspect.ProtocolOPCUA, Message: e.message}
	if p != nil {
		rs.RequestSeq, rs.Req, rs.Service = p.seq, p.kind, p.service
	}
	switch {
	case e.err != nil:
		rs.Err, rs.Reason = e.err, string(opcua.CodeOf(e.err))
	default:
		rs.TypeID, rs.Status = e.rh.TypeID, e.rh.ServiceResult
		rs.Fault = e.rh.TypeID == serviceFaultID
		if p != nil && !rs.Fault && p.typeID != 0 && e.rh.TypeID != p.typeID+responseIDOffset {
			rs.Err = fmt.Errorf("response type %d does not answer request type %d", e.rh.TypeID, p.typeID)
			rs.Reason = "response_mismatch"
		}
		if p != nil && rs.Err == nil {
			u.sessions.Response(p.session, e.rh)
		}
	}
	u.s.f.Responses++
	u.s.p.sink.response(&rs)
}

// malformed handles a chunk that does not frame or that the channel
// refuses. While resynchronising it is skipped and the channel restarted.
// Otherwise it is malformed: the channel is poisoned and the proxy would
// close the connection. Replay reports it and, as for Modbus, restarts a
// lenient channel at the next segment, unless the flow does not speak OPC
// UA at all or keeps failing.
func (u *uaDecoder) malformed(dir capture.Dir, b []byte, off int64, ts time.Time, err error) {
	h := &u.dirs[dir]
	u.restart()
	if h.resync {
		u.skipped(dir, b, off, ts, string(opcua.CodeOf(err)))
		return
	}
	if !u.s.malformed(h.framed, Problem{
		Dir: dir, Offset: off, Time: ts,
		Reason: string(opcua.CodeOf(err)), Detail: err.Error(), Bytes: problemBytes(b), Length: len(b),
	}) {
		h.dead = true
		return
	}
	f := u.s.f
	h.malformed++
	if f.NotProtocol || h.malformed >= maxMalformed {
		for i := range u.dirs {
			u.dirs[i].dead = true
			u.dirs[i].buf = nil
		}
		u.dropPending()
		return
	}
	h.resync = true
}

// restart drops the channel: the next chunk starts a lenient one, in the
// security mode the old one had established.
func (u *uaDecoder) restart() {
	if u.ch != nil {
		if m := u.ch.Security().Mode; m != opcua.SecurityModeInvalid {
			u.mode = m
		}
		u.ch = nil
	}
	u.strict = false
}

func (u *uaDecoder) skipped(dir capture.Dir, b []byte, off int64, ts time.Time, reason string) {
	u.s.p.sink.problem(&Problem{
		Kind: ProblemSkipped, Flow: u.s.f, Dir: dir, Offset: off, Time: ts,
		Reason: reason, Detail: "bytes after a capture gap that do not frame as OPC UA",
		Bytes: problemBytes(b), Length: len(b),
	})
}

func (u *uaDecoder) dropPending() {
	for k, p := range u.pend {
		u.s.p.sink.unanswered(u.s.f, p.seq)
		delete(u.pend, k)
	}
}

func (u *uaDecoder) end() {
	for dir := range u.dirs {
		h := &u.dirs[dir]
		if len(h.buf) > 0 && !h.dead {
			u.s.p.sink.problem(&Problem{
				Kind: ProblemSkipped, Flow: u.s.f, Dir: capture.Dir(dir), Offset: h.bufOff, Time: u.now,
				Reason: string(opcua.CodeTruncated), Detail: "the flow ends inside a chunk",
				Bytes: problemBytes(h.buf), Length: len(h.buf),
			})
		}
	}
	for len(u.early) > 0 {
		u.giveUpEarly()
	}
	u.dropPending()
}
