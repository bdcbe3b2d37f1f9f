package opcua

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// The helpers the proxy needs besides Feed and Decode: the session token and
// timeout hint of a request, each chunk's own sequence number, and the
// header of a response.

func TestRequestInfoAuthTokenAndTimeoutHint(t *testing.T) {
	hdr := reqHeader(77)
	hdr.AuthenticationToken = ua.NewByteStringNodeID(0, []byte{0xDE, 0xAD, 0xBE, 0xEF})
	hdr.TimeoutHint = 12345
	body := withTypeID(t, id.ReadRequest_Encoding_DefaultBinary, &ua.ReadRequest{
		RequestHeader: hdr,
		NodesToRead:   []*ua.ReadValueID{{NodeID: ua.NewStringNodeID(2, "Line1.Setpoint"), AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{}}},
	})
	var op opTest
	info, err := NewDecoder(Limits{}).DecodeRequest(body, ChannelSecurity{Mode: SecurityModeNone}, &op.Operation)
	if err != nil {
		t.Fatal(err)
	}
	// Opaque NodeId: encoding 0x05, namespace 0, length 4, the bytes.
	want := unhex(t, "05 0000 04000000 deadbeef")
	if !info.HeaderOK || !info.HasAuthToken || !bytes.Equal(info.AuthToken, want) || info.TimeoutHint != 12345 || info.RequestHandle != 77 {
		t.Fatalf("info = %+v, token % x", info, info.AuthToken)
	}

	// A null token (before CreateSession), as gopcua encodes it: numeric
	// encoding 02, namespace 0, id 0.
	body = withTypeID(t, id.ReadRequest_Encoding_DefaultBinary, &ua.ReadRequest{RequestHeader: reqHeader(1)})
	info, err = NewDecoder(Limits{}).DecodeRequest(body, ChannelSecurity{Mode: SecurityModeNone}, &op.Operation)
	if err != nil || info.HasAuthToken || !bytes.Equal(info.AuthToken, unhex(t, "02 0000 00000000")) {
		t.Fatalf("null token: %+v %v", info, err)
	}

	// A header cut short: nothing of it is reported.
	info, _ = NewDecoder(Limits{}).DecodeRequest(body[:10], ChannelSecurity{}, &op.Operation)
	if info.HeaderOK || info.AuthToken != nil || info.RequestHandle != 0 {
		t.Fatalf("truncated header: %+v", info)
	}
}

func TestSequenceNumberReadsWhatSetSequenceNumberWrites(t *testing.T) {
	msg := chunk(ChunkFinal, 41, 9, []byte{1, 2, 3}, 0)
	if n, err := SequenceNumber(msg); err != nil || n != 41 {
		t.Fatalf("MSG: %d %v", n, err)
	}
	if err := SetSequenceNumber(msg, 4000); err != nil {
		t.Fatal(err)
	}
	if n, _ := SequenceNumber(msg); n != 4000 {
		t.Fatalf("after set: %d", n)
	}

	opn := unhex(t, opnNoneHex)
	if n, err := SequenceNumber(opn); err != nil || n != 51 {
		t.Fatalf("OPN: %d %v", n, err)
	}
	if err := SetSequenceNumber(opn, 7); err != nil {
		t.Fatal(err)
	}
	if n, _ := SequenceNumber(opn); n != 7 {
		t.Fatalf("OPN after set: %d", n)
	}

	if _, err := SequenceNumber(msg[:len(msg)-1]); err == nil {
		t.Fatal("a chunk shorter than its declared size has a sequence number")
	}
	hel, _ := Hello{ReceiveBufferSize: 8192, SendBufferSize: 8192}.Encode(nil)
	if _, err := SequenceNumber(hel); !errors.Is(err, ErrEncode) {
		t.Fatalf("HEL: %v", err)
	}
}

// opnNoneHex is an OpenSecureChannelRequest under SecurityPolicy None:
// sequence number 51, request id 1.
const opnNoneHex = `
4f504e46 53000000                                  // OPN F, 83 bytes
00000000                                           // SecureChannelId 0
2f000000 687474703a2f2f6f7063666f756e646174696f6e2e6f72672f55412f5365637572697479506f6c696379234e6f6e65
ffffffff ffffffff                                  // no certificate, no thumbprint
33000000 01000000                                  // SequenceNumber 51, RequestId 1
01 00 be01                                         // i=446 OpenSecureChannelRequest (body not read here)
`

func TestDecodeResponseHeader(t *testing.T) {
	ts := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	body := AppendServiceFaultBody(nil, 99, ts, StatusBadUserAccessDenied)
	h, err := DecodeResponseHeader(body)
	if err != nil || h.TypeID != id.ServiceFault_Encoding_DefaultBinary || h.RequestHandle != 99 || h.ServiceResult != StatusBadUserAccessDenied {
		t.Fatalf("fault: %+v %v", h, err)
	}

	b, err := ua.Encode(&ua.ActivateSessionResponse{ResponseHeader: &ua.ResponseHeader{
		Timestamp: ts, RequestHandle: 5, ServiceResult: ua.StatusOK,
		ServiceDiagnostics: &ua.DiagnosticInfo{}, AdditionalHeader: ua.NewExtensionObject(nil),
	}})
	if err != nil {
		t.Fatal(err)
	}
	tid := uint32(id.ActivateSessionResponse_Encoding_DefaultBinary)
	body = append([]byte{0x01, 0x00, byte(tid), byte(tid >> 8)}, b...)
	h, err = DecodeResponseHeader(body)
	if err != nil || h.TypeID != tid || h.RequestHandle != 5 || h.ServiceResult != 0 {
		t.Fatalf("activate: %+v %v", h, err)
	}
	for n := 0; n < 4+8+4+4; n++ {
		if _, err := DecodeResponseHeader(body[:n]); err == nil {
			t.Fatalf("%d-byte prefix decoded", n)
		}
	}
}
