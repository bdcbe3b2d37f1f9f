package capture

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Dir is the direction of one half of a TCP connection.
type Dir uint8

const (
	// ClientToServer carries requests: bytes sent by Flow.Client.
	ClientToServer Dir = 0
	// ServerToClient carries responses: bytes sent by Flow.Server.
	ServerToClient Dir = 1
)

// String returns "client->server" or "server->client".
func (d Dir) String() string {
	if d == ClientToServer {
		return "client->server"
	}
	return "server->client"
}

// Reverse returns the other direction.
func (d Dir) Reverse() Dir { return d ^ 1 }

// RoleSource says how the client and server of a flow were told apart.
type RoleSource uint8

const (
	// RoleFromSYN: the SYN (sender is the client) or the SYN-ACK (sender is
	// the server) was captured. Authoritative.
	RoleFromSYN RoleSource = iota
	// RoleFromIsServer: the handshake was not captured and Options.IsServer
	// matched exactly one endpoint.
	RoleFromIsServer
	// RoleFromPorts: neither of the above; the endpoint with the lower port
	// is taken as the server (well-known ports are below the ephemeral
	// range). On equal ports the sender of the first packet is the client.
	RoleFromPorts
)

var roleNames = [...]string{RoleFromSYN: "syn", RoleFromIsServer: "is_server", RoleFromPorts: "ports"}

// String returns "syn", "is_server" or "ports".
func (r RoleSource) String() string {
	if int(r) < len(roleNames) {
		return roleNames[r]
	}
	return "unknown"
}

// Flow identifies one TCP connection. It is handed to the StreamFactory by
// value; the consumer may keep it.
type Flow struct {
	// ID numbers flows 1, 2, 3, ... in the order they are first seen within
	// one Reader (across all files it reads).
	ID     uint64
	Client netip.AddrPort
	Server netip.AddrPort
	// FirstSeen is the capture time of the packet that opened the flow: the
	// SYN, or the first segment carrying data when the handshake was not
	// captured.
	FirstSeen time.Time
	Roles     RoleSource
	// Handshake is true when the client's SYN was captured: the
	// client->server stream then starts at its first byte.
	Handshake bool
}

// String renders the flow as "#ID client -> server".
func (f Flow) String() string {
	return fmt.Sprintf("#%d %s -> %s", f.ID, f.Client, f.Server)
}

// EndReason says why a flow ended.
type EndReason uint8

const (
	_ EndReason = iota
	// EndFIN: both directions were closed with FIN.
	EndFIN
	// EndRST: a RST whose sequence number matched the sender's stream
	// position (RFC 5961 §3.2) was seen. RSTs that do not match are counted
	// in Stats.IgnoredRST and do not end the flow.
	EndRST
	// EndIdle: no packet for Options.IdleTimeout of capture time.
	EndIdle
	// EndEOF: the flow was still open when the input ended (Reader.Close).
	EndEOF
	// EndCanceled: reading was canceled through the context; buffered
	// out-of-order data was not delivered.
	EndCanceled

	numEndReasons
)

var endNames = [...]string{"", "fin", "rst", "idle", "eof", "canceled"}

// String returns "fin", "rst", "idle", "eof" or "canceled".
func (e EndReason) String() string {
	if int(e) < len(endNames) && e != 0 {
		return endNames[e]
	}
	return "unknown"
}

// GapUnknown is the length passed to Stream.Gap when a direction's stream is
// picked up in the middle (its SYN was not captured): an unknown number of
// bytes came before the first Data. A decoder should resynchronise exactly
// as after a gap of known size.
const GapUnknown = -1

// Stream consumes the two reassembled byte streams of one flow. The methods
// of one Stream are called from one goroutine, in stream order per direction
// and in capture order across directions as far as reassembly allows (data
// held back behind a missing segment is delivered when the hole is filled or
// given up, possibly after data of the other direction that was captured
// later: pair requests and responses by protocol ids and timestamps, not by
// call order alone).
type Stream interface {
	// Data delivers the next bytes of direction dir, each byte exactly
	// once. b is valid only during the call: copy what you keep. ts is the
	// capture time of the segment the bytes came from; bytes from several
	// segments are delivered in several calls, one per timestamp.
	Data(dir Dir, b []byte, ts time.Time)
	// Gap reports that n bytes of direction dir are missing before the
	// next Data (lost by the capture and never retransmitted within
	// Options.GapTimeout, or past a buffer cap), or n == GapUnknown when the
	// stream was picked up mid-way. The consumer should resynchronise or
	// abandon the direction.
	Gap(dir Dir, n int)
	// End is called exactly once, last, for every flow whose Stream was
	// not nil.
	End(reason EndReason)
}

// StreamFactory decides, per flow, whether to consume it.
type StreamFactory interface {
	// NewStream is called once per flow, when its first SYN or first data
	// segment is seen, and returns the flow's consumer, or nil to ignore
	// the flow: an ignored flow is neither reassembled nor reported again.
	NewStream(f Flow) Stream
}

// StreamFactoryFunc adapts a function to StreamFactory.
type StreamFactoryFunc func(f Flow) Stream

// NewStream calls fn(f).
func (fn StreamFactoryFunc) NewStream(f Flow) Stream { return fn(f) }

// ServerPorts returns an Options.IsServer function that treats every
// endpoint listening on one of ports as a server, e.g.
// ServerPorts(502, 802, 4840).
func ServerPorts(ports ...uint16) func(netip.AddrPort) bool {
	set := make(map[uint16]struct{}, len(ports))
	for _, p := range ports {
		set[p] = struct{}{}
	}
	return func(ap netip.AddrPort) bool {
		_, ok := set[ap.Port()]
		return ok
	}
}

