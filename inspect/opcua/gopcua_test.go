package opcua

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// Tests against an independent encoder: gopcua's ua package encodes, this
// package decodes (and the reverse for the encoders). gopcua never decodes
// untrusted bytes here.

// withTypeID prefixes an encoded service with its four-byte type id.
func withTypeID(t testing.TB, typeID uint16, v any) []byte {
	t.Helper()
	b, err := ua.Encode(v)
	if err != nil {
		t.Fatalf("gopcua encode %T: %v", v, err)
	}
	return append([]byte{0x01, 0x00, byte(typeID), byte(typeID >> 8)}, b...)
}

func reqHeader(handle uint32) *ua.RequestHeader {
	return &ua.RequestHeader{
		AuthenticationToken: ua.NewNumericNodeID(0, 0),
		Timestamp:           time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC),
		RequestHandle:       handle,
		AdditionalHeader:    ua.NewExtensionObject(nil),
	}
}

var (
	tStructPtrs = map[reflect.Type]func() reflect.Value{
		reflect.TypeFor[*ua.NodeID]():          func() reflect.Value { return reflect.ValueOf(ua.NewNumericNodeID(2, 7)) },
		reflect.TypeFor[*ua.ExpandedNodeID]():  func() reflect.Value { return reflect.ValueOf(ua.NewStringExpandedNodeID(1, "x")) },
		reflect.TypeFor[*ua.ExtensionObject](): func() reflect.Value { return reflect.ValueOf(ua.NewExtensionObject(nil)) },
		reflect.TypeFor[*ua.Variant]():         func() reflect.Value { return reflect.ValueOf(ua.MustVariant(int32(7))) },
		reflect.TypeFor[*ua.DataValue]():       func() reflect.Value { return reflect.ValueOf(&ua.DataValue{}) },
		reflect.TypeFor[*ua.DiagnosticInfo]():  func() reflect.Value { return reflect.ValueOf(&ua.DiagnosticInfo{}) },
		reflect.TypeFor[*ua.LocalizedText]():   func() reflect.Value { return reflect.ValueOf(ua.NewLocalizedText("t")) },
		reflect.TypeFor[*ua.GUID]():            func() reflect.Value { return reflect.ValueOf(ua.NewGUID("72962B91-FA75-4AE6-8D28-B404DC7DAF63")) },
	}
)

// fill sets every pointer and slice of v (one element per slice) so that
// gopcua encodes a complete structure.
func fill(v reflect.Value, depth int) {
	switch v.Kind() {
	case reflect.Pointer:
		if mk, ok := tStructPtrs[v.Type()]; ok {
			v.Set(mk())
			return
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		fill(v.Elem(), depth)
	case reflect.Struct:
		if v.Type() == tTime {
			return
		}
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), depth)
			}
		}
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 || depth > 3 {
			return
		}
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(s.Index(0), depth+1)
		v.Set(s)
	case reflect.String:
		v.SetString("s")
	}
}

func TestEveryServiceDecodesGopcuaEncoding(t *testing.T) {
	d := NewDecoder(Limits{})
	for _, svc := range Services() {
		t.Run(svc.Name, func(t *testing.T) {
			v := reflect.New(svc.goType)
			fill(v, 0)
			v.Elem().Field(0).Set(reflect.ValueOf(reqHeader(4242)))
			if hu, ok := v.Interface().(*ua.HistoryUpdateRequest); ok {
				// A detail without body is refused (nothing to inspect).
				hu.HistoryUpdateDetails = []*ua.ExtensionObject{ua.NewExtensionObject(&ua.DeleteAtTimeDetails{NodeID: ua.NewNumericNodeID(1, 1)})}
			}
			body := withTypeID(t, uint16(svc.TypeID), v.Interface())
			var op opTest
			info, err := d.DecodeRequest(body, ChannelSecurity{Mode: SecurityModeNone}, &op.Operation)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if info.Service != svc || info.RequestHandle != 4242 || info.HasAuthToken {
				t.Errorf("info %+v", info)
			}
			if op.Name != svc.OpName || op.Access != svc.Access || op.OPCUA.Service != svc.Name || op.OPCUA.TypeID != svc.TypeID {
				t.Errorf("op %s %v %s %d", op.Name, op.Access, op.OPCUA.Service, op.OPCUA.TypeID)
			}
			// Every proper prefix fails: nothing decodes short.
			for n := 0; n < len(body); n++ {
				if _, err := d.DecodeRequest(body[:n], ChannelSecurity{}, &op.Operation); err == nil {
					t.Fatalf("prefix of %d/%d bytes decoded", n, len(body))
				}
			}
		})
	}
}

