package opcua

import (
	"encoding/binary"
	"time"
	"unicode/utf8"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// DateTime returns t as OPC UA DateTime ticks (Part 6 §5.2.2.5); the zero
// time encodes as 0.
func DateTime(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return (t.Unix()+epochOffset)*ticksPerSecond + int64(t.Nanosecond())/100
}

// ChunkParams are the ids every chunk of an encoded message carries.
type ChunkParams struct {
	Type            MessageType // MessageMsg (default) or MessageClose
	SecureChannelID uint32
	TokenID         uint32
	RequestID       uint32
}

// AppendMessage appends body as one or more symmetric chunks (MSG or CLO,
// SecurityPolicy None: no signature, no padding) of at most maxChunkSize
// bytes each, taking a sequence number per chunk from nextSeq. maxChunks
// (0 = no limit) bounds the chunk count: a larger message is ErrChunkCount
// and nothing is appended.
func AppendMessage(dst []byte, p ChunkParams, body []byte, maxChunkSize, maxChunks uint32, nextSeq func() uint32) ([]byte, error) {
	if p.Type == MessageUnknown {
		p.Type = MessageMsg
	}
	if p.Type != MessageMsg && p.Type != MessageClose {
		return dst, errorf(CodeEncode, "cannot chunk %s", p.Type)
	}
	if maxChunkSize < minSymSize+1 || maxChunkSize > MaxChunkSizeCeiling {
		return dst, errorf(CodeEncode, "max chunk size %d", maxChunkSize)
	}
	per := int(maxChunkSize) - symBodyStart
	n := max(1, (len(body)+per-1)/per)
	if p.Type == MessageClose && n > 1 {
		return dst, errorf(CodeEncode, "CLO body of %d bytes needs %d chunks", len(body), n)
	}
	if maxChunks != 0 && uint32(n) > maxChunks {
		return dst, errorf(CodeChunkCount, "message of %d bytes needs %d chunks, limit %d", len(body), n, maxChunks)
	}
	for i := 0; i < n; i++ {
		part := body[min(i*per, len(body)):min((i+1)*per, len(body))]
		ct := byte(ChunkIntermediate)
		if i == n-1 {
			ct = ChunkFinal
		}
		start := len(dst)
		dst = append(dst, make([]byte, HeaderSize)...)
		putHeader(dst[start:], p.Type, ct, uint32(symBodyStart+len(part)))
		dst = appendU32(dst, p.SecureChannelID)
		dst = appendU32(dst, p.TokenID)
		dst = appendU32(dst, nextSeq())
		dst = appendU32(dst, p.RequestID)
		dst = append(dst, part...)
	}
	return dst, nil
}

// FaultParams describe the ServiceFault that answers a denied request.
type FaultParams struct {
	SecureChannelID uint32 // of the request's channel
	TokenID         uint32 // of the request's chunk
	SequenceNumber  uint32 // the next server→client number (Renumberer.Inject)
	RequestID       uint32 // of the request
	RequestHandle   uint32 // from the request's RequestHeader (RequestInfo)
	Timestamp       time.Time
	Status          uint32 // 0 means StatusBadUserAccessDenied
}

// serviceFaultTypeID is ServiceFault_Encoding_DefaultBinary as a four-byte
// NodeId (Part 6 §5.2.2.9): 0x01, namespace 0, id 397.
var serviceFaultTypeID = [...]byte{nodeIDFourByte, 0, byte(id.ServiceFault_Encoding_DefaultBinary & 0xFF), byte(id.ServiceFault_Encoding_DefaultBinary >> 8)}

// AppendServiceFaultBody appends a ServiceFault body (Part 4 §7.33 and
// §7.35): type id, then a ResponseHeader with Timestamp, RequestHandle,
// ServiceResult, an empty DiagnosticInfo, a null StringTable and a null
// AdditionalHeader.
func AppendServiceFaultBody(dst []byte, requestHandle uint32, ts time.Time, status uint32) []byte {
	dst = append(dst, serviceFaultTypeID[:]...)
	dst = appendU64(dst, uint64(DateTime(ts)))
	dst = appendU32(dst, requestHandle)
	dst = appendU32(dst, status)
	dst = append(dst, 0x00)             // ServiceDiagnostics: no fields
	dst = appendU32(dst, 0xFFFFFFFF)    // StringTable: null array
	dst = append(dst, 0x00, 0x00, 0x00) // AdditionalHeader: null NodeId, no body
	return dst
}

// serviceFaultSize is the encoded size of the chunk AppendServiceFault writes.
const serviceFaultSize = symBodyStart + 4 + 8 + 4 + 4 + 1 + 4 + 3

// AppendServiceFault appends one final MSG chunk carrying a ServiceFault for
// a denied request on a SecurityMode None channel. It does not allocate when
// dst has room.
func AppendServiceFault(dst []byte, p FaultParams) []byte {
	if p.Status == 0 {
		p.Status = StatusBadUserAccessDenied
	}
	start := len(dst)
	dst = append(dst, make([]byte, HeaderSize)...)
	putHeader(dst[start:], MessageMsg, ChunkFinal, serviceFaultSize)
	dst = appendU32(dst, p.SecureChannelID)
	dst = appendU32(dst, p.TokenID)
	dst = appendU32(dst, p.SequenceNumber)
	dst = appendU32(dst, p.RequestID)
	return AppendServiceFaultBody(dst, p.RequestHandle, p.Timestamp, p.Status)
}

// Renumberer rewrites the sequence numbers of one direction of a channel
// after the proxy dropped (client→server) or injected (server→client)
// chunks, or forwards chunks in another order than they came (the chunks
// of a multi-chunk message are held until its final chunk, so a message
// sent between them goes out first): receivers reject any gap (Part 6
// §6.7.2.4). Call Forward for each chunk passed on, Drop for each chunk
// withheld, Inject for each chunk the proxy adds. Until the first Drop,
// Inject or out-of-order Forward the output equals the input (including
// the sender's own wrap); afterwards the output counts on by one and wraps
// to 1 once it has exceeded SequenceWrapThreshold, which every receiver
// following Part 6 accepts.
type Renumberer struct {
	started  bool
	diverged bool
	next     uint32 // next output number
	prevIn   uint32 // the last number forwarded as it came (not diverged)
}

func nextSequence(s uint32) uint32 {
	if s >= SequenceWrapThreshold+1 { // exceeded the threshold: wrap below 1024
		return 1
	}
	return s + 1
}

// Forward returns the number to put on a forwarded chunk that arrived with in.
func (r *Renumberer) Forward(in uint32) uint32 {
	if !r.started {
		r.started = true
		r.next = in
		r.prevIn = in - 1
	}
	if !r.diverged && nextSequenceOK(r.prevIn, in) {
		r.prevIn = in
		r.next = nextSequence(in)
		return in
	}
	// Dropped, injected, or forwarded out of the order it came: count on.
	r.diverged = true
	out := r.next
	r.next = nextSequence(out)
	return out
}

// Drop records that the chunk numbered in was not forwarded.
func (r *Renumberer) Drop(in uint32) {
	if !r.started {
		r.started = true
		r.next = in
	}
	r.diverged = true
}

// Inject returns the number for a chunk the proxy adds. ok is false before
// any chunk was seen in this direction (there is no number to follow).
func (r *Renumberer) Inject() (seq uint32, ok bool) {
	if !r.started {
		return 0, false
	}
	r.diverged = true
	out := r.next
	r.next = nextSequence(out)
	return out, true
}

// SetSequenceNumber overwrites the sequence number of a MSG or CLO chunk,
// or of an OPN chunk under SecurityPolicy None. Only for None channels: under
// Sign the signature covers the sequence header, under SignAndEncrypt it is
// encrypted (Channel.SetSequenceNumber checks this).
func SetSequenceNumber(chunk []byte, seq uint32) error {
	h, err := ParseHeader(chunk, MaxChunkSizeCeiling)
	if err != nil {
		return err
	}
	if int(h.Size) != len(chunk) {
		return errorf(CodeInvalidEncoding, "chunk declares %d bytes, has %d", h.Size, len(chunk))
	}
	switch h.Type {
	case MessageMsg, MessageClose:
		binary.LittleEndian.PutUint32(chunk[symHeaderEnd:], seq)
		return nil
	case MessageOpen:
		ah, off, err := ParseAsymmetricHeader(chunk)
		if err != nil {
			return err
		}
		if string(ah.SecurityPolicyURI) != PolicyNone {
			return errorf(CodeNotRewritable, "OPN under %s", ah.SecurityPolicyURI)
		}
		if off+sequenceHeaderSize > len(chunk) {
			return errorf(CodeTruncated, "OPN sequence header")
		}
		binary.LittleEndian.PutUint32(chunk[off:], seq)
		return nil
	}
	return errorf(CodeEncode, "%s has no sequence number", h.Type)
}

// SequenceNumber reads the sequence number of a MSG or CLO chunk, or of an
// OPN chunk under SecurityPolicy None: the counterpart of SetSequenceNumber,
// for the proxy's Renumberer, which needs each chunk's own number.
func SequenceNumber(chunk []byte) (uint32, error) {
	h, err := ParseHeader(chunk, MaxChunkSizeCeiling)
	if err != nil {
		return 0, err
	}
	if int(h.Size) != len(chunk) {
		return 0, errorf(CodeInvalidEncoding, "chunk declares %d bytes, has %d", h.Size, len(chunk))
	}
	switch h.Type {
	case MessageMsg, MessageClose:
		return binary.LittleEndian.Uint32(chunk[symHeaderEnd:]), nil
	case MessageOpen:
		ah, off, err := ParseAsymmetricHeader(chunk)
		if err != nil {
			return 0, err
		}
		if string(ah.SecurityPolicyURI) != PolicyNone {
			return 0, errorf(CodeOpaque, "OPN under %s", ah.SecurityPolicyURI)
		}
		if off+sequenceHeaderSize > len(chunk) {
			return 0, errorf(CodeTruncated, "OPN sequence header")
		}
		return binary.LittleEndian.Uint32(chunk[off:]), nil
	}
	return 0, errorf(CodeEncode, "%s has no sequence number", h.Type)
}

// ResponseHeader is the start of every response body: the type id and the
// ResponseHeader fields the proxy pairs and audits by (Part 4 §7.33).
type ResponseHeader struct {
	TypeID        uint32 // numeric ns=0 id of the binary encoding; 0 if not numeric
	RequestHandle uint32
	ServiceResult uint32 // StatusCode
}

// DecodeResponseHeader reads the type id, Timestamp, RequestHandle and
// ServiceResult at the start of a response body (server→client MSG or OPN
// under None). It reads nothing further: responses are validated by
// Channel.Feed's framing and, where the proxy changes them, by
// RewriteEndpointURLs.
func DecodeResponseHeader(body []byte) (ResponseHeader, error) {
	var h ResponseHeader
	var r reader
	r.init(body, nil)
	n := r.nodeID(true)
	r.u64() // Timestamp
	h.RequestHandle = r.u32()
	h.ServiceResult = r.u32()
	if r.err != nil {
		return ResponseHeader{}, r.err
	}
	if n.Namespace == 0 && n.Type == IDNumeric && !n.HasURI && !n.HasServer {
		h.TypeID = n.Numeric
	}
	return h, nil
}

// SetSequenceNumber is the package function guarded by the channel's mode.
func (c *Channel) SetSequenceNumber(chunk []byte, seq uint32) error {
	if c.mode != SecurityModeNone {
		return errorf(CodeNotRewritable, "security mode %s", c.mode)
	}
	return SetSequenceNumber(chunk, seq)
}

// ResponseTypeID returns the numeric ns=0 type id at the start of a
// response body (0 if it is not numeric ns=0).
func ResponseTypeID(body []byte) (uint32, error) {
	var r reader
	r.init(body, nil)
	n := r.nodeID(true)
	if r.err != nil {
		return 0, r.err
	}
	if n.Namespace != 0 || n.Type != IDNumeric || n.HasURI || n.HasServer {
		return 0, nil
	}
	return n.Numeric, nil
}

// RewriteEndpointURLs decodes a GetEndpointsResponse, CreateSessionResponse
// or FindServersResponse body exactly, replaces every
// EndpointDescription.EndpointUrl and every ApplicationDescription
// DiscoveryUrl in it (the endpoints' Server descriptions, the servers
// FindServers lists) with rewrite(old), and appends the re-encoded body to
// dst. Other responses are appended
// unchanged with changed == false. Everything but the URLs is copied byte
// for byte. Only for SecurityMode None (a signature would no longer match).
func RewriteEndpointURLs(dst, body []byte, rewrite func(string) string, l Limits) (out []byte, changed bool, err error) {
	if err := schemas(); err != nil {
		return dst, false, errorf(CodeInvalidEncoding, "schemas: %v", err)
	}
	l = l.Normalize()
	var r reader
	r.init(body, &l)
	tid := r.nodeID(true)
	if r.err != nil {
		return dst, false, r.err
	}
	var s *schema
	if tid.Namespace == 0 && tid.Type == IDNumeric && !tid.HasURI && !tid.HasServer {
		switch tid.Numeric {
		case id.GetEndpointsResponse_Encoding_DefaultBinary:
			s = schemaFor[ua.GetEndpointsResponse]()
		case id.CreateSessionResponse_Encoding_DefaultBinary:
			s = schemaFor[ua.CreateSessionResponse]()
		case id.FindServersResponse_Encoding_DefaultBinary:
			s = schemaFor[ua.FindServersResponse]()
		}
	}
	if s == nil {
		return append(dst, body...), false, nil
	}
	var spans []span
	r.urls = &spans
	r.walk(s, false)
	if err := r.finish(); err != nil {
		return dst, false, err
	}
	prev := 0
	for _, sp := range spans {
		old := string(body[sp.start+4 : sp.end])
		nu := rewrite(old)
		if !utf8.ValidString(nu) || len(nu) > MaxURLLength {
			return dst, false, errorf(CodeEncode, "rewritten endpoint url")
		}
		dst = append(dst, body[prev:sp.start]...)
		dst = appendString(dst, nu)
		prev = sp.end
		changed = changed || nu != old
	}
	dst = append(dst, body[prev:]...)
	return dst, changed, nil
}

// RewriteEndpoints rewrites the endpoint URLs of a complete server→client
// message (see RewriteEndpointURLs) and re-chunks it within the limits the
// client negotiated. The proxy forwards the returned chunks instead of
// msg.Chunks; it must call Renumberer.Drop for each of msg.Chunks and pass
// Renumberer.Inject as nextSeq, since the chunk count may change.
// changed == false means nothing was rewritten: forward msg.Chunks.
func (c *Channel) RewriteEndpoints(dst []byte, msg *Message, rewrite func(string) string, nextSeq func() uint32) (out []byte, changed bool, err error) {
	if c.mode != SecurityModeNone {
		return dst, false, errorf(CodeNotRewritable, "security mode %s", c.mode)
	}
	if msg == nil || msg.Direction != ServerToClient || msg.Type != MessageMsg || !msg.Complete || msg.Aborted {
		return dst, false, errorf(CodeUnexpectedMessage, "not a complete response")
	}
	body, changed, err := RewriteEndpointURLs(nil, msg.Body, rewrite, c.lim)
	if err != nil || !changed {
		return dst, false, err
	}
	d := &c.dirs[ServerToClient]
	out, err = AppendMessage(dst, ChunkParams{
		Type: MessageMsg, SecureChannelID: msg.SecureChannelID, TokenID: msg.TokenID, RequestID: msg.RequestID,
	}, body, d.maxChunk, d.maxChunks, nextSeq)
	if err != nil {
		return dst, false, err
	}
	if uint32(len(body)) > d.maxMessage {
		return dst, false, errorf(CodeMessageSize, "rewritten response of %d bytes exceeds %d", len(body), d.maxMessage)
	}
	return out, true, nil
}
