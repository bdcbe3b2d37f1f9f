package opcua

import (
	"encoding/binary"
	"unicode/utf8"
)

// MessageType is the 3-byte UA-TCP/UASC message type (Part 6 §7.1.2.2,
// §6.7.2.2).
type MessageType uint8

const (
	MessageUnknown      MessageType = iota
	MessageHello                    // HEL
	MessageAcknowledge              // ACK
	MessageError                    // ERR
	MessageReverseHello             // RHE
	MessageOpen                     // OPN
	MessageMsg                      // MSG
	MessageClose                    // CLO
)

var messageTypeNames = [...]string{"???", "HEL", "ACK", "ERR", "RHE", "OPN", "MSG", "CLO"}

func (t MessageType) String() string {
	if int(t) < len(messageTypeNames) {
		return messageTypeNames[t]
	}
	return "???"
}

// Secure reports whether the message travels on a secure channel (OPN, MSG,
// CLO) rather than being a raw UA-TCP message (HEL, ACK, ERR, RHE).
func (t MessageType) Secure() bool { return t >= MessageOpen && t <= MessageClose }

// Chunk types (Part 6 §6.7.2.2).
const (
	ChunkIntermediate = 'C'
	ChunkFinal        = 'F'
	ChunkAbort        = 'A'
)

// Minimum chunk sizes per type, header included. They count only the fixed
// parts that must be present, so a smaller declared size can never be valid.
const (
	minHelloSize       = HeaderSize + 5*4 + 4 // 5 uint32 + EndpointUrl length
	ackSize            = HeaderSize + 5*4     // fixed size, Part 6 §7.1.2.4
	minErrorSize       = HeaderSize + 4 + 4   // Error + Reason length
	minRHESize         = HeaderSize + 4 + 4   // ServerUri length + EndpointUrl length
	minOpenSize        = HeaderSize + 4 + 3*4 + sequenceHeaderSize
	minSymSize         = HeaderSize + 4 + 4 + sequenceHeaderSize // MSG and CLO
	maxHelloSize       = minHelloSize + MaxURLLength
	maxErrorSize       = minErrorSize + MaxURLLength
	maxRHESize         = minRHESize + 2*MaxURLLength
	sequenceHeaderSize = 8
)

// Header is the 8-byte message header.
type Header struct {
	Type      MessageType
	ChunkType byte
	Size      uint32 // whole chunk, header included
}

// parseMessageType maps the three ASCII bytes to a MessageType.
func parseMessageType(b []byte) MessageType {
	switch string(b[:3]) { // no allocation: the compiler optimises string(b) in a switch
	case "HEL":
		return MessageHello
	case "ACK":
		return MessageAcknowledge
	case "ERR":
		return MessageError
	case "RHE":
		return MessageReverseHello
	case "OPN":
		return MessageOpen
	case "MSG":
		return MessageMsg
	case "CLO":
		return MessageClose
	}
	return MessageUnknown
}

// ParseHeader decodes and validates the 8-byte header at the start of b.
// maxChunkSize is the negotiated (or configured) receive buffer size that
// bounds OPN/MSG/CLO; HEL/ACK/ERR/RHE have fixed bounds of their own.
func ParseHeader(b []byte, maxChunkSize uint32) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, errorf(CodeTruncated, "header needs %d bytes, have %d", HeaderSize, len(b))
	}
	h := Header{
		Type:      parseMessageType(b),
		ChunkType: b[3],
		Size:      binary.LittleEndian.Uint32(b[4:8]),
	}
	return h, h.Validate(maxChunkSize)
}

// Validate checks the chunk type and the declared size against the bounds
// of the message type. It is the one check shared by the Framer and Split.
func (h Header) Validate(maxChunkSize uint32) error {
	var lo, hi uint32
	finalOnly := true
	switch h.Type {
	case MessageHello:
		lo, hi = minHelloSize, maxHelloSize
	case MessageAcknowledge:
		lo, hi = ackSize, ackSize
	case MessageError:
		lo, hi = minErrorSize, maxErrorSize
	case MessageReverseHello:
		lo, hi = minRHESize, maxRHESize
	case MessageOpen:
		// OPN is never split: Part 6 §6.7.2.2 (an OpenSecureChannel message
		// is always one chunk).
		lo, hi = minOpenSize, maxChunkSize
	case MessageClose:
		lo, hi = minSymSize, maxChunkSize
	case MessageMsg:
		lo, hi = minSymSize, maxChunkSize
		finalOnly = false
	default:
		return errorf(CodeBadMessageType, "message type %q", h.typeBytes())
	}
	switch h.ChunkType {
	case ChunkFinal:
	case ChunkIntermediate, ChunkAbort:
		if finalOnly {
			return errorf(CodeBadChunkType, "%s with chunk type %q", h.Type, h.ChunkType)
		}
	default:
		return errorf(CodeBadChunkType, "chunk type 0x%02x", h.ChunkType)
	}
	if h.Size < lo {
		return errorf(CodeChunkTooSmall, "%s declares %d bytes, minimum %d", h.Type, h.Size, lo)
	}
	if h.Size > hi {
		return errorf(CodeChunkTooLarge, "%s declares %d bytes, maximum %d", h.Type, h.Size, hi)
	}
	return nil
}