func TestIndependentEncoderWrite(t *testing.T) {
	when := time.Date(2026, 11, 22, 9, 30, 0, 123456700, time.UTC)
	values := []struct {
		v        any
		want     any
		typeName string
	}{
		{float64(21.5), 21.5, "Double"},
		{float32(1.25), 1.25, "Float"},
		{int32(-7), int64(-7), "Int32"},
		{uint16(65535), int64(65535), "UInt16"},
		{int64(math.MinInt64), int64(math.MinInt64), "Int64"},
		{uint64(math.MaxUint64), "18446744073709551615", "UInt64"},
		{true, true, "Boolean"},
		{"auto", "auto", "String"},
		{[]byte{1, 2, 3}, "AQID", "ByteString"},
		{when, "2026-11-22T09:30:00.1234567Z", "DateTime"},
		{[]int32{1, 2, 3}, []any{int64(1), int64(2), int64(3)}, "Int32"},
		{[]string{"a", "b"}, []any{"a", "b"}, "String"},
		{ua.NewLocalizedTextWithLocale("hi", "en"), map[string]any{"locale": "en", "text": "hi"}, "LocalizedText"},
		{ua.NewStringNodeID(3, "Tag"), "ns=3;s=Tag", "NodeId"},
		{&ua.QualifiedName{NamespaceIndex: 2, Name: "Q"}, "2:Q", "QualifiedName"},
		{math.NaN(), "NaN", "Double"},
		{ua.NewExtensionObject(&ua.Range{Low: 1, High: 9}), map[string]any{"type_id": "i=886", "type": "Range", "body": map[string]any{"Low": 1.0, "High": 9.0}}, "ExtensionObject"},
	}
	nodes := []*ua.NodeID{
		ua.NewStringNodeID(1, "Setpoint"),
		ua.NewNumericNodeID(0, 2258),
		ua.NewGUIDNodeID(2, "09087E75-8E5E-499B-954F-F2A9603DB28A"),
		ua.NewByteStringNodeID(3, []byte{0x33, 0xf4, 0x5b, 0x28}),
		ua.NewNumericNodeID(7, 100000),
	}
	nodeStrings := []string{"ns=1;s=Setpoint", "i=2258", "ns=2;g=09087e75-8e5e-499b-954f-f2a9603db28a", "ns=3;b=M/RbKA==", "ns=7;i=100000"}
	req := &ua.WriteRequest{RequestHeader: reqHeader(77)}
	var want []inspect.OPCUAWrite
	for i, v := range values {
		req.NodesToWrite = append(req.NodesToWrite, &ua.WriteValue{
			NodeID:      nodes[i%len(nodes)],
			AttributeID: ua.AttributeIDValue,
			IndexRange:  map[bool]string{true: "1:2", false: ""}[i == 10],
			Value:       &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(v.v)},
		})
		want = append(want, inspect.OPCUAWrite{NodeID: nodeStrings[i%len(nodes)], Attribute: "Value",
			IndexRange: map[bool]string{true: "1:2", false: ""}[i == 10], Value: v.want, Type: v.typeName})
	}
	req.NodesToWrite = append(req.NodesToWrite, &ua.WriteValue{
		NodeID: ua.NewNumericNodeID(1, 5), AttributeID: ua.AttributeIDDisplayName,
		Value: &ua.DataValue{EncodingMask: ua.DataValueValue | ua.DataValueStatusCode | ua.DataValueSourceTimestamp, Value: ua.MustVariant(ua.NewLocalizedText("x")), Status: ua.StatusBadInternalError, SourceTimestamp: when},
	})
	want = append(want, inspect.OPCUAWrite{NodeID: "ns=1;i=5", Attribute: "DisplayName", Value: map[string]any{"locale": "", "text": "x"}, Type: "LocalizedText"})

	body := withTypeID(t, id.WriteRequest_Encoding_DefaultBinary, req)
	d := NewDecoder(Limits{})
	var op opTest
	info, err := d.DecodeRequest(body, ChannelSecurity{Mode: SecurityModeNone}, &op.Operation)
	if err != nil {
		t.Fatal(err)
	}
	if info.RequestHandle != 77 || op.Name != "write" || op.Access != inspect.AccessWrite {
		t.Errorf("info %+v op %s", info, op.Name)
	}
	if len(op.OPCUA.Writes) != len(want) {
		t.Fatalf("%d writes, want %d", len(op.OPCUA.Writes), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(op.OPCUA.Writes[i], want[i]) {
			t.Errorf("write %d:\n got %#v\nwant %#v", i, op.OPCUA.Writes[i], want[i])
		}
	}
}

