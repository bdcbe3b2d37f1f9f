package replay

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/inspect/capture"
	"github.com/conduit-ot/conduit/policy"
)

// Flow kinds: what replay made of a TCP connection.
const (
	KindModbus = inspect.ProtocolModbus // decoded as Modbus/TCP
	KindOPCUA  = inspect.ProtocolOPCUA  // decoded as OPC UA binary
	KindTLS    = "tls"                  // TLS records: encrypted, not inspected
	KindOther  = "other"                // no ICS protocol recognised: not inspected
	KindEmpty  = "empty"                // no client data captured
)

// How a flow's protocol was chosen (Flow.ClassifiedBy).
const (
	ByConfig = "config" // the server address is a configured listener's
	ByPort   = "port"   // 502 or 802: Modbus, 4840: OPC UA
	BySniff  = "sniff"  // the first client bytes: an MBAP header or an OPC UA HEL/OPN/MSG
)

// Flow is one TCP connection of the replayed captures, as replay classified
// it. The decoders update it; a sink may read it during its calls and keep
// the pointer.
type Flow struct {
	ID        uint64 // capture.Flow.ID: numbered from 1 in order of first packet, per file
	File      string // the capture file its first packet came from
	Client    netip.AddrPort
	Server    netip.AddrPort
	FirstSeen time.Time
	// MidStream: the client's SYN was not captured, so the flow was
	// picked up mid-way and its stream offsets count from the first byte
	// captured.
	MidStream bool

	Kind         string // Kind*; "" until the first client bytes when sniffing
	ClassifiedBy string // By*; "" for KindOther and KindEmpty
	Listener     string // policy input.listener
	Upstream     string // policy input.upstream
	Synthetic    bool   // Listener was made up from the server address (no configured listener matched)

	// NotProtocol is set when the flow was taken for Modbus or OPC UA (by
	// configuration or port) but its very first client bytes do not frame
	// as that protocol: e.g. a scanner probing port 502.
	NotProtocol bool
	End         capture.EndReason

	Requests  int // requests decoded (operations, refused ones included)
	Responses int

	stats *ListenerStats // Replay's statistics of its listener
}

// String renders the flow for a report: "#3 10.0.0.5:50123 -> 10.0.0.9:502".
func (f *Flow) String() string { return fmt.Sprintf("#%d %s -> %s", f.ID, f.Client, f.Server) }

// Request is one decoded request: an operation the proxy would decide on.
// It is valid only during the sink call: Input.Op points into the flow
// decoder's scratch space (Clone to retain).
type Request struct {
	Seq    uint64 // 1, 2, 3 ... over the whole replay, in decoding order
	Flow   *Flow
	Time   time.Time // capture time of the segment that completed the request
	Offset int64     // client->server stream offset of its first byte (OPC UA: of its final chunk)
	// Input is the policy input, built exactly as the proxy builds it:
	// listener, upstream, client address and port, identity (always nil: a
	// capture carries no verified certificate), operation.
	Input *policy.Input
	// Refused is set when the proxy would refuse the request without asking
	// the policy: a well-framed request that breaks the protocol's rules
	// (a Modbus *ProtocolError, an OPC UA body that does not decode). The
	// proxy audits it as a deny with Rule "protocol.<reason code>" and
	// Reason "protocol violation: <error>" (inspect.ViolationRule and
	// ViolationReason).
	Refused error
	Rule    string // for Refused: inspect.ViolationRule(<reason code>)

	// Modbus: the transaction id. OPC UA: the request id (0 when opaque).
	Key uint32
	// Op is the kind of operation, for per-function statistics.
	Op OpKind
	// ExpectsResponse: a response can be paired with it (not a Modbus
	// FC 8/04, an OPC UA CLO or an opaque message).
	ExpectsResponse bool
	// Frame is the Modbus request ADU (nil for OPC UA), valid during the
	// call. Everything in Input but the flow's fields is a function of
	// its bytes after the transaction id, so it can key a cache.
	Frame []byte
}

