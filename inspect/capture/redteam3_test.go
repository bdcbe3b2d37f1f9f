package capture

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestRedteamSequenceWrap: TCP sequence numbers that wrap past 2^32 in
// the middle of a stream, in order and out of order, with and without the
// handshake captured: every byte once, in order, no gap.
func TestRedteamSequenceWrap(t *testing.T) {
	msg := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
	for _, tc := range []struct {
		name      string
		handshake bool
		order     []int // segment indexes in capture order
	}{
		{"in order", true, []int{0, 1, 2, 3}},
		{"after-wrap segment first", true, []int{0, 2, 1, 3}},
		{"reversed", true, []int{3, 2, 1, 0}},
		{"mid-stream in order", false, []int{0, 1, 2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := conn4(41000)
			isn := uint32(0xffffffff - 20) // the client's data wraps after 20 bytes
			srvISN := uint32(0xfffffff0)
			var segs []seg
			if tc.handshake {
				segs = append(segs,
					seg{c: c, fromClient: true, flags: "S", seq: isn},
					seg{c: c, fromClient: false, flags: "SA", seq: srvISN, ack: isn + 1, at: time.Millisecond},
					seg{c: c, fromClient: true, flags: "A", seq: isn + 1, ack: srvISN + 1, at: 2 * time.Millisecond},
				)
			}
			cuts := []int{0, 15, 25, 40, len(msg)}
			var parts []seg
			for i := 0; i+1 < len(cuts); i++ {
				parts = append(parts, data(c, true, isn+1+uint32(cuts[i]), srvISN+1, msg[cuts[i]:cuts[i+1]], 0))
			}
			for i, k := range tc.order {
				p := parts[k]
				p.at = time.Duration(10+i) * time.Millisecond
				segs = append(segs, p)
			}
			// The server answers across its own wrap.
			resp := bytes.Repeat([]byte("R"), 40)
			segs = append(segs, data(c, false, srvISN+1, isn+1+uint32(len(msg)), resp, 20*time.Millisecond))
			rec, st := run(t, pcapFile(t, linkEth, segs...), Options{})
			f := onlyFlow(t, rec)
			got := f.data[0]
			if !tc.handshake {
				// Picked up mid-stream: starts at the first data segment.
				if !bytes.Equal(got, msg) {
					t.Fatalf("c2s %q, want %q (gaps %v)", got, msg, f.gaps[0])
				}
			} else if !bytes.Equal(got, msg) || len(f.gaps[0]) != 0 {
				t.Fatalf("c2s %q gaps %v, want %q without gaps (stats %+v)", got, f.gaps[0], msg, st)
			}
			if !bytes.Equal(f.data[1], resp) {
				t.Fatalf("s2c %q", f.data[1])
			}
		})
	}
}

// TestRedteamOverlapDifferentContent documents which copy replay uses when
// two segments carry different bytes for the same stream positions (an
// evasion attempt: the device's TCP stack may keep the other copy).
func TestRedteamOverlapDifferentContent(t *testing.T) {
	c := conn4(41001)
	s, a := isnCli+1, isnSrv+1
	segs := append(handshake(c),
		// In order, then a retransmission with other bytes: the first
		// copy was already delivered (every TCP stack keeps it too).
		data(c, true, s, a, []byte("AAAA"), 10*time.Millisecond),
		data(c, true, s, a, []byte("XXXX"), 11*time.Millisecond),
		// Out of order: 8..12 is buffered before 4..8 fills the hole.
		data(c, true, s+8, a, []byte("CCCC"), 12*time.Millisecond),
		data(c, true, s+4, a, []byte("BBBB"), 13*time.Millisecond),
	)
	rec, _ := run(t, pcapFile(t, linkEth, segs...), Options{})
	f := onlyFlow(t, rec)
	if got := string(f.data[0]); got != "AAAABBBBCCCC" {
		t.Fatalf("c2s %q", got)
	}
	// Two buffered copies of the same range with different bytes.
	segs = append(handshake(c),
		data(c, true, s+4, a, []byte("1111"), 10*time.Millisecond),
		data(c, true, s+4, a, []byte("2222"), 11*time.Millisecond),
		data(c, true, s, a, []byte("AAAA"), 12*time.Millisecond),
	)
	rec, _ = run(t, pcapFile(t, linkEth, segs...), Options{})
	// The package doc: "of two buffered copies, the later one". Linux
	// (tcp_data_queue_ofo) drops a buffered segment's exact duplicate
	// range and keeps "1111", so here replay decodes bytes that a Linux
	// device, and the proxy's own socket, would not have seen.
	if got := string(onlyFlow(t, rec).data[0]); got != "AAAA2222" {
		t.Fatalf("c2s %q, want the documented later copy", got)
	}
}

// TestRedteamFlowLimitWarningNamesFile: the flow-limit warning names the
// file it happened in and counts that file's records (Warning's doc), not
// "" and the records of every file so far.
func TestRedteamFlowLimitWarningNamesFile(t *testing.T) {
	first := pcapFile(t, linkEth, data(conn4(48700), true, 1, 1, mbReq(0), 0))
	var segs []seg
	for i := 0; i < 4; i++ {
		segs = append(segs, data(conn4(48800+i), true, 1, 1, mbReq(i), time.Duration(i)*time.Millisecond))
	}
	second := pcapFile(t, linkEth, segs...)
	rec := &recorder{t: t}
	r := NewReader(rec, Options{MaxFlows: 2})
	if err := r.ReadCapture(context.Background(), "first.pcap", bytes.NewReader(first), int64(len(first))); err != nil {
		t.Fatal(err)
	}
	if err := r.ReadCapture(context.Background(), "second.pcap", bytes.NewReader(second), int64(len(second))); err != nil {
		t.Fatal(err)
	}
	st := r.Close()
	if len(st.Warnings) != 1 {
		t.Fatalf("warnings %v", st.Warnings)
	}
	// first.pcap's flow is still live: the second of second.pcap's
	// records is the first one over the limit.
	if w := st.Warnings[0]; w.File != "second.pcap" || w.Packet != 2 {
		t.Fatalf("warning %q: want file second.pcap, after 2 records", w.String())
	}
}