func TestIndependentEncoderCallAddNodesNodes(t *testing.T) {
	d := NewDecoder(Limits{})
	sec := ChannelSecurity{Mode: SecurityModeNone}
	t.Run("call", func(t *testing.T) {
		req := &ua.CallRequest{RequestHeader: reqHeader(5), MethodsToCall: []*ua.CallMethodRequest{
			{ObjectID: ua.NewStringNodeID(1, "Pump"), MethodID: ua.NewStringNodeID(1, "Start"), InputArguments: []*ua.Variant{ua.MustVariant(int32(3)), ua.MustVariant("fast")}},
			{ObjectID: ua.NewNumericNodeID(0, 85), MethodID: ua.NewNumericNodeID(1, 9)},
		}}
		var op opTest
		if _, err := d.DecodeRequest(withTypeID(t, id.CallRequest_Encoding_DefaultBinary, req), sec, &op.Operation); err != nil {
			t.Fatal(err)
		}
		want := []inspect.OPCUACall{
			{ObjectID: "ns=1;s=Pump", MethodID: "ns=1;s=Start", Arguments: []any{int64(3), "fast"}},
			{ObjectID: "i=85", MethodID: "ns=1;i=9", Arguments: []any{}},
		}
		if !reflect.DeepEqual(op.OPCUA.Calls, want) {
			t.Errorf("calls %#v", op.OPCUA.Calls)
		}
	})
	t.Run("add_nodes", func(t *testing.T) {
		req := &ua.AddNodesRequest{RequestHeader: reqHeader(6), NodesToAdd: []*ua.AddNodesItem{{
			ParentNodeID:       ua.NewNumericExpandedNodeID(0, 85),
			ReferenceTypeID:    ua.NewNumericNodeID(0, 35),
			RequestedNewNodeID: ua.NewStringExpandedNodeID(2, "NewVar"),
			BrowseName:         &ua.QualifiedName{NamespaceIndex: 2, Name: "NewVar"},
			NodeClass:          ua.NodeClassVariable,
			NodeAttributes: ua.NewExtensionObject(&ua.VariableAttributes{
				DisplayName: ua.NewLocalizedText("NewVar"), Description: ua.NewLocalizedText(""),
				Value: ua.MustVariant(float64(1)), DataType: ua.NewNumericNodeID(0, 11),
			}),
			TypeDefinition: ua.NewNumericExpandedNodeID(0, 63),
		}}}
		var op opTest
		if _, err := d.DecodeRequest(withTypeID(t, id.AddNodesRequest_Encoding_DefaultBinary, req), sec, &op.Operation); err != nil {
			t.Fatal(err)
		}
		want := []inspect.OPCUANode{{NodeID: "ns=2;s=NewVar", ParentID: "i=85", ReferenceType: "i=35", NodeClass: "Variable", BrowseName: "2:NewVar"}}
		if !reflect.DeepEqual(op.OPCUA.Nodes, want) || op.Access != inspect.AccessWrite || op.Name != "add_nodes" {
			t.Errorf("nodes %#v", op.OPCUA.Nodes)
		}
	})
	t.Run("references_and_deletes", func(t *testing.T) {
		var op opTest
		add := &ua.AddReferencesRequest{RequestHeader: reqHeader(7), ReferencesToAdd: []*ua.AddReferencesItem{{
			SourceNodeID: ua.NewStringNodeID(1, "A"), ReferenceTypeID: ua.NewNumericNodeID(0, 47), IsForward: true,
			TargetNodeID: ua.NewStringExpandedNodeID(1, "B"), TargetNodeClass: ua.NodeClassObject,
		}}}
		if _, err := d.DecodeRequest(withTypeID(t, id.AddReferencesRequest_Encoding_DefaultBinary, add), sec, &op.Operation); err != nil {
			t.Fatal(err)
		}
		if want := []inspect.OPCUANode{{NodeID: "ns=1;s=A", ParentID: "ns=1;s=B", ReferenceType: "i=47"}}; !reflect.DeepEqual(op.OPCUA.Nodes, want) {
			t.Errorf("add references %#v", op.OPCUA.Nodes)
		}
		del := &ua.DeleteReferencesRequest{RequestHeader: reqHeader(8), ReferencesToDelete: []*ua.DeleteReferencesItem{{
			SourceNodeID: ua.NewStringNodeID(1, "A"), ReferenceTypeID: ua.NewNumericNodeID(0, 47), TargetNodeID: ua.NewStringExpandedNodeID(1, "B"),
		}}}
		if _, err := d.DecodeRequest(withTypeID(t, id.DeleteReferencesRequest_Encoding_DefaultBinary, del), sec, &op.Operation); err != nil {
			t.Fatal(err)
		}
		if want := []inspect.OPCUANode{{NodeID: "ns=1;s=A", ParentID: "ns=1;s=B", ReferenceType: "i=47"}}; !reflect.DeepEqual(op.OPCUA.Nodes, want) {
			t.Errorf("delete references %#v", op.OPCUA.Nodes)
		}
		dn := &ua.DeleteNodesRequest{RequestHeader: reqHeader(9), NodesToDelete: []*ua.DeleteNodesItem{{NodeID: ua.NewStringNodeID(4, "Gone"), DeleteTargetReferences: true}}}
		if _, err := d.DecodeRequest(withTypeID(t, id.DeleteNodesRequest_Encoding_DefaultBinary, dn), sec, &op.Operation); err != nil {
			t.Fatal(err)
		}
		if want := []inspect.OPCUANode{{NodeID: "ns=4;s=Gone"}}; !reflect.DeepEqual(op.OPCUA.Nodes, want) || op.Name != "delete_nodes" {
			t.Errorf("delete nodes %#v", op.OPCUA.Nodes)
		}
	})
	t.Run("history_update", func(t *testing.T) {
		req := &ua.HistoryUpdateRequest{RequestHeader: reqHeader(10), HistoryUpdateDetails: []*ua.ExtensionObject{
			ua.NewExtensionObject(&ua.UpdateDataDetails{NodeID: ua.NewStringNodeID(1, "Hist"), PerformInsertReplace: ua.PerformUpdateTypeReplace,
				UpdateValues: []*ua.DataValue{{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(float64(3.5))}, {EncodingMask: ua.DataValueValue, Value: ua.MustVariant(int32(4))}}}),
			ua.NewExtensionObject(&ua.DeleteRawModifiedDetails{NodeID: ua.NewStringNodeID(1, "Hist")}),
		}}
		var op opTest
		if _, err := d.DecodeRequest(withTypeID(t, id.HistoryUpdateRequest_Encoding_DefaultBinary, req), sec, &op.Operation); err != nil {
			t.Fatal(err)
		}
		want := []inspect.OPCUAWrite{
			{NodeID: "ns=1;s=Hist", Attribute: "Value", Value: 3.5, Type: "Double"},
			{NodeID: "ns=1;s=Hist", Attribute: "Value", Value: int64(4), Type: "Int32"},
			{NodeID: "ns=1;s=Hist", Attribute: "Value", Type: "Delete"},
		}
		if !reflect.DeepEqual(op.OPCUA.Writes, want) || op.Access != inspect.AccessWrite {
			t.Errorf("history writes %#v", op.OPCUA.Writes)
		}
	})
}

