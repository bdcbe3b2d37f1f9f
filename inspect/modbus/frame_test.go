package modbus

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
	"testing/iotest"
)

// Three real requests from local_pymodbus_allfc.pcapng (frames 14, 30, 76):
// a fixed-size one, one with a byte count, and the shortest possible ADU.
var (
	aduFC3  = []byte{0x00, 0x05, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x1f, 0x40, 0x00, 0x7d}
	aduFC15 = []byte{0x00, 0x0d, 0x00, 0x00, 0x00, 0x0a, 0x01, 0x0f, 0x00, 0x14, 0x00, 0x13, 0x03, 0x2b, 0x3e, 0x03}
	aduFC7  = []byte{0x00, 0x24, 0x00, 0x00, 0x00, 0x02, 0x01, 0x07}
)

func concat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// chunkReader returns its chunks one per Read (each at most len(p)), then
// err (io.EOF if nil), counting calls.
type chunkReader struct {
	chunks [][]byte
	err    error
	reads  int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.reads++
	if len(r.chunks) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	r.chunks[0] = r.chunks[0][n:]
	if len(r.chunks[0]) == 0 {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

// readAll drains a Framer, copying each frame (they alias its buffer).
func readAll(f *Framer) ([][]byte, error) {
	var out [][]byte
	for {
		adu, err := f.Next()
		if err != nil {
			return out, err
		}
		out = append(out, append([]byte(nil), adu...))
	}
}

func TestFramerFiftyFramesInOneRead(t *testing.T) {
	var frames [][]byte
	for i := 0; i < 50; i++ {
		frames = append(frames, [][]byte{aduFC3, aduFC15, aduFC7}[i%3])
	}
	stream := concat(frames...)
	r := &chunkReader{chunks: [][]byte{stream}}
	got, err := readAll(NewFramer(r))
	if err != io.EOF {
		t.Fatalf("end: %v, want io.EOF", err)
	}
	if len(got) != 50 {
		t.Fatalf("%d frames, want 50", len(got))
	}
	for i := range got {
		if !bytes.Equal(got[i], frames[i]) {
			t.Fatalf("frame %d = % x, want % x", i, got[i], frames[i])
		}
	}
	// One read delivered all 50 frames; the second one reported EOF.
	if r.reads != 2 {
		t.Errorf("%d reads for 50 pipelined frames, want 2 (data, EOF)", r.reads)
	}
}

// Every split of a three-frame stream into two reads, and one byte per read.
func TestFramerSplitAtEveryByte(t *testing.T) {
	frames := [][]byte{aduFC15, aduFC3, aduFC7}
	stream := concat(frames...)
	check := func(t *testing.T, r io.Reader) {
		t.Helper()
		got, err := readAll(NewFramer(r))
		if err != io.EOF {
			t.Fatalf("end: %v", err)
		}
		if len(got) != len(frames) {
			t.Fatalf("%d frames, want %d", len(got), len(frames))
		}
		for i := range frames {
			if !bytes.Equal(got[i], frames[i]) {
				t.Fatalf("frame %d = % x", i, got[i])
			}
		}
	}
	for k := 1; k < len(stream); k++ {
		t.Run(fmt.Sprintf("split@%d", k), func(t *testing.T) {
			check(t, &chunkReader{chunks: [][]byte{append([]byte(nil), stream[:k]...), append([]byte(nil), stream[k:]...)}})
		})
	}
	t.Run("one byte per read", func(t *testing.T) {
		check(t, iotest.OneByteReader(bytes.NewReader(stream)))
	})
	t.Run("data with EOF", func(t *testing.T) {
		check(t, iotest.DataErrReader(bytes.NewReader(stream)))
	})
}

// Frames that straddle the end of the 4 KiB buffer are moved to its front.
func TestFramerWrapsItsBuffer(t *testing.T) {
	var frames [][]byte
	for i := 0; len(frames) < 2000; i++ {
		frames = append(frames, [][]byte{aduFC15, aduFC3, aduFC7}[i%3])
	}
	stream := concat(frames...)
	// Odd-sized reads so frame boundaries fall everywhere in the buffer.
	var chunks [][]byte
	for len(stream) > 0 {
		n := min(len(stream), 997)
		chunks = append(chunks, stream[:n])
		stream = stream[n:]
	}
	got, err := readAll(NewFramer(&chunkReader{chunks: chunks}))
	if err != io.EOF || len(got) != len(frames) {
		t.Fatalf("%d frames, end %v", len(got), err)
	}
	for i := range frames {
		if !bytes.Equal(got[i], frames[i]) {
			t.Fatalf("frame %d = % x", i, got[i])
		}
	}
}

// A small buffer (NewFramerSize) frames the same stream, maximal ADUs
// included, whatever the read sizes.
func TestFramerSmallBuffers(t *testing.T) {
	maxADU := make([]byte, MaxADULen) // MBAP length 254: unit and a 253-byte PDU
	maxADU[4], maxADU[5], maxADU[6], maxADU[7] = 0, MaxLength, 1, 0x41
	var frames [][]byte
	for i := 0; len(frames) < 600; i++ {
		frames = append(frames, [][]byte{aduFC15, maxADU, aduFC3, aduFC7, maxADU, maxADU}[i%6])
	}
	stream := concat(frames...)
	for _, size := range []int{0, MaxADULen, MaxADULen + 1, 512, 1024} {
		for _, chunk := range []int{1, 97, 259, 260, 997, 5000} {
			var chunks [][]byte
			for rest := stream; len(rest) > 0; {
				n := min(len(rest), chunk)
				chunks = append(chunks, rest[:n])
				rest = rest[n:]
			}
			f := NewFramerSize(&chunkReader{chunks: chunks}, size)
			if len(f.buf) < MaxADULen {
				t.Fatalf("size %d: buffer of %d bytes", size, len(f.buf))
			}
			got, err := readAll(f)
			if err != io.EOF || len(got) != len(frames) {
				t.Fatalf("size %d, reads of %d: %d frames, end %v", size, chunk, len(got), err)
			}
			for i := range frames {
				if !bytes.Equal(got[i], frames[i]) {
					t.Fatalf("size %d, reads of %d: frame %d = % x", size, chunk, i, got[i])
				}
			}
		}
	}
}

func TestFramerEOF(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream []byte
		frames int
		want   error
	}{
		{"empty stream", nil, 0, io.EOF},
		{"at a frame boundary", concat(aduFC3, aduFC7), 2, io.EOF},
		{"inside a header", concat(aduFC3, aduFC7[:3]), 1, io.ErrUnexpectedEOF},
		{"after a header", concat(aduFC3, aduFC15[:7]), 1, io.ErrUnexpectedEOF},
		{"inside a body", concat(aduFC3, aduFC15[:12]), 1, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFramer(bytes.NewReader(tc.stream))
			got, err := readAll(f)
			if len(got) != tc.frames || err != tc.want {
				t.Fatalf("%d frames, end %v; want %d, %v", len(got), err, tc.frames, tc.want)
			}
			if _, again := f.Next(); again != tc.want {
				t.Errorf("not sticky: %v", again)
			}
		})
	}
}

