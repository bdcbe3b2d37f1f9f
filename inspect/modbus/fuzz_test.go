package modbus

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/conduit-ot/conduit/inspect"
)

// The seed corpora in testdata/fuzz/FuzzXxx are made from the captures in
// testdata/pcap by TestWriteFuzzCorpus (run with MODBUS_WRITE_CORPUS=1),
// plus the inputs the fuzzers found worth keeping.

// FuzzFramer feeds arbitrary bytes, in arbitrary read sizes, to the Framer
// and to FrameLength: both must cut the same frames and stop with the same
// verdict, every frame must be a legal size, and nothing may panic.
func FuzzFramer(f *testing.F) {
	f.Add([]byte{7}, concat(aduFC3, aduFC15, aduFC7))
	f.Add([]byte{3, 0}, []byte{0, 1, 0, 0, 0xff, 0xff, 1, 3})                              // length 0xFFFF
	f.Add([]byte{255}, []byte{0, 1, 0, 0, 0, 0x0b, 1, 3, 0, 0, 0, 1, 6, 0, 1, 0xde, 0xad}) // length smuggling
	f.Add([]byte{0}, []byte("GET / HTTP/1.1\r\nHost: plc\r\n\r\n"))                        // not Modbus
	f.Add([]byte{1, 2, 3}, concat(aduFC7, aduFC7, aduFC15[:9]))                            // ends inside a frame
	f.Fuzz(func(t *testing.T, sizes, stream []byte) {
		// The splitter's view.
		var want [][]byte
		var wantErr error
		rest := stream
		for {
			n, err := FrameLength(rest)
			if err != nil {
				wantErr = err
				break
			}
			if n == 0 {
				break
			}
			if n < HeaderLen+1 || n > MaxADULen || n > len(rest) {
				t.Fatalf("FrameLength = %d for %d bytes", n, len(rest))
			}
			want = append(want, rest[:n])
			rest = rest[n:]
		}
		// The framer's view, reading in the chunk sizes the fuzzer chose.
		r := &chunkReader{}
		for i, off := 0, 0; off < len(stream); i++ {
			n := len(stream) - off
			if len(sizes) > 0 {
				n = min(n, int(sizes[i%len(sizes)])+1)
			}
			r.chunks = append(r.chunks, stream[off:off+n])
			off += n
		}
		fr := NewFramer(r)
		for i := 0; ; i++ {
			adu, err := fr.Next()
			if err != nil {
				switch {
				case i < len(want):
					t.Fatalf("framer stopped at frame %d of %d: %v", i, len(want), err)
				case wantErr != nil:
					if ReasonOf(err) != ReasonOf(wantErr) || !errors.Is(err, ErrFraming) {
						t.Fatalf("framer: %v, splitter: %v", err, wantErr)
					}
				case len(rest) == 0 && err != io.EOF:
					t.Fatalf("clean end gives %v", err)
				case len(rest) > 0 && err != io.ErrUnexpectedEOF:
					t.Fatalf("%d bytes left give %v", len(rest), err)
				}
				break
			}
			if i >= len(want) || !bytes.Equal(adu, want[i]) {
				t.Fatalf("framer frame %d % x differs from the splitter's", i, adu)
			}
		}
	})
}

// FuzzDecodeRequest: a request either decodes, or fails with a typed error;
// a decoded request re-encodes to the same bytes (coil padding zeroed) and
// decodes again to the same struct; a refused one can still be answered and
// described.
func FuzzDecodeRequest(f *testing.F) {
	for _, tc := range requestCases {
		f.Add(tc.adu)
	}
	f.Fuzz(func(t *testing.T, adu []byte) {
		checkRequestADU(t, adu)
		if fixed := withLength(adu); fixed != nil {
			checkRequestADU(t, fixed)
		}
		if fixed := withCounts(adu, false); fixed != nil {
			checkRequestADU(t, fixed)
		}
	})
}

// withLength returns a copy of adu with protocol id 0 and the MBAP length
// set to cover exactly its bytes, or nil if no legal length can: so that a
// mutation that grows or shrinks a PDU still reaches the PDU decoder
// instead of stopping at the framing check.
func withLength(adu []byte) []byte {
	if len(adu) < HeaderLen+1 || len(adu) > MaxADULen {
		return nil
	}
	out := append([]byte(nil), adu...)
	l := len(out) - lengthFieldEnd
	out[2], out[3], out[4], out[5] = 0, 0, byte(l>>8), byte(l)
	return out
}

