package opcua

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

const pcapDir = "../../testdata/pcap"

// segment is one TCP payload in capture order.
type segment struct {
	flow    int  // connection index in order of first appearance
	fromCli bool // sent by the side that opened the connection (SYN) or, without a SYN, that sent HEL
	payload []byte
	gap     bool // bytes are missing before this segment
}

type tcpKey struct {
	a, b string // "ip:port" of each side, a < b
}

type tcpSide struct {
	next    uint32
	started bool
}

type tcpConn struct {
	idx    int
	client string // endpoint that sent the SYN, or "" if unknown
	sides  map[string]*tcpSide
}

// readSegments reads a pcap or pcapng file and returns the TCP payloads in
// capture order with retransmissions removed and gaps marked. A payload
// that starts before the next expected byte is trimmed; one that starts
// after it marks a gap (the test then resynchronises or skips the flow).
func readSegments(t testing.TB, name string) []segment {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(pcapDir, name))
	if err != nil {
		t.Fatal(err)
	}
	var src interface {
		ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
	}
	var link layers.LinkType
	if bytes.HasPrefix(raw, []byte{0x0a, 0x0d, 0x0d, 0x0a}) { // pcapng section header block, whatever the file name says
		r, err := pcapgo.NewNgReader(bytes.NewReader(raw), pcapgo.DefaultNgReaderOptions)
		if err != nil {
			t.Fatal(err)
		}
		src, link = r, r.LinkType()
	} else {
		r, err := pcapgo.NewReader(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		src, link = r, r.LinkType()
	}
	conns := map[tcpKey]*tcpConn{}
	var out []segment
	for {
		data, _, err := src.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		pkt := gopacket.NewPacket(data, link, gopacket.NoCopy)
		tl, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !ok {
			continue
		}
		var srcIP, dstIP string
		switch nl := pkt.NetworkLayer().(type) {
		case *layers.IPv4:
			srcIP, dstIP = nl.SrcIP.String(), nl.DstIP.String()
		case *layers.IPv6:
			srcIP, dstIP = nl.SrcIP.String(), nl.DstIP.String()
		default:
			continue
		}
		from := fmt.Sprintf("%s:%d", srcIP, tl.SrcPort)
		to := fmt.Sprintf("%s:%d", dstIP, tl.DstPort)
		key := tcpKey{from, to}
		if key.a > key.b {
			key.a, key.b = key.b, key.a
		}
		c := conns[key]
		if c == nil || (tl.SYN && !tl.ACK && c.sides[from] != nil && c.sides[from].started) {
			c = &tcpConn{idx: len(conns), sides: map[string]*tcpSide{}}
			conns[key] = c
		}
		if tl.SYN && !tl.ACK {
			c.client = from
		}
		s := c.sides[from]
		if s == nil {
			s = &tcpSide{}
			c.sides[from] = s
		}
		seq := tl.Seq
		if tl.SYN {
			s.next, s.started = seq+1, true
			continue
		}
		p := tl.Payload
		if len(p) == 0 {
			continue
		}
		gap := false
		if !s.started {
			s.next, s.started = seq, true
		}
		if d := int32(s.next - seq); d > 0 { // retransmitted bytes
			if int(d) >= len(p) {
				continue
			}
			p = p[d:]
			seq += uint32(d)
		} else if d < 0 {
			gap = true
		}
		s.next = seq + uint32(len(p))
		if c.client == "" && bytes.HasPrefix(p, []byte("HEL")) {
			c.client = from
		}
		out = append(out, segment{flow: c.idx, fromCli: from == c.client, payload: append([]byte(nil), p...), gap: gap})
	}
	return out
}

// replayStats is what replaying one capture produced.
type replayStats struct {
	requests   map[string]int       // "flow/typeid" -> count of decoded requests
	responses  map[string]int       // "flow/typeid" -> count of responses
	types      map[string]int       // "flow/TYPE" -> count of complete messages
	opaque     map[int]int          // flow -> opaque messages
	bodies     [][]byte             // every complete readable request body (copies)
	respBodies [][]byte             // every complete readable response body (copies)
	ops        []*inspect.Operation // every complete client→server message, decoded (clones)
	chunks     [][]byte             // every chunk (copies), for fuzz seeds
	errors     []string
	gapFlows   map[int]bool
}

