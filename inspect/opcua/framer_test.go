package opcua

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// countingReader records how many bytes were read from it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// clientStream returns the client→server bytes of the node-opcua capture.
func clientStream(t testing.TB) []byte {
	var b []byte
	for _, s := range readSegments(t, "local_nodeopcua_none_session.pcapng") {
		if s.fromCli {
			b = append(b, s.payload...)
		}
	}
	return b
}

func TestFramerMatchesSplit(t *testing.T) {
	stream := clientStream(t)
	f := NewFramer(bytes.NewReader(stream), 0)
	rest := stream
	n := 0
	for {
		h, ch, err := f.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		k, h2, err := Split(rest, DefaultMaxChunkSize)
		if err != nil || k != len(ch) || h2 != h || !bytes.Equal(rest[:k], ch) {
			t.Fatalf("chunk %d: split %d %v, framer %d", n, k, err, len(ch))
		}
		rest = rest[k:]
		n++
	}
	// HEL, then the 27 requests of captureCounts (OPN and CLO included),
	// each in one chunk.
	if len(rest) != 0 || n != 28 {
		t.Errorf("%d client chunks, %d bytes left", n, len(rest))
	}
}

func TestFramerValidatesBeforeReading(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header []byte
		max    uint32
		want   error
	}{
		{"MSG above the negotiated size", []byte("MSGF\x01\x00\x01\x00"), 65535, ErrChunkTooLarge},
		{"MSG 2^32-1", []byte("MSGF\xff\xff\xff\xff"), 65535, ErrChunkTooLarge},
		{"MSG below the minimum", []byte("MSGF\x17\x00\x00\x00"), 65535, ErrChunkTooSmall},
		{"HEL above 4128", []byte("HELF\x21\x10\x00\x00"), 65535, ErrChunkTooLarge},
		{"ACK not 28", []byte("ACKF\x1d\x00\x00\x00"), 65535, ErrChunkTooLarge},
		{"OPN intermediate", []byte("OPNC\x40\x00\x00\x00"), 65535, ErrBadChunkType},
		{"CLO abort", []byte("CLOA\x40\x00\x00\x00"), 65535, ErrBadChunkType},
		{"unknown type", []byte("GET / HT"), 65535, ErrBadMessageType},
		{"bad chunk type", []byte("MSGX\x40\x00\x00\x00"), 65535, ErrBadChunkType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A body that would be read if the size were trusted.
			cr := &countingReader{r: bytes.NewReader(append(append([]byte(nil), tc.header...), make([]byte, 1<<16)...))}
			f := NewFramer(cr, tc.max)
			if _, _, err := f.Next(); !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if cr.n != HeaderSize || cap(f.buf) > 4096 {
				t.Errorf("read %d bytes, buffer %d before rejecting", cr.n, cap(f.buf))
			}
			if _, _, err := Split(tc.header, tc.max); !errors.Is(err, tc.want) {
				t.Errorf("Split: %v", err)
			}
		})
	}
}

func TestFramerEOF(t *testing.T) {
	hel := unhex(t, helloHex)
	f := NewFramer(bytes.NewReader(hel[:20]), 0)
	if _, _, err := f.Next(); err != io.ErrUnexpectedEOF {
		t.Errorf("cut body: %v", err)
	}
	f = NewFramer(bytes.NewReader(hel[:5]), 0)
	if _, _, err := f.Next(); err != io.ErrUnexpectedEOF {
		t.Errorf("cut header: %v", err)
	}
	f = NewFramer(bytes.NewReader(nil), 0)
	if _, _, err := f.Next(); err != io.EOF {
		t.Errorf("empty: %v", err)
	}
	if n, _, err := Split(hel[:20], 0); n != 0 || err != nil {
		t.Errorf("Split of a partial chunk: %d %v", n, err)
	}
	if n, _, err := Split(hel[:3], 0); n != 0 || err != nil {
		t.Errorf("Split of a partial header: %d %v", n, err)
	}
}

func TestFramerSteadyStateAllocs(t *testing.T) {
	stream := clientStream(t)
	r := bytes.NewReader(stream)
	f := NewFramer(r, 0)
	for { // warm up the buffer to the largest chunk
		if _, _, err := f.Next(); err != nil {
			break
		}
	}
	allocs := testing.AllocsPerRun(20, func() {
		r.Reset(stream)
		for {
			if _, _, err := f.Next(); err != nil {
				break
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per stream", allocs)
	}
}
