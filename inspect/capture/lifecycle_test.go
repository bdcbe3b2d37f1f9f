package capture

import (
	"bytes"
	"errors"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

const ms = time.Millisecond

// TestRST: a RST at the stream position ends the flow at once; later
// packets of the connection are not delivered.
func TestRST(t *testing.T) {
	c := conn4(48000)
	s, a := isnCli+1, isnSrv+1
	segs := append(handshake(c),
		data(c, true, s, a, mbReq(1), 10*ms),
		data(c, false, a, s+12, mbResp(1), 11*ms),
		seg{c: c, fromClient: true, flags: "RA", seq: s + 12, ack: a + 13, at: 12 * ms},
		data(c, false, a+13, s+12, []byte("late"), 13*ms), // after the reset
		data(conn4(48001), true, 77, 0, []byte("other"), 14*ms),
	)
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
	if len(rec.flows) != 2 {
		t.Fatalf("%d flows", len(rec.flows))
	}
	want := []string{"1 d0:12", "1 d1:13", "1 end:rst", "2 g0:-1", "2 d0:5", "2 end:eof"}
	if !reflect.DeepEqual(rec.log, want) {
		t.Errorf("log %q, want %q", rec.log, want)
	}
	if st.PacketsAfterEnd != 1 || st.Ended[EndRST] != 1 {
		t.Errorf("after end %d rst %d", st.PacketsAfterEnd, st.Ended[EndRST])
	}
}

// TestInjectedRST: a RST claiming to come from a side that has sent no
// data yet is checked against that side's position as the other side
// acknowledges it.
func TestInjectedRST(t *testing.T) {
	c := conn{cli: cliIP4, srv: srvIP4, cliPort: 48150, srvPort: 502}
	segs := []seg{
		data(c, true, 7000, 9000, mbReq(1), 0),                                   // mid-stream: the server has sent nothing yet
		seg{c: c, fromClient: false, flags: "RA", seq: 12345, ack: 7012, at: ms}, // forged
		data(c, false, 9000, 7012, mbResp(1), 2*ms),
		seg{c: c, fromClient: false, flags: "R", seq: 9013, at: 3 * ms}, // genuine
	}
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
	f := onlyFlow(t, rec)
	wantEvents(t, f, "g0:-1", "d0:12", "g1:-1", "d1:13", "end:rst")
	if st.IgnoredRST != 1 {
		t.Errorf("ignored RST %d", st.IgnoredRST)
	}
}

// TestStaleRSTAndFIN: a RST off the stream position and a FIN behind it
// (forged, or stale) do not end or truncate the flow.
func TestStaleRSTAndFIN(t *testing.T) {
	c := conn4(48100)
	s, a := isnCli+1, isnSrv+1
	segs := append(handshake(c),
		data(c, true, s, a, mbReq(1), 10*ms),
		seg{c: c, fromClient: true, flags: "R", seq: s + 5000, at: 11 * ms},       // not at the position
		seg{c: c, fromClient: true, flags: "FA", seq: s + 4, ack: a, at: 12 * ms}, // FIN inside delivered data
		seg{c: c, fromClient: true, flags: "SF", seq: isnCli, at: 13 * ms},        // SYN retransmission with FIN
		data(c, true, s+12, a, mbReq(2), 14*ms),
		seg{c: c, fromClient: true, flags: "FA", seq: s + 24, ack: a, at: 15 * ms},
		seg{c: c, fromClient: false, flags: "FA", seq: a, ack: s + 25, at: 16 * ms},
	)
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
	f := onlyFlow(t, rec)
	wantEvents(t, f, "d0:12", "d0:12", "end:fin")
	if st.IgnoredRST != 1 || st.IgnoredFIN != 2 {
		t.Errorf("ignored rst %d fin %d, want 1, 2", st.IgnoredRST, st.IgnoredFIN)
	}
}

// TestPortReuse: a new SYN on the 4-tuple of a connection that was reset,
// or whose end was not captured, starts a new flow; a retransmitted SYN
// does not.
func TestPortReuse(t *testing.T) {
	c := conn4(48200)
	s, a := isnCli+1, isnSrv+1
	second := uint32(900000)
	segs := append(handshake(c),
		seg{c: c, fromClient: true, flags: "S", seq: isnCli, at: 3 * ms}, // retransmitted SYN
		data(c, true, s, a, mbReq(1), 10*ms),
		seg{c: c, fromClient: true, flags: "R", seq: s + 12, at: 11 * ms},
		// same ports again
		seg{c: c, fromClient: true, flags: "S", seq: second, at: 20 * ms},
		seg{c: c, fromClient: false, flags: "SA", seq: 7, ack: second + 1, at: 21 * ms},
		data(c, true, second+1, 8, mbReq(2), 22*ms),
		// and again, the end of the second connection not captured
		seg{c: c, fromClient: true, flags: "S", seq: 3000000, at: 30 * ms},
		data(c, true, 3000001, 0, mbReq(3), 31*ms),
	)
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
	if len(rec.flows) != 3 {
		t.Fatalf("%d flows", len(rec.flows))
	}
	for i, want := range [][]byte{mbReq(1), mbReq(2), mbReq(3)} {
		f := rec.flows[i]
		if f.flow.ID != uint64(i+1) || !bytes.Equal(f.data[0], want) || !f.flow.Handshake {
			t.Errorf("flow %d: %v %x", i, f.flow, f.data[0])
		}
	}
	if rec.flows[0].end != EndRST || rec.flows[1].end != EndEOF || rec.flows[2].end != EndEOF {
		t.Errorf("ends %v %v %v", rec.flows[0].end, rec.flows[1].end, rec.flows[2].end)
	}
	if st.Flows != 3 {
		t.Errorf("flows %d", st.Flows)
	}
}

// TestSnapLength: a segment cut by the snap length is delivered as far as
// captured, and the Gap for the rest comes with the next segment, without
// waiting for GapTimeout.
func TestSnapLength(t *testing.T) {
	c := conn4(48300)
	s, a := isnCli+1, isnSrv+1
	big := bytes.Repeat([]byte{0xAB}, 200)
	cut := data(c, true, s+12, a, big, 11*ms)
	cut.snap = 14 + 20 + 20 + 50 // Ethernet, IPv4, TCP, 50 bytes of payload
	segs := append(handshake(c),
		data(c, true, s, a, mbReq(1), 10*ms),
		cut,
		data(c, true, s+212, a, mbReq(2), 12*ms),
		data(c, false, a, s+224, mbResp(2), 13*ms),
	)
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
	f := onlyFlow(t, rec)
	wantEvents(t, f, "d0:12", "d0:50", "g0:150", "d0:12", "d1:13", "end:eof")
	if st.TruncatedPackets != 1 {
		t.Errorf("truncated packets %d", st.TruncatedPackets)
	}
}

// TestIdle: a flow without packets for IdleTimeout of capture time ends
// with EndIdle while the capture goes on; a flow the factory ignores is not
// offered again.
func TestIdle(t *testing.T) {
	quiet, busy, ignored := conn4(48400), conn4(48401), conn{cli: cliIP4, srv: srvIP4, cliPort: 48402, srvPort: 8080}
	segs := append(handshake(quiet), data(quiet, true, isnCli+1, isnSrv+1, mbReq(1), 5*ms))
	segs = append(segs, data(ignored, true, 1, 1, []byte("GET /"), 6*ms))
	for i := 1; i <= 12; i++ {
		at := time.Duration(i) * 10 * time.Second
		segs = append(segs,
			data(busy, true, 100+uint32(i-1)*12, 0, mbReq(i), at),
			data(ignored, true, 6+uint32(i-1), 1, []byte("x"), at))
	}
	rec := &recorder{t: t, ignore: func(f Flow) bool { return f.Server.Port() == 8080 }}
	r := NewReader(rec, Options{IdleTimeout: time.Minute})
	if err := r.ReadCapture(t.Context(), "idle", bytes.NewReader(pcapFile(t, linkEth, segs...)), -1); err != nil {
		t.Fatal(err)
	}
	st := r.Close()
	rec.checkEnded()
	if len(rec.flows) != 2 || rec.calls != 3 || st.FlowsIgnored != 1 {
		t.Fatalf("%d flows, %d factory calls, %d ignored", len(rec.flows), rec.calls, st.FlowsIgnored)
	}
	// The quiet flow (last packet at 5 ms) ends with the first tick after
	// 60 s, before the busy flow's request at 70 s. (Flow 2 is the ignored
	// one: every flow offered to the factory gets an ID.)
	var endAt int
	for i, e := range rec.log {
		if e == "1 end:idle" {
			endAt = i
		}
	}
	if endAt == 0 || rec.log[endAt-1] != "3 d0:12" || strings.Count(strings.Join(rec.log[:endAt], "|"), "3 d0") != 6 {
		t.Errorf("log %q", rec.log)
	}
	if rec.flows[1].end != EndEOF || st.Ended[EndIdle] != 1 {
		t.Errorf("busy flow ended %v; idle ends %d", rec.flows[1].end, st.Ended[EndIdle])
	}
}

// TestBufferCap: with a small per-direction cap, a hole is given up as soon
// as the cap is reached instead of buffering up to GapTimeout.
func TestBufferCap(t *testing.T) {
	c := conn4(48500)
	s, a := isnCli+1, isnSrv+1
	segs := handshake(c)
	// 1000 bytes lost, then 20 segments of 1000 bytes.
	var want []byte
	for i := 1; i <= 20; i++ {
		p := bytes.Repeat([]byte{byte(i)}, 1000)
		want = append(want, p...)
		segs = append(segs, data(c, true, s+uint32(i)*1000, a, p, time.Duration(i)*ms))
	}
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{MaxBufferedBytesPerDir: 4 * pageBytes})
	f := onlyFlow(t, rec)
	if !bytes.Equal(f.data[0], want) || len(f.gaps[0]) != 1 || f.gaps[0][0] != 1000 {
		t.Fatalf("%d bytes, gaps %v", len(f.data[0]), f.gaps[0])
	}
	// The gap came while reading: well before the last segment was read,
	// data after the hole had been delivered.
	if f.events[0] != "g0:1000" || len(f.chunks[0]) < 20 {
		t.Errorf("events %q", f.events)
	}
	if first := f.chunks[0][0].ts; !first.Equal(t0.Add(ms)) {
		t.Errorf("first chunk at %v", first)
	}
	if st.Gaps != 1 {
		t.Errorf("gaps %d", st.Gaps)
	}
}