// failAfter returns its data in one Read and fails the test if read again:
// the framer must decide from the header alone.
type failAfter struct {
	t    *testing.T
	data []byte
	done bool
}

func (r *failAfter) Read(p []byte) (int, error) {
	if r.done {
		r.t.Fatal("Framer read past a header it should have refused")
	}
	r.done = true
	return copy(p, r.data), nil
}

func TestFramerRefusesHeaderBeforeBody(t *testing.T) {
	for _, tc := range []struct {
		name   string
		data   []byte
		reason string
	}{
		{"length 0xFFFF", []byte{0x00, 0x01, 0x00, 0x00, 0xff, 0xff, 0x01}, ReasonBadLength},
		{"length 255", []byte{0x00, 0x01, 0x00, 0x00, 0x00, 0xff}, ReasonBadLength},
		{"length 0", []byte{0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, ReasonBadLength}, // zeek_fuzz-72 frame 1
		{"length 1", []byte{0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x01}, ReasonBadLength},
		{"protocol id 0xAAAA", []byte{0xaa, 0xaa, 0xaa, 0xaa}, ReasonBadProtocolID}, // zeek_fuzz-72 frame 35
		{"HTTP on port 502", []byte("GET / HTTP/1.1\r\n"), ReasonBadProtocolID},
		{"TLS ClientHello on port 502", []byte{0x16, 0x03, 0x01, 0x00, 0x85, 0x01}, ReasonBadProtocolID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFramer(&failAfter{t: t, data: tc.data})
			_, err := f.Next()
			if ReasonOf(err) != tc.reason || !errors.Is(err, ErrFraming) {
				t.Fatalf("Next: %v, want %s", err, tc.reason)
			}
			if _, again := f.Next(); again != err {
				t.Errorf("framing error not sticky: %v", again)
			}
			n, err := FrameLength(tc.data)
			if n != 0 || ReasonOf(err) != tc.reason {
				t.Errorf("FrameLength = %d, %v", n, err)
			}
		})
	}
}