func TestIndependentEncoderActivateSession(t *testing.T) {
	d := NewDecoder(Limits{})
	for _, tc := range []struct {
		token *ua.ExtensionObject
		want  inspect.OPCUASession
	}{
		{ua.NewExtensionObject(&ua.UserNameIdentityToken{PolicyID: "u", UserName: "operator", Password: []byte("s3cret!")}), inspect.OPCUASession{IdentityType: "username", UserName: "operator"}},
		{ua.NewExtensionObject(&ua.AnonymousIdentityToken{PolicyID: "anon"}), inspect.OPCUASession{IdentityType: "anonymous"}},
		{ua.NewExtensionObject(&ua.IssuedIdentityToken{PolicyID: "jwt", TokenData: []byte("eyJ")}), inspect.OPCUASession{IdentityType: "issued"}},
		{ua.NewExtensionObject(nil), inspect.OPCUASession{IdentityType: "anonymous"}},
	} {
		req := &ua.ActivateSessionRequest{
			RequestHeader:      reqHeader(3),
			ClientSignature:    &ua.SignatureData{},
			LocaleIDs:          []string{"en"},
			UserIdentityToken:  tc.token,
			UserTokenSignature: &ua.SignatureData{},
		}
		body := withTypeID(t, id.ActivateSessionRequest_Encoding_DefaultBinary, req)
		var op opTest
		if _, err := d.DecodeRequest(body, ChannelSecurity{Mode: SecurityModeNone}, &op.Operation); err != nil {
			t.Fatal(err)
		}
		if op.OPCUA.Session == nil || *op.OPCUA.Session != tc.want {
			t.Errorf("session %+v, want %+v", op.OPCUA.Session, tc.want)
		}
		if strings.Contains(strings.ToLower(op.OPCUA.Session.UserName), "s3cret") {
			t.Error("password exposed")
		}
	}
	// A token type that is not an identity token is denied.
	req := &ua.ActivateSessionRequest{RequestHeader: reqHeader(3), ClientSignature: &ua.SignatureData{},
		UserIdentityToken: ua.NewExtensionObject(&ua.Range{}), UserTokenSignature: &ua.SignatureData{}}
	var op opTest
	if _, err := d.DecodeRequest(withTypeID(t, id.ActivateSessionRequest_Encoding_DefaultBinary, req), ChannelSecurity{}, &op.Operation); !errors.Is(err, ErrUnknownExtObject) {
		t.Errorf("Range as identity token: %v", err)
	}
}

