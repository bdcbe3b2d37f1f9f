package opcua

import "time"

// Protocol limits fixed by the specification.
const (
	// HeaderSize is the UA-TCP message header: type (3), chunk type (1),
	// size (4). Part 6 §7.1.2.2.
	HeaderSize = 8
	// MinBufferSize is the smallest ReceiveBufferSize/SendBufferSize a peer
	// may announce in HEL/ACK. Part 6 §7.1.2.3 ("shall be at least 8 192").
	MinBufferSize = 8192
	// MaxURLLength bounds EndpointUrl/ServerUri in HEL and RHE and the reason
	// in ERR. Part 6 §7.1.2.3/7.1.2.5 ("shall be less than 4 096 bytes").
	MaxURLLength = 4096
	// ProtocolVersion is the UA-TCP protocol version this package speaks.
	ProtocolVersion = 0
)

// Defaults for Limits. They are the proxy's own limits and apply even when a
// peer announces 0 (= no limit).
const (
	DefaultMaxChunkSize    = 65535
	DefaultMaxMessageSize  = 4 << 20
	DefaultMaxChunkCount   = 128
	DefaultMaxOpenRequests = 16
	DefaultMessageTimeout  = 30 * time.Second
	DefaultMaxArrayLength  = 65535
	DefaultMaxDepth        = 10
	DefaultMaxValues       = 65536
	// MaxChunkSizeCeiling caps any configured chunk size; a chunk buffer
	// larger than this is never allocated.
	MaxChunkSizeCeiling = 16 << 20
	// MaxMessageSizeCeiling caps any configured message size.
	MaxMessageSizeCeiling = 256 << 20
)

// Limits are the proxy's caps. The zero value of each field means "use the
// default"; Normalize fills them in.
type Limits struct {
	// MaxChunkSize caps ReceiveBufferSize/SendBufferSize in both directions:
	// the largest chunk (header included) accepted or sent.
	MaxChunkSize uint32
	// MaxMessageSize caps a reassembled message body (sum of chunk bodies).
	MaxMessageSize uint32
	// MaxChunkCount caps the chunks of one message.
	MaxChunkCount uint32
	// MaxOpenRequests caps unfinished multi-chunk messages per direction.
	MaxOpenRequests int
	// MessageTimeout is how long a multi-chunk message may stay unfinished.
	MessageTimeout time.Duration
	// MaxArrayLength caps any array, string or ByteString element count in a
	// body (in addition to the remaining-bytes check, which always applies).
	MaxArrayLength int
	// MaxDepth caps nesting of Variant, DataValue, ExtensionObject and
	// DiagnosticInfo inside one another.
	MaxDepth int
	// MaxValues caps the values (each scalar, array, structure) decoded
	// into one Operation's Writes/Calls, bounding how much memory a small
	// message can expand to.
	MaxValues int
}

// DefaultLimits returns the defaults.
func DefaultLimits() Limits {
	return Limits{
		MaxChunkSize:    DefaultMaxChunkSize,
		MaxMessageSize:  DefaultMaxMessageSize,
		MaxChunkCount:   DefaultMaxChunkCount,
		MaxOpenRequests: DefaultMaxOpenRequests,
		MessageTimeout:  DefaultMessageTimeout,
		MaxArrayLength:  DefaultMaxArrayLength,
		MaxDepth:        DefaultMaxDepth,
		MaxValues:       DefaultMaxValues,
	}
}

// Normalize returns l with zero fields set to their defaults and values
// clamped to what the protocol and the ceilings allow.
func (l Limits) Normalize() Limits {
	d := DefaultLimits()
	if l.MaxChunkSize == 0 {
		l.MaxChunkSize = d.MaxChunkSize
	}
	l.MaxChunkSize = max(l.MaxChunkSize, MinBufferSize)
	l.MaxChunkSize = min(l.MaxChunkSize, MaxChunkSizeCeiling)
	if l.MaxMessageSize == 0 {
		l.MaxMessageSize = d.MaxMessageSize
	}
	l.MaxMessageSize = min(l.MaxMessageSize, MaxMessageSizeCeiling)
	if l.MaxChunkCount == 0 {
		l.MaxChunkCount = d.MaxChunkCount
	}
	if l.MaxOpenRequests <= 0 {
		l.MaxOpenRequests = d.MaxOpenRequests
	}
	if l.MessageTimeout <= 0 {
		l.MessageTimeout = d.MessageTimeout
	}
	if l.MaxArrayLength <= 0 {
		l.MaxArrayLength = d.MaxArrayLength
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = d.MaxDepth
	}
	if l.MaxValues <= 0 {
		l.MaxValues = d.MaxValues
	}
	return l
}
