package capture

import (
	"bytes"
	"net/netip"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/reassembly"
)

// tupleKey names a connection independently of packet direction: endpoint
// a is the lesser of the two (address, then port). IPv4 addresses are kept
// IPv4-mapped.
type tupleKey struct {
	a, b   [16]byte
	ap, bp uint16
}

// endpointGenBase offsets the EndpointType of the network flow handed to
// the gopacket assembler. Each connection we track gets its own endpoint
// type, so that a new connection reusing the 4-tuple of one still held by
// the assembler (after a RST, or a close we did not see) gets a fresh
// assembler connection instead of being fed into the old one's sequence
// space. The endpoint types are never registered: gopacket only compares
// them.
const endpointGenBase gopacket.EndpointType = 1 << 40

// pendSeg remembers when an out-of-order segment was captured, so that
// its bytes carry their own timestamp when they are finally delivered.
type pendSeg struct {
	seq, end uint32
	ts       time.Time
}

// halfState is our side of one direction of a connection.
type halfState struct {
	pos      uint32 // sequence number of the next byte to deliver
	posValid bool   // the direction has started (SYN, or first segment)
	mid      bool   // started without its SYN: GapUnknown before first Data
	started  bool   // something was delivered (or a gap reported)
	fin      bool   // a FIN was accepted
	// peerAck is the latest acknowledgment of this direction by the other
	// side: the receiver's RCV.NXT, against which a RST is checked.
	peerAck      uint32
	peerAckValid bool
	lastTS       time.Time
	// holeArmed: the last in-order segment was cut by the snap length, so
	// the bytes after it will never arrive; give up the hole at once when
	// the next segment is buffered.
	holeArmed bool
	pend      []pendSeg
}

// flowState is one tracked connection. It is the gopacket
// reassembly.Stream of its assembler connection.
type flowState struct {
	r   *Reader
	key tupleKey
	ep  gopacket.EndpointType

	flow      Flow
	stream    Stream
	fed       bool // packets go to the assembler (stream != nil)
	ended     bool // End was called (or the flow was ignored)
	clientIsA bool
	gpStarted bool // the assembler has seen this connection
	gpFirst   Dir  // our Dir of the assembler's TCPDirClientToServer

	synSeen bool   // client SYN (without ACK) seen
	isn     uint32 // its sequence number
	rst     bool   // a valid RST was seen
	finA    bool   // FIN seen from a (ignored flows)
	finB    bool   // FIN seen from b (ignored flows)

	lastSeen   time.Time
	prev, next *flowState // in Reader.ignored or Reader.fedList
	half       [2]halfState
}

// flowList is an intrusive doubly linked list, most recently used first.
type flowList struct{ head, tail *flowState }

func (l *flowList) pushFront(f *flowState) {
	f.prev, f.next = nil, l.head
	if l.head != nil {
		l.head.prev = f
	} else {
		l.tail = f
	}
	l.head = f
}

func (l *flowList) remove(f *flowState) {
	if f.prev != nil {
		f.prev.next = f.next
	} else {
		l.head = f.next
	}
	if f.next != nil {
		f.next.prev = f.prev
	} else {
		l.tail = f.prev
	}
	f.prev, f.next = nil, nil
}

func (l *flowList) touch(f *flowState) {
	if l.head != f {
		l.remove(f)
		l.pushFront(f)
	}
}

// seqDiff returns b - a in TCP sequence space: > 0 when b comes after a.
func seqDiff(a, b uint32) int32 { return int32(b - a) }

// asmContext is the reassembly.AssemblerContext of the packet being fed.
// The assembler keeps it in buffered pages; we never read it back there
// (timestamps of buffered data come from halfState.pend).
type asmContext struct{ ci gopacket.CaptureInfo }

func (c *asmContext) GetCaptureInfo() gopacket.CaptureInfo { return c.ci }

// gpFactory hands the assembler the flowState being fed: New is only called
// for the first packet fed of a flowState, since each has its own key.
type gpFactory struct{ r *Reader }

func (g gpFactory) New(_, _ gopacket.Flow, _ *layers.TCP, _ reassembly.AssemblerContext) reassembly.Stream {
	return g.r.cur
}