func TestServiceFaultDecodesWithGopcua(t *testing.T) {
	ts := time.Date(2026, 11, 22, 12, 0, 0, 500, time.UTC)
	chunk := AppendServiceFault(nil, FaultParams{SecureChannelID: 2, TokenID: 1, SequenceNumber: 9, RequestID: 8, RequestHandle: 0xCAFE, Timestamp: ts})
	h, err := ParseHeader(chunk, DefaultMaxChunkSize)
	if err != nil || h.Type != MessageMsg || h.ChunkType != ChunkFinal || int(h.Size) != len(chunk) {
		t.Fatalf("header %+v %v", h, err)
	}
	if le32(chunk[8:]) != 2 || le32(chunk[12:]) != 1 || le32(chunk[16:]) != 9 || le32(chunk[20:]) != 8 {
		t.Errorf("ids % x", chunk[8:24])
	}
	typeID, v, err := ua.DecodeService(chunk[24:])
	if err != nil {
		t.Fatal(err)
	}
	sf, ok := v.(*ua.ServiceFault)
	if !ok || typeID.NodeID.IntID() != id.ServiceFault_Encoding_DefaultBinary {
		t.Fatalf("decoded %T %v", v, typeID)
	}
	if sf.ResponseHeader.RequestHandle != 0xCAFE || sf.ResponseHeader.ServiceResult != ua.StatusBadUserAccessDenied || !sf.ResponseHeader.Timestamp.Equal(ts.Truncate(100)) {
		t.Errorf("fault %+v", sf.ResponseHeader)
	}
	// A custom status.
	chunk = AppendServiceFault(chunk[:0], FaultParams{RequestHandle: 1, Status: StatusBadServiceUnsupported})
	if _, v, err := ua.DecodeService(chunk[24:]); err != nil || v.(*ua.ServiceFault).ResponseHeader.ServiceResult != ua.StatusBadServiceUnsupported {
		t.Errorf("custom status: %v", err)
	}
}

