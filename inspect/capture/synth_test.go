package capture

import (
	"bytes"
	"math/rand"
	"net/netip"
	"reflect"
	"strconv"
	"testing"
	"time"
)

// data builds a data segment of connection c.
func data(c conn, fromClient bool, seq, ack uint32, p []byte, at time.Duration) seg {
	return seg{c: c, fromClient: fromClient, flags: "PA", seq: seq, ack: ack, payload: p, at: at}
}

func handshake(c conn) []seg {
	return []seg{
		{c: c, fromClient: true, flags: "S", seq: isnCli, at: 0},
		{c: c, fromClient: false, flags: "SA", seq: isnSrv, ack: isnCli + 1, at: time.Millisecond},
		{c: c, fromClient: true, flags: "A", seq: isnCli + 1, ack: isnSrv + 1, at: 2 * time.Millisecond},
	}
}

func onlyFlow(t *testing.T, rec *recorder) *recFlow {
	t.Helper()
	if len(rec.flows) != 1 {
		t.Fatalf("got %d flows, want 1", len(rec.flows))
	}
	return rec.flows[0]
}

func wantEvents(t *testing.T, f *recFlow, want ...string) {
	t.Helper()
	if !reflect.DeepEqual(f.events, want) {
		t.Errorf("events:\n got %q\nwant %q", f.events, want)
	}
}

func TestInOrderExchange(t *testing.T) {
	c := conn4(40000)
	reqs := [][]byte{mbReq(1), mbReq(2), mbReq(3)}
	resps := [][]byte{mbResp(1), mbResp(2), mbResp(3)}
	segs := exchange(c, reqs, resps)
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
	f := onlyFlow(t, rec)

	wantFlow := Flow{
		ID:        1,
		Client:    netip.MustParseAddrPort("10.0.0.1:40000"),
		Server:    netip.MustParseAddrPort("10.0.0.2:502"),
		FirstSeen: t0.Add(segs[0].at),
		Roles:     RoleFromSYN,
		Handshake: true,
	}
	if f.flow != wantFlow {
		t.Errorf("flow = %+v, want %+v", f.flow, wantFlow)
	}
	if !bytes.Equal(f.data[ClientToServer], cat(reqs...)) || !bytes.Equal(f.data[ServerToClient], cat(resps...)) {
		t.Errorf("data c2s %x s2c %x", f.data[0], f.data[1])
	}
	// One Data per segment, in capture order, each with its segment's time.
	wantEvents(t, f, "d0:12", "d1:13", "d0:12", "d1:13", "d0:12", "d1:13", "end:fin")
	for i, ch := range f.chunks[ClientToServer] {
		if want := t0.Add(segs[3+2*i].at); !ch.ts.Equal(want) {
			t.Errorf("request %d at %v, want %v", i, ch.ts, want)
		}
	}
	if st.Flows != 1 || st.FlowsMidStream != 0 || st.Ended[EndFIN] != 1 || st.DataBytes != [2]uint64{36, 39} {
		t.Errorf("stats %+v", st)
	}
	if st.Packets != uint64(len(segs)) || st.TCPPackets != st.Packets {
		t.Errorf("packets %d tcp %d, want %d", st.Packets, st.TCPPackets, len(segs))
	}
}

// TestOutOfOrder sends a request's three segments last-first: the bytes
// come out in order, each chunk stamped with the capture time of the
// segment it came from.
func TestOutOfOrder(t *testing.T) {
	c := conn4(40001)
	msg := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	s := isnCli + 1
	segs := append(handshake(c),
		data(c, true, s+24, isnSrv+1, msg[24:], 10*time.Millisecond),
		data(c, true, s+12, isnSrv+1, msg[12:24], 11*time.Millisecond),
		data(c, true, s, isnSrv+1, msg[:12], 12*time.Millisecond),
		data(c, false, isnSrv+1, s+36, []byte("ok"), 13*time.Millisecond),
	)
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
	f := onlyFlow(t, rec)
	if !bytes.Equal(f.data[0], msg) {
		t.Fatalf("c2s = %q, want %q", f.data[0], msg)
	}
	wantEvents(t, f, "d0:12", "d0:12", "d0:12", "d1:2", "end:eof")
	want := []chunk{{12, t0.Add(12 * time.Millisecond)}, {12, t0.Add(11 * time.Millisecond)}, {12, t0.Add(10 * time.Millisecond)}}
	if !reflect.DeepEqual(f.chunks[0], want) {
		t.Errorf("chunks %v, want %v", f.chunks[0], want)
	}
	if st.OutOfOrder != 2 || st.Gaps != 0 {
		t.Errorf("out of order %d gaps %d, want 2, 0", st.OutOfOrder, st.Gaps)
	}
}

