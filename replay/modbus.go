package replay

import (
	"errors"
	"time"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/inspect/capture"
	"github.com/conduit-ot/conduit/inspect/modbus"
	"github.com/conduit-ot/conduit/policy"
)

// mbDecoder decodes one Modbus/TCP flow with the proxy's decoders:
// modbus.FrameLength splits each direction's stream bytes by the MBAP length
// (the single definition of framing the proxy's Framer uses too),
// Request.Decode and Request.Operation make the operation, Response.Decode
// validates each response against the request it answers, paired by
// transaction id as the proxy pairs them.
type mbDecoder struct {
	s    *stream
	in   policy.Input
	op   inspect.Operation
	req  modbus.Request
	resp modbus.Response
	preq modbus.Request // a pending request, decoded again to validate its response
	// rq and rs are handed to the sink, valid during the call: reused so
	// that nothing is allocated per operation.
	rq    Request
	rs    Response
	dirs  [2]mbHalf
	pend  []mbPending // in flight, oldest first
	early []mbEarly   // responses waiting for a request, oldest first
	last  time.Time   // capture time of the latest data
}

// mbHalf is one direction of a flow.
type mbHalf struct {
	// buf holds an incomplete ADU carried over to the next Data (at most
	// one ADU, MaxADULen bytes, plus the bytes of one Data call).
	buf    []byte
	bufOff int64
	// resync: after a capture gap (or at the start of a flow picked up
	// mid-way) framing is tried at the start of each segment, and a
	// segment that does not frame is skipped, until an ADU decodes.
	resync bool
	dead   bool // not decoded further: not Modbus, or too many malformed frames
	framed bool // an ADU was framed in this direction
	// malformed counts the malformed frames of this direction.
	malformed int
}

// maxMalformed is how many malformed frames a direction may have before
// replay stops decoding it: past a few, the bytes are not Modbus/TCP.
const maxMalformed = 16

// mbPending is a request waiting for its response: a copy of its ADU, as
// the proxy keeps one.
type mbPending struct {
	seq     uint64
	kind    OpKind
	tid     uint16
	refused bool // decoded with a ProtocolError: its response is validated unpaired
	n       int
	adu     [modbus.MaxADULen]byte
}

func newModbusDecoder(s *stream) *mbDecoder {
	m := &mbDecoder{s: s}
	m.in = policy.Input{
		Protocol: inspect.ProtocolModbus,
		Listener: s.f.Listener,
		Upstream: s.f.Upstream,
		Client:   s.f.Client,
		Op:       &m.op,
	}
	return m
}

func (m *mbDecoder) gap(dir capture.Dir) {
	h := &m.dirs[dir]
	if !h.dead {
		h.resync = true
	}
}

func (m *mbDecoder) data(dir capture.Dir, b []byte, off int64, ts time.Time) {
	h := &m.dirs[dir]
	m.last = ts
	if len(m.early) > 0 {
		m.expireEarly(ts)
	}
	if h.dead {
		return
	}
	if h.resync && len(h.buf) > 0 {
		// A partial ADU before the hole can never be completed.
		m.skipped(dir, h.buf, h.bufOff, ts, "gap")
		h.buf = h.buf[:0]
	}
	if len(h.buf) > 0 {
		// Complete the carried-over ADU: it needs at most MaxADULen bytes.
		old := len(h.buf)
		take := min(len(b), modbus.MaxADULen)
		h.buf = append(h.buf, b[:take]...)
		n, ok := m.frames(dir, h.buf, h.bufOff, ts)
		if !ok {
			h.buf = h.buf[:0]
			return
		}
		if n == 0 { // still incomplete: all of b is in buf
			return
		}
		used := n - old
		h.buf = h.buf[:0]
		b, off = b[used:], off+int64(used)
	}
	n, ok := m.frames(dir, b, off, ts)
	if !ok {
		return
	}
	if n < len(b) {
		h.buf = append(h.buf[:0], b[n:]...)
		h.bufOff = off + int64(n)
	}
}

// frames decodes every complete ADU at the start of b and returns the bytes
// used; ok is false when the rest of b must be dropped (a framing error,
// or a segment skipped while resynchronising).
func (m *mbDecoder) frames(dir capture.Dir, b []byte, off int64, ts time.Time) (int, bool) {
	pos := 0
	for pos < len(b) {
		n, err := modbus.FrameLength(b[pos:])
		if err != nil {
			m.framingError(dir, b[pos:], off+int64(pos), ts, err, false)
			return pos, false
		}
		if n == 0 {
			break
		}
		if dir == capture.ClientToServer {
			err = m.request(b[pos:pos+n], off+int64(pos), ts)
		} else {
			err = m.response(b[pos:pos+n], off+int64(pos), ts)
		}
		if err != nil {
			m.framingError(dir, b[pos:pos+n], off+int64(pos), ts, err, true)
			return pos, false
		}
		m.dirs[dir].resync = false
		m.dirs[dir].framed = true
		pos += n
	}
	return pos, true
}

