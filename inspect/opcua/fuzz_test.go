package opcua

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// The committed seeds in testdata/fuzz/FuzzXxx come from the captures (see
// TestWriteFuzzSeeds). Run locally with a memory limit, e.g.
//
//	GOMEMLIMIT=512MiB go test ./inspect/opcua -run '^$' -fuzz FuzzDecodeService -fuzztime 3m

// FuzzFramer: the stream Framer and the push-style Split cut any input into
// the same chunks, every chunk passes its own header validation, and the
// Framer never buffers more than the largest valid chunk.
func FuzzFramer(f *testing.F) {
	f.Add(unhex(f, helloHex))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := NewFramer(bytes.NewReader(data), 0)
		rest := data
		for {
			h, ch, err := fr.Next()
			k, h2, serr := Split(rest, DefaultMaxChunkSize)
			if err != nil {
				if err == io.EOF || err == io.ErrUnexpectedEOF {
					if serr != nil || k != 0 {
						t.Fatalf("framer %v, split %d %v", err, k, serr)
					}
					return
				}
				if serr == nil || CodeOf(serr) != CodeOf(err) {
					t.Fatalf("framer %v, split %v", err, serr)
				}
				return
			}
			if serr != nil || k != len(ch) || h != h2 || int(h.Size) != len(ch) || !bytes.Equal(ch, rest[:k]) {
				t.Fatalf("framer %d bytes, split %d %v", len(ch), k, serr)
			}
			if h.Validate(DefaultMaxChunkSize) != nil || cap(fr.buf) > DefaultMaxChunkSize+4096 {
				t.Fatalf("chunk %+v, buffer %d", h, cap(fr.buf))
			}
			rest = rest[k:]
		}
	})
}

// FuzzHello: HEL/ACK/ERR/RHE decoders never panic, and what decodes
// re-encodes to the same bytes (the only alternative encoding, a null URL,
// is skipped).
func FuzzHello(f *testing.F) {
	f.Add(unhex(f, helloHex))
	f.Add(unhex(f, ackHex))
	f.Add(unhex(f, errHex))
	f.Fuzz(func(t *testing.T, data []byte) {
		if h, err := DecodeHello(data); err == nil {
			b, err := h.Encode(nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, data) && !bytes.Contains(data[28:32], []byte{0xff, 0xff, 0xff, 0xff}) {
				t.Fatalf("hello re-encodes differently")
			}
			c := ClampHello(h, Limits{})
			if c.ReceiveBufferSize > DefaultMaxChunkSize || c.MaxMessageSize == 0 || c.MaxChunkCount == 0 {
				t.Fatalf("clamp %+v", c)
			}
		}
		if a, err := DecodeAcknowledge(data); err == nil {
			if b := a.Encode(nil); !bytes.Equal(b, data) {
				t.Fatalf("ack re-encodes differently")
			}
		}
		if e, err := DecodeError(data); err == nil {
			if len(e.Reason) > MaxURLLength {
				t.Fatal("reason too long")
			}
		}
		DecodeReverseHello(data)
	})
}

// FuzzReassembly feeds arbitrary chunk sequences into an open None channel
// (after the real node-opcua handshake): no panic, every error is typed,
// reassembled bodies respect the caps and are made of the fed chunks.
func FuzzReassembly(f *testing.F) {
	write := unhex(f, writeHex)[symBodyStart:]
	f.Add(append(chunk('C', 2, 8, write[:10], 0), chunk('F', 3, 8, write[10:], 0)...))
	f.Add(append(chunk('C', 2, 8, write[:10], 0), chunk('A', 3, 8, unhex(f, "00000680 00000000"), 0)...))
	lim := Limits{MaxMessageSize: 4096, MaxChunkCount: 4, MaxOpenRequests: 3}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := session(t, Config{Limits: lim})
		rest := data
		var fed int
		for len(rest) > 0 {
			dir := ClientToServer
			if rest[0]&0x80 != 0 && len(rest) > 1 && fed%3 == 2 {
				dir = ServerToClient
			}
			k, _, err := Split(rest, c.MaxChunkSize(dir))
			if err != nil || k == 0 {
				return
			}
			fed++
			m, err := c.Feed(dir, rest[:k])
			if err != nil {
				var e *Error
				if !errors.As(err, &e) {
					t.Fatalf("untyped error %v", err)
				}
				if _, err2 := c.Feed(dir, rest[:k]); err2 != err {
					t.Fatal("channel not poisoned")
				}
				return
			}
			if m.Complete && !m.Opaque && m.Type == MessageMsg && !m.Aborted {
				if len(m.Body) > int(lim.MaxMessageSize) || len(m.Chunks) > int(lim.MaxChunkCount) || len(m.Chunks) == 0 {
					t.Fatalf("body %d chunks %d", len(m.Body), len(m.Chunks))
				}
				if !bytes.Equal(m.Chunks[len(m.Chunks)-1], rest[:k]) {
					t.Fatal("last chunk is not the fed chunk")
				}
				var op opTest
				c.Decode(m, &op.Operation)
			}
			rest = rest[k:]
		}
	})
}

// FuzzDecodeService decodes arbitrary request bodies: no panic, bounded
// work, and exactness — a body that decodes does not decode with one byte
// more or one byte less.
func FuzzDecodeService(f *testing.F) {
	f.Add(unhex(f, writeHex)[symBodyStart:])
	f.Add(unhex(f, callHex)[symBodyStart:])
	f.Add(hazardWrite(f, 1<<29))
	d := NewDecoder(Limits{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var op opTest
		info, err := d.DecodeRequest(data, ChannelSecurity{Mode: SecurityModeNone}, &op.Operation)
		if op.Protocol != "opcua" || op.OPCUA == nil || op.Name == "" {
			t.Fatalf("operation not filled: %+v", op.Operation)
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if info.Service == nil || op.Access != info.Service.Access {
			t.Fatalf("info %+v", info)
		}
		if _, err := d.DecodeRequest(append(data[:len(data):len(data)], 0), ChannelSecurity{}, &op.Operation); err == nil {
			t.Fatal("decodes with a trailing byte")
		}
		if _, err := d.DecodeRequest(data[:len(data)-1], ChannelSecurity{}, &op.Operation); err == nil {
			t.Fatal("decodes without its last byte")
		}
		// Responses' rewriter must not panic on request bodies either.
		RewriteEndpointURLs(nil, data, func(s string) string { return s + "x" }, Limits{})
	})
}