// handleTCP runs one decoded TCP segment through flow tracking and
// reassembly.
func (r *Reader) handleTCP(tcp *layers.TCP, d *record) {
	ts := d.ts
	sp, dp := uint16(tcp.SrcPort), uint16(tcp.DstPort)
	var k tupleKey
	fromA := true
	if c := bytes.Compare(d.src[:], d.dst[:]); c < 0 || (c == 0 && sp <= dp) {
		k = tupleKey{a: d.src, b: d.dst, ap: sp, bp: dp}
	} else {
		k = tupleKey{a: d.dst, b: d.src, ap: dp, bp: sp}
		fromA = false
	}
	payload := len(tcp.Payload)
	freshSYN := tcp.SYN && !tcp.ACK
	if d.missing > 0 {
		r.stats.TruncatedPackets++
	}

	f := r.flows[k]
	if f != nil && freshSYN && !(f.synSeen && f.isn == tcp.Seq && !(f.fed && f.ended)) {
		// A new connection on a 4-tuple we still hold: the old one ended
		// unseen, or the tuple is reused after a RST. (A retransmitted SYN
		// has the same sequence number and stays with its flow.)
		r.detach(f)
		f = nil
	}
	if f == nil {
		if !tcp.SYN && payload == 0 {
			// A bare ACK, FIN or RST cannot start a flow: nothing to
			// deliver, no roles to learn (e.g. the last ACK of a closed
			// connection).
			return
		}
		if r.live >= r.maxFlows {
			r.stats.FlowLimitDrops++
			if !r.warnedFlows {
				r.warnedFlows = true
				r.warn(errFlowLimit)
			}
			return
		}
		r.nextGen++
		f = &flowState{r: r, key: k, ep: endpointGenBase + gopacket.EndpointType(r.nextGen)}
		if freshSYN {
			f.synSeen, f.isn = true, tcp.Seq
		}
		r.flows[k] = f
		r.live++
		r.materialize(f, tcp, d, fromA)
	}
	f.lastSeen = ts
	if !f.fed {
		r.ignoredControl(f, tcp, fromA)
		return
	}
	if f.ended {
		r.stats.PacketsAfterEnd++
		return
	}

	dir := ClientToServer
	if fromA != f.clientIsA {
		dir = ServerToClient
	}
	h := &f.half[dir]
	h.lastTS = ts

	if tcp.SYN && (tcp.FIN || tcp.RST) {
		// Never valid together (a scanner's or fuzzer's packet); stacks
		// that accept the SYN ignore the rest (Linux drops SYN+FIN in
		// LISTEN). Keep the SYN and its data, drop the closing flag.
		if tcp.FIN {
			r.stats.IgnoredFIN++
		} else {
			r.stats.IgnoredRST++
		}
		tcp.FIN, tcp.RST = false, false
	}

	// RFC 5961 §3.2: a RST ends the connection only at the receiver's
	// RCV.NXT exactly, as its ACKs show, or at our stream position (after
	// a FIN, one past it). Anything else is ignored, so a forged or stale
	// RST cannot blind the replay to what follows. With neither known (a
	// reply to a SYN) it is accepted.
	validRST := false
	if tcp.RST {
		atAck := h.peerAckValid && tcp.Seq == h.peerAck
		atPos := h.posValid && (tcp.Seq == h.pos || (h.fin && tcp.Seq == h.pos+1))
		if !atAck && !atPos && (h.peerAckValid || h.posValid) {
			r.stats.IgnoredRST++
			return
		}
		validRST = true
		f.rst = true
	}
	if tcp.ACK {
		rev := &f.half[dir^1]
		rev.peerAck, rev.peerAckValid = tcp.Ack, true
	}
	if tcp.FIN {
		// A FIN before data already delivered would close the direction
		// early in the assembler and drop what follows: ignore the flag.
		if h.posValid && seqDiff(h.pos, tcp.Seq+uint32(payload)) < 0 {
			r.stats.IgnoredFIN++
			tcp.FIN = false
		} else {
			h.fin = true
		}
	}

	if !f.gpStarted {
		// The assembler's client->server is the direction of the first
		// packet it sees of this connection.
		f.gpStarted, f.gpFirst = true, dir
	}
	r.cur, r.curDir, r.curMissing = f, dir, d.missing
	r.actx.ci.Timestamp = ts
	armed := h.holeArmed && payload > 0
	if armed {
		// Give up the hole left by a truncated segment as soon as data
		// after it is buffered (see halfState.holeArmed).
		h.holeArmed = false
		r.asm.MaxBufferedPagesPerConnection = 1
	}
	r.asm.AssembleWithContext(gopacket.NewFlow(f.ep, d.src[:], d.dst[:]), tcp, &r.actx)
	if armed {
		r.asm.MaxBufferedPagesPerConnection = r.pagesPerDir
	}
	r.cur = nil
	if validRST && !f.ended {
		r.end(f, EndRST)
	}
}