// replay feeds a capture through Split, Channel and Decoder exactly as the
// proxy would (per flow, both directions, in capture order). A flow with a
// TCP gap is fed up to the gap and then skipped: a live proxy never sees a
// gap (TCP retransmits), and resynchronising inside a secure channel would
// require guessing chunk boundaries.
func replay(t testing.TB, name string, cfg func(flow int) Config) replayStats {
	t.Helper()
	st := replayStats{
		requests: map[string]int{}, responses: map[string]int{}, types: map[string]int{},
		opaque: map[int]int{}, gapFlows: map[int]bool{},
	}
	type flowState struct {
		ch   *Channel
		buf  [2][]byte
		dead bool
	}
	flows := map[int]*flowState{}
	for _, seg := range readSegments(t, name) {
		f := flows[seg.flow]
		if f == nil {
			c := Config{AllowMidStream: false}
			if cfg != nil {
				c = cfg(seg.flow)
			}
			f = &flowState{ch: NewChannel(c)}
			flows[seg.flow] = f
		}
		if f.dead {
			continue
		}
		if seg.gap {
			st.gapFlows[seg.flow] = true
			f.dead = true
			continue
		}
		dir := ServerToClient
		if seg.fromCli {
			dir = ClientToServer
		}
		f.buf[dir] = append(f.buf[dir], seg.payload...)
		for {
			n, _, err := Split(f.buf[dir], f.ch.MaxChunkSize(dir))
			if err != nil {
				st.errors = append(st.errors, fmt.Sprintf("flow %d %s split: %v", seg.flow, dir, err))
				f.dead = true
				break
			}
			if n == 0 {
				break
			}
			chunk := f.buf[dir][:n]
			st.chunks = append(st.chunks, append([]byte(nil), chunk...))
			msg, err := f.ch.Feed(dir, chunk)
			if err != nil {
				st.errors = append(st.errors, fmt.Sprintf("flow %d %s feed: %v", seg.flow, dir, err))
				f.dead = true
				break
			}
			if msg.Complete {
				st.types[fmt.Sprintf("%d/%s", seg.flow, msg.Type)]++
				if msg.Opaque {
					st.opaque[seg.flow]++
				}
				switch {
				case msg.Opaque && dir == ClientToServer:
					var op opTest
					if _, err := f.ch.Decode(msg, &op.Operation); err != nil {
						st.errors = append(st.errors, fmt.Sprintf("flow %d opaque: %v", seg.flow, err))
					}
					st.ops = append(st.ops, op.Clone())
				case msg.Opaque:
				case msg.Aborted || !msg.Type.Secure():
				case dir == ClientToServer:
					var op opTest
					info, err := f.ch.Decode(msg, &op.Operation)
					if err != nil {
						st.errors = append(st.errors, fmt.Sprintf("flow %d decode type %d: %v", seg.flow, info.TypeID, err))
					}
					st.requests[fmt.Sprintf("%d/%d", seg.flow, info.TypeID)]++
					st.ops = append(st.ops, op.Clone())
					st.bodies = append(st.bodies, append([]byte(nil), msg.Body...))
				default:
					tid, err := ResponseTypeID(msg.Body)
					if err != nil {
						st.errors = append(st.errors, fmt.Sprintf("flow %d response: %v", seg.flow, err))
					}
					st.responses[fmt.Sprintf("%d/%d", seg.flow, tid)]++
					// What the proxy checks before it forwards a response.
					if err := ValidateResponse(msg.Body, Limits{}); err != nil {
						st.errors = append(st.errors, fmt.Sprintf("flow %d validate response type %d: %v", seg.flow, tid, err))
					}
					st.respBodies = append(st.respBodies, append([]byte(nil), msg.Body...))
				}
			}
			f.buf[dir] = f.buf[dir][n:]
		}
	}
	return st
}

func sortedKeys(m map[string]int) string {
	var ks []string
	for k, v := range m {
		ks = append(ks, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(ks)
	return strings.Join(ks, " ")
}