func endpoint(url string, cert []byte) *ua.EndpointDescription {
	return &ua.EndpointDescription{
		EndpointURL: url,
		Server: &ua.ApplicationDescription{ApplicationURI: "urn:plc", ProductURI: "urn:p", ApplicationName: ua.NewLocalizedText("PLC"),
			ApplicationType: ua.ApplicationTypeServer, DiscoveryURLs: []string{url}},
		ServerCertificate: cert, SecurityMode: ua.MessageSecurityModeNone, SecurityPolicyURI: PolicyNone,
		UserIdentityTokens:  []*ua.UserTokenPolicy{{PolicyID: "anon", TokenType: ua.UserTokenTypeAnonymous}},
		TransportProfileURI: "http://opcfoundation.org/UA-Profile/Transport/uatcp-uasc-uabinary",
	}
}

func respHeader(handle uint32) *ua.ResponseHeader {
	return &ua.ResponseHeader{RequestHandle: handle, ServiceDiagnostics: &ua.DiagnosticInfo{}, AdditionalHeader: ua.NewExtensionObject(nil)}
}

func TestRewriteEndpointURLsGopcua(t *testing.T) {
	rewrite := func(s string) string {
		return strings.Replace(s, "opc.tcp://plc:4840", "opc.tcp://conduit.example:14840", 1)
	}
	cert := bytes.Repeat([]byte{0xAB}, 100000) // forces several chunks
	t.Run("get_endpoints", func(t *testing.T) {
		resp := &ua.GetEndpointsResponse{ResponseHeader: respHeader(4), Endpoints: []*ua.EndpointDescription{
			endpoint("opc.tcp://plc:4840", cert), endpoint("opc.tcp://plc:4840/other", nil),
		}}
		body := withTypeID(t, id.GetEndpointsResponse_Encoding_DefaultBinary, resp)
		out, changed, err := RewriteEndpointURLs(nil, body, rewrite, Limits{})
		if err != nil || !changed {
			t.Fatalf("changed %v err %v", changed, err)
		}
		_, v, err := ua.DecodeService(out)
		if err != nil {
			t.Fatal(err)
		}
		got := v.(*ua.GetEndpointsResponse)
		if got.Endpoints[0].EndpointURL != "opc.tcp://conduit.example:14840" || got.Endpoints[1].EndpointURL != "opc.tcp://conduit.example:14840/other" {
			t.Errorf("urls %q %q", got.Endpoints[0].EndpointURL, got.Endpoints[1].EndpointURL)
		}
		// The server's discovery URLs lead through the proxy too.
		if d := got.Endpoints[1].Server.DiscoveryURLs; len(d) != 1 || d[0] != "opc.tcp://conduit.example:14840/other" {
			t.Errorf("discovery urls %q", d)
		}
		if !bytes.Equal(got.Endpoints[0].ServerCertificate, cert) || got.ResponseHeader.RequestHandle != 4 || got.Endpoints[0].Server.ApplicationURI != "urn:plc" || got.Endpoints[0].TransportProfileURI != "http://opcfoundation.org/UA-Profile/Transport/uatcp-uasc-uabinary" {
			t.Error("other fields changed")
		}
		// Through the Channel: re-chunked within the negotiated size.
		c := session(t, Config{})
		msg := &Message{Direction: ServerToClient, Type: MessageMsg, Complete: true, SecureChannelID: 2, TokenID: 1, RequestID: 3, Body: body}
		var ren Renumberer
		ren.Forward(1) // the OPN response
		ren.Drop(2)    // the original response chunk is replaced
		seqs := []uint32{}
		chunks, changed, err := c.RewriteEndpoints(nil, msg, rewrite, func() uint32 { s, _ := ren.Inject(); seqs = append(seqs, s); return s })
		if err != nil || !changed {
			t.Fatal(err)
		}
		var joined []byte
		n := 0
		for rest := chunks; len(rest) > 0; n++ {
			k, h, err := Split(rest, c.MaxChunkSize(ServerToClient))
			if err != nil || k == 0 {
				t.Fatalf("split: %v", err)
			}
			if k > int(c.MaxChunkSize(ServerToClient)) || (len(rest) > k) != (h.ChunkType == ChunkIntermediate) {
				t.Errorf("chunk %d: %d bytes, type %c", n, k, h.ChunkType)
			}
			joined = append(joined, rest[24:k]...)
			rest = rest[k:]
		}
		if !bytes.Equal(joined, out) || n < 2 {
			t.Errorf("%d chunks do not carry the rewritten body", n)
		}
		if seqs[0] != 2 || seqs[len(seqs)-1] != uint32(1+len(seqs)) {
			t.Errorf("sequence numbers %v", seqs)
		}
	})
	t.Run("create_session", func(t *testing.T) {
		resp := &ua.CreateSessionResponse{
			ResponseHeader: respHeader(2), SessionID: ua.NewNumericNodeID(1, 1), AuthenticationToken: ua.NewByteStringNodeID(0, []byte{1, 2}),
			RevisedSessionTimeout: 1000, ServerEndpoints: []*ua.EndpointDescription{endpoint("opc.tcp://plc:4840", nil)},
			ServerSignature: &ua.SignatureData{}, MaxRequestMessageSize: 0,
		}
		body := withTypeID(t, id.CreateSessionResponse_Encoding_DefaultBinary, resp)
		out, changed, err := RewriteEndpointURLs(nil, body, rewrite, Limits{})
		if err != nil || !changed {
			t.Fatal(changed, err)
		}
		_, v, err := ua.DecodeService(out)
		if err != nil {
			t.Fatal(err)
		}
		got := v.(*ua.CreateSessionResponse)
		if got.ServerEndpoints[0].EndpointURL != "opc.tcp://conduit.example:14840" || got.RevisedSessionTimeout != 1000 {
			t.Errorf("got %+v", got.ServerEndpoints[0])
		}
		// Trailing garbage after the response is refused.
		if _, _, err := RewriteEndpointURLs(nil, append(body, 0), rewrite, Limits{}); !errors.Is(err, ErrTrailingBytes) {
			t.Errorf("trailing: %v", err)
		}
	})
	t.Run("find_servers", func(t *testing.T) {
		// FindServers → a DiscoveryUrl → GetEndpoints: every discovery URL
		// of every listed server points at the proxy; nothing else changes.
		srv := endpoint("opc.tcp://plc:4840/disc", nil).Server
		srv.DiscoveryURLs = []string{"opc.tcp://plc:4840/disc", "opc.tcp://plc:4841"}
		none := &ua.ApplicationDescription{ApplicationURI: "urn:other", ApplicationName: ua.NewLocalizedText("x"), ApplicationType: ua.ApplicationTypeClient}
		body := withTypeID(t, id.FindServersResponse_Encoding_DefaultBinary, &ua.FindServersResponse{ResponseHeader: respHeader(9), Servers: []*ua.ApplicationDescription{srv, none}})
		out, changed, err := RewriteEndpointURLs(nil, body, rewrite, Limits{})
		if err != nil || !changed {
			t.Fatal(changed, err)
		}
		_, v, err := ua.DecodeService(out)
		if err != nil {
			t.Fatal(err)
		}
		got := v.(*ua.FindServersResponse)
		if d := got.Servers[0].DiscoveryURLs; len(d) != 2 || d[0] != "opc.tcp://conduit.example:14840/disc" || d[1] != "opc.tcp://plc:4841" {
			t.Errorf("discovery urls %q", d)
		}
		if got.Servers[0].ApplicationURI != "urn:plc" || got.Servers[1].ApplicationURI != "urn:other" || len(got.Servers[1].DiscoveryURLs) != 0 || got.ResponseHeader.RequestHandle != 9 {
			t.Errorf("other fields changed: %+v %+v", got.Servers[0], got.Servers[1])
		}
		if _, _, err := RewriteEndpointURLs(nil, append(body, 0), rewrite, Limits{}); !errors.Is(err, ErrTrailingBytes) {
			t.Errorf("trailing: %v", err)
		}
	})
	t.Run("other_response_unchanged", func(t *testing.T) {
		body := withTypeID(t, id.ReadResponse_Encoding_DefaultBinary, &ua.ReadResponse{ResponseHeader: respHeader(1)})
		out, changed, err := RewriteEndpointURLs(nil, body, rewrite, Limits{})
		if err != nil || changed || !bytes.Equal(out, body) {
			t.Errorf("changed %v err %v", changed, err)
		}
	})
	t.Run("not_under_sign", func(t *testing.T) {
		c := NewChannel(Config{SecurityMode: SecurityModeSign})
		c.mode = SecurityModeSign
		if _, _, err := c.RewriteEndpoints(nil, &Message{Direction: ServerToClient, Type: MessageMsg, Complete: true}, rewrite, func() uint32 { return 0 }); !errors.Is(err, ErrNotRewritable) {
			t.Errorf("sign: %v", err)
		}
	})
}