// ignoredControl tracks the end of a flow the factory ignored: a RST or
// FINs both ways forget it at once, anything else keeps it fresh so that it
// is not offered to the factory again as a new flow.
func (r *Reader) ignoredControl(f *flowState, tcp *layers.TCP, fromA bool) {
	if tcp.FIN {
		if fromA {
			f.finA = true
		} else {
			f.finB = true
		}
	}
	if tcp.RST || (f.finA && f.finB) {
		r.detach(f)
		return
	}
	r.ignored.touch(f)
}

// materialize decides the roles, numbers the flow and asks the factory.
func (r *Reader) materialize(f *flowState, tcp *layers.TCP, d *record, fromA bool) {
	src := netip.AddrPortFrom(addrOf(d.src, d.v4), uint16(tcp.SrcPort))
	dst := netip.AddrPortFrom(addrOf(d.dst, d.v4), uint16(tcp.DstPort))
	client, server := src, dst
	roles := RoleFromSYN
	switch {
	case tcp.SYN && !tcp.ACK:
	case tcp.SYN && tcp.ACK:
		client, server = dst, src
	default:
		roles = RoleFromPorts
		if r.opt.IsServer != nil {
			if s, t := r.opt.IsServer(src), r.opt.IsServer(dst); s != t {
				roles = RoleFromIsServer
				if s {
					client, server = dst, src
				}
				break
			}
		}
		if src.Port() < dst.Port() {
			client, server = dst, src
		}
	}
	f.clientIsA = (client == src) == fromA
	r.nextID++
	f.flow = Flow{
		ID:        r.nextID,
		Client:    client,
		Server:    server,
		FirstSeen: d.ts,
		Roles:     roles,
		Handshake: tcp.SYN && !tcp.ACK,
	}
	r.stats.Flows++
	if !f.flow.Handshake {
		r.stats.FlowsMidStream++
	}
	s := r.factory.NewStream(f.flow)
	if s == nil {
		r.stats.FlowsIgnored++
		f.ended = true
		r.ignored.pushFront(f)
		return
	}
	f.stream = s
	f.fed = true
	r.fedList.pushFront(f)
}

func addrOf(a [16]byte, v4 bool) netip.Addr {
	if v4 {
		return netip.AddrFrom4([4]byte(a[12:16]))
	}
	return netip.AddrFrom16(a)
}

// detach forgets f as the current connection of its 4-tuple. An ignored
// flow is gone; a fed one stays with the assembler until it completes
// there (idle or EOF), receiving no more packets.
func (r *Reader) detach(f *flowState) {
	if r.flows[f.key] == f {
		delete(r.flows, f.key)
	}
	if !f.fed {
		r.ignored.remove(f)
		r.live--
	}
}

// end calls the consumer's End once.
func (r *Reader) end(f *flowState, reason EndReason) {
	if f.ended {
		return
	}
	f.ended = true
	r.stats.Ended[reason]++
	f.half[0].pend, f.half[1].pend = nil, nil
	f.stream.End(reason)
}

// sweepIgnored forgets ignored flows idle since before t.
func (r *Reader) sweepIgnored(t time.Time) {
	for f := r.ignored.tail; f != nil && f.lastSeen.Before(t); f = r.ignored.tail {
		r.detach(f)
	}
}

