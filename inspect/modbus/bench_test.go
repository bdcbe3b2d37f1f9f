package modbus

import (
	"testing"

	"github.com/conduit-ot/conduit/inspect"
)

// Real frames from local_pymodbus_allfc.pcapng.
var (
	benchReqFC3  = aduFC3                                                                               // frame 14: read 125 holding registers
	benchReqFC16 = []byte{0x00, 0x11, 0x00, 0x00, 0x00, 0x1b, 0x01, 0x10, 0x00, 0x6e, 0x00, 0x0a, 0x14, // frame 38
		0xfe, 0x69, 0xeb, 0x11, 0x19, 0xc3, 0x40, 0x67, 0xc2, 0x89, 0xdc, 0x1f, 0x1a, 0x38, 0x3b, 0xb8, 0xc5, 0x18, 0x97, 0x46}
	benchReqFC3Small  = []byte{0x00, 0x02, 0x00, 0x00, 0x00, 0x06, 0x01, 0x04, 0x00, 0x64, 0x00, 0x0a} // frame 8
	benchRespFC4Small = []byte{0x00, 0x02, 0x00, 0x00, 0x00, 0x17, 0x01, 0x04, 0x14,                   // frame 9
		0x00, 0x64, 0x00, 0x65, 0x00, 0x66, 0x00, 0x67, 0x00, 0x68, 0x00, 0x69, 0x00, 0x6a, 0x00, 0x6b, 0x00, 0x6c, 0x00, 0x6d}
)

func benchDecodeRequest(b *testing.B, adu []byte) {
	var r Request
	b.SetBytes(int64(len(adu)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Decode(adu); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeRequestFC3(b *testing.B)  { benchDecodeRequest(b, benchReqFC3) }
func BenchmarkDecodeRequestFC16(b *testing.B) { benchDecodeRequest(b, benchReqFC16) }

func BenchmarkDecodeResponseFC4(b *testing.B) {
	req := mustRequest(b, benchReqFC3Small)
	var r Response
	b.SetBytes(int64(len(benchRespFC4Small)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Decode(benchRespFC4Small, req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFramerNext(b *testing.B) {
	f := NewFramer(&loopReader{data: concat(benchReqFC3, benchReqFC16, aduFC7)})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.Next(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOperationFC16(b *testing.B) {
	r := mustRequest(b, benchReqFC16)
	var op inspect.Operation
	r.Operation(&op) // the first fill sizes op's slices once per connection
	b.ReportAllocs()
	for b.Loop() {
		r.Operation(&op)
	}
}

func BenchmarkOperationFC3(b *testing.B) {
	r := mustRequest(b, benchReqFC3)
	var op inspect.Operation
	b.ReportAllocs()
	for b.Loop() {
		r.Operation(&op)
	}
}

func benchAppendRequest(b *testing.B, adu []byte) {
	r := mustRequest(b, adu)
	buf := make([]byte, 0, MaxADULen)
	b.SetBytes(int64(len(adu)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Append(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendRequestFC3(b *testing.B)  { benchAppendRequest(b, benchReqFC3) }
func BenchmarkAppendRequestFC16(b *testing.B) { benchAppendRequest(b, benchReqFC16) }

func BenchmarkAppendResponseFC4(b *testing.B) {
	var r Response
	if _, err := r.Decode(benchRespFC4Small, mustRequest(b, benchReqFC3Small)); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, MaxADULen)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Append(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendException(b *testing.B) {
	r := mustRequest(b, benchReqFC16)
	buf := make([]byte, 0, MaxADULen)
	b.ReportAllocs()
	for b.Loop() {
		buf = r.AppendException(buf[:0], ExIllegalDataAddress)
	}
}

// The proxy's whole request path for one frame: frame, decode, describe,
// re-encode.
func BenchmarkRequestPath(b *testing.B) {
	f := NewFramer(&loopReader{data: concat(benchReqFC3, benchReqFC16)})
	var (
		r   Request
		op  inspect.Operation
		buf = make([]byte, 0, MaxADULen)
	)
	b.ReportAllocs()
	for b.Loop() {
		adu, err := f.Next()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.Decode(adu); err != nil {
			b.Fatal(err)
		}
		r.Operation(&op)
		if _, err := r.Append(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
}