// TestCaptureRequestsCanonical supports forwarding the validated original
// bytes (see doc.go, "Forwarding"): for every request in the captures,
// gopcua's independent encoder re-encodes what it decodes to the received
// bytes, except that gopcua writes an empty String as null (-1) where
// node-opcua writes length 0: those 4-byte length fields are the only
// difference allowed. (The decoder validated the bytes first, so gopcua's
// unbounded decoder is safe here.)
func TestCaptureRequestsCanonical(t *testing.T) {
	total, exact, emptyVsNull := 0, 0, 0
	for _, tc := range captureCounts {
		st := replay(t, tc.file, func(int) Config { return tc.cfg })
		for _, body := range st.bodies {
			total++
			tid, v, err := ua.DecodeService(body)
			if err != nil {
				t.Errorf("%s: gopcua decode: %v", tc.file, err)
				continue
			}
			re, err := ua.Encode(v)
			if err != nil {
				t.Errorf("%s: gopcua encode: %v", tc.file, err)
				continue
			}
			prefix, _ := tid.Encode()
			re = append(prefix, re...)
			switch {
			case bytes.Equal(re, body):
				exact++
			case onlyEmptyVsNullStrings(body, re):
				emptyVsNull++
			default:
				t.Errorf("%s: %T re-encodes differently:\n% x\n% x", tc.file, v, body, re)
			}
		}
	}
	t.Logf("%d capture requests: %d re-encode byte for byte, %d differ only in empty vs null strings", total, exact, emptyVsNull)
	want := 0
	for _, tc := range captureCounts {
		for _, n := range tc.requests {
			want += n
		}
	}
	if total != want {
		t.Errorf("%d requests, want %d", total, want)
	}
}

// onlyEmptyVsNullStrings reports whether a and b have the same length and
// differ only in aligned runs where one has 00000000 and the other ffffffff.
func onlyEmptyVsNullStrings(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); {
		if a[i] == b[i] {
			i++
			continue
		}
		if i+4 > len(a) {
			return false
		}
		x, y := binary.LittleEndian.Uint32(a[i:]), binary.LittleEndian.Uint32(b[i:])
		if !(x == 0 && y == 0xFFFFFFFF) && !(x == 0xFFFFFFFF && y == 0) {
			return false
		}
		i += 4
	}
	return true
}
