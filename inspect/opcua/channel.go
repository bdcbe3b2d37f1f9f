package opcua

import (
	"encoding/binary"
	"encoding/hex"
	"time"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// Direction of a chunk on a connection.
type Direction uint8

const (
	ClientToServer Direction = iota
	ServerToClient
)

func (d Direction) String() string {
	if d == ClientToServer {
		return "client_to_server"
	}
	return "server_to_client"
}

// Config configures a Channel.
type Config struct {
	Limits Limits
	// SecurityMode is the listener's declared security_mode. It is the
	// channel's mode when the OpenSecureChannelRequest cannot be read (any
	// policy other than None): such a channel on a listener declared none
	// (or unset) is ErrSecurityMismatch. SecurityPolicy None channels are
	// always accepted and read (their mode must then be None): clients use
	// them for discovery even where the sessions are secured.
	SecurityMode SecurityMode
	// Now is the clock for message deadlines; nil means time.Now.
	Now func() time.Time
	// AllowMidStream lets a Channel start on secure messages without having
	// seen HEL/ACK/OPN, learning ids as they come. For capture replay only:
	// a live proxy must leave it false.
	AllowMidStream bool
}

// Sequence number wrap (Part 6 §6.7.2.4): numbers shall not wrap before
// exceeding 4 294 966 271 (UInt32.MaxValue - 1024); the first number after
// the wrap shall be below 1024.
const (
	SequenceWrapThreshold = 4294966271
	SequenceWrapLimit     = 1024
)

// nextSequenceOK reports whether next may follow prev on one channel.
// Receivers in the field (open62541, node-opcua) accept a wrap once prev
// reaches the threshold, so this does too.
func nextSequenceOK(prev, next uint32) bool {
	return next == prev+1 || (prev >= SequenceWrapThreshold && next < SequenceWrapLimit)
}

// Message is the result of feeding one chunk to a Channel. It is scratch
// space of the Channel: valid until the next Feed in the same direction.
// Body and Chunks of a single-chunk message point into the chunk passed to
// Feed (so they are also bound to the caller's buffer); those of a
// multi-chunk message point into the Channel's copy.
type Message struct {
	Direction Direction
	Type      MessageType
	ChunkType byte
	// Complete is true when a whole message is available: any HEL, ACK,
	// ERR, RHE, OPN, CLO, and the final chunk of a MSG. An intermediate
	// MSG chunk (C) is held by the Channel and Complete is false: the proxy
	// forwards nothing until the message is complete and allowed.
	Complete bool
	// Aborted is true for an abort chunk (A): the partial message with
	// RequestID was discarded (Part 6 §6.7.3).
	Aborted bool
	// Opaque is true when the body is encrypted (SignAndEncrypt, or an OPN
	// under any policy other than None): Body is nil and the sequence header
	// is unknown.
	Opaque bool

	SecureChannelID uint32
	TokenID         uint32 // MSG/CLO only
	SequenceNumber  uint32 // of the last chunk; valid unless Opaque
	RequestID       uint32 // valid unless Opaque

	// Body is the service message of a complete OPN/MSG/CLO: the
	// ExpandedNodeId type id first, signatures stripped, chunks joined.
	Body []byte
	// Chunks are the raw chunks of the complete message, in order, as
	// received (for forwarding after the decision).
	Chunks [][]byte

	Hello        *Hello
	Acknowledge  *Acknowledge
	Error        *ErrorMessage
	ReverseHello *ReverseHello

	// OpenRequestType is 0 (Issue) or 1 (Renew) for a readable
	// OpenSecureChannelRequest.
	OpenRequestType uint32
}

// Channel tracks one UA-TCP connection (both directions): handshake, secure
// channel and token ids, security policy and mode, sequence numbers, and the
// reassembly of multi-chunk messages under hard caps. It is not safe for
// concurrent use; a proxy calls it from the goroutines of one connection
// under its own lock, or from one goroutine per direction with a mutex.
//
// After Feed returns an error the Channel is poisoned: every later call
// returns that error (fail closed: the proxy closes the connection).
type Channel struct {
	Decoder

	cfg Config
	lim Limits
	now func() time.Time
	err error

	helloSeen, ackSeen, rheSeen, closed bool
	hello                               Hello
	ack                                 Acknowledge

	openSeen     bool   // an OPN request was seen
	openPending  uint32 // OPN requests the server has not answered yet
	established  bool   // the server's OPN response was seen
	channelID    uint32
	tokenID      uint32
	prevTokenID  uint32
	tokenKnown   bool
	prevKnown    bool
	renewPending bool

	policy  string
	mode    SecurityMode
	sigSize int
	subject string
	thumb   string
	rcvrTP  string

	dirs [2]dirState
}

type dirState struct {
	msg          Message
	maxChunk     uint32
	maxMessage   uint32
	maxChunks    uint32
	seq          uint32
	seqKnown     bool
	partials     map[uint32]*partial
	free         []*partial
	opaqueChunks uint32
	opaqueBytes  uint32
	body         []byte
	chunks       [][]byte
	helloBuf     Hello
	ackBuf       Acknowledge
	errBuf       ErrorMessage
	rheBuf       ReverseHello
}

// partial is an unfinished multi-chunk message.
type partial struct {
	started time.Time
	raw     []byte // the raw chunks, concatenated
	ends    []int  // end offset of each chunk in raw
	bodyLen uint32
}

// NewChannel returns a Channel for one connection.
func NewChannel(cfg Config) *Channel {
	c := &Channel{cfg: cfg, lim: cfg.Limits.Normalize(), now: cfg.Now}
	if c.now == nil {
		c.now = time.Now
	}
	c.Decoder.Limits = c.lim
	for i := range c.dirs {
		d := &c.dirs[i]
		d.maxChunk = c.lim.MaxChunkSize
		d.maxMessage = c.lim.MaxMessageSize
		d.maxChunks = c.lim.MaxChunkCount
		d.partials = make(map[uint32]*partial)
	}
	return c
}

// MaxChunkSize returns the largest chunk accepted in direction dir: the
// proxy's limit, lowered by what HEL/ACK negotiated. Use it for the Framer.
func (c *Channel) MaxChunkSize(dir Direction) uint32 { return c.dirs[dir&1].maxChunk }

// Security returns what is known of the channel's security.
func (c *Channel) Security() ChannelSecurity {
	return ChannelSecurity{Mode: c.mode, Policy: c.policy, ClientCertSubject: c.subject, ClientCertThumbprint: c.thumb}
}

// SecureChannelID and TokenID return the current ids (0 until known).
func (c *Channel) SecureChannelID() uint32 { return c.channelID }
func (c *Channel) TokenID() uint32         { return c.tokenID }

// ReceiverThumbprint returns the ReceiverCertificateThumbprint of the
// client's OPN (SHA-1 of the server certificate the client encrypted for,
// lowercase hex; "" under None).
func (c *Channel) ReceiverThumbprint() string { return c.rcvrTP }

// Err returns the error that poisoned the Channel, if any.
func (c *Channel) Err() error { return c.err }

// Decode decodes a complete client→server OPN, MSG or CLO returned by Feed
// into op (see Decoder.DecodeRequest). An opaque message fills op with
// Opaque true (see Decoder.FillOpaque) and no error; anything else (an
// intermediate or aborted chunk, a HEL, a response) is ErrUnexpectedMessage.
func (c *Channel) Decode(msg *Message, op *inspect.Operation) (RequestInfo, error) {
	if msg == nil || !msg.Complete || msg.Aborted || !msg.Type.Secure() || msg.Direction != ClientToServer {
		return RequestInfo{}, errorf(CodeUnexpectedMessage, "no complete request to decode")
	}
	if msg.Opaque {
		c.FillOpaque(msg.Type, c.Security(), op)
		return RequestInfo{}, nil
	}
	return c.DecodeRequest(msg.Body, c.Security(), op)
}

func (c *Channel) fail(err error) (*Message, error) {
	c.err = err
	return nil, err
}

// Expire checks the deadline of every unfinished message and poisons the
// Channel with ErrMessageTimeout if one has passed. Feed calls it too; a
// proxy may call it from a timer so that a peer that stops sending is
// noticed.
func (c *Channel) Expire() error {
	if c.err != nil {
		return c.err
	}
	now := c.now()
	for i := range c.dirs {
		for reqID, p := range c.dirs[i].partials {
			if now.Sub(p.started) > c.lim.MessageTimeout {
				c.err = errorf(CodeMessageTimeout, "request %d unfinished after %s", reqID, c.lim.MessageTimeout)
				return c.err
			}
		}
	}
	return nil
}

// Feed processes one whole chunk (as returned by a Framer or Split) from
// direction dir and returns what it completes.
func (c *Channel) Feed(dir Direction, chunk []byte) (*Message, error) {
	if c.err != nil {
		return nil, c.err
	}
	if err := c.Expire(); err != nil {
		return nil, err
	}
	dir &= 1
	d := &c.dirs[dir]
	h, err := ParseHeader(chunk, d.maxChunk)
	if err != nil {
		return c.fail(err)
	}
	if int(h.Size) != len(chunk) {
		return c.fail(errorf(CodeInvalidEncoding, "chunk declares %d bytes, has %d", h.Size, len(chunk)))
	}
	if c.closed {
		return c.fail(errorf(CodeUnexpectedMessage, "%s after the channel was closed", h.Type))
	}
	m := &d.msg
	*m = Message{Direction: dir, Type: h.Type, ChunkType: h.ChunkType, Chunks: d.chunks[:0]}
	switch h.Type {
	case MessageHello:
		return c.feedHello(dir, d, m, chunk)
	case MessageAcknowledge:
		return c.feedAck(dir, d, m, chunk)
	case MessageError:
		if dir != ServerToClient {
			return c.fail(errorf(CodeUnexpectedMessage, "ERR from the client"))
		}
		e, err := DecodeError(chunk)
		if err != nil {
			return c.fail(err)
		}
		d.errBuf = e
		m.Error, m.Complete = &d.errBuf, true
		c.closed = true // Part 6 §7.1.2.5: the sender closes after ERR
		return m, nil
	case MessageReverseHello:
		if dir != ServerToClient || c.rheSeen || c.helloSeen {
			return c.fail(errorf(CodeUnexpectedMessage, "RHE out of order"))
		}
		rh, err := DecodeReverseHello(chunk)
		if err != nil {
			return c.fail(err)
		}
		c.rheSeen = true
		d.rheBuf = rh
		m.ReverseHello, m.Complete = &d.rheBuf, true
		return m, nil
	}
	if !c.ackSeen && !c.cfg.AllowMidStream {
		return c.fail(errorf(CodeUnexpectedMessage, "%s before HEL/ACK", h.Type))
	}
	switch h.Type {
	case MessageOpen:
		return c.feedOpen(dir, d, m, chunk)
	default:
		return c.feedSymmetric(dir, d, m, h, chunk)
	}
}

func (c *Channel) feedHello(dir Direction, d *dirState, m *Message, chunk []byte) (*Message, error) {
	if dir != ClientToServer || c.helloSeen {
		return c.fail(errorf(CodeUnexpectedMessage, "HEL out of order"))
	}
	hel, err := DecodeHello(chunk)
	if err != nil {
		return c.fail(err)
	}
	c.helloSeen = true
	c.hello = hel
	// Until ACK, what the client announced bounds each direction.
	c.dirs[ClientToServer].maxChunk = minLimit(hel.SendBufferSize, c.lim.MaxChunkSize)
	s := &c.dirs[ServerToClient]
	s.maxChunk = minLimit(hel.ReceiveBufferSize, c.lim.MaxChunkSize)
	s.maxMessage = minLimit(hel.MaxMessageSize, c.lim.MaxMessageSize)
	s.maxChunks = minLimit(hel.MaxChunkCount, c.lim.MaxChunkCount)
	d.helloBuf = hel
	m.Hello, m.Complete = &d.helloBuf, true
	return m, nil
}

func (c *Channel) feedAck(dir Direction, d *dirState, m *Message, chunk []byte) (*Message, error) {
	if dir != ServerToClient || !c.helloSeen || c.ackSeen {
		return c.fail(errorf(CodeUnexpectedMessage, "ACK out of order"))
	}
	ack, err := DecodeAcknowledge(chunk)
	if err != nil {
		return c.fail(err)
	}
	c.ackSeen = true
	c.ack = ack
	// Part 6 §7.1.2.4: the server's ReceiveBufferSize bounds the client's
	// chunks, its SendBufferSize the server's; MaxMessageSize/MaxChunkCount
	// in ACK are what the server accepts.
	cs := &c.dirs[ClientToServer]
	cs.maxChunk = minLimit(ack.ReceiveBufferSize, c.dirs[ClientToServer].maxChunk)
	cs.maxMessage = minLimit(ack.MaxMessageSize, c.lim.MaxMessageSize)
	cs.maxChunks = minLimit(ack.MaxChunkCount, c.lim.MaxChunkCount)
	ss := &c.dirs[ServerToClient]
	ss.maxChunk = minLimit(ack.SendBufferSize, ss.maxChunk)
	d.ackBuf = ack
	m.Acknowledge, m.Complete = &d.ackBuf, true
	return m, nil
}

// checkSequence enforces Part 6 §6.7.2.4 per direction.
func (c *Channel) checkSequence(d *dirState, seq uint32) error {
	if d.seqKnown && !nextSequenceOK(d.seq, seq) {
		return errorf(CodeSequence, "sequence number %d after %d", seq, d.seq)
	}
	d.seq, d.seqKnown = seq, true
	return nil
}

func (c *Channel) feedOpen(dir Direction, d *dirState, m *Message, chunk []byte) (*Message, error) {
	ah, off, err := ParseAsymmetricHeader(chunk)
	if err != nil {
		return c.fail(err)
	}
	policy := string(ah.SecurityPolicyURI)
	sig, known := SignatureSize(policy)
	if !known {
		return c.fail(errorf(CodeUnsupportedPolicy, "%q", policy))
	}
	if c.policy != "" && policy != c.policy {
		return c.fail(errorf(CodeSecurityMismatch, "policy changed from %q to %q", c.policy, policy))
	}
	m.SecureChannelID = ah.SecureChannelID
	m.Complete = true
	if dir == ServerToClient && !c.cfg.AllowMidStream {
		// An OPN response changes the channel's ids and tokens: only the
		// answer to an OPN request may (a server that rotated tokens on
		// its own would make the client's valid token look forged).
		if c.openPending == 0 {
			return c.fail(errorf(CodeUnexpectedMessage, "OPN response without an OPN request"))
		}
		c.openPending--
	}
	if dir == ClientToServer {
		c.openPending++
		// Part 6 §6.7.4: a client issues with channel id 0 and renews with
		// the id the server assigned.
		if c.established && ah.SecureChannelID != c.channelID {
			return c.fail(errorf(CodeChannelMismatch, "renewal for channel %d on channel %d", ah.SecureChannelID, c.channelID))
		}
		if !c.established && ah.SecureChannelID != 0 && !c.cfg.AllowMidStream {
			return c.fail(errorf(CodeChannelMismatch, "issue request with channel id %d", ah.SecureChannelID))
		}
		if c.policy == "" {
			subject, thumb, err := CertificateInfo(ah.SenderCertificate)
			if err != nil {
				return c.fail(err)
			}
			c.subject, c.thumb = subject, thumb
			c.rcvrTP = hex.EncodeToString(ah.ReceiverCertificateThumbprint)
		}
	} else {
		if ah.SecureChannelID == 0 {
			return c.fail(errorf(CodeChannelMismatch, "server assigned channel id 0"))
		}
		if c.established && ah.SecureChannelID != c.channelID {
			return c.fail(errorf(CodeChannelMismatch, "OPN response for channel %d on channel %d", ah.SecureChannelID, c.channelID))
		}
	}
	c.policy, c.sigSize = policy, sig

	if policy != PolicyNone {
		// The rest of an OPN is asymmetrically encrypted under any policy
		// but None (Part 6 §6.7.4), whether the mode is Sign or
		// SignAndEncrypt: the mode comes from configuration.
		if c.cfg.SecurityMode != SecurityModeSign && c.cfg.SecurityMode != SecurityModeSignAndEncrypt {
			return c.fail(errorf(CodeSecurityMismatch, "policy %q on a listener declared %s", policy, c.cfg.SecurityMode))
		}
		c.mode = c.cfg.SecurityMode
		m.Opaque = true
		d.seqKnown = false // the sequence header is encrypted: rebase
		if dir == ClientToServer {
			c.openSeen = true
			c.renewPending = c.established
		} else {
			c.channelID, c.established = ah.SecureChannelID, true
		}
		m.Chunks = append(m.Chunks, chunk)
		d.chunks = m.Chunks
		return m, nil
	}
	// A listener declared sign or sign_and_encrypt still carries None
	// channels: clients discover endpoints (GetEndpoints) on a None channel
	// before they open a secure one. Such channels are fully readable and
	// reported with security mode "none", so the policy decides about them.
	var r reader
	r.init(chunk, &c.lim)
	r.pos = off
	m.SequenceNumber, m.RequestID = r.u32(), r.u32()
	if r.err != nil {
		return c.fail(r.err)
	}
	if err := c.checkSequence(d, m.SequenceNumber); err != nil {
		return c.fail(err)
	}
	m.Body = chunk[r.pos:]
	m.Chunks = append(m.Chunks, chunk)
	d.chunks = m.Chunks
	if dir == ClientToServer {
		reqType, mode, perr := parseOpenRequest(m.Body, &c.lim)
		if perr != nil {
			return c.fail(perr)
		}
		// Part 4 §5.5.2: with SecurityPolicy None the mode must be None.
		if mode != uint32(SecurityModeNone) {
			return c.fail(errorf(CodeSecurityMismatch, "policy None with security mode %d", mode))
		}
		if (reqType == 1) != c.established && !c.cfg.AllowMidStream {
			return c.fail(errorf(CodeUnexpectedMessage, "OPN request type %d with channel established=%v", reqType, c.established))
		}
		c.mode = SecurityModeNone
		c.openSeen = true
		m.OpenRequestType = reqType
		return m, nil
	}
	chID, tokID, fault, perr := parseOpenResponse(m.Body, &c.lim)
	if perr != nil {
		return c.fail(perr)
	}
	if fault {
		return m, nil
	}
	if chID != ah.SecureChannelID {
		return c.fail(errorf(CodeChannelMismatch, "token for channel %d in OPN of channel %d", chID, ah.SecureChannelID))
	}
	c.channelID, c.established = chID, true
	if c.tokenKnown && tokID != c.tokenID {
		c.prevTokenID, c.prevKnown = c.tokenID, true
	}
	c.tokenID, c.tokenKnown = tokID, true
	return m, nil
}

// parseOpenRequest reads an OpenSecureChannelRequest (Part 4 §5.5.2) body
// exactly and returns its RequestType and SecurityMode.
func parseOpenRequest(body []byte, l *Limits) (reqType, mode uint32, err *Error) {
	var r reader
	r.init(body, l)
	tid := r.nodeID(true)
	if r.err == nil && (tid.Namespace != 0 || tid.Numeric != id.OpenSecureChannelRequest_Encoding_DefaultBinary || tid.Type != IDNumeric) {
		r.fail(CodeUnexpectedMessage, "OPN carries %s", tid)
	}
	r.requestHeader()
	r.u32() // ClientProtocolVersion
	reqType = r.u32()
	mode = r.u32()
	r.byteString() // ClientNonce
	r.u32()        // RequestedLifetime
	if r.err == nil && reqType > 1 {
		r.fail(CodeInvalidEncoding, "request type %d", reqType)
	}
	if e := r.finish(); e != nil {
		return 0, 0, e.(*Error)
	}
	return reqType, mode, nil
}

// parseOpenResponse reads an OpenSecureChannelResponse (Part 4 §5.5.2) or a
// ServiceFault exactly and returns the channel and token ids.
func parseOpenResponse(body []byte, l *Limits) (channelID, tokenID uint32, fault bool, err *Error) {
	if err := schemas(); err != nil {
		return 0, 0, false, errorf(CodeInvalidEncoding, "schemas: %v", err)
	}
	var r reader
	r.init(body, l)
	tid := r.nodeID(true)
	switch {
	case r.err != nil:
	case tid.Namespace == 0 && tid.Type == IDNumeric && tid.Numeric == id.ServiceFault_Encoding_DefaultBinary:
		r.walk(schemaFor[ua.ResponseHeader](), false)
		fault = true
	case tid.Namespace == 0 && tid.Type == IDNumeric && tid.Numeric == id.OpenSecureChannelResponse_Encoding_DefaultBinary:
		r.walk(schemaFor[ua.ResponseHeader](), false)
		r.u32() // ServerProtocolVersion
		channelID = r.u32()
		tokenID = r.u32()
		r.u64()        // CreatedAt
		r.u32()        // RevisedLifetime
		r.byteString() // ServerNonce
	default:
		r.fail(CodeUnexpectedMessage, "OPN response carries %s", tid)
	}
	if e := r.finish(); e != nil {
		return 0, 0, false, e.(*Error)
	}
	return channelID, tokenID, fault, nil
}

// checkToken accepts the current token, the previous one (a client may use
// it until the new one is used, Part 6 §6.7.4), or — on secured channels,
// where the OPN response is unreadable — a new one after a renewal.
func (c *Channel) checkToken(tok uint32) error {
	switch {
	case !c.tokenKnown:
		c.tokenID, c.tokenKnown = tok, true
	case tok == c.tokenID:
	case c.prevKnown && tok == c.prevTokenID:
	case c.renewPending && c.mode != SecurityModeNone:
		c.prevTokenID, c.prevKnown = c.tokenID, true
		c.tokenID = tok
		c.renewPending = false
	default:
		return errorf(CodeChannelMismatch, "token %d, current %d", tok, c.tokenID)
	}
	return nil
}

const (
	symHeaderEnd = HeaderSize + 8                    // after channel id and token id
	symBodyStart = symHeaderEnd + sequenceHeaderSize // after the sequence header
)

func (c *Channel) feedSymmetric(dir Direction, d *dirState, m *Message, h Header, chunk []byte) (*Message, error) {
	if h.Type == MessageClose && dir != ClientToServer {
		return c.fail(errorf(CodeUnexpectedMessage, "CLO from the server"))
	}
	chID := binary.LittleEndian.Uint32(chunk[HeaderSize:])
	tok := binary.LittleEndian.Uint32(chunk[HeaderSize+4:])
	switch {
	case c.established && chID != c.channelID:
		return c.fail(errorf(CodeChannelMismatch, "chunk for channel %d on channel %d", chID, c.channelID))
	case !c.established && !c.cfg.AllowMidStream:
		return c.fail(errorf(CodeUnexpectedMessage, "%s before the channel was opened", h.Type))
	case !c.established:
		c.channelID, c.established = chID, true
	}
	if c.mode == SecurityModeInvalid {
		if !c.cfg.AllowMidStream {
			return c.fail(errorf(CodeUnexpectedMessage, "%s before OPN", h.Type))
		}
		// Mid-stream replay: assume the declared mode (None if unset).
		c.mode = c.cfg.SecurityMode
		if c.mode == SecurityModeInvalid {
			c.mode = SecurityModeNone
		}
	}
	if err := c.checkToken(tok); err != nil {
		return c.fail(err)
	}
	m.SecureChannelID, m.TokenID = chID, tok
	if h.Type == MessageClose {
		c.closed = true
	}

	if c.mode == SecurityModeSignAndEncrypt {
		return c.feedOpaque(d, m, chunk)
	}
	end := len(chunk)
	if c.mode == SecurityModeSign {
		end -= c.sigSize
		if end < symBodyStart {
			return c.fail(errorf(CodeTruncated, "signed chunk of %d bytes cannot hold a %d-byte signature", len(chunk), c.sigSize))
		}
	}
	m.SequenceNumber = binary.LittleEndian.Uint32(chunk[symHeaderEnd:])
	m.RequestID = binary.LittleEndian.Uint32(chunk[symHeaderEnd+4:])
	if err := c.checkSequence(d, m.SequenceNumber); err != nil {
		return c.fail(err)
	}
	body := chunk[symBodyStart:end]
	p := d.partials[m.RequestID]
	switch h.ChunkType {
	case ChunkAbort:
		// Part 6 §6.7.3: the abort body is Error (StatusCode) and Reason.
		var r reader
		r.init(body, &c.lim)
		r.u32()
		r.stringBytes()
		if err := r.finish(); err != nil {
			return c.fail(err)
		}
		if p != nil {
			c.release(d, m.RequestID, p)
		}
		m.Aborted, m.Complete = true, true
		m.Chunks = append(m.Chunks, chunk)
		d.chunks = m.Chunks
		return m, nil
	case ChunkIntermediate:
		if p == nil {
			if len(d.partials) >= c.lim.MaxOpenRequests {
				return c.fail(errorf(CodeOpenRequests, "more than %d unfinished messages", c.lim.MaxOpenRequests))
			}
			p = c.acquire(d)
			d.partials[m.RequestID] = p
		}
		if perr := c.appendChunk(d, p, chunk, len(body), false); perr != nil {
			return c.fail(perr)
		}
		return m, nil
	}
	// Final chunk.
	if p == nil {
		if uint32(len(body)) > d.maxMessage {
			return c.fail(errorf(CodeMessageSize, "message of %d bytes exceeds %d", len(body), d.maxMessage))
		}
		m.Body = body
		m.Chunks = append(m.Chunks, chunk)
		d.chunks = m.Chunks
		m.Complete = true
		return m, nil
	}
	if perr := c.appendChunk(d, p, chunk, len(body), true); perr != nil {
		return c.fail(perr)
	}
	d.body = d.body[:0]
	start := 0
	for _, e := range p.ends {
		raw := p.raw[start:e]
		m.Chunks = append(m.Chunks, raw)
		d.body = append(d.body, raw[symBodyStart:len(raw)-(len(chunk)-end)]...)
		start = e
	}
	d.chunks = m.Chunks
	m.Body = d.body
	m.Complete = true
	// The partial's buffers stay valid until the next Feed in this
	// direction; release only marks them reusable.
	c.release(d, m.RequestID, p)
	return m, nil
}

func (c *Channel) appendChunk(d *dirState, p *partial, chunk []byte, bodyLen int, final bool) *Error {
	n := uint32(len(p.ends)) + 1
	// An intermediate chunk that reaches the limit leaves no room for the
	// final one: refuse it now rather than buffer it.
	if n > d.maxChunks || (!final && n >= d.maxChunks) {
		return errorf(CodeChunkCount, "more than %d chunks in one message", d.maxChunks)
	}
	if uint64(p.bodyLen)+uint64(bodyLen) > uint64(d.maxMessage) {
		return errorf(CodeMessageSize, "message exceeds %d bytes", d.maxMessage)
	}
	p.raw = append(p.raw, chunk...)
	p.ends = append(p.ends, len(p.raw))
	p.bodyLen += uint32(bodyLen)
	return nil
}

func (c *Channel) acquire(d *dirState) *partial {
	var p *partial
	if n := len(d.free); n > 0 {
		p = d.free[n-1]
		d.free = d.free[:n-1]
	} else {
		p = &partial{}
	}
	p.started = c.now()
	p.raw, p.ends, p.bodyLen = p.raw[:0], p.ends[:0], 0
	return p
}

// release returns p to the free list. Its memory is reused by a later
// acquire, never before the next Feed in this direction. Buffers that grew
// beyond one maximum chunk are dropped so one large message does not pin
// memory for the life of the connection.
func (c *Channel) release(d *dirState, reqID uint32, p *partial) {
	delete(d.partials, reqID)
	if cap(p.raw) > int(d.maxChunk) {
		p.raw = nil
	}
	d.free = append(d.free, p)
}

// feedOpaque handles SignAndEncrypt chunks: nothing after the symmetric
// header is readable, so chunks are counted per direction (they cannot be
// told apart by request id) and each is returned for forwarding.
func (c *Channel) feedOpaque(d *dirState, m *Message, chunk []byte) (*Message, error) {
	m.Opaque = true
	m.Chunks = append(m.Chunks, chunk)
	d.chunks = m.Chunks
	switch m.ChunkType {
	case ChunkIntermediate:
		d.opaqueChunks++
		d.opaqueBytes += uint32(len(chunk))
		if d.opaqueChunks+1 > d.maxChunks {
			return c.fail(errorf(CodeChunkCount, "more than %d chunks in one message", d.maxChunks))
		}
		if d.opaqueBytes > d.maxMessage {
			return c.fail(errorf(CodeMessageSize, "message exceeds %d bytes", d.maxMessage))
		}
		return m, nil
	case ChunkAbort:
		m.Aborted = true
	}
	d.opaqueChunks, d.opaqueBytes = 0, 0
	m.Complete = true
	return m, nil
}