// TestRetransmissionOverlap: duplicates and segments overlapping data
// already delivered or buffered deliver each byte once.
func TestRetransmissionOverlap(t *testing.T) {
	c := conn4(40002)
	msg := []byte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
	s := isnCli + 1
	a := isnSrv + 1
	segs := append(handshake(c),
		data(c, true, s, a, msg[0:10], 10*time.Millisecond),
		data(c, true, s, a, msg[0:10], 11*time.Millisecond),   // exact duplicate
		data(c, true, s+5, a, msg[5:20], 12*time.Millisecond), // half old, half new
		data(c, true, s+30, a, msg[30:40], 13*time.Millisecond),
		data(c, true, s+25, a, msg[25:35], 14*time.Millisecond), // overlaps the buffered one
		data(c, true, s+18, a, msg[18:28], 15*time.Millisecond), // fills the hole, overlaps both sides
		data(c, true, s+38, a, msg[38:], 16*time.Millisecond),
		data(c, true, s+2, a, msg[2:8], 17*time.Millisecond), // old again
	)
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
	f := onlyFlow(t, rec)
	if !bytes.Equal(f.data[0], msg) {
		t.Fatalf("c2s = %q\nwant  %q", f.data[0], msg)
	}
	if len(f.gaps[0]) != 0 {
		t.Errorf("gaps %v", f.gaps[0])
	}
	// 10 (duplicate) + 5 (old half) + 2 (18..20, filling the hole) + 2
	// (38..40, behind the stream by then) + 6 (old again); the overlap
	// inside the buffer is not counted.
	if st.RetransmittedBytes != 25 {
		t.Errorf("retransmitted bytes %d, want 25", st.RetransmittedBytes)
	}
}

// TestGapAtEOF: a segment never captured. At the end of the capture the
// data behind it is delivered after a Gap of exactly its size.
func TestGapAtEOF(t *testing.T) {
	c := conn4(40003)
	s, a := isnCli+1, isnSrv+1
	segs := append(handshake(c),
		data(c, true, s, a, mbReq(1), 10*time.Millisecond),
		// mbReq(2) (12 bytes at s+12) lost
		data(c, true, s+24, a, mbReq(3), 12*time.Millisecond),
		data(c, true, s+36, a, mbReq(4), 13*time.Millisecond),
	)
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
	f := onlyFlow(t, rec)
	wantEvents(t, f, "d0:12", "g0:12", "d0:12", "d0:12", "end:eof")
	if !bytes.Equal(f.data[0], cat(mbReq(1), mbReq(3), mbReq(4))) {
		t.Errorf("c2s %x", f.data[0])
	}
	if f.chunks[0][2].ts != t0.Add(13*time.Millisecond) {
		t.Errorf("buffered chunk stamped %v", f.chunks[0][2].ts)
	}
	if st.Gaps != 1 || st.GapBytes != 12 || st.Ended[EndEOF] != 1 {
		t.Errorf("gaps %d bytes %d eof %d", st.Gaps, st.GapBytes, st.Ended[EndEOF])
	}
}

// TestGapTimeout: the hole is given up once GapTimeout of capture time
// has passed, while reading goes on, before later data of the flow.
func TestGapTimeout(t *testing.T) {
	c := conn4(40004)
	s, a := isnCli+1, isnSrv+1
	segs := append(handshake(c),
		data(c, true, s, a, mbReq(1), 10*time.Millisecond),
		data(c, true, s+24, a, mbReq(3), 20*time.Millisecond), // mbReq(2) lost
		// 1 s later: still waiting (GapTimeout 2 s, ticks every 1 s).
		data(c, false, a, s+12, mbResp(1), time.Second),
		// 4 s later the hole has been given up before this packet.
		data(c, false, a+13, s+12, mbResp(3), 4*time.Second),
	)
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{GapTimeout: 2 * time.Second})
	f := onlyFlow(t, rec)
	wantEvents(t, f, "d0:12", "d1:13", "g0:12", "d0:12", "d1:13", "end:eof")
	if st.Gaps != 1 || st.GapBytes != 12 {
		t.Errorf("gaps %d bytes %d", st.Gaps, st.GapBytes)
	}
}