// framingError handles bytes that do not frame. While resynchronising, a
// segment whose start is not a valid MBAP header is skipped. Otherwise —
// and always for a whole ADU (framed: a valid MBAP header) whose PDU is not
// as long as its function code says — the frame is malformed: the proxy
// would close the connection here. Replay reports it and resynchronises at
// the next segment, to show what the client went on to send, unless the
// flow does not speak Modbus at all or keeps failing.
func (m *mbDecoder) framingError(dir capture.Dir, b []byte, off int64, ts time.Time, err error, framed bool) {
	h := &m.dirs[dir]
	if h.resync && !framed {
		m.skipped(dir, b, off, ts, modbus.ReasonOf(err))
		return
	}
	if !m.s.malformed(h.framed, Problem{
		Dir: dir, Offset: off, Time: ts,
		Reason: modbus.ReasonOf(err), Detail: err.Error(), Bytes: problemBytes(b), Length: len(b),
		Framed: framed,
	}) {
		h.dead = true
		return
	}
	f := m.s.f
	h.buf = h.buf[:0]
	h.malformed++
	if f.NotProtocol || h.malformed >= maxMalformed {
		h.dead = true
	} else {
		h.resync = true
	}
	if dir == capture.ServerToClient {
		// The proxy drops the device connection and answers every request
		// in flight with an exception: none gets its response.
		m.dropPending()
	}
}

func (m *mbDecoder) skipped(dir capture.Dir, b []byte, off int64, ts time.Time, reason string) {
	m.s.p.sink.problem(&Problem{
		Kind: ProblemSkipped, Flow: m.s.f, Dir: dir, Offset: off, Time: ts,
		Reason: reason, Detail: "bytes after a capture gap that do not frame as Modbus/TCP",
		Bytes: problemBytes(b), Length: len(b),
	})
}

// request decodes one request ADU as the proxy does and hands it to the
// sink. It returns only framing errors (a PDU whose length differs from what
// its function code implies).
func (m *mbDecoder) request(adu []byte, off int64, ts time.Time) error {
	_, err := m.req.Decode(adu)
	if err != nil && errors.Is(err, modbus.ErrFraming) {
		return err
	}
	m.req.Operation(&m.op)
	p := m.s.p
	rq := &m.rq
	*rq = Request{
		Seq:    p.nextSeq(),
		Flow:   m.s.f,
		Time:   ts,
		Offset: off,
		Input:  &m.in,
		Key:    uint32(m.req.TransactionID),
		Op:     opKind(&m.op),
		Frame:  adu,

		ExpectsResponse: m.req.ExpectsResponse(),
	}
	if err != nil {
		// A well-framed request a conforming device would refuse: the
		// proxy answers it with the exception, never asks the policy.
		rq.Refused = err
		rq.Rule = inspect.ViolationRule(modbus.ReasonOf(err))
	}
	m.s.f.Requests++
	p.sink.request(rq)
	if rq.ExpectsResponse {
		m.addPending(rq.Seq, rq.Op, m.req.TransactionID, err != nil, adu)
		m.pairEarly(ts)
	}
	return nil
}

func (m *mbDecoder) addPending(seq uint64, kind OpKind, tid uint16, refused bool, adu []byte) {
	for i := range m.pend {
		if m.pend[i].tid == tid {
			// The transaction id is reused before its response was
			// captured: the earlier request is never answered (the proxy
			// would have refused the second one as busy; the capture shows
			// a client that went on).
			m.s.p.sink.unanswered(m.s.f, m.pend[i].seq)
			m.removePending(i)
			break
		}
	}
	if len(m.pend) >= maxPending {
		m.s.p.sink.unanswered(m.s.f, m.pend[0].seq)
		m.removePending(0)
	}
	m.pend = append(m.pend, mbPending{seq: seq, kind: kind, tid: tid, refused: refused})
	p := &m.pend[len(m.pend)-1]
	p.n = copy(p.adu[:], adu)
}

func (m *mbDecoder) removePending(i int) {
	copy(m.pend[i:], m.pend[i+1:])
	m.pend = m.pend[:len(m.pend)-1]
}

func (m *mbDecoder) dropPending() {
	for i := range m.pend {
		m.s.p.sink.unanswered(m.s.f, m.pend[i].seq)
	}
	m.pend = m.pend[:0]
}

