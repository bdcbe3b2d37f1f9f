package capture

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// ---- a recording consumer ----

type chunk struct {
	n  int
	ts time.Time
}

type recFlow struct {
	flow   Flow
	data   [2][]byte
	chunks [2][]chunk
	gaps   [2][]int
	events []string // in call order: "d0:5", "g1:-1", "end:fin"
	end    EndReason
	ends   int
}

type recorder struct {
	t      testing.TB
	flows  []*recFlow
	ignore func(Flow) bool
	calls  int      // NewStream calls
	log    []string // every event of every flow: "<flow id> <event>"
}

func (rec *recorder) NewStream(f Flow) Stream {
	rec.calls++
	if rec.ignore != nil && rec.ignore(f) {
		return nil
	}
	rf := &recFlow{flow: f}
	rec.flows = append(rec.flows, rf)
	return &recStream{rec: rec, f: rf}
}

type recStream struct {
	rec *recorder
	f   *recFlow
}

func (s *recStream) Data(dir Dir, b []byte, ts time.Time) {
	if s.f.ends > 0 {
		s.rec.t.Errorf("flow %v: Data after End", s.f.flow)
	}
	if len(b) == 0 {
		s.rec.t.Errorf("flow %v: empty Data", s.f.flow)
	}
	s.f.data[dir] = append(s.f.data[dir], b...)
	s.f.chunks[dir] = append(s.f.chunks[dir], chunk{len(b), ts})
	s.event(fmt.Sprintf("d%d:%d", dir, len(b)))
}

func (s *recStream) event(e string) {
	s.f.events = append(s.f.events, e)
	s.rec.log = append(s.rec.log, fmt.Sprintf("%d %s", s.f.flow.ID, e))
}

func (s *recStream) Gap(dir Dir, n int) {
	if s.f.ends > 0 {
		s.rec.t.Errorf("flow %v: Gap after End", s.f.flow)
	}
	s.f.gaps[dir] = append(s.f.gaps[dir], n)
	s.event(fmt.Sprintf("g%d:%d", dir, n))
}

func (s *recStream) End(reason EndReason) {
	s.f.ends++
	if s.f.ends > 1 {
		s.rec.t.Errorf("flow %v: End called %d times", s.f.flow, s.f.ends)
	}
	s.f.end = reason
	s.event("end:" + reason.String())
}

// checkEnded fails unless every recorded flow got exactly one End.
func (rec *recorder) checkEnded() {
	for _, f := range rec.flows {
		if f.ends != 1 {
			rec.t.Errorf("flow %v: End called %d times, want 1", f.flow, f.ends)
		}
	}
}

// run reads one in-memory capture with a fresh Reader and recorder.
func run(t testing.TB, capture []byte, opt Options) (*recorder, Stats) {
	t.Helper()
	rec := &recorder{t: t}
	r := NewReader(rec, opt)
	if err := r.ReadCapture(context.Background(), "mem", bytes.NewReader(capture), int64(len(capture))); err != nil {
		t.Fatalf("ReadCapture: %v", err)
	}
	st := r.Close()
	rec.checkEnded()
	return rec, st
}

// ---- a synthetic capture builder ----

var (
	t0      = time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)
	cliMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	srvMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	cliIP4  = net.IP{10, 0, 0, 1}
	srvIP4  = net.IP{10, 0, 0, 2}
	cliIP6  = net.ParseIP("fd00::1")
	srvIP6  = net.ParseIP("fd00::2")
	isnCli  = uint32(1000)
	isnSrv  = uint32(5000)
	srvPort = layers.TCPPort(502)
)

// link selects the framing the builder writes.
type link int

const (
	linkEth link = iota
	linkEthVLAN
	linkEthQinQ
	linkSLLv1
	linkSLLv2
	linkNullLE
	linkLoopBE
	linkRawIP
)

func (l link) linkType() linkType {
	switch l {
	case linkSLLv1:
		return linkSLL
	case linkSLLv2:
		return linkSLL2
	case linkNullLE:
		return linkNull
	case linkLoopBE:
		return linkLoop
	case linkRawIP:
		return linkRaw
	}
	return linkEthernet
}

// conn describes one TCP connection of a synthetic capture.
type conn struct {
	cli, srv         net.IP
	cliPort, srvPort layers.TCPPort
}