// OpKind names a kind of operation for the report: a Modbus function code,
// with the sub-function of FC 8 and the MEI type of FC 43, or an OPC UA
// service.
type OpKind struct {
	Protocol string `json:"protocol"`
	Code     uint32 `json:"code"` // Modbus function code; OPC UA request type id (0: opaque or not numeric)
	Sub      uint16 `json:"subfunction,omitempty"`
	HasSub   bool   `json:"-"`
	Name     string `json:"name"` // Modbus: the operation name; OPC UA: the service name (or "opaque", "unknown_service")
}

// opKind returns the kind of op.
func opKind(op *inspect.Operation) OpKind {
	k := OpKind{Protocol: op.Protocol, Name: op.Name}
	switch op.Protocol {
	case inspect.ProtocolModbus:
		k.Code = uint32(op.Modbus.Function)
		k.Sub, k.HasSub = op.Modbus.Subfunction, op.Modbus.HasSubfunction
	case inspect.ProtocolOPCUA:
		if u := op.OPCUA; u != nil {
			k.Code = u.TypeID
			if u.Service != "" {
				k.Name = u.Service
			}
		}
	}
	return k
}

// Response is one decoded response (or exception, or ServiceFault), paired
// with its request when one is in flight.
type Response struct {
	Flow       *Flow
	Time       time.Time
	Offset     int64  // server->client stream offset of its first byte
	RequestSeq uint64 // the Request it answers; 0 when none was in flight (unsolicited)
	Req        OpKind // the kind of that request

	Protocol string
	// Modbus: the function code (without the exception bit) and the
	// exception code the device returned (0 for a normal response).
	Function  uint8
	Exception uint8
	// OPC UA: the UA-TCP message type ("MSG", "OPN", "ERR"), the
	// response's type id, the service it answers, and the
	// status of a ServiceFault (Fault true) or the response header's
	// ServiceResult.
	Message string
	TypeID  uint32
	Service string
	Fault   bool
	Status  uint32
	// Opaque: a response on a SignAndEncrypt channel, which cannot be
	// paired.
	Opaque bool

	// Err is set when the response fails validation: it does not answer
	// its request (wrong function, count, echo ...) or is invalid on its
	// own. The proxy drops such a response and answers the client with an
	// exception.
	Err    error
	Reason string // stable reason code of Err
}

// Problem kinds.
const (
	// ProblemMalformed: bytes that cannot be framed or decoded as the
	// flow's protocol; the proxy would have closed the connection (client
	// side) or dropped the device connection (server side). The rest of
	// that direction is not decoded.
	ProblemMalformed = "malformed"
	// ProblemSkipped: bytes after a capture gap (or at the start of a flow
	// picked up mid-way) that could not be framed while resynchronising:
	// a capture artefact, not something the proxy would have seen.
	ProblemSkipped = "skipped"
)

// Problem is a frame or stretch of bytes replay could not decode, and where.
type Problem struct {
	Kind   string // Problem*
	Flow   *Flow
	Dir    capture.Dir
	Offset int64 // stream offset in Dir
	Time   time.Time
	Reason string // stable reason code (modbus.Reason*, opcua.Code*)
	Detail string
	Bytes  []byte // up to the first 32 bytes (a copy)
	Length int    // bytes of the frame, or skipped
	// Framed: Bytes start a whole frame with a valid header (Modbus: an
	// MBAP header, so Bytes[7] is the function code) that does not decode.
	Framed bool
}

// sink consumes what the flow decoders produce. Calls come from one
// goroutine; pointers are valid during the call only, except *Flow.
type sink interface {
	flowStart(f *Flow)
	request(rq *Request)
	response(rs *Response)
	// unanswered reports a request that expected a response and will
	// never get one paired: the flow ended, or another request reused its
	// transaction or request id, or too many were in flight.
	unanswered(f *Flow, seq uint64)
	problem(p *Problem)
	flowEnd(f *Flow)
}