// TestMidStream: no handshake captured. The flow starts at its first data,
// each direction announced by GapUnknown; the roles come from IsServer,
// else from the ports.
func TestMidStream(t *testing.T) {
	c := conn{cli: cliIP4, srv: srvIP4, cliPort: 1000, srvPort: 15020} // server on the higher port
	segs := []seg{
		{c: c, fromClient: true, flags: "A", seq: 7000, ack: 9000, at: 0}, // bare ACK: no flow yet
		data(c, false, 9000, 7000, mbResp(1), time.Millisecond),           // server speaks first
		data(c, true, 7000, 9013, mbReq(2), 2*time.Millisecond),
		data(c, false, 9013, 7012, mbResp(2), 3*time.Millisecond),
	}
	for _, tc := range []struct {
		name     string
		isServer func(netip.AddrPort) bool
		server   string
		roles    RoleSource
	}{
		{"ports", nil, "10.0.0.1:1000", RoleFromPorts},
		{"is_server", ServerPorts(502, 15020), "10.0.0.2:15020", RoleFromIsServer},
		{"is_server both", ServerPorts(1000, 15020), "10.0.0.1:1000", RoleFromPorts},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, st := run(t, pcapFile(t, linkEth, segs...), Options{IsServer: tc.isServer})
			f := onlyFlow(t, rec)
			if f.flow.Server.String() != tc.server || f.flow.Roles != tc.roles || f.flow.Handshake {
				t.Errorf("flow %v roles %v handshake %v", f.flow, f.flow.Roles, f.flow.Handshake)
			}
			if !f.flow.FirstSeen.Equal(t0.Add(time.Millisecond)) {
				t.Errorf("first seen %v", f.flow.FirstSeen)
			}
			srv := ServerToClient
			if tc.server == "10.0.0.1:1000" {
				srv = ClientToServer
			}
			if !bytes.Equal(f.data[srv], cat(mbResp(1), mbResp(2))) || !bytes.Equal(f.data[srv^1], mbReq(2)) {
				t.Errorf("data %x / %x", f.data[0], f.data[1])
			}
			wantEvents(t, f, "g"+string('0'+byte(srv))+":-1", "d"+string('0'+byte(srv))+":13",
				"g"+string('0'+byte(srv^1))+":-1", "d"+string('0'+byte(srv^1))+":12",
				"d"+string('0'+byte(srv))+":13", "end:eof")
			if st.FlowsMidStream != 1 || st.Gaps != 0 {
				t.Errorf("mid-stream %d gaps %d", st.FlowsMidStream, st.Gaps)
			}
		})
	}
}

// TestSYNACKOnly: the client's SYN is missing, the SYN-ACK names the server.
func TestSYNACKOnly(t *testing.T) {
	c := conn{cli: cliIP4, srv: srvIP4, cliPort: 80, srvPort: 40000} // ports would guess wrong
	segs := []seg{
		{c: c, fromClient: false, flags: "SA", seq: isnSrv, ack: isnCli + 1, at: 0},
		{c: c, fromClient: true, flags: "A", seq: isnCli + 1, ack: isnSrv + 1, at: time.Millisecond},
		data(c, true, isnCli+1, isnSrv+1, []byte("hello"), 2*time.Millisecond),
		data(c, false, isnSrv+1, isnCli+6, []byte("world"), 3*time.Millisecond),
	}
	rec, _ := run(t, pcapFile(t, linkEth, segs...), Options{})
	f := onlyFlow(t, rec)
	if f.flow.Server.String() != "10.0.0.2:40000" || f.flow.Roles != RoleFromSYN || f.flow.Handshake {
		t.Errorf("flow %v roles %v handshake %v", f.flow, f.flow.Roles, f.flow.Handshake)
	}
	// The server's stream starts at its SYN; the client's was not seen.
	wantEvents(t, f, "g0:-1", "d0:5", "d1:5", "end:eof")
}