// The libmodbus issue 514 attack: an FC3 read whose MBAP length also covers
// a write. Framing by the length field keeps the hidden PDU inside the read's
// frame — never a frame of its own — and the decoder refuses that frame
// because FC3's PDU must be exactly 5 bytes.
func TestLengthSmuggling(t *testing.T) {
	smuggled := []byte{
		0x00, 0x01, 0x00, 0x00, // tid 1, protocol 0
		0x00, 0x0b, // length 11: unit + FC3 PDU (5) + hidden FC6 PDU (5)
		0x01,                         // unit
		0x03, 0x00, 0x00, 0x00, 0x01, // read 1 holding register at 0
		0x06, 0x00, 0x01, 0xde, 0xad, // hidden: write 0xDEAD to register 1
	}
	// A variant that hides a whole second ADU, MBAP header included.
	smuggledADU := concat([]byte{0x00, 0x02, 0x00, 0x00, 0x00, 0x12, 0x01, 0x03, 0x00, 0x00, 0x00, 0x01},
		[]byte{0x00, 0x03, 0x00, 0x00, 0x00, 0x06, 0x01, 0x06, 0x00, 0x01, 0xde, 0xad})
	for _, tc := range []struct {
		name string
		adu  []byte
	}{{"hidden PDU", smuggled}, {"hidden ADU", smuggledADU}} {
		t.Run(tc.name, func(t *testing.T) {
			stream := concat(tc.adu, aduFC7)
			if n, err := FrameLength(stream); n != len(tc.adu) || err != nil {
				t.Fatalf("FrameLength = %d, %v; want the whole smuggling frame %d", n, err, len(tc.adu))
			}
			f := NewFramer(bytes.NewReader(stream))
			frames, err := readAll(f)
			if err != io.EOF || len(frames) != 2 {
				t.Fatalf("%d frames, end %v", len(frames), err)
			}
			for _, fr := range frames {
				if len(fr) > HeaderLen && fr[HeaderLen] == FuncWriteSingleRegister {
					t.Fatalf("the hidden write came out as a frame: % x", fr)
				}
			}
			if !bytes.Equal(frames[0], tc.adu) || !bytes.Equal(frames[1], aduFC7) {
				t.Fatalf("frames % x", frames)
			}
			var r Request
			n, err := r.Decode(frames[0])
			if ReasonOf(err) != ReasonLengthMismatch || !errors.Is(err, ErrFraming) || n != 0 {
				t.Fatalf("Decode = %d, %v; want framing %s", n, err, ReasonLengthMismatch)
			}
			if out, err := r.Append(nil); err == nil && bytes.Contains(out, []byte{0xde, 0xad}) {
				t.Fatalf("the hidden write would be forwarded: % x", out)
			}
		})
	}
}