// maxPending bounds the requests waiting for their response per flow: the
// largest max_outstanding a listener may be configured with.
const maxPending = 1024

// pipeline turns capture streams into sink calls. It is the
// capture.StreamFactory.
type pipeline struct {
	sink sink
	ls   *listenerSet
	file string // the file being read
	seq  uint64
}

func newPipeline(s sink, ls *listenerSet) *pipeline { return &pipeline{sink: s, ls: ls} }

func (p *pipeline) nextSeq() uint64 {
	p.seq++
	return p.seq
}

// read reads the files in order, each with its own capture.Reader, and
// returns the statistics summed over them.
//
// One Reader per file, rather than one for all: the reassembler's timeouts
// run on capture time, which goes backwards from one file to the next when
// unrelated captures are replayed together, and what is decoded must not
// depend on the order of the files. The cost is that a connection split
// across the files of a ring buffer is picked up mid-stream in the next
// file. Flow ids are per file, as tshark's stream numbers are.
func (p *pipeline) read(ctx context.Context, files []string, progress func(capture.Progress)) (capture.Stats, error) {
	var total capture.Stats
	for _, f := range files {
		p.file = f
		r := capture.NewReader(p, capture.Options{IsServer: p.ls.isServer, Progress: progress})
		err := r.ReadFile(ctx, f)
		addStats(&total, r.Close())
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// addStats adds the counters of s to t.
func addStats(t *capture.Stats, s capture.Stats) {
	t.Files += s.Files
	t.FilesTruncated += s.FilesTruncated
	t.FilesCorrupt += s.FilesCorrupt
	t.Packets += s.Packets
	t.Bytes += s.Bytes
	t.TCPPackets += s.TCPPackets
	t.NonTCP += s.NonTCP
	t.Fragments += s.Fragments
	t.Undecodable += s.Undecodable
	t.UnknownLinkType += s.UnknownLinkType
	t.TruncatedPackets += s.TruncatedPackets
	t.Flows += s.Flows
	t.FlowsIgnored += s.FlowsIgnored
	t.FlowsMidStream += s.FlowsMidStream
	t.FlowLimitDrops += s.FlowLimitDrops
	for i := range t.Ended {
		t.Ended[i] += s.Ended[i]
	}
	for i := range t.DataBytes {
		t.DataBytes[i] += s.DataBytes[i]
	}
	t.Gaps += s.Gaps
	t.GapBytes += s.GapBytes
	t.OutOfOrder += s.OutOfOrder
	t.RetransmittedBytes += s.RetransmittedBytes
	t.IgnoredRST += s.IgnoredRST
	t.IgnoredFIN += s.IgnoredFIN
	t.PacketsAfterEnd += s.PacketsAfterEnd
	t.WarningsDropped += s.WarningsDropped
	t.Warnings = append(t.Warnings, s.Warnings...)
}

// NewStream classifies a new flow by configuration or port; the rest are
// sniffed at their first client bytes.
func (p *pipeline) NewStream(cf capture.Flow) capture.Stream {
	f := &Flow{
		ID:        cf.ID,
		File:      p.file,
		Client:    cf.Client,
		Server:    cf.Server,
		FirstSeen: cf.FirstSeen,
		MidStream: !cf.Handshake,
	}
	s := &stream{p: p, f: f}
	if cf.Roles == capture.RoleFromSYN && p.ls.isServer(cf.Client) && !p.ls.isServer(cf.Server) {
		// A SYN (or SYN-ACK) says the endpoint on the Modbus or OPC UA
		// port, or at a listener's address, opened the connection: a
		// fuzzer's or scanner's packet (clients send from ephemeral ports).
		// The port decides, as it does for the proxy, which listens there.
		f.Client, f.Server = cf.Server, cf.Client
		f.MidStream = true
		s.swap = true
	}
	switch l := p.ls.match(f.Server); {
	case l != nil:
		s.assign(l, ByConfig)
		s.tlsOK = l.tls
	case f.Server.Port() == portModbus:
		s.assign(p.ls.synthetic(inspect.ProtocolModbus, f.Server), ByPort)
	case f.Server.Port() == portMbaps:
		// Modbus/TCP Security: TLS expected, plain Modbus decoded.
		s.assign(p.ls.synthetic(inspect.ProtocolModbus, f.Server), ByPort)
		s.tlsOK = true
	case f.Server.Port() == portOPCUA:
		s.assign(p.ls.synthetic(inspect.ProtocolOPCUA, f.Server), ByPort)
	default:
		s.tlsOK = true // sniffed: TLS is reported as such
	}
	p.sink.flowStart(f)
	return s
}

// stream is one flow's capture.Stream: it picks the decoder and keeps the
// stream offsets.
// malformed reports p, a frame of direction p.Dir that broke the flow's
// protocol, as a ProblemMalformed of the flow; framed tells whether that
// direction framed anything before. When the very first client bytes of a
// flow seen from its start do not frame, the flow does not speak the
// protocol at all: it is marked NotProtocol (reported once, with the flow)
// and p is reported; the server's answer to such a flow is not reported
// again: false.
func (s *stream) malformed(framed bool, p Problem) bool {
	f := s.f
	if p.Dir == capture.ClientToServer && !framed && p.Offset == 0 && !f.MidStream {
		f.NotProtocol = true
	} else if f.NotProtocol {
		return false
	}
	p.Kind, p.Flow = ProblemMalformed, f
	s.p.sink.problem(&p)
	return true
}

type stream struct {
	p   *pipeline
	f   *Flow
	l   *listener
	dec flowDecoder
	off [2]int64 // stream offset of the next Data, per direction

	// Before the protocol is known (sniffing), the first client segments
	// and any server bytes that came before them.
	sniff   []earlyData
	sniffN  int
	early   []earlyData
	earlyN  int
	started bool // the first client bytes were seen
	gapped  [2]bool
	// swap: the capture's client is the flow's server (see NewStream).
	swap bool
	// tlsOK: TLS records are reported as an encrypted flow (a listener
	// side configured with TLS, port 802, or a sniffed flow) rather than
	// as bytes that are not the listener's plain protocol.
	tlsOK bool
}

type earlyData struct {
	b   []byte
	ts  time.Time
	off int64
}

// flowDecoder decodes one protocol on one flow.
type flowDecoder interface {
	data(dir capture.Dir, b []byte, off int64, ts time.Time)
	gap(dir capture.Dir)
	end()
}

// sniffLen is how many client bytes sniffing looks at: an MBAP header and a
// function code, or a UA-TCP header.
const sniffLen = 8

// maxEarly bounds the server bytes kept while waiting for the client's
// first bytes to tell the protocol.
const maxEarly = 64 << 10

func (s *stream) assign(l *listener, by string) {
	s.l = l
	s.f.Kind, s.f.ClassifiedBy = l.protocol, by
	s.f.Listener, s.f.Upstream, s.f.Synthetic = l.name, l.upstream, l.synthetic
}

func (s *stream) Data(dir capture.Dir, b []byte, ts time.Time) {
	if s.swap {
		dir = dir.Reverse()
	}
	off := s.off[dir]
	s.off[dir] += int64(len(b))
	if s.dec != nil {
		s.dec.data(dir, b, off, ts)
		return
	}
	if s.f.Kind == KindTLS || s.f.Kind == KindOther {
		return
	}
	if dir == capture.ServerToClient {
		if s.earlyN+len(b) > maxEarly {
			s.f.Kind, s.early = KindOther, nil
			return
		}
		s.early = append(s.early, earlyData{append([]byte(nil), b...), ts, off})
		s.earlyN += len(b)
		return
	}
	// The first client bytes decide. Up to sniffLen of them are gathered
	// (a client may send a header in pieces); then the decoder gets them,
	// segment by segment (it resynchronises at segment starts).
	s.sniff = append(s.sniff, earlyData{append([]byte(nil), b...), ts, off})
	s.sniffN += len(b)
	if s.sniffN < sniffLen {
		return
	}
	s.start()
}

// start picks the decoder from the first client bytes (s.sniff).
func (s *stream) start() {
	s.started = true
	var first []byte
	for _, d := range s.sniff {
		first = append(first, d.b...)
	}
	switch {
	case s.tlsOK && looksTLS(first):
		s.f.Kind = KindTLS
		s.early = nil
		return
	case s.l == nil:
		switch {
		case looksOPCUA(first):
			s.assign(s.p.ls.synthetic(inspect.ProtocolOPCUA, s.f.Server), BySniff)
		case looksModbus(first):
			s.assign(s.p.ls.synthetic(inspect.ProtocolModbus, s.f.Server), BySniff)
		default:
			s.f.Kind = KindOther
			s.early = nil
			return
		}
	}
	switch s.l.protocol {
	case inspect.ProtocolModbus:
		s.dec = newModbusDecoder(s)
	default:
		s.dec = newOPCUADecoder(s)
	}
	for dir, g := range s.gapped {
		if g {
			s.dec.gap(capture.Dir(dir))
		}
	}
	for _, e := range s.early {
		s.dec.data(capture.ServerToClient, e.b, e.off, e.ts)
	}
	s.early = nil
	for _, d := range s.sniff {
		s.dec.data(capture.ClientToServer, d.b, d.off, d.ts)
	}
	s.sniff = nil
}

func (s *stream) Gap(dir capture.Dir, n int) {
	if s.swap {
		dir = dir.Reverse()
	}
	if n > 0 {
		s.off[dir] += int64(n)
	}
	if s.dec != nil {
		s.dec.gap(dir)
		return
	}
	s.gapped[dir] = true
	if dir == capture.ClientToServer && len(s.sniff) > 0 {
		// Bytes before a hole cannot be sniffed together with those after.
		s.sniff, s.sniffN = nil, 0
	}
}

func (s *stream) End(reason capture.EndReason) {
	s.f.End = reason
	if s.dec == nil && len(s.sniff) > 0 {
		// A flow whose client sent fewer than sniffLen bytes in all.
		s.start()
	}
	if s.dec != nil {
		s.dec.end()
	} else if !s.started && s.f.Kind != KindTLS && s.f.Kind != KindOther {
		s.f.Kind, s.f.ClassifiedBy = KindEmpty, ""
	}
	s.p.sink.flowEnd(s.f)
}

// looksTLS reports a TLS record header: handshake (22) or alert (21),
// version 3.x (SSL 3.0 to TLS 1.3, which keeps 3.1 or 3.3 on the wire).
func looksTLS(b []byte) bool {
	return len(b) >= 3 && (b[0] == 22 || b[0] == 21) && b[1] == 3 && b[2] <= 4
}

// looksModbus reports an MBAP header (protocol id 0, length 2..254) and a
// request function code.
func looksModbus(b []byte) bool {
	if len(b) < sniffLen {
		return false
	}
	l := binary.BigEndian.Uint16(b[4:])
	return b[2] == 0 && b[3] == 0 && l >= 2 && l <= 254 && b[7] != 0 && b[7] < 0x80
}

// looksOPCUA reports a UA-TCP header a client starts with: HEL, or OPN/MSG
// when the flow was picked up mid-way, with a valid chunk type.
func looksOPCUA(b []byte) bool {
	if len(b) < sniffLen {
		return false
	}
	switch string(b[:3]) {
	case "HEL", "OPN", "MSG", "CLO":
	default:
		return false
	}
	return b[3] == 'F' || b[3] == 'C' || b[3] == 'A'
}

// problemBytes copies up to 32 bytes of b for a Problem.
func problemBytes(b []byte) []byte { return append([]byte(nil), b[:min(len(b), 32)]...) }