// TestInterleavedFlows: two connections' packets interleaved one by one.
func TestInterleavedFlows(t *testing.T) {
	a := exchange(conn4(41000), [][]byte{mbReq(1), mbReq(2)}, [][]byte{mbResp(1), mbResp(2)})
	b := exchange(conn4(41001), [][]byte{mbReq(7), mbReq(8)}, [][]byte{mbResp(7), mbResp(8)})
	var segs []seg
	for i := range a {
		b[i].at += 500 * time.Microsecond
		segs = append(segs, a[i], b[i])
	}
	rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
	if len(rec.flows) != 2 || st.Flows != 2 {
		t.Fatalf("%d flows", len(rec.flows))
	}
	for i, want := range [][2][]byte{
		{cat(mbReq(1), mbReq(2)), cat(mbResp(1), mbResp(2))},
		{cat(mbReq(7), mbReq(8)), cat(mbResp(7), mbResp(8))},
	} {
		f := rec.flows[i]
		if f.flow.ID != uint64(i+1) || f.flow.Client.Port() != uint16(41000+i) {
			t.Errorf("flow %d: %v", i, f.flow)
		}
		if !bytes.Equal(f.data[0], want[0]) || !bytes.Equal(f.data[1], want[1]) || f.end != EndFIN {
			t.Errorf("flow %v: %x / %x end %v", f.flow, f.data[0], f.data[1], f.end)
		}
	}
}

// TestLinkTypes runs the same exchange over every supported framing, IPv4
// and IPv6.
func TestLinkTypes(t *testing.T) {
	links := map[string]link{
		"ethernet": linkEth, "vlan": linkEthVLAN, "qinq": linkEthQinQ, "sll": linkSLLv1,
		"sll2": linkSLLv2, "null": linkNullLE, "loop": linkLoopBE, "raw": linkRawIP,
	}
	for name, l := range links {
		for _, c := range []conn{conn4(42000), conn6(42000)} {
			v := "ipv4"
			if c.cli.To4() == nil {
				v = "ipv6"
			}
			t.Run(name+"/"+v, func(t *testing.T) {
				reqs, resps := [][]byte{mbReq(1), mbReq(2)}, [][]byte{mbResp(1), mbResp(2)}
				rec, st := run(t, pcapFile(t, l, exchange(c, reqs, resps)...), Options{})
				f := onlyFlow(t, rec)
				wantCli := netip.AddrPortFrom(netip.MustParseAddr(c.cli.String()), 42000)
				if f.flow.Client != wantCli || f.flow.Server.Port() != 502 {
					t.Errorf("flow %v", f.flow)
				}
				if !bytes.Equal(f.data[0], cat(reqs...)) || !bytes.Equal(f.data[1], cat(resps...)) || f.end != EndFIN {
					t.Errorf("data %x / %x end %v", f.data[0], f.data[1], f.end)
				}
				if st.Undecodable+st.NonTCP+st.UnknownLinkType != 0 {
					t.Errorf("stats %+v", st)
				}
			})
		}
	}
}