func (h Header) typeBytes() string { return h.Type.String() }

// putHeader writes a header for typ/chunk/size into b[:8].
func putHeader(b []byte, t MessageType, chunk byte, size uint32) {
	copy(b, messageTypeNames[t])
	b[3] = chunk
	binary.LittleEndian.PutUint32(b[4:], size)
}

// Hello is the HEL message (Part 6 §7.1.2.3).
type Hello struct {
	ProtocolVersion   uint32
	ReceiveBufferSize uint32 // largest chunk the sender of HEL can receive
	SendBufferSize    uint32 // largest chunk the sender of HEL will send
	MaxMessageSize    uint32 // 0 = no limit
	MaxChunkCount     uint32 // 0 = no limit
	EndpointURL       string
}

// Acknowledge is the ACK message (Part 6 §7.1.2.4).
type Acknowledge struct {
	ProtocolVersion   uint32
	ReceiveBufferSize uint32
	SendBufferSize    uint32
	MaxMessageSize    uint32
	MaxChunkCount     uint32
}

// ErrorMessage is the ERR message (Part 6 §7.1.2.5).
type ErrorMessage struct {
	Error  uint32 // StatusCode, e.g. StatusBadTCPMessageTypeInvalid
	Reason string
}

// ReverseHello is the RHE message (Part 6 §7.1.2.6).
type ReverseHello struct {
	ServerURI   string
	EndpointURL string
}

// Status codes used by the encoders (Part 6 §7.1.5, Part 4 §7.34).
const (
	StatusBadTCPMessageTypeInvalid      uint32 = 0x807E0000
	StatusBadTCPMessageTooLarge         uint32 = 0x80800000
	StatusBadTCPEndpointURLInvalid      uint32 = 0x80830000
	StatusBadSecurityChecksFailed       uint32 = 0x80130000
	StatusBadRequestTooLarge            uint32 = 0x80B80000
	StatusBadResponseTooLarge           uint32 = 0x80B90000
	StatusBadDecodingError              uint32 = 0x80070000
	StatusBadUserAccessDenied           uint32 = 0x801F0000
	StatusBadServiceUnsupported         uint32 = 0x800B0000
	StatusBadTCPInternalError           uint32 = 0x80820000
	StatusBadProtocolVersionUnsupported uint32 = 0x80BE0000
)

// frameBody returns the body of a whole chunk of type t after checking its
// header against the real length.
func frameBody(chunk []byte, t MessageType) ([]byte, error) {
	h, err := ParseHeader(chunk, MaxChunkSizeCeiling)
	if err != nil {
		return nil, err
	}
	if h.Type != t {
		return nil, errorf(CodeUnexpectedMessage, "want %s, have %s", t, h.Type)
	}
	if int(h.Size) != len(chunk) {
		return nil, errorf(CodeInvalidEncoding, "%s declares %d bytes, chunk has %d", t, h.Size, len(chunk))
	}
	return chunk[HeaderSize:], nil
}

// readURL reads a UA-TCP string field bounded by MaxURLLength. Part 6 says
// these are UTF-8; a null (-1) URL is read as "".
func readURL(r *reader) string {
	b, null := r.stringBytes()
	if r.err != nil {
		return ""
	}
	if null {
		return ""
	}
	if len(b) > MaxURLLength {
		r.fail(CodeInvalidHello, "url of %d bytes exceeds %d", len(b), MaxURLLength)
		return ""
	}
	return string(b)
}

// DecodeHello decodes a whole HEL chunk (header included).
func DecodeHello(chunk []byte) (Hello, error) {
	body, err := frameBody(chunk, MessageHello)
	if err != nil {
		return Hello{}, err
	}
	r := newReader(body, nil)
	h := Hello{
		ProtocolVersion:   r.u32(),
		ReceiveBufferSize: r.u32(),
		SendBufferSize:    r.u32(),
		MaxMessageSize:    r.u32(),
		MaxChunkCount:     r.u32(),
	}
	h.EndpointURL = readURL(r)
	if err := r.finish(); err != nil {
		return Hello{}, err
	}
	if err := checkBuffers(h.ReceiveBufferSize, h.SendBufferSize); err != nil {
		return Hello{}, err
	}
	return h, nil
}

func checkBuffers(recv, send uint32) error {
	if recv < MinBufferSize || send < MinBufferSize {
		return errorf(CodeInvalidHello, "buffer sizes %d/%d below the minimum %d", recv, send, MinBufferSize)
	}
	return nil
}

// Encode appends the HEL chunk to dst.
func (h Hello) Encode(dst []byte) ([]byte, error) {
	if len(h.EndpointURL) > MaxURLLength || !utf8.ValidString(h.EndpointURL) {
		return dst, errorf(CodeEncode, "endpoint url")
	}
	size := minHelloSize + len(h.EndpointURL)
	start := len(dst)
	dst = append(dst, make([]byte, HeaderSize)...)
	putHeader(dst[start:], MessageHello, ChunkFinal, uint32(size))
	dst = appendU32(dst, h.ProtocolVersion)
	dst = appendU32(dst, h.ReceiveBufferSize)
	dst = appendU32(dst, h.SendBufferSize)
	dst = appendU32(dst, h.MaxMessageSize)
	dst = appendU32(dst, h.MaxChunkCount)
	dst = appendString(dst, h.EndpointURL)
	return dst, nil
}

