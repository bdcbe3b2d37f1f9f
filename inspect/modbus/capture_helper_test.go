package modbus

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// pcapDir holds the captures copied into the repository (see its README.md
// for origin and licence).
var pcapDir = filepath.Join("..", "..", "testdata", "pcap")

// segment is one TCP segment with payload, numbered as tshark numbers
// frames (from 1, counting every packet in the file).
type segment struct {
	frame    int
	client   string // "ip:port" of the endpoint that is not the server port
	toServer bool
	payload  []byte
}

// readSegments returns the TCP segments with payload of a pcap or pcapng
// file, in capture order. serverPort tells requests from responses.
func readSegments(tb testing.TB, name string, serverPort uint16) []segment {
	tb.Helper()
	f, err := os.Open(filepath.Join(pcapDir, name))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	type source interface {
		ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
		LinkType() layers.LinkType
	}
	var src source
	if strings.HasSuffix(name, ".pcapng") {
		r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			tb.Fatal(err)
		}
		src = r
	} else {
		r, err := pcapgo.NewReader(f)
		if err != nil {
			tb.Fatal(err)
		}
		src = r
	}
	var segs []segment
	for frame := 1; ; frame++ {
		data, _, err := src.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			tb.Fatalf("%s frame %d: %v", name, frame, err)
		}
		pkt := gopacket.NewPacket(data, src.LinkType(), gopacket.Default)
		tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if tcp == nil || len(tcp.Payload) == 0 {
			continue
		}
		var srcIP, dstIP string
		if nl := pkt.NetworkLayer(); nl != nil {
			srcIP, dstIP = nl.NetworkFlow().Src().String(), nl.NetworkFlow().Dst().String()
		}
		s := segment{frame: frame, payload: append([]byte(nil), tcp.Payload...)}
		switch {
		case uint16(tcp.DstPort) == serverPort:
			s.toServer, s.client = true, fmt.Sprintf("%s:%d", srcIP, tcp.SrcPort)
		case uint16(tcp.SrcPort) == serverPort:
			s.client = fmt.Sprintf("%s:%d", dstIP, tcp.DstPort)
		default:
			continue
		}
		segs = append(segs, s)
	}
	return segs
}

// capturedADU is one ADU cut from a capture, or one framing failure.
type capturedADU struct {
	frame    int // the frame whose payload completed the ADU
	client   string
	toServer bool
	adu      []byte
	framing  error // non-nil: this direction could not be framed from here on
}

// splitStreams cuts every direction of every connection into ADUs with
// FrameLength, concatenating payloads in capture order (the loopback and
// zeek captures are in order; real reassembly is inspect/capture's job).
// After a framing error the direction is abandoned, as the proxy would
// close the connection.
func splitStreams(segs []segment) []capturedADU {
	type dir struct {
		buf  []byte
		dead bool
	}
	dirs := map[string]*dir{}
	var out []capturedADU
	for _, s := range segs {
		key := fmt.Sprintf("%s>%v", s.client, s.toServer)
		d := dirs[key]
		if d == nil {
			d = &dir{}
			dirs[key] = d
		}
		if d.dead {
			continue
		}
		d.buf = append(d.buf, s.payload...)
		for {
			n, err := FrameLength(d.buf)
			if err != nil {
				out = append(out, capturedADU{frame: s.frame, client: s.client, toServer: s.toServer, framing: err})
				d.dead = true
				break
			}
			if n == 0 {
				break
			}
			out = append(out, capturedADU{frame: s.frame, client: s.client, toServer: s.toServer, adu: d.buf[:n:n]})
			d.buf = d.buf[n:]
		}
	}
	return out
}

// splitSegments frames each segment on its own: for captures whose TCP
// stream is not coherent (zeek_fuzz-72 has gaps, retransmissions and
// out-of-order segments), so one broken segment does not hide the rest.
func splitSegments(segs []segment) []capturedADU {
	var out []capturedADU
	for _, s := range segs {
		buf := s.payload
		for {
			n, err := FrameLength(buf)
			if err != nil {
				out = append(out, capturedADU{frame: s.frame, client: s.client, toServer: s.toServer, framing: err})
				break
			}
			if n == 0 {
				if len(buf) > 0 {
					out = append(out, capturedADU{frame: s.frame, client: s.client, toServer: s.toServer,
						framing: &FramingError{Reason: ReasonTruncated, Detail: fmt.Sprintf("%d bytes left in the segment", len(buf))}})
				}
				break
			}
			out = append(out, capturedADU{frame: s.frame, client: s.client, toServer: s.toServer, adu: buf[:n:n]})
			buf = buf[n:]
		}
	}
	return out
}