func conn4(cliPort int) conn {
	return conn{cli: cliIP4, srv: srvIP4, cliPort: layers.TCPPort(cliPort), srvPort: srvPort}
}

func conn6(cliPort int) conn {
	return conn{cli: cliIP6, srv: srvIP6, cliPort: layers.TCPPort(cliPort), srvPort: srvPort}
}

// seg is one TCP segment: fromClient says the direction.
type seg struct {
	c          conn
	fromClient bool
	flags      string // any of "SAFRP"
	seq, ack   uint32
	payload    []byte
	at         time.Duration // capture time after t0
	snap       int           // if > 0, cut the frame to this many bytes
	raw        []byte        // if set, the frame as is (c, flags... unused)
}

// frame serialises a segment with the given framing.
func frame(t testing.TB, l link, s seg) []byte {
	t.Helper()
	if s.raw != nil {
		return s.raw
	}
	src, dst := s.c.cli, s.c.srv
	sp, dp := s.c.cliPort, s.c.srvPort
	smac, dmac := cliMAC, srvMAC
	if !s.fromClient {
		src, dst, sp, dp, smac, dmac = dst, src, dp, sp, dmac, smac
	}
	tcp := &layers.TCP{SrcPort: sp, DstPort: dp, Seq: s.seq, Ack: s.ack, Window: 65535}
	for _, f := range s.flags {
		switch f {
		case 'S':
			tcp.SYN = true
		case 'A':
			tcp.ACK = true
		case 'F':
			tcp.FIN = true
		case 'R':
			tcp.RST = true
		case 'P':
			tcp.PSH = true
		}
	}
	var ip gopacket.SerializableLayer
	et := layers.EthernetTypeIPv4
	if src.To4() != nil {
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.To4(), DstIP: dst.To4()}
		tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		et = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: src, DstIP: dst}
		tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	ls := []gopacket.SerializableLayer{ip, tcp, gopacket.Payload(s.payload)}
	switch l {
	case linkEth:
		ls = append([]gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: et}}, ls...)
	case linkEthVLAN:
		ls = append([]gopacket.SerializableLayer{
			&layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: layers.EthernetTypeDot1Q},
			&layers.Dot1Q{VLANIdentifier: 42, Type: et},
		}, ls...)
	case linkEthQinQ:
		ls = append([]gopacket.SerializableLayer{
			&layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: layers.EthernetTypeQinQ},
			&layers.Dot1Q{VLANIdentifier: 7, Type: layers.EthernetTypeDot1Q},
			&layers.Dot1Q{VLANIdentifier: 42, Type: et},
		}, ls...)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	b := buf.Bytes()
	var hdr []byte
	switch l {
	case linkSLLv1:
		hdr = make([]byte, sllHeaderLen)
		binary.BigEndian.PutUint16(hdr[0:], 0) // to us
		binary.BigEndian.PutUint16(hdr[2:], 1) // ARPHRD_ETHER
		binary.BigEndian.PutUint16(hdr[4:], 6)
		copy(hdr[6:], smac)
		binary.BigEndian.PutUint16(hdr[14:], uint16(et))
	case linkSLLv2:
		hdr = make([]byte, sll2HeaderLen)
		binary.BigEndian.PutUint16(hdr[0:], uint16(et))
		binary.BigEndian.PutUint32(hdr[4:], 3) // interface index
		binary.BigEndian.PutUint16(hdr[8:], 1) // ARPHRD_ETHER
		hdr[11] = 6
		copy(hdr[12:], smac)
	case linkNullLE, linkLoopBE:
		hdr = make([]byte, nullHeaderLen)
		af := uint32(afInet)
		if et == layers.EthernetTypeIPv6 {
			af = afInet6Mac
		}
		if l == linkNullLE {
			binary.LittleEndian.PutUint32(hdr, af)
		} else {
			binary.BigEndian.PutUint32(hdr, af)
		}
	}
	return append(hdr, b...)
}