// withCounts is withLength that also sets the function's byte count field
// (if it has one) to the bytes that follow it: mutations that add or drop
// data then stay consistent and reach the deeper checks.
func withCounts(adu []byte, response bool) []byte {
	out := withLength(adu)
	if out == nil {
		return nil
	}
	pdu := out[HeaderLen:]
	off, size := 0, 1
	switch fc := pdu[0]; {
	case fc&ExceptionBit != 0:
	case !response && (fc == FuncWriteMultipleCoils || fc == FuncWriteMultipleRegisters):
		off = 5
	case !response && fc == FuncReadWriteMultipleRegisters:
		off = 9
	case !response && (fc == FuncReadFileRecord || fc == FuncWriteFileRecord):
		off = 1
	case response && fc == FuncReadFIFOQueue:
		off, size = 1, 2
	case response && (fc <= FuncReadInputRegisters || fc == FuncGetCommEventLog || fc == FuncReportServerID ||
		fc == FuncReadFileRecord || fc == FuncWriteFileRecord || fc == FuncReadWriteMultipleRegisters):
		off = 1
	}
	if off == 0 || len(pdu) < off+size {
		return nil
	}
	n := len(pdu) - off - size
	if size == 1 {
		pdu[off] = byte(n)
	} else {
		pdu[off], pdu[off+1] = byte(n>>8), byte(n)
	}
	return out
}

func checkRequestADU(t *testing.T, adu []byte) {
	t.Helper()
	var r Request
	n, err := r.Decode(adu)
	var op inspect.Operation
	switch {
	case err == nil:
		if n < HeaderLen+1 || n > len(adu) || n > MaxADULen {
			t.Fatalf("n = %d for %d bytes", n, len(adu))
		}
		out, err := r.Append(nil)
		if err != nil {
			t.Fatalf("decoded request does not encode: %v", err)
		}
		if want := canonicalRequest(adu[:n], &r); !bytes.Equal(out, want) {
			t.Fatalf("re-encoded\n % x\nfrom\n % x", out, adu[:n])
		}
		var r2 Request
		if _, err := r2.Decode(out); err != nil {
			t.Fatalf("re-encoded request does not decode: %v", err)
		}
		want := r
		if r.Function == FuncWriteMultipleCoils {
			want.Data = out[len(out)-len(r.Data):]
		}
		if !reflect.DeepEqual(r2, want) {
			t.Fatalf("decode(encode(r)) = %+v, want %+v", r2, want)
		}
		r.Operation(&op)
		if op.Protocol != inspect.ProtocolModbus || op.Name == "" {
			t.Fatalf("Operation %+v", op)
		}
	case errors.Is(err, ErrProtocol):
		var pe *ProtocolError
		if !errors.As(err, &pe) || pe.Reason == "" || !validException(pe.Exception) {
			t.Fatalf("protocol error without reason or exception: %#v", err)
		}
		if n < HeaderLen+1 || n > len(adu) {
			t.Fatalf("n = %d after a protocol error", n)
		}
		r.Operation(&op) // describing a refused request must be safe
		exc := r.AppendException(nil, pe.Exception)
		var resp Response
		if _, err := resp.Decode(exc, &r); err != nil && validFunction(r.Function) {
			t.Fatalf("our exception % x does not answer the request: %v", exc, err)
		}
		if out, err := r.Append(nil); err == nil {
			t.Fatalf("a refused request encodes: % x", out)
		}
	case errors.Is(err, ErrFraming):
		if n != 0 || ReasonOf(err) == "" {
			t.Fatalf("framing error with n = %d, reason %q", n, ReasonOf(err))
		}
	default:
		t.Fatalf("untyped error %v", err)
	}
}

// FuzzDecodeResponse: a response, decoded against a request (or unpaired
// when reqADU does not decode), either decodes or fails with a typed error;
// a decoded one re-encodes to the same bytes (coil padding zeroed) and
// decodes again, against the same request, to the same struct.
func FuzzDecodeResponse(f *testing.F) {
	for _, tc := range append(responseCases[:len(responseCases):len(responseCases)], exceptionCases...) {
		f.Add(tc.req, tc.adu)
	}
	f.Fuzz(func(t *testing.T, reqADU, adu []byte) {
		var reqv Request
		req := &reqv
		if _, err := reqv.Decode(reqADU); err != nil {
			req = nil
		}
		checkResponseADU(t, req, adu)
		if fixed := withLength(adu); fixed != nil {
			checkResponseADU(t, req, fixed)
		}
		if fixed := withCounts(adu, true); fixed != nil {
			checkResponseADU(t, req, fixed)
		}
	})
}