// response pairs one response ADU with its request by transaction id and
// validates it against that request, as the proxy does. A response with
// nothing in flight waits (early) for a request captured before it: when
// the request direction is held back behind a capture hole, reassembly
// delivers the request after the response.
func (m *mbDecoder) response(adu []byte, off int64, ts time.Time) error {
	tid := uint16(adu[0])<<8 | uint16(adu[1])
	if idx := m.findPending(tid); idx >= 0 {
		return m.emitResponse(adu, off, ts, idx)
	}
	// Unpaired for now: framing is checked at once (a framing error is
	// malformed whatever it answers), the rest when it is paired or given
	// up.
	if _, err := m.resp.Decode(adu, nil); err != nil && errors.Is(err, modbus.ErrFraming) {
		return err
	}
	if len(m.early) >= maxEarlyResponses {
		m.giveUpEarly(0)
	}
	m.early = append(m.early, mbEarly{tid: tid, off: off, ts: ts})
	e := &m.early[len(m.early)-1]
	e.n = copy(e.adu[:], adu)
	return nil
}

// maxEarlyResponses bounds the unpaired responses waiting for their
// request per flow; earlyWait is how long, in capture time, they wait:
// longer than reassembly holds data behind a hole (capture.DefaultGapTimeout).
const (
	maxEarlyResponses = 64
	earlyWait         = 2 * capture.DefaultGapTimeout
)

// mbEarly is a response that came before any request it could answer.
type mbEarly struct {
	tid uint16
	off int64
	ts  time.Time
	n   int
	adu [modbus.MaxADULen]byte
}

func (m *mbDecoder) findPending(tid uint16) int {
	for i := range m.pend {
		if m.pend[i].tid == tid {
			return i
		}
	}
	return -1
}

// pairEarly pairs the request just added (the last pending) with a
// response that came first but was captured after it.
func (m *mbDecoder) pairEarly(reqTS time.Time) {
	if len(m.early) == 0 || len(m.pend) == 0 {
		return
	}
	idx := len(m.pend) - 1
	for i := range m.early {
		e := &m.early[i]
		if e.tid == m.pend[idx].tid && !e.ts.Before(reqTS) {
			m.emitResponse(e.adu[:e.n], e.off, e.ts, idx)
			m.early = append(m.early[:i], m.early[i+1:]...)
			return
		}
	}
}

// expireEarly gives up the responses that have waited longer than
// earlyWait by now.
func (m *mbDecoder) expireEarly(now time.Time) {
	for len(m.early) > 0 && now.Sub(m.early[0].ts) > earlyWait {
		m.giveUpEarly(0)
	}
}

// giveUpEarly reports early response i as unsolicited.
func (m *mbDecoder) giveUpEarly(i int) {
	e := m.early[i]
	m.early = append(m.early[:i], m.early[i+1:]...)
	m.emitResponse(e.adu[:e.n], e.off, e.ts, -1)
}

// emitResponse validates a response against pending request idx (or on
// its own when idx < 0 or the request was refused) and hands it to the
// sink.
func (m *mbDecoder) emitResponse(adu []byte, off int64, ts time.Time, idx int) error {
	var req *modbus.Request
	if idx >= 0 && !m.pend[idx].refused {
		p := &m.pend[idx]
		if _, err := m.preq.Decode(p.adu[:p.n]); err == nil {
			req = &m.preq
		}
	}
	_, err := m.resp.Decode(adu, req)
	if err != nil && errors.Is(err, modbus.ErrFraming) {
		return err
	}
	rs := &m.rs
	*rs = Response{
		Flow:      m.s.f,
		Time:      ts,
		Offset:    off,
		Protocol:  inspect.ProtocolModbus,
		Function:  m.resp.Function,
		Exception: m.resp.Exception,
	}
	if err != nil {
		rs.Err, rs.Reason = err, modbus.ReasonOf(err)
	}
	if idx >= 0 {
		rs.RequestSeq, rs.Req = m.pend[idx].seq, m.pend[idx].kind
		m.removePending(idx)
	}
	m.s.f.Responses++
	m.s.p.sink.response(rs)
	return nil
}

func (m *mbDecoder) end() {
	for dir := range m.dirs {
		h := &m.dirs[dir]
		if len(h.buf) > 0 && !h.dead {
			// The flow ended inside an ADU: the capture stopped, or the
			// peer closed mid-frame; either way there is nothing to decide.
			m.s.p.sink.problem(&Problem{
				Kind: ProblemSkipped, Flow: m.s.f, Dir: capture.Dir(dir), Offset: h.bufOff, Time: m.last,
				Reason: modbus.ReasonTruncated, Detail: "the flow ends inside an ADU",
				Bytes: problemBytes(h.buf), Length: len(h.buf),
			})
		}
	}
	for len(m.early) > 0 {
		m.giveUpEarly(0)
	}
	m.dropPending()
}