// TestFlowLimit: past MaxFlows, packets of new connections are dropped and
// counted, with one warning.
func TestFlowLimit(t *testing.T) {
	var segs []seg
	for i := 0; i < 3; i++ {
		segs = append(segs, data(conn4(48600+i), true, 1, 1, mbReq(i), time.Duration(i)*ms))
	}
	segs = append(segs, data(conn4(48602), true, 13, 1, mbReq(3), 5*ms))
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{MaxFlows: 2})
	if len(rec.flows) != 2 || st.FlowLimitDrops != 2 || len(st.Warnings) != 1 || !errors.Is(st.Warnings[0].Err, errFlowLimit) {
		t.Errorf("%d flows, %d drops, warnings %v", len(rec.flows), st.FlowLimitDrops, st.Warnings)
	}
}

// TestNotTCP: other traffic is counted, never fatal.
func TestNotTCP(t *testing.T) {
	ser := func(ls ...gopacket.SerializableLayer) []byte {
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
			t.Fatal(err)
		}
		return append([]byte(nil), buf.Bytes()...)
	}
	eth := func(et layers.EthernetType) *layers.Ethernet {
		return &layers.Ethernet{SrcMAC: cliMAC, DstMAC: srvMAC, EthernetType: et}
	}
	ip := func(proto layers.IPProtocol) *layers.IPv4 {
		return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: cliIP4, DstIP: srvIP4}
	}
	udpIP := ip(layers.IPProtocolUDP)
	udp := &layers.UDP{SrcPort: 5000, DstPort: 53}
	udp.SetNetworkLayerForChecksum(udpIP)
	frag := ip(layers.IPProtocolTCP)
	frag.Flags = layers.IPv4MoreFragments
	frag6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6Fragment, SrcIP: cliIP6, DstIP: srvIP6}
	badTCP := ip(layers.IPProtocolTCP)
	segs := []seg{
		{raw: ser(eth(layers.EthernetTypeARP), &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: 1, SourceHwAddress: cliMAC, SourceProtAddress: cliIP4,
			DstHwAddress: net.HardwareAddr{0, 0, 0, 0, 0, 0}, DstProtAddress: srvIP4})},
		{raw: ser(eth(layers.EthernetTypeIPv4), udpIP, udp, gopacket.Payload("dns?"))},
		{raw: ser(eth(layers.EthernetTypeIPv4), frag, gopacket.Payload(bytes.Repeat([]byte{1}, 24)))},
		{raw: ser(eth(layers.EthernetTypeIPv6), frag6, gopacket.Payload([]byte{6, 0, 0, 1, 0, 0, 0, 1, 1, 2, 3, 4}))},
		{raw: ser(eth(layers.EthernetTypeIPv4), badTCP, gopacket.Payload([]byte{0, 1, 2}))}, // 3-byte "TCP header"
		{raw: []byte{1, 2, 3}},                      // runt frame
		data(conn4(48700), true, 1, 1, mbReq(1), 0), // and one real flow
	}
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
	if len(rec.flows) != 1 || st.NonTCP != 2 || st.Fragments != 2 || st.Undecodable != 2 || st.TCPPackets != 1 {
		t.Errorf("%d flows; stats %+v", len(rec.flows), st)
	}

	// A link type we do not decode.
	b := pcapFile(t, linkEth, segs[6])
	b[20] = 147 // LINKTYPE_USER0
	rec, st = run(t, b, Options{})
	if len(rec.flows) != 0 || st.UnknownLinkType != 1 {
		t.Errorf("unknown link type: %d flows, stats %+v", len(rec.flows), st)
	}
}