// pcapFile writes segments, in the given order, as a classic pcap file.
func pcapFile(t testing.TB, l link, segs ...seg) []byte {
	t.Helper()
	var out bytes.Buffer
	hdr := make([]byte, pcapHeaderLen)
	binary.LittleEndian.PutUint32(hdr[0:], magicPcapMicro)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 65535)
	binary.LittleEndian.PutUint32(hdr[20:], uint32(l.linkType()))
	out.Write(hdr) // by hand: pcapgo's WriteFileHeader takes a uint8 link type
	w := pcapgo.NewWriter(&out)
	for _, s := range segs {
		b := frame(t, l, s)
		ci := gopacket.CaptureInfo{Timestamp: t0.Add(s.at), Length: len(b), CaptureLength: len(b)}
		if s.snap > 0 && s.snap < len(b) {
			b = b[:s.snap]
			ci.CaptureLength = s.snap
		}
		if err := w.WritePacket(ci, b); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

// pcapngFile writes a pcapng file with one interface per link and each
// segment on the given interface (ifaceOf[i], default 0). Link types above
// 255 are patched into the interface blocks after writing (pcapgo's
// NgInterface.LinkType is a uint8).
func pcapngFile(t testing.TB, links []link, ifaceOf []int, segs ...seg) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := pcapgo.NewNgWriterInterface(&out, pcapgo.NgInterface{LinkType: layers.LinkType(links[0].linkType()), SnapLength: 65535}, pcapgo.NgWriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links[1:] {
		if _, err := w.AddInterface(pcapgo.NgInterface{LinkType: layers.LinkType(l.linkType()), SnapLength: 65535}); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range segs {
		iface := 0
		if i < len(ifaceOf) {
			iface = ifaceOf[i]
		}
		b := frame(t, links[iface], s)
		ci := gopacket.CaptureInfo{Timestamp: t0.Add(s.at), Length: len(b), CaptureLength: len(b), InterfaceIndex: iface}
		if err := w.WritePacket(ci, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	b := out.Bytes()
	// Patch the interface blocks' link types (little-endian file).
	iface := 0
	for off := 0; off+12 <= len(b); {
		typ, n := binary.LittleEndian.Uint32(b[off:]), int(binary.LittleEndian.Uint32(b[off+4:]))
		if typ == ngBlockIDB {
			binary.LittleEndian.PutUint16(b[off+8:], uint16(links[iface].linkType()))
			iface++
		}
		off += n
	}
	return b
}

// exchange builds a complete connection: handshake, the given requests and
// responses alternating (req[i] then resp[i]), FIN both ways. Timestamps
// advance 1 ms per segment.
func exchange(c conn, reqs, resps [][]byte) []seg {
	cs, ss := isnCli, isnSrv
	var at time.Duration
	next := func() time.Duration { at += time.Millisecond; return at }
	out := []seg{
		{c: c, fromClient: true, flags: "S", seq: cs, at: next()},
		{c: c, fromClient: false, flags: "SA", seq: ss, ack: cs + 1, at: next()},
		{c: c, fromClient: true, flags: "A", seq: cs + 1, ack: ss + 1, at: next()},
	}
	cs++
	ss++
	for i := range reqs {
		out = append(out, seg{c: c, fromClient: true, flags: "PA", seq: cs, ack: ss, payload: reqs[i], at: next()})
		cs += uint32(len(reqs[i]))
		if i < len(resps) {
			out = append(out, seg{c: c, fromClient: false, flags: "PA", seq: ss, ack: cs, payload: resps[i], at: next()})
			ss += uint32(len(resps[i]))
		}
	}
	out = append(out,
		seg{c: c, fromClient: true, flags: "FA", seq: cs, ack: ss, at: next()},
		seg{c: c, fromClient: false, flags: "FA", seq: ss, ack: cs + 1, at: next()},
		seg{c: c, fromClient: true, flags: "A", seq: cs + 1, ack: ss + 1, at: next()},
	)
	return out
}

// mbReq returns a Modbus/TCP read-holding-registers request (12 bytes),
// distinct per i.
func mbReq(i int) []byte {
	return []byte{byte(i >> 8), byte(i), 0, 0, 0, 6, 1, 3, 0, byte(i), 0, 2}
}

// mbResp returns the matching response (13 bytes).
func mbResp(i int) []byte {
	return []byte{byte(i >> 8), byte(i), 0, 0, 0, 7, 1, 3, 4, 0, byte(i), 0, 1}
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
