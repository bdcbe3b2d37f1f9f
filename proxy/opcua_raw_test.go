package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// uaRaw is a hand-driven OPC UA client for attack tests: it writes the
// chunks a test builds (bodies encoded by gopcua, headers by hand), so the
// tests do not depend on the proxy's own encoders.
type uaRaw struct {
	t     testing.TB
	conn  net.Conn
	chID  uint32
	tokID uint32
	seq   uint32 // last sequence number sent
	reqID uint32 // last request id sent
}

const policyNone = "http://opcfoundation.org/UA/SecurityPolicy#None"

func dialUARaw(t testing.TB, addr string) *uaRaw {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &uaRaw{t: t, conn: c, seq: 50}
}

func le32(b []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(b, v) }

func uaString(b []byte, s string) []byte { return append(le32(b, uint32(len(s))), s...) }

// header prepends an 8-byte message header to body.
func header(typ string, chunkType byte, body []byte) []byte {
	b := append([]byte(typ), chunkType)
	b = le32(b, uint32(8+len(body)))
	return append(b, body...)
}

func hello(recv, send, maxMsg, maxChunks uint32, url string) []byte {
	var b []byte
	b = le32(b, 0) // protocol version
	b = le32(b, recv)
	b = le32(b, send)
	b = le32(b, maxMsg)
	b = le32(b, maxChunks)
	b = uaString(b, url)
	return header("HEL", 'F', b)
}

func (r *uaRaw) send(b []byte) {
	r.t.Helper()
	r.conn.SetWriteDeadline(time.Now().Add(3 * time.Second))
	if _, err := r.conn.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// recv reads one chunk.
func (r *uaRaw) recv() (typ string, chunk []byte, err error) {
	r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	h := make([]byte, 8)
	if _, err := io.ReadFull(r.conn, h); err != nil {
		return "", nil, err
	}
	n := binary.LittleEndian.Uint32(h[4:])
	if n < 8 || n > 1<<24 {
		return "", nil, errors.New("bad size")
	}
	b := make([]byte, n)
	copy(b, h)
	if _, err := io.ReadFull(r.conn, b[8:]); err != nil {
		return "", nil, err
	}
	return string(h[:4]), b, nil
}

func (r *uaRaw) mustRecv(want string) []byte {
	r.t.Helper()
	typ, b, err := r.recv()
	if err != nil {
		r.t.Fatalf("waiting for %s: %v", want, err)
	}
	if typ != want {
		r.t.Fatalf("got %s (% x), want %s", typ, b[:min(len(b), 48)], want)
	}
	return b
}

// expectERR reads until an ERR arrives, returns its status, and checks that
// the proxy then closes the connection.
func (r *uaRaw) expectERR() uint32 {
	r.t.Helper()
	for {
		typ, b, err := r.recv()
		if err != nil {
			r.t.Fatalf("waiting for ERR: %v", err)
		}
		if typ == "ERRF" {
			r.expectClosed()
			return binary.LittleEndian.Uint32(b[8:])
		}
	}
}

func (r *uaRaw) expectClosed() {
	r.t.Helper()
	r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	for {
		_, err := r.conn.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			r.t.Fatal("connection still open")
		}
		return
	}
}

// typed prefixes a gopcua encoding with its four-byte type id.
func typed(t testing.TB, typeID uint16, v any) []byte {
	t.Helper()
	b, err := ua.Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{0x01, 0x00, byte(typeID), byte(typeID >> 8)}, b...)
}

func rawReqHeader(handle uint32) *ua.RequestHeader {
	return &ua.RequestHeader{
		AuthenticationToken: ua.NewTwoByteNodeID(0),
		Timestamp:           time.Now(),
		RequestHandle:       handle,
		TimeoutHint:         5000,
		AdditionalHeader:    ua.NewExtensionObject(nil),
	}
}

// open runs HEL/ACK and an OpenSecureChannel under SecurityPolicy None.
func (r *uaRaw) open(addr string) {
	r.t.Helper()
	r.send(hello(65535, 65535, 0, 0, "opc.tcp://"+addr))
	r.mustRecv("ACKF")
	body := typed(r.t, id.OpenSecureChannelRequest_Encoding_DefaultBinary, &ua.OpenSecureChannelRequest{
		RequestHeader:     rawReqHeader(1),
		RequestType:       ua.SecurityTokenRequestTypeIssue,
		SecurityMode:      ua.MessageSecurityModeNone,
		ClientNonce:       []byte{},
		RequestedLifetime: 600000,
	})
	var b []byte
	b = le32(b, 0) // secure channel id
	b = uaString(b, policyNone)
	b = le32(b, 0xFFFFFFFF) // no certificate
	b = le32(b, 0xFFFFFFFF) // no thumbprint
	r.seq++
	r.reqID++
	b = le32(b, r.seq)
	b = le32(b, r.reqID)
	r.send(header("OPN", 'F', append(b, body...)))
	resp := r.mustRecv("OPNF")
	// Asymmetric header: channel id, policy uri, certificate, thumbprint.
	off := 12
	for i := 0; i < 3; i++ {
		n := binary.LittleEndian.Uint32(resp[off:])
		off += 4
		if n != 0xFFFFFFFF {
			off += int(n)
		}
	}
	off += 8 // sequence header
	var osc ua.OpenSecureChannelResponse
	if _, err := ua.Decode(resp[off+4:], &osc); err != nil {
		r.t.Fatalf("OPN response: %v", err)
	}
	r.chID, r.tokID = osc.SecurityToken.ChannelID, osc.SecurityToken.TokenID
}