func TestFrameLengthNeedsMore(t *testing.T) {
	stream := concat(aduFC15, aduFC3)
	for k := 0; k < len(aduFC15); k++ {
		if n, err := FrameLength(stream[:k]); n != 0 || err != nil {
			t.Errorf("FrameLength(%d bytes) = %d, %v; want 0, nil", k, n, err)
		}
	}
	for k := len(aduFC15); k <= len(stream); k++ {
		if n, err := FrameLength(stream[:k]); n != len(aduFC15) || err != nil {
			t.Errorf("FrameLength(%d bytes) = %d, %v", k, n, err)
		}
	}
	// The largest legal ADU, and one byte more in the length field.
	max := make([]byte, MaxADULen)
	max[4], max[5] = 0, MaxLength
	if n, err := FrameLength(max); n != MaxADULen || err != nil {
		t.Errorf("max ADU: %d, %v", n, err)
	}
	max[5] = MaxLength + 1
	if _, err := FrameLength(max); ReasonOf(err) != ReasonBadLength {
		t.Errorf("length 255: %v", err)
	}
}

func TestParseHeader(t *testing.T) {
	h, err := ParseHeader(aduFC15)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Header{TransactionID: 13, Length: 10, Unit: 1}); h != want || h.ADULen() != len(aduFC15) {
		t.Errorf("ParseHeader = %+v (ADULen %d)", h, h.ADULen())
	}
	if _, err := ParseHeader(aduFC15[:5]); ReasonOf(err) != ReasonTruncated {
		t.Errorf("short header: %v", err)
	}
	if _, err := ParseHeader([]byte{0, 0, 0, 1, 0, 6, 1}); ReasonOf(err) != ReasonBadProtocolID {
		t.Errorf("protocol 1: %v", err)
	}
}

// timeoutReader yields part of a frame, then a timeout, then the rest.
type timeoutErr struct{}

func (timeoutErr) Error() string { return "i/o timeout" }
func (timeoutErr) Timeout() bool { return true }

type scriptReader struct {
	steps []struct {
		data []byte
		err  error
	}
}

func (r *scriptReader) Read(p []byte) (int, error) {
	if len(r.steps) == 0 {
		return 0, io.EOF
	}
	s := r.steps[0]
	r.steps = r.steps[1:]
	return copy(p, s.data), s.err
}