func checkResponseADU(t *testing.T, req *Request, adu []byte) {
	t.Helper()
	var r Response
	n, err := r.Decode(adu, req)
	switch {
	case err == nil:
		if n < HeaderLen+1 || n > len(adu) || n > MaxADULen {
			t.Fatalf("n = %d for %d bytes", n, len(adu))
		}
		out, err := r.Append(nil)
		if err != nil {
			t.Fatalf("decoded response does not encode: %v", err)
		}
		want := append([]byte(nil), adu[:n]...)
		if !r.IsException() && (r.Function == FuncReadCoils || r.Function == FuncReadDiscreteInputs) {
			want[len(want)-1] &= lastCoilMask(r.Quantity)
		}
		if !bytes.Equal(out, want) {
			t.Fatalf("re-encoded\n % x\nfrom\n % x", out, adu[:n])
		}
		var r2 Response
		if _, err := r2.Decode(out, req); err != nil {
			t.Fatalf("re-encoded response does not decode: %v", err)
		}
		wantR := r
		if len(r.Data) > 0 {
			wantR.Data = out[len(out)-len(r.Data):]
		}
		if !reflect.DeepEqual(r2, wantR) {
			t.Fatalf("decode(encode(r)) = %+v, want %+v", r2, wantR)
		}
	case errors.Is(err, ErrResponse):
		if n < HeaderLen+1 || n > len(adu) || ReasonOf(err) == "" {
			t.Fatalf("response error with n = %d, reason %q", n, ReasonOf(err))
		}
	case errors.Is(err, ErrFraming):
		if n != 0 || ReasonOf(err) == "" {
			t.Fatalf("framing error with n = %d, reason %q", n, ReasonOf(err))
		}
	default:
		t.Fatalf("untyped error %v", err)
	}
}

// TestWriteFuzzCorpus regenerates the capture-based seed corpora. It is a
// tool, not a test: it runs only with MODBUS_WRITE_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("MODBUS_WRITE_CORPUS") == "" {
		t.Skip("set MODBUS_WRITE_CORPUS=1 to rewrite testdata/fuzz/*/capture-* from testdata/pcap")
	}
	write := func(target, name string, args ...[]byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.WriteString("go test fuzz v1\n")
		for _, a := range args {
			fmt.Fprintf(&b, "[]byte(%q)\n", a)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, cc := range captureCases {
		short := cc.file[:len(cc.file)-len(filepath.Ext(cc.file))]
		segs := readSegments(t, cc.file, cc.port)
		// Framer: each direction of each connection as one stream, read in
		// the segment sizes of the capture.
		streams := map[string][]byte{}
		var sizes = map[string][]byte{}
		var order []string
		for _, s := range segs {
			key := fmt.Sprintf("%s-%v", s.client, s.toServer)
			if _, ok := streams[key]; !ok {
				order = append(order, key)
			}
			streams[key] = append(streams[key], s.payload...)
			sizes[key] = append(sizes[key], byte(min(len(s.payload), 256)-1))
		}
		for i, key := range order {
			write("FuzzFramer", fmt.Sprintf("capture-%s-stream%d", short, i), sizes[key], streams[key])
		}
		// Decoders: every ADU, requests alone, responses with their request.
		var adus []capturedADU
		if cc.perSegment {
			adus = splitSegments(segs)
		} else {
			adus = splitStreams(segs)
		}
		pending := map[string][][]byte{}
		for _, a := range adus {
			if a.framing != nil {
				continue
			}
			if a.toServer {
				write("FuzzDecodeRequest", fmt.Sprintf("capture-%s-frame%d", short, a.frame), a.adu)
				pending[a.client] = append(pending[a.client], a.adu)
				continue
			}
			var req []byte
			for i, q := range pending[a.client] {
				if be16(q) == be16(a.adu) {
					req = q
					pending[a.client] = append(pending[a.client][:i:i], pending[a.client][i+1:]...)
					break
				}
			}
			write("FuzzDecodeResponse", fmt.Sprintf("capture-%s-frame%d", short, a.frame), req, a.adu)
		}
	}
}