// msgChunk builds a MSG chunk with the next sequence number (plus skip) and
// the given request id.
func (r *uaRaw) msgChunk(chunkType byte, reqID uint32, body []byte, skip uint32) []byte {
	r.seq += 1 + skip
	var b []byte
	b = le32(b, r.chID)
	b = le32(b, r.tokID)
	b = le32(b, r.seq)
	b = le32(b, reqID)
	return header("MSG", chunkType, append(b, body...))
}

// request sends body as one final MSG chunk with a new request id.
func (r *uaRaw) request(body []byte) uint32 {
	r.reqID++
	r.send(r.msgChunk('F', r.reqID, body, 0))
	return r.reqID
}

// response reads MSG chunks until a final one and returns its request id
// and the decoded service.
func (r *uaRaw) response() (uint32, any) {
	r.t.Helper()
	b := r.mustRecv("MSGF")
	reqID := binary.LittleEndian.Uint32(b[20:])
	_, svc, err := ua.DecodeService(b[24:])
	if err != nil {
		r.t.Fatalf("decode response: %v", err)
	}
	return reqID, svc
}

func readBody(t testing.TB, handle uint32, node string) []byte {
	return typed(t, id.ReadRequest_Encoding_DefaultBinary, &ua.ReadRequest{
		RequestHeader:      rawReqHeader(handle),
		TimestampsToReturn: ua.TimestampsToReturnBoth,
		NodesToRead: []*ua.ReadValueID{{
			NodeID: ua.MustParseNodeID(node), AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{},
		}},
	})
}

func writeBody(t testing.TB, handle uint32, node string, v any) []byte {
	return typed(t, id.WriteRequest_Encoding_DefaultBinary, &ua.WriteRequest{
		RequestHeader: rawReqHeader(handle),
		NodesToWrite: []*ua.WriteValue{{
			NodeID: ua.MustParseNodeID(node), AttributeID: ua.AttributeIDValue,
			Value: &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(v)},
		}},
	})
}

// session creates and activates a session with the given identity token
// and returns its AuthenticationToken.
func (r *uaRaw) session(t testing.TB, identity any) *ua.NodeID {
	t.Helper()
	r.request(typed(t, id.CreateSessionRequest_Encoding_DefaultBinary, &ua.CreateSessionRequest{
		RequestHeader:           rawReqHeader(100),
		ClientDescription:       &ua.ApplicationDescription{ApplicationName: ua.NewLocalizedText("raw"), ApplicationURI: "urn:raw"},
		EndpointURL:             "opc.tcp://raw",
		SessionName:             "raw",
		ClientNonce:             make([]byte, 32),
		RequestedSessionTimeout: 60000,
	}))
	_, svc := r.response()
	cs, ok := svc.(*ua.CreateSessionResponse)
	if !ok {
		t.Fatalf("CreateSession: %T %+v", svc, svc)
	}
	hdr := rawReqHeader(101)
	hdr.AuthenticationToken = cs.AuthenticationToken
	r.request(typed(t, id.ActivateSessionRequest_Encoding_DefaultBinary, &ua.ActivateSessionRequest{
		RequestHeader:      hdr,
		ClientSignature:    &ua.SignatureData{},
		LocaleIDs:          []string{},
		UserIdentityToken:  ua.NewExtensionObject(identity),
		UserTokenSignature: &ua.SignatureData{},
	}))
	if _, svc := r.response(); svc == nil {
		t.Fatal("ActivateSession: no response")
	} else if _, ok := svc.(*ua.ActivateSessionResponse); !ok {
		t.Fatalf("ActivateSession: %T %+v", svc, svc)
	}
	return cs.AuthenticationToken
}

func readBodyAs(t testing.TB, token *ua.NodeID, handle uint32, node string) []byte {
	hdr := rawReqHeader(handle)
	hdr.AuthenticationToken = token
	return typed(t, id.ReadRequest_Encoding_DefaultBinary, &ua.ReadRequest{
		RequestHeader:      hdr,
		TimestampsToReturn: ua.TimestampsToReturnBoth,
		NodesToRead: []*ua.ReadValueID{{
			NodeID: ua.MustParseNodeID(node), AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{},
		}},
	})
}