// TestPropertyShuffled: a random stream cut into random segments, sent
// with duplicates, overlapping re-cuts and local reordering, comes out
// exactly once and in order, both directions, for many seeds.
func TestPropertyShuffled(t *testing.T) {
	for seed := int64(1); seed <= seeds(); seed++ {
		rng := rand.New(rand.NewSource(seed))
		c := conn4(43000 + int(seed))
		var streams [2][]byte
		var segs []seg
		for d := 0; d < 2; d++ {
			streams[d] = make([]byte, 200+rng.Intn(6000))
			rng.Read(streams[d])
			isn := []uint32{isnCli, isnSrv}[d] + uint32(rng.Int63())
			base := isn + 1
			for off := 0; off < len(streams[d]); {
				n := 1 + rng.Intn(400)
				if off+n > len(streams[d]) {
					n = len(streams[d]) - off
				}
				s := data(c, d == 0, base+uint32(off), 0, streams[d][off:off+n], 0)
				segs = append(segs, s)
				if rng.Intn(5) == 0 { // retransmit
					segs = append(segs, s)
				}
				if rng.Intn(5) == 0 && off > 0 { // re-cut overlapping the previous bytes
					from := off - rng.Intn(min(off, 300)+1)
					to := min(len(streams[d]), off+n+rng.Intn(300))
					segs = append(segs, data(c, d == 0, base+uint32(from), 0, streams[d][from:to], 0))
				}
				off += n
			}
			if d == 0 {
				segs = append([]seg{{c: c, fromClient: true, flags: "S", seq: isn}}, segs...)
			} else {
				segs = append([]seg{segs[0], {c: c, fromClient: false, flags: "SA", seq: isn}}, segs[1:]...)
			}
		}
		// Shuffle locally: each packet moves at most 8 places, the
		// handshake stays first.
		body := segs[2:]
		for i := range body {
			j := i + rng.Intn(min(8, len(body)-i))
			body[i], body[j] = body[j], body[i]
		}
		for i := range segs {
			segs[i].at = time.Duration(i) * time.Millisecond
		}
		rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
		f := onlyFlow(t, rec)
		for d := 0; d < 2; d++ {
			if !bytes.Equal(f.data[d], streams[d]) {
				t.Fatalf("seed %d dir %d: %d bytes delivered, want %d (first difference at %d)",
					seed, d, len(f.data[d]), len(streams[d]), firstDiff(f.data[d], streams[d]))
			}
		}
		if st.Gaps != 0 {
			t.Fatalf("seed %d: %d gaps", seed, st.Gaps)
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestPropertyDrops: random segments are lost for good (no copy of their
// bytes is captured). Every captured byte comes out once, in order, and
// each hole before captured data is reported as a Gap of its exact size at
// its exact place.
func TestPropertyDrops(t *testing.T) {
	for seed := int64(1); seed <= seeds(); seed++ {
		rng := rand.New(rand.NewSource(seed))
		c := conn4(44000 + int(seed))
		stream := make([]byte, 500+rng.Intn(8000))
		rng.Read(stream)
		covered := make([]bool, len(stream))
		base := isnCli + 1
		segs := []seg{
			{c: c, fromClient: true, flags: "S", seq: isnCli},
			{c: c, fromClient: false, flags: "SA", seq: isnSrv, ack: base},
		}
		for off := 0; off < len(stream); {
			n := 1 + rng.Intn(300)
			if off+n > len(stream) {
				n = len(stream) - off
			}
			if rng.Intn(6) != 0 {
				s := data(c, true, base+uint32(off), isnSrv+1, stream[off:off+n], 0)
				segs = append(segs, s)
				if rng.Intn(4) == 0 {
					segs = append(segs, s)
				}
				for i := off; i < off+n; i++ {
					covered[i] = true
				}
			}
			off += n
		}
		body := segs[2:]
		for i := range body {
			j := i + rng.Intn(min(6, len(body)-i))
			body[i], body[j] = body[j], body[i]
		}
		for i := range segs {
			segs[i].at = time.Duration(i) * time.Millisecond
		}
		// Expected: the covered runs, and a gap before each run for the
		// uncovered bytes preceding it.
		var want []string
		var wantData []byte
		hole := 0
		for i := 0; i < len(stream); {
			if !covered[i] {
				hole++
				i++
				continue
			}
			if hole > 0 {
				want = append(want, "g0:"+itoa(hole))
				hole = 0
			}
			j := i
			for j < len(stream) && covered[j] {
				j++
			}
			want = append(want, "run:"+itoa(j-i))
			wantData = append(wantData, stream[i:j]...)
			i = j
		}
		rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
		f := onlyFlow(t, rec)
		// Merge consecutive Data events into runs to compare.
		var got []string
		run := 0
		for _, e := range f.events {
			if e[0] == 'd' {
				var n int
				for _, ch := range e[3:] {
					n = n*10 + int(ch-'0')
				}
				run += n
				continue
			}
			if run > 0 {
				got = append(got, "run:"+itoa(run))
				run = 0
			}
			if e[0] == 'g' {
				got = append(got, e)
			}
		}
		if !reflect.DeepEqual(got, want) || !bytes.Equal(f.data[0], wantData) {
			t.Fatalf("seed %d:\n got %v\nwant %v\n(data equal: %v)", seed, got, want, bytes.Equal(f.data[0], wantData))
		}
		var gapBytes uint64
		for _, g := range f.gaps[0] {
			gapBytes += uint64(g)
		}
		if st.GapBytes != gapBytes {
			t.Fatalf("seed %d: stats gap bytes %d, events %d", seed, st.GapBytes, gapBytes)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// seeds is the number of random cases per property test.
func seeds() int64 {
	if testing.Short() {
		return 50
	}
	return 300
}