// Defaults for Options; see there.
const (
	DefaultGapTimeout             = 5 * time.Second
	DefaultIdleTimeout            = time.Hour
	DefaultMaxBufferedBytesPerDir = 1 << 20
	DefaultMaxBufferedBytesTotal  = 128 << 20
	DefaultMaxFlows               = 1 << 18
)

// MaxPacketSize is the largest capture record accepted (libpcap's
// MAXIMUM_SNAPLEN). A larger record length means a corrupt file; reading
// that file stops with a warning.
const MaxPacketSize = 262144

// Options tune a Reader. The zero value is valid: every zero field takes
// its default.
type Options struct {
	// IsServer tells servers from clients for flows whose handshake was not
	// captured: it is asked about both endpoints, and if it says yes for
	// exactly one, that one is the server. Typically ServerPorts(502, 802,
	// 4840) or a check against the configured listener addresses. With nil,
	// or when it matches both or neither, the lower port is the server.
	IsServer func(netip.AddrPort) bool

	// GapTimeout is how long, in capture time, data behind a missing
	// segment waits for the segment before the hole is reported as a Gap
	// and the data after it delivered. Default DefaultGapTimeout.
	GapTimeout time.Duration
	// IdleTimeout ends a flow (EndIdle) after this much capture time
	// without a packet. Default DefaultIdleTimeout.
	IdleTimeout time.Duration

	// MaxBufferedBytesPerDir caps the out-of-order data buffered for one
	// direction of one flow; past it the oldest hole is given up (Gap).
	// Buffering is in pages of 1900 bytes (about 2 KiB of memory each), one
	// page at least per buffered segment. Default DefaultMaxBufferedBytesPerDir.
	MaxBufferedBytesPerDir int
	// MaxBufferedBytesTotal caps out-of-order data buffered over all flows;
	// past it every new out-of-order segment gives up its flow's oldest
	// hole. Default DefaultMaxBufferedBytesTotal.
	MaxBufferedBytesTotal int
	// MaxFlows caps the connections tracked at once (about 1 KiB each).
	// Packets of new connections past the cap are dropped and counted in
	// Stats.FlowLimitDrops. Default DefaultMaxFlows.
	MaxFlows int

	// Progress, if set, is called about every MiB read and at the end of
	// each file, from the reading goroutine.
	Progress func(Progress)
}

// Progress reports how far reading a file has got.
type Progress struct {
	File string
	// Read is the number of bytes of the file read so far (compressed
	// bytes for a gzip file); Size is the file's size, or -1 if unknown.
	Read, Size int64
	Packets    uint64 // records read so far, all files
}

// Errors returned (wrapped, with the file name) or recorded in warnings.
var (
	// ErrNotCapture: the input is not a pcap or pcapng file (returned).
	ErrNotCapture = errors.New("not a pcap or pcapng file")
	// ErrTruncated: the input ends in the middle of a record (a warning:
	// everything before the cut was delivered).
	ErrTruncated = errors.New("file truncated mid-record")
	// ErrCorrupt: a record header is invalid, so the rest of the file
	// cannot be framed (a warning: everything before it was delivered).
	ErrCorrupt = errors.New("corrupt record")
)

// Warning is a non-fatal problem with one input.
type Warning struct {
	File string
	// Packet is the number of records read from this file before the
	// problem.
	Packet uint64
	Err    error
}

// String renders the warning for a report.
func (w Warning) String() string {
	return fmt.Sprintf("%s: after %d records: %v", w.File, w.Packet, w.Err)
}

// maxWarnings bounds Stats.Warnings; further warnings are only counted.
const maxWarnings = 100

// Stats summarises a run, for the replay report. Counters are cumulative
// over every file a Reader has read.
type Stats struct {
	Files          int // inputs opened successfully
	FilesTruncated int // of which cut mid-record (see Warnings)
	FilesCorrupt   int // of which unframeable past some point (see Warnings)

	Packets uint64 // records read
	Bytes   uint64 // captured bytes of those records

	TCPPackets       uint64 // decoded TCP segments
	NonTCP           uint64 // decoded, but not TCP over IP (ARP, UDP, ICMP, ...)
	Fragments        uint64 // IP fragments: not reassembled, not delivered
	Undecodable      uint64 // malformed link, IP or TCP headers
	UnknownLinkType  uint64 // records of an unsupported link type
	TruncatedPackets uint64 // TCP segments cut by the snap length

	Flows          uint64                // flows handed to the StreamFactory
	FlowsIgnored   uint64                // of which the factory returned nil for
	FlowsMidStream uint64                // of which the client SYN was not captured
	FlowLimitDrops uint64                // packets dropped because MaxFlows was reached
	Ended          [numEndReasons]uint64 // flows ended, by EndReason

	DataBytes          [2]uint64 // bytes delivered by Data, by Dir
	Gaps               uint64    // Gap calls with a known size
	GapBytes           uint64    // bytes reported missing by those
	OutOfOrder         uint64    // segments buffered to wait for earlier data
	RetransmittedBytes uint64    // bytes of segments behind the stream position, dropped
	IgnoredRST         uint64    // RSTs out of sequence (see EndRST)
	IgnoredFIN         uint64    // FINs before the stream position, dropped
	PacketsAfterEnd    uint64    // packets of a flow after its End
	WarningsDropped    int       // warnings past the first 100
	Warnings           []Warning // truncated and corrupt files, the flow limit
}
