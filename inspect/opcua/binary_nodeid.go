package opcua

import (
	"encoding/base64"
	"encoding/binary"
	"strconv"
)

// IDType is the identifier type of a NodeId (Part 3 §8.2.3).
type IDType uint8

const (
	IDNumeric IDType = iota
	IDString
	IDGUID
	IDOpaque
)

// NodeID encoding bytes (Part 6 §5.2.2.9, Table 16) and ExpandedNodeId flags
// (Part 6 §5.2.2.10).
const (
	nodeIDTwoByte    = 0x00
	nodeIDFourByte   = 0x01
	nodeIDNumeric    = 0x02
	nodeIDString     = 0x03
	nodeIDGUID       = 0x04
	nodeIDByteString = 0x05
	nodeIDTypeMask   = 0x0F
	flagServerIndex  = 0x40
	flagNamespaceURI = 0x80
	guidSize         = 16
)

// NodeID is a decoded NodeId or ExpandedNodeId. Raw points into the decoded
// input (string bytes, 16 GUID bytes, or opaque bytes): copy to retain.
type NodeID struct {
	Namespace uint16
	Type      IDType
	Numeric   uint32
	Raw       []byte
	// ExpandedNodeId parts.
	NamespaceURI []byte
	ServerIndex  uint32
	HasURI       bool
	HasServer    bool
}

// IsNull reports whether n is the null NodeId (ns=0;i=0).
func (n NodeID) IsNull() bool {
	return n.Namespace == 0 && n.Type == IDNumeric && n.Numeric == 0 && !n.HasURI && !n.HasServer
}

// nodeID reads a NodeId, or an ExpandedNodeId when expanded is true. A plain
// NodeId with the ExpandedNodeId flags set is invalid.
func (r *reader) nodeID(expanded bool) NodeID {
	var n NodeID
	enc := r.u8()
	if r.err != nil {
		return n
	}
	flags := enc &^ nodeIDTypeMask
	if flags&^(flagServerIndex|flagNamespaceURI) != 0 || (!expanded && flags != 0) {
		r.fail(CodeInvalidEncoding, "node id encoding 0x%02x at offset %d", enc, r.pos-1)
		return n
	}
	switch enc & nodeIDTypeMask {
	case nodeIDTwoByte:
		n.Numeric = uint32(r.u8())
	case nodeIDFourByte:
		n.Namespace = uint16(r.u8())
		n.Numeric = uint32(r.u16())
	case nodeIDNumeric:
		n.Namespace = r.u16()
		n.Numeric = r.u32()
	case nodeIDString:
		n.Namespace = r.u16()
		n.Type = IDString
		b, _ := r.stringBytes()
		n.Raw = b
	case nodeIDGUID:
		n.Namespace = r.u16()
		n.Type = IDGUID
		n.Raw = r.bytes(guidSize)
	case nodeIDByteString:
		n.Namespace = r.u16()
		n.Type = IDOpaque
		b, _ := r.byteString()
		n.Raw = b
	default:
		r.fail(CodeInvalidEncoding, "node id type %d at offset %d", enc&nodeIDTypeMask, r.pos-1)
		return n
	}
	if flags&flagNamespaceURI != 0 {
		b, null := r.stringBytes()
		n.NamespaceURI, n.HasURI = b, !null
	}
	if flags&flagServerIndex != 0 {
		n.ServerIndex, n.HasServer = r.u32(), true
	}
	return n
}

// String returns the standard string form (Part 6 §5.3.1.10): "i=2258",
// "ns=1;s=Setpoint", "ns=2;g=09087e75-8e5e-499b-954f-f2a9603db28a",
// "ns=3;b=M/RbKBsRVkePCePcx24oRA==", with "svr=N;" and "nsu=URI;" (instead
// of "ns=") for ExpandedNodeIds.
func (n NodeID) String() string {
	return string(n.AppendString(make([]byte, 0, 16+len(n.Raw)*4/3+len(n.NamespaceURI))))
}

// AppendString appends the string form of n to dst.
func (n NodeID) AppendString(dst []byte) []byte {
	if n.HasServer {
		dst = append(dst, "svr="...)
		dst = strconv.AppendUint(dst, uint64(n.ServerIndex), 10)
		dst = append(dst, ';')
	}
	if n.HasURI {
		dst = append(dst, "nsu="...)
		dst = append(dst, n.NamespaceURI...)
		dst = append(dst, ';')
	} else if n.Namespace != 0 {
		dst = append(dst, "ns="...)
		dst = strconv.AppendUint(dst, uint64(n.Namespace), 10)
		dst = append(dst, ';')
	}
	switch n.Type {
	case IDNumeric:
		dst = append(dst, "i="...)
		dst = strconv.AppendUint(dst, uint64(n.Numeric), 10)
	case IDString:
		dst = append(dst, "s="...)
		dst = append(dst, n.Raw...)
	case IDGUID:
		dst = append(dst, "g="...)
		dst = appendGUID(dst, n.Raw)
	case IDOpaque:
		dst = append(dst, "b="...)
		dst = base64.StdEncoding.AppendEncode(dst, n.Raw)
	}
	return dst
}

// appendGUID formats the 16-byte binary GUID (Part 6 §5.2.2.6: Data1 UInt32,
// Data2 and Data3 UInt16, all little-endian, then 8 bytes Data4) in the
// lowercase text form of Part 6 §5.1.3.
func appendGUID(dst []byte, g []byte) []byte {
	if len(g) != guidSize {
		return dst
	}
	const hexdigits = "0123456789abcdef"
	hex := func(dst []byte, v uint64, digits int) []byte {
		for i := digits - 1; i >= 0; i-- {
			dst = append(dst, hexdigits[(v>>(4*uint(i)))&0xF])
		}
		return dst
	}
	dst = hex(dst, uint64(binary.LittleEndian.Uint32(g[0:4])), 8)
	dst = append(dst, '-')
	dst = hex(dst, uint64(binary.LittleEndian.Uint16(g[4:6])), 4)
	dst = append(dst, '-')
	dst = hex(dst, uint64(binary.LittleEndian.Uint16(g[6:8])), 4)
	dst = append(dst, '-')
	dst = hex(dst, uint64(g[8])<<8|uint64(g[9]), 4)
	dst = append(dst, '-')
	for _, c := range g[10:16] {
		dst = hex(dst, uint64(c), 2)
	}
	return dst
}