// DecodeAcknowledge decodes a whole ACK chunk.
func DecodeAcknowledge(chunk []byte) (Acknowledge, error) {
	body, err := frameBody(chunk, MessageAcknowledge)
	if err != nil {
		return Acknowledge{}, err
	}
	r := newReader(body, nil)
	a := Acknowledge{
		ProtocolVersion:   r.u32(),
		ReceiveBufferSize: r.u32(),
		SendBufferSize:    r.u32(),
		MaxMessageSize:    r.u32(),
		MaxChunkCount:     r.u32(),
	}
	if err := r.finish(); err != nil {
		return Acknowledge{}, err
	}
	if err := checkBuffers(a.ReceiveBufferSize, a.SendBufferSize); err != nil {
		return Acknowledge{}, err
	}
	return a, nil
}

// Encode appends the ACK chunk to dst.
func (a Acknowledge) Encode(dst []byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, HeaderSize)...)
	putHeader(dst[start:], MessageAcknowledge, ChunkFinal, ackSize)
	dst = appendU32(dst, a.ProtocolVersion)
	dst = appendU32(dst, a.ReceiveBufferSize)
	dst = appendU32(dst, a.SendBufferSize)
	dst = appendU32(dst, a.MaxMessageSize)
	dst = appendU32(dst, a.MaxChunkCount)
	return dst
}

// DecodeError decodes a whole ERR chunk.
func DecodeError(chunk []byte) (ErrorMessage, error) {
	body, err := frameBody(chunk, MessageError)
	if err != nil {
		return ErrorMessage{}, err
	}
	r := newReader(body, nil)
	e := ErrorMessage{Error: r.u32()}
	e.Reason = readURL(r)
	if err := r.finish(); err != nil {
		return ErrorMessage{}, err
	}
	return e, nil
}

// EncodeError appends an ERR chunk to dst, for refusing a connection before
// or instead of a secure channel (Part 6 §7.1.2.5). A reason longer than
// MaxURLLength bytes is cut at a UTF-8 boundary; invalid UTF-8 is replaced.
func EncodeError(dst []byte, status uint32, reason string) []byte {
	if !utf8.ValidString(reason) {
		reason = string([]rune(reason)) // replaces invalid bytes with U+FFFD
	}
	if len(reason) > MaxURLLength {
		cut := MaxURLLength
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	size := minErrorSize + len(reason)
	start := len(dst)
	dst = append(dst, make([]byte, HeaderSize)...)
	putHeader(dst[start:], MessageError, ChunkFinal, uint32(size))
	dst = appendU32(dst, status)
	dst = appendString(dst, reason)
	return dst
}

// DecodeReverseHello decodes a whole RHE chunk.
func DecodeReverseHello(chunk []byte) (ReverseHello, error) {
	body, err := frameBody(chunk, MessageReverseHello)
	if err != nil {
		return ReverseHello{}, err
	}
	r := newReader(body, nil)
	var h ReverseHello
	h.ServerURI = readURL(r)
	h.EndpointURL = readURL(r)
	if err := r.finish(); err != nil {
		return ReverseHello{}, err
	}
	return h, nil
}

// minLimit returns the smaller of a peer's value and the proxy's own, where
// a peer's 0 means "no limit" and so yields the proxy's.
func minLimit(peer, own uint32) uint32 {
	if peer == 0 || peer > own {
		return own
	}
	return peer
}

// ClampHello returns h with ReceiveBufferSize, SendBufferSize,
// MaxMessageSize and MaxChunkCount lowered to the proxy's limits, for
// forwarding toward the server. A peer's 0 (unlimited) becomes the proxy's
// limit: the proxy's caps hold whatever the peer says.
func ClampHello(h Hello, l Limits) Hello {
	l = l.Normalize()
	h.ReceiveBufferSize = minLimit(h.ReceiveBufferSize, l.MaxChunkSize)
	h.SendBufferSize = minLimit(h.SendBufferSize, l.MaxChunkSize)
	h.MaxMessageSize = minLimit(h.MaxMessageSize, l.MaxMessageSize)
	h.MaxChunkCount = minLimit(h.MaxChunkCount, l.MaxChunkCount)
	return h
}

// ClampAcknowledge does for an ACK (toward the client) what ClampHello does
// for a HEL.
func ClampAcknowledge(a Acknowledge, l Limits) Acknowledge {
	l = l.Normalize()
	a.ReceiveBufferSize = minLimit(a.ReceiveBufferSize, l.MaxChunkSize)
	a.SendBufferSize = minLimit(a.SendBufferSize, l.MaxChunkSize)
	a.MaxMessageSize = minLimit(a.MaxMessageSize, l.MaxMessageSize)
	a.MaxChunkCount = minLimit(a.MaxChunkCount, l.MaxChunkCount)
	return a
}