func TestFramerTimeoutIsNotSticky(t *testing.T) {
	r := &scriptReader{}
	add := func(d []byte, err error) {
		r.steps = append(r.steps, struct {
			data []byte
			err  error
		}{d, err})
	}
	add(aduFC15[:9], nil)
	add(nil, timeoutErr{})
	add(aduFC15[9:], timeoutErr{}) // data together with an error: framed first
	add(aduFC3, nil)
	f := NewFramer(r)
	if _, err := f.Next(); !errors.Is(err, timeoutErr{}) {
		t.Fatalf("first Next: %v, want the timeout", err)
	}
	if f.Buffered() != 9 {
		t.Errorf("Buffered = %d, the partial frame must be kept", f.Buffered())
	}
	adu, err := f.Next()
	if err != nil || !bytes.Equal(adu, aduFC15) {
		t.Fatalf("after timeout: % x, %v", adu, err)
	}
	if _, err := f.Next(); !errors.Is(err, timeoutErr{}) {
		t.Fatalf("deferred error: %v", err)
	}
	if adu, err := f.Next(); err != nil || !bytes.Equal(adu, aduFC3) {
		t.Fatalf("last frame: % x, %v", adu, err)
	}
	if _, err := f.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestFramerNoProgress(t *testing.T) {
	if _, err := NewFramer(zeroReader{}).Next(); err != io.ErrNoProgress {
		t.Fatalf("Next on a reader that never returns data: %v", err)
	}
}

func TestFramerReset(t *testing.T) {
	f := NewFramer(bytes.NewReader([]byte{0, 1, 0, 9}))
	if _, err := f.Next(); ReasonOf(err) != ReasonBadProtocolID {
		t.Fatalf("%v", err)
	}
	f.Reset(bytes.NewReader(aduFC3))
	if adu, err := f.Next(); err != nil || !bytes.Equal(adu, aduFC3) {
		t.Fatalf("after Reset: % x, %v", adu, err)
	}
}

// loopReader replays one stream forever, for allocation counting.
type loopReader struct {
	data []byte
	off  int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := copy(p, r.data[r.off:])
	r.off = (r.off + n) % len(r.data)
	return n, nil
}

func TestFramerDoesNotAllocate(t *testing.T) {
	f := NewFramer(&loopReader{data: concat(aduFC3, aduFC15, aduFC7)})
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := f.Next(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per frame", allocs)
	}
}

// Every function code, with every PDU length up to a full PDU, through both
// decoders: each call returns a result or one of the typed errors, never
// panics, and whatever decodes re-encodes to the same bytes.
func TestEveryFunctionCode(t *testing.T) {
	req := mustRequest(t, aduFC3)
	var counts [3]int // decoded, protocol/response error, framing error
	for fc := 0; fc < 256; fc++ {
		for pduLen := 1; pduLen <= MaxPDULen; pduLen++ {
			for _, fill := range []byte{0x00, 0x01, 0xff} {
				adu := make([]byte, HeaderLen+pduLen)
				adu[5] = byte(1 + pduLen)
				adu[6] = 1
				adu[7] = byte(fc)
				for i := HeaderLen + 1; i < len(adu); i++ {
					adu[i] = fill
				}
				if pduLen > 1 && fill == 0x01 {
					adu[HeaderLen+1] = byte(pduLen - 2) // a plausible byte count
				}
				var r Request
				n, err := r.Decode(adu)
				counts[classify(t, adu, err)]++
				if err == nil {
					if n != len(adu) {
						t.Fatalf("% x: n = %d", adu, n)
					}
					out, err := r.Append(nil)
					if err != nil || !bytes.Equal(out, canonicalRequest(adu, &r)) {
						t.Fatalf("request % x re-encodes to % x, %v", adu, out, err)
					}
				}
				var resp Response
				for _, q := range []*Request{nil, req} {
					_, err = resp.Decode(adu, q)
					classify(t, adu, err)
					if err == nil {
						if _, err := resp.Append(nil); err != nil {
							t.Fatalf("response % x decodes but does not encode: %v", adu, err)
						}
					}
				}
			}
		}
	}
	t.Logf("requests: %d decoded, %d refused, %d unframeable", counts[0], counts[1], counts[2])
	if counts[0] == 0 || counts[1] == 0 || counts[2] == 0 {
		t.Error("the scan should hit all three outcomes")
	}
}

func classify(t *testing.T, adu []byte, err error) int {
	t.Helper()
	var fe *FramingError
	var pe *ProtocolError
	var re *ResponseError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &pe), errors.As(err, &re):
		return 1
	case errors.As(err, &fe):
		return 2
	}
	t.Fatalf("% x: untyped error %v", adu, err)
	return -1
}

// canonicalRequest is what Append must produce for a request adu that
// decoded to r: the same bytes, with FC 15 coil padding bits zeroed.
func canonicalRequest(adu []byte, r *Request) []byte {
	out := append([]byte(nil), adu...)
	if r.Function == FuncWriteMultipleCoils {
		out[len(out)-1] &= lastCoilMask(r.Quantity)
	}
	return out
}
