// Package synth writes pcap files of TCP connections with synthetic
// Ethernet/IPv4/TCP headers around chosen payloads: the captures replay's
// tests and benchmark make themselves (pipelined and split PDUs,
// reordering, retransmissions, gaps, connections picked up mid-stream,
// traffic recorded through the proxy).
//
// Headers are serialized with gopacket (lengths and checksums computed);
// files are written with pcapgo, so any reader, tshark included, reads them.
package synth

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// Dir is the direction of a segment.
type Dir int

const (
	ToServer Dir = iota
	ToClient
)

// Writer writes one pcap file. It is not safe for concurrent use.
type Writer struct {
	pw *pcapgo.Writer
	// Now is the timestamp of the next packet; Step is added after each.
	Now  time.Time
	Step time.Duration
	buf  gopacket.SerializeBuffer
	n    int
}

// NewWriter writes the pcap file header (Ethernet, snap length 65535) to w.
func NewWriter(w io.Writer, start time.Time) (*Writer, error) {
	pw := pcapgo.NewWriter(w)
	if err := pw.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		return nil, err
	}
	return &Writer{pw: pw, Now: start, Step: 100 * time.Microsecond, buf: gopacket.NewSerializeBuffer()}, nil
}

// Packets returns the number of packets written.
func (w *Writer) Packets() int { return w.n }

// Conn is one TCP connection. Next holds, per direction, the stream offset
// of the next byte Send writes (0 is the first byte after the SYN).
type Conn struct {
	w        *Writer
	Client   netip.AddrPort
	Server   netip.AddrPort
	isn      [2]uint32
	Next     [2]uint32
	eth      [2]layers.Ethernet
	ip       [2]layers.IPv4
	finished bool
	cut      int // payload bytes the next packet's record leaves out
}

// Conn starts a connection between two IPv4 endpoints. Nothing is written
// until Handshake or Send.
func (w *Writer) Conn(client, server netip.AddrPort) *Conn {
	c := &Conn{w: w, Client: client, Server: server, isn: [2]uint32{1000, 50000}}
	cmac := net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	smac := net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	c.eth[ToServer] = layers.Ethernet{SrcMAC: cmac, DstMAC: smac, EthernetType: layers.EthernetTypeIPv4}
	c.eth[ToClient] = layers.Ethernet{SrcMAC: smac, DstMAC: cmac, EthernetType: layers.EthernetTypeIPv4}
	ca, sa := client.Addr().As4(), server.Addr().As4()
	c.ip[ToServer] = layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP(ca[:]), DstIP: net.IP(sa[:])}
	c.ip[ToClient] = layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP(sa[:]), DstIP: net.IP(ca[:])}
	return c
}

// Handshake writes SYN, SYN-ACK and ACK.
func (c *Conn) Handshake() error {
	if err := c.packet(ToServer, c.isn[ToServer], 0, tcpFlags{syn: true}, nil); err != nil {
		return err
	}
	if err := c.packet(ToClient, c.isn[ToClient], c.isn[ToServer]+1, tcpFlags{syn: true, ack: true}, nil); err != nil {
		return err
	}
	return c.packet(ToServer, c.isn[ToServer]+1, c.isn[ToClient]+1, tcpFlags{ack: true}, nil)
}

// Send writes p as one segment in direction d at Next[d] and advances it.
func (c *Conn) Send(d Dir, p []byte) error {
	if err := c.SendAt(d, c.Next[d], p); err != nil {
		return err
	}
	c.Next[d] += uint32(len(p))
	return nil
}

// SendAt writes p as one segment in direction d at stream offset off,
// without moving Next: for reordering, retransmissions and gaps.
func (c *Conn) SendAt(d Dir, off uint32, p []byte) error {
	return c.packet(d, c.isn[d]+1+off, c.isn[1-d]+1+c.Next[1-d], tcpFlags{ack: true, psh: true}, p)
}

// SendCut writes p as one segment in direction d at Next[d] and advances
// it, but captures only its first keep payload bytes, as a snap length
// would (the record's original length says the rest existed).
func (c *Conn) SendCut(d Dir, p []byte, keep int) error {
	c.cut = len(p) - keep
	defer func() { c.cut = 0 }()
	return c.Send(d, p)
}

// Close writes FIN-ACK both ways and the last ACK.
func (c *Conn) Close() error {
	if c.finished {
		return nil
	}
	c.finished = true
	f := tcpFlags{fin: true, ack: true}
	if err := c.packet(ToServer, c.isn[ToServer]+1+c.Next[ToServer], c.isn[ToClient]+1+c.Next[ToClient], f, nil); err != nil {
		return err
	}
	if err := c.packet(ToClient, c.isn[ToClient]+1+c.Next[ToClient], c.isn[ToServer]+2+c.Next[ToServer], f, nil); err != nil {
		return err
	}
	return c.packet(ToServer, c.isn[ToServer]+2+c.Next[ToServer], c.isn[ToClient]+2+c.Next[ToClient], tcpFlags{ack: true}, nil)
}

type tcpFlags struct{ syn, ack, psh, fin bool }

func (c *Conn) packet(d Dir, seq, ack uint32, f tcpFlags, payload []byte) error {
	src, dst := c.Client, c.Server
	if d == ToClient {
		src, dst = dst, src
	}
	ip := c.ip[d]
	tcp := layers.TCP{
		SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
		Seq: seq, Ack: ack, SYN: f.syn, ACK: f.ack, PSH: f.psh, FIN: f.fin, Window: 65535,
	}
	if !f.ack {
		tcp.Ack = 0
	}
	if err := tcp.SetNetworkLayerForChecksum(&ip); err != nil {
		return err
	}
	w := c.w
	if err := w.buf.Clear(); err != nil {
		return err
	}
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(w.buf, opts, &c.eth[d], &ip, &tcp, gopacket.Payload(payload)); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	b := w.buf.Bytes()
	ci := gopacket.CaptureInfo{Timestamp: w.Now, CaptureLength: len(b) - c.cut, Length: len(b)}
	b = b[:ci.CaptureLength]
	w.Now = w.Now.Add(w.Step)
	w.n++
	return w.pw.WritePacket(ci, b)
}
