package opcua

import (
	"bytes"
	"testing"
	"time"
)

// go test ./inspect/opcua -run '^$' -bench . -benchmem

func BenchmarkFramer(b *testing.B) {
	stream := clientStream(b)
	r := bytes.NewReader(stream)
	f := NewFramer(r, 0)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(stream)
		for {
			if _, _, err := f.Next(); err != nil {
				break
			}
		}
	}
}

func BenchmarkSplit(b *testing.B) {
	stream := clientStream(b)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		rest := stream
		for len(rest) > 0 {
			n, _, err := Split(rest, DefaultMaxChunkSize)
			if err != nil || n == 0 {
				b.Fatal(err)
			}
			rest = rest[n:]
		}
	}
}

func benchDecode(b *testing.B, body []byte) {
	d := NewDecoder(Limits{})
	var op opTest
	sec := ChannelSecurity{Mode: SecurityModeNone, Policy: PolicyNone}
	if _, err := d.DecodeRequest(body, sec, &op.Operation); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		d.DecodeRequest(body, sec, &op.Operation)
	}
}

// BenchmarkDecodeWrite decodes the node-opcua WriteRequest fully (node id,
// attribute, value).
func BenchmarkDecodeWrite(b *testing.B) { benchDecode(b, unhex(b, writeHex)[symBodyStart:]) }

// BenchmarkDecodeRead validates a ReadRequest of three nodes (node-opcua
// capture): type id, RequestHeader, then the schema walk without
// extracting anything — the path of every service that is not decoded
// into the Operation.
func BenchmarkDecodeRead(b *testing.B) {
	body := unhex(b, `
0100 7702 05 0000 10000000 346e3031ec7f164540e63b17c1ea8c5e b001f035657add01 07000000 00000000 00000000 983a0000 000000
0000000000000000 02000000 03000000
03 0100 08000000 536574706f696e74 0d000000 ffffffff 0000 ffffffff
03 0100 07000000 436f756e746572 0d000000 ffffffff 0000 ffffffff
0100 d208 0d000000 ffffffff 0000 ffffffff
`)
	benchDecode(b, body)
}

func BenchmarkServiceFault(b *testing.B) {
	buf := make([]byte, 0, 128)
	p := FaultParams{SecureChannelID: 2, TokenID: 1, SequenceNumber: 9, RequestID: 8, RequestHandle: 8, Timestamp: time.Now()}
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendServiceFault(buf[:0], p)
	}
}

// BenchmarkChannelFeedWrite is the whole per-request path of the proxy for a
// single-chunk Write on a None channel: Feed (header, ids, sequence) and
// Decode into the Operation.
func BenchmarkChannelFeedWrite(b *testing.B) {
	c := session(b, Config{})
	w := unhex(b, writeHex)
	var op opTest
	seq := uint32(2)
	b.ReportAllocs()
	for b.Loop() {
		SetSequenceNumber(w, seq)
		seq++
		m, err := c.Feed(ClientToServer, w)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Decode(m, &op.Operation); err != nil {
			b.Fatal(err)
		}
	}
}