// Accept is called by the assembler for every packet fed to it, before
// reassembly. It starts a direction whose SYN was not captured at its
// first segment carrying data, FIN or RST (the assembler's "missing SYN"
// support is this start flag, as in gopacket's reassemblydump), keeps our
// copy of the stream position, and notes when out-of-order segments were
// captured.
func (f *flowState) Accept(tcp *layers.TCP, ci gopacket.CaptureInfo, _ reassembly.TCPFlowDirection, nextSeq reassembly.Sequence, start *bool, _ reassembly.AssemblerContext) bool {
	r := f.r
	h := &f.half[r.curDir]
	payload := len(tcp.Payload)
	if nextSeq < 0 { // direction not started
		if tcp.SYN {
			h.pos, h.posValid = tcp.Seq+1, true
			return true
		}
		if payload == 0 && !tcp.FIN && !tcp.RST {
			return false // a bare ACK cannot start a direction
		}
		*start = true
		h.pos, h.posValid, h.mid = tcp.Seq, true, true
		h.holeArmed = r.curMissing > 0
		return true
	}
	if payload == 0 {
		return true
	}
	if d := seqDiff(uint32(nextSeq), tcp.Seq); d > 0 {
		// Will be buffered: remember its capture time.
		r.stats.OutOfOrder++
		h.addPending(tcp.Seq, tcp.Seq+uint32(payload), ci.Timestamp, r.maxPend)
	} else {
		// The assembler drops the bytes before nextSeq. (Its own overlap
		// statistics add up sequence distances, not bytes.)
		r.stats.RetransmittedBytes += uint64(min(int64(-d), int64(payload)))
		if r.curMissing > 0 {
			h.holeArmed = true
		}
	}
	return true
}

// addPending inserts a record, keeping pend sorted by seq (records are few:
// at most one per buffered segment).
func (h *halfState) addPending(seq, end uint32, ts time.Time, limit int) {
	if len(h.pend) >= limit {
		return // timestamps of the excess fall back to delivery time
	}
	i := len(h.pend)
	for i > 0 && seqDiff(h.pend[i-1].seq, seq) < 0 {
		i--
	}
	h.pend = append(h.pend, pendSeg{})
	copy(h.pend[i+1:], h.pend[i:])
	h.pend[i] = pendSeg{seq: seq, end: end, ts: ts}
}

// ReassembledSG receives the next in-order bytes of one direction.
func (f *flowState) ReassembledSG(sg reassembly.ScatterGather, _ reassembly.AssemblerContext) {
	r := f.r
	gpdir, _, _, skip := sg.Info()
	n, _ := sg.Lengths()
	dir := f.gpFirst
	if gpdir == reassembly.TCPDirServerToClient {
		dir = dir.Reverse()
	}
	h := &f.half[dir]
	if f.ended {
		h.pos += uint32(max(skip, 0) + n)
		return
	}
	if skip > 0 {
		h.pos += uint32(skip)
		h.started = true
		r.stats.Gaps++
		r.stats.GapBytes += uint64(skip)
		f.stream.Gap(dir, skip)
	}
	if n == 0 {
		return
	}
	if !h.started {
		h.started = true
		if h.mid {
			f.stream.Gap(dir, GapUnknown)
		}
	}
	b := sg.Fetch(n)
	r.stats.DataBytes[dir] += uint64(n)
	// Bytes of the packet being fed carry its timestamp; buffered bytes
	// carry theirs (pend); anything else the direction's last packet time.
	now := h.lastTS
	if r.cur == f {
		now = r.actx.ci.Timestamp
	}
	pos := h.pos
	for len(b) > 0 {
		for len(h.pend) > 0 && seqDiff(pos, h.pend[0].end) <= 0 {
			h.pend = h.pend[1:]
		}
		run, ts := len(b), now
		if len(h.pend) > 0 {
			p := h.pend[0]
			if d := int(seqDiff(pos, p.seq)); d <= 0 {
				run, ts = min(run, int(seqDiff(pos, p.end))), p.ts
			} else {
				run = min(run, d)
			}
		}
		f.stream.Data(dir, b[:run], ts)
		b = b[run:]
		pos += uint32(run)
	}
	if len(h.pend) == 0 {
		h.pend = h.pend[:0:0] // let a burst's backing array go
	}
	h.pos = pos
}

// ReassemblyComplete is called by the assembler when both directions are
// closed (FIN/RST) or flushed (idle, EOF). The connection is then removed
// from the assembler.
func (f *flowState) ReassemblyComplete(_ reassembly.AssemblerContext) bool {
	r := f.r
	reason := r.closing
	switch {
	case f.rst:
		reason = EndRST
	case f.half[0].fin && f.half[1].fin:
		reason = EndFIN
	case reason == 0:
		reason = EndFIN
	}
	r.end(f, reason)
	if r.flows[f.key] == f {
		delete(r.flows, f.key)
	}
	r.fedList.remove(f)
	r.live--
	return true
}
