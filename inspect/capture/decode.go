package capture

import (
	"encoding/binary"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// linkType is a LINKTYPE_ value (tcpdump.org/linktypes.html). gopacket
// v1.1.19's layers.LinkType is a uint8 and its readers truncate the file's
// 16-bit value (SLL2, 276, would read as 20), so we read it ourselves.
type linkType uint16

const (
	linkNull     linkType = 0   // BSD loopback, host byte order family
	linkEthernet linkType = 1   //
	linkRaw      linkType = 101 // raw IPv4 or IPv6
	linkLoop     linkType = 108 // OpenBSD loopback, network byte order family
	linkSLL      linkType = 113 // Linux cooked v1
	linkIPv4     linkType = 228
	linkIPv6     linkType = 229
	linkSLL2     linkType = 276 // Linux cooked v2
	// DLT_RAW as written by some old tools instead of LINKTYPE_RAW:
	// 12 on most systems, 14 on OpenBSD. libpcap maps both to raw IP.
	linkRawDLT12 linkType = 12
	linkRawDLT14 linkType = 14
	linkUnknown  linkType = 0xffff // not a link type: interface not described
)

// Header sizes of the link layers stripped by hand.
const (
	sllHeaderLen  = 16 // Linux cooked v1: EtherType at 14
	sll2HeaderLen = 20 // Linux cooked v2: EtherType at 0
	nullHeaderLen = 4  // BSD loopback: address family, host or network order
)

// BSD address families used by DLT_NULL / DLT_LOOP: IPv4 is 2 everywhere;
// IPv6 is 24 (NetBSD, OpenBSD), 28 (FreeBSD) or 30 (Darwin).
const (
	afInet      = 2
	afInet6BSD  = 24
	afInet6Free = 28
	afInet6Mac  = 30
)

type decodeResult uint8

const (
	resTCP decodeResult = iota
	resNonTCP
	resFragment
	resUndecodable
	resUnknownLink
)

// ipv6Ext skips IPv6 extension headers except Fragment: a non-first
// fragment carries no TCP header, so a fragmented packet must stop the
// decoder (gopacket's IPv6ExtensionSkipper would skip the Fragment header
// and decode payload bytes as TCP).
type ipv6Ext struct{ layers.IPv6ExtensionSkipper }

var ipv6ExtClass = gopacket.NewLayerClass([]gopacket.LayerType{
	layers.LayerTypeIPv6HopByHop,
	layers.LayerTypeIPv6Routing,
	layers.LayerTypeIPv6Destination,
})

func (e *ipv6Ext) CanDecode() gopacket.LayerClass { return ipv6ExtClass }

// packetDecoder turns one captured frame into a TCP segment, without
// allocating: the layers are preallocated and shared by one
// DecodingLayerParser per possible first layer. After decode returns resTCP,
// tcp, src, dst and missing describe the segment until the next call.
type packetDecoder struct {
	eth    layers.Ethernet
	dot1q  layers.Dot1Q
	ip4    layers.IPv4
	ip6    layers.IPv6
	ip6ext ipv6Ext
	tcp    layers.TCP

	fromEth, fromDot1Q, fromIP4, fromIP6 *gopacket.DecodingLayerParser
	decoded                              []gopacket.LayerType

	src, dst [16]byte // IPv4 as IPv4-mapped IPv6
	v4       bool
	// missing is the number of bytes the snap length cut from the end of
	// the frame when the segment is truncated, else 0.
	missing int
}

func newPacketDecoder() *packetDecoder {
	d := &packetDecoder{decoded: make([]gopacket.LayerType, 0, 16)}
	all := []gopacket.DecodingLayer{&d.eth, &d.dot1q, &d.ip4, &d.ip6, &d.ip6ext, &d.tcp}
	mk := func(first gopacket.LayerType) *gopacket.DecodingLayerParser {
		p := gopacket.NewDecodingLayerParser(first)
		// A slice indexed by layer type: cheaper per layer than the
		// default map.
		dlc := gopacket.DecodingLayerContainer(gopacket.DecodingLayerSparse(nil))
		for _, l := range all {
			dlc = dlc.Put(l)
		}
		p.SetDecodingLayerContainer(dlc)
		// The layer after TCP (payload, or gopacket's guess from the port)
		// is not decoded: stop there without an error.
		p.IgnoreUnsupported = true
		return p
	}
	d.fromEth = mk(layers.LayerTypeEthernet)
	d.fromDot1Q = mk(layers.LayerTypeDot1Q)
	d.fromIP4 = mk(layers.LayerTypeIPv4)
	d.fromIP6 = mk(layers.LayerTypeIPv6)
	return d
}

// byEtherType picks the parser for the payload of a link header.
func (d *packetDecoder) byEtherType(et uint16) *gopacket.DecodingLayerParser {
	switch layers.EthernetType(et) {
	case layers.EthernetTypeIPv4:
		return d.fromIP4
	case layers.EthernetTypeIPv6:
		return d.fromIP6
	case layers.EthernetTypeDot1Q, layers.EthernetTypeQinQ, 0x9100:
		return d.fromDot1Q
	}
	return nil
}

// byVersion picks the parser for a raw IP packet.
func (d *packetDecoder) byVersion(data []byte) *gopacket.DecodingLayerParser {
	if len(data) == 0 {
		return nil
	}
	switch data[0] >> 4 {
	case 4:
		return d.fromIP4
	case 6:
		return d.fromIP6
	}
	return nil
}

// decode decodes one frame of the given link type. wireLen is the frame's
// original length, for telling a snap-length cut from a malformed length.
func (d *packetDecoder) decode(lt linkType, data []byte, wireLen int) decodeResult {
	capLen := len(data)
	var p *gopacket.DecodingLayerParser
	switch lt {
	case linkEthernet:
		p = d.fromEth
	case linkSLL:
		if len(data) < sllHeaderLen {
			return resUndecodable
		}
		p = d.byEtherType(binary.BigEndian.Uint16(data[14:16]))
		data = data[sllHeaderLen:]
	case linkSLL2:
		if len(data) < sll2HeaderLen {
			return resUndecodable
		}
		p = d.byEtherType(binary.BigEndian.Uint16(data[0:2]))
		data = data[sll2HeaderLen:]
	case linkNull, linkLoop:
		if len(data) < nullHeaderLen {
			return resUndecodable
		}
		// Written in the capturing host's byte order (DLT_NULL) or network
		// order (DLT_LOOP); the family is below 256 either way.
		af := binary.LittleEndian.Uint32(data[:4])
		if data[0] == 0 && data[1] == 0 {
			af = binary.BigEndian.Uint32(data[:4])
		}
		switch af {
		case afInet:
			p = d.fromIP4
		case afInet6BSD, afInet6Free, afInet6Mac:
			p = d.fromIP6
		}
		data = data[nullHeaderLen:]
	case linkRaw, linkIPv4, linkIPv6, linkRawDLT12, linkRawDLT14:
		p = d.byVersion(data)
	default:
		return resUnknownLink
	}
	if p == nil {
		return resNonTCP
	}
	err := p.DecodeLayers(data, &d.decoded)
	var last gopacket.LayerType
	ip := gopacket.LayerType(0)
	for _, t := range d.decoded {
		switch t {
		case layers.LayerTypeIPv4, layers.LayerTypeIPv6:
			ip = t
		}
		last = t
	}
	if last != layers.LayerTypeTCP {
		if err != nil {
			return resUndecodable
		}
		var next gopacket.LayerType
		switch last {
		case layers.LayerTypeIPv4:
			next = d.ip4.NextLayerType()
		case layers.LayerTypeIPv6:
			next = d.ip6.NextLayerType()
		case layers.LayerTypeIPv6HopByHop, layers.LayerTypeIPv6Routing, layers.LayerTypeIPv6Destination:
			next = d.ip6ext.NextLayerType()
		}
		if next == gopacket.LayerTypeFragment || next == layers.LayerTypeIPv6Fragment {
			return resFragment
		}
		return resNonTCP
	}
	switch ip {
	case layers.LayerTypeIPv4:
		d.v4 = true
		d.src = v4mapped(d.ip4.SrcIP)
		d.dst = v4mapped(d.ip4.DstIP)
	case layers.LayerTypeIPv6:
		d.v4 = false
		copy(d.src[:], d.ip6.SrcIP)
		copy(d.dst[:], d.ip6.DstIP)
	default:
		return resUndecodable
	}
	d.missing = 0
	if p.Truncated && wireLen > capLen {
		// The IP header promised more than was captured and the snap length
		// cut the frame: the segment's tail is missing. (Without a cut the
		// length field lies, and the captured bytes are all there is.)
		d.missing = wireLen - capLen
	}
	return resTCP
}

func v4mapped(ip []byte) (a [16]byte) {
	a[10], a[11] = 0xff, 0xff
	copy(a[12:], ip)
	return a
}
