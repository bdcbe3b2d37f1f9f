package opcua

import (
	"bytes"
	"testing"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// readResponseWithRange is a ReadResponse, encoded by gopcua, whose one
// value is an ExtensionObject (a Range, i=886), and the offset of that
// object's type id namespace byte.
func readResponseWithRange(t testing.TB) ([]byte, int) {
	t.Helper()
	ts := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	body := withTypeID(t, id.ReadResponse_Encoding_DefaultBinary, &ua.ReadResponse{
		ResponseHeader: &ua.ResponseHeader{Timestamp: ts, RequestHandle: 3, ServiceDiagnostics: &ua.DiagnosticInfo{}, AdditionalHeader: ua.NewExtensionObject(nil)},
		Results: []*ua.DataValue{
			{EncodingMask: ua.DataValueValue | ua.DataValueSourceTimestamp, Value: ua.MustVariant(ua.NewExtensionObject(&ua.Range{Low: 1, High: 9})), SourceTimestamp: ts},
			{EncodingMask: ua.DataValueValue, Value: ua.MustVariant([]float64{1, 2, 3})},
		},
	})
	// The Range's type id: a four-byte NodeId 0x01 <ns> 0x76 0x03 (886).
	i := bytes.Index(body, []byte{0x01, 0x00, 0x76, 0x03})
	if i < 0 {
		t.Fatal("no Range type id in the encoding")
	}
	return body, i + 1
}

func TestValidateResponse(t *testing.T) {
	ok := map[string][]byte{}
	ok["read"], _ = readResponseWithRange(t)
	ok["fault"] = AppendServiceFaultBody(nil, 7, time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC), StatusBadUserAccessDenied)
	ok["write"] = withTypeID(t, id.WriteResponse_Encoding_DefaultBinary, &ua.WriteResponse{ResponseHeader: respHeader(4), Results: []ua.StatusCode{ua.StatusOK, ua.StatusBadNotWritable}})
	ok["get_endpoints"] = withTypeID(t, id.GetEndpointsResponse_Encoding_DefaultBinary, &ua.GetEndpointsResponse{ResponseHeader: respHeader(5),
		Endpoints: []*ua.EndpointDescription{endpoint("opc.tcp://plc:4840", []byte{1, 2, 3})}})
	ok["browse"] = withTypeID(t, id.BrowseResponse_Encoding_DefaultBinary, &ua.BrowseResponse{ResponseHeader: respHeader(6),
		Results: []*ua.BrowseResult{{StatusCode: ua.StatusOK, References: []*ua.ReferenceDescription{{
			ReferenceTypeID: ua.NewNumericNodeID(0, 47), IsForward: true, NodeID: ua.NewExpandedNodeID(ua.NewStringNodeID(1, "Setpoint"), "", 0),
			BrowseName: &ua.QualifiedName{NamespaceIndex: 1, Name: "Setpoint"}, DisplayName: ua.NewLocalizedText("Setpoint"),
			NodeClass: ua.NodeClassVariable, TypeDefinition: ua.NewExpandedNodeID(ua.NewNumericNodeID(0, 63), "", 0)}}}}})
	for name, body := range ok {
		if err := ValidateResponse(body, Limits{}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	// A structure of the server's own namespace (a vendor DataType) is
	// passed by its length: legitimate in a Read response, refused in a
	// request.
	vendor, ns := readResponseWithRange(t)
	vendor = bytes.Clone(vendor)
	vendor[ns] = 2
	if err := ValidateResponse(vendor, Limits{}); err != nil {
		t.Errorf("vendor structure: %v", err)
	}

	read := ok["read"]
	bad := []struct {
		name string
		body []byte
		code Code
	}{
		{"trailing byte", append(bytes.Clone(read), 0), CodeTrailingBytes},
		{"truncated", read[:len(read)-1], CodeTruncated},
		{"a request type", withTypeID(t, id.ReadRequest_Encoding_DefaultBinary, &ua.ReadRequest{RequestHeader: reqHeader(1)}), CodeUnknownService},
		{"not a service", withTypeID(t, id.Range_Encoding_DefaultBinary, &ua.Range{}), CodeUnknownService},
		{"vendor type id", append([]byte{0x01, 0x02, 0x10, 0x27}, read[4:]...), CodeUnknownService},
		{"empty", nil, CodeTruncated},
	}
	for _, tc := range bad {
		if err := ValidateResponse(tc.body, Limits{}); CodeOf(err) != tc.code {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}

	// A count beyond the bytes that remain fails before anything is
	// allocated: the WriteResponse's Results count set to 2^29.
	w := bytes.Clone(ok["write"])
	i := bytes.Index(w, []byte{0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3B, 0x80}) // 2, Good, BadNotWritable
	if i < 0 {
		t.Fatal("no Results count")
	}
	copy(w[i:], []byte{0x00, 0x00, 0x00, 0x20})
	allocs := testing.AllocsPerRun(10, func() { ValidateResponse(w, Limits{}) })
	if err := ValidateResponse(w, Limits{}); CodeOf(err) != CodeArrayTooLong {
		t.Errorf("huge count: %v", err)
	}
	if allocs > 16 {
		t.Errorf("huge count: %.0f allocations", allocs)
	}
}

func FuzzValidateResponse(f *testing.F) {
	read, _ := readResponseWithRange(f)
	f.Add(read)
	f.Add(AppendServiceFaultBody(nil, 7, time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC), StatusBadUserAccessDenied))
	f.Fuzz(func(t *testing.T, data []byte) {
		err := ValidateResponse(data, Limits{})
		if err == nil && len(data) < 4+8+4+4 {
			t.Fatalf("a %d-byte response validated", len(data))
		}
	})
}
