package replay

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	"github.com/conduit-ot/conduit/replay/internal/synth"
)

// OPC UA session tracking in replay is the proxy's (opcua.Sessions): these
// captures show the two places where replay's own copy differed.

// uaFlow writes MSG chunks of one unencrypted OPC UA flow picked up
// mid-way (no handshake): requests and their responses, in order.
type uaFlow struct {
	t        *testing.T
	c        *synth.Conn
	reqID    uint32
	seq      [2]uint32
	handle   uint32
	sessions map[string]*ua.NodeID
}

func newUAFlow(t *testing.T, w *synth.Writer) *uaFlow {
	return &uaFlow{t: t, c: w.Conn(ap("10.0.0.5:51000"), ap("10.0.0.9:4840")), sessions: map[string]*ua.NodeID{}}
}

func (f *uaFlow) chunk(d synth.Dir, reqID uint32, typeID uint16, v any) {
	f.t.Helper()
	body, err := ua.Encode(v)
	if err != nil {
		f.t.Fatal(err)
	}
	f.send(d, reqID, append([]byte{0x01, 0x00, byte(typeID), byte(typeID >> 8)}, body...))
}

func (f *uaFlow) send(d synth.Dir, reqID uint32, body []byte) {
	f.t.Helper()
	i := 0
	if d == synth.ToClient {
		i = 1
	}
	f.seq[i]++
	b := []byte("MSGF")
	for _, v := range []uint32{uint32(24 + len(body)), 1, 1, f.seq[i], reqID} {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	must(f.t, f.c.Send(d, append(b, body...)))
}

// token is the AuthenticationToken of the session named name.
func (f *uaFlow) token(name string) *ua.NodeID {
	if f.sessions[name] == nil {
		f.sessions[name] = ua.NewByteStringNodeID(0, []byte("token-"+name))
	}
	return f.sessions[name]
}

func (f *uaFlow) header(session string) *ua.RequestHeader {
	f.handle++
	return &ua.RequestHeader{AuthenticationToken: f.token(session), Timestamp: time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC),
		RequestHandle: f.handle, AdditionalHeader: ua.NewExtensionObject(nil)}
}

func (f *uaFlow) respond(typeID uint16, status ua.StatusCode) {
	rh := &ua.ResponseHeader{RequestHandle: f.handle, ServiceResult: status, ServiceDiagnostics: &ua.DiagnosticInfo{}, AdditionalHeader: ua.NewExtensionObject(nil)}
	var v any
	switch typeID {
	case id.ActivateSessionResponse_Encoding_DefaultBinary:
		v = &ua.ActivateSessionResponse{ResponseHeader: rh}
	case id.CloseSessionResponse_Encoding_DefaultBinary:
		v = &ua.CloseSessionResponse{ResponseHeader: rh}
	default:
		v = &ua.ReadResponse{ResponseHeader: rh}
	}
	f.chunk(synth.ToClient, f.reqID, typeID, v)
}

// activate activates session name as user, answered Good.
func (f *uaFlow) activate(name, user string) {
	f.reqID++
	f.chunk(synth.ToServer, f.reqID, id.ActivateSessionRequest_Encoding_DefaultBinary, &ua.ActivateSessionRequest{
		RequestHeader: f.header(name), ClientSignature: &ua.SignatureData{},
		UserIdentityToken:  ua.NewExtensionObject(&ua.UserNameIdentityToken{PolicyID: "u", UserName: user, Password: []byte("pw")}),
		UserTokenSignature: &ua.SignatureData{},
	})
	f.respond(id.ActivateSessionResponse_Encoding_DefaultBinary, ua.StatusOK)
}

// read sends a Read in session name, answered.
func (f *uaFlow) read(name string) {
	f.reqID++
	f.chunk(synth.ToServer, f.reqID, id.ReadRequest_Encoding_DefaultBinary, &ua.ReadRequest{
		RequestHeader: f.header(name),
		NodesToRead:   []*ua.ReadValueID{{NodeID: ua.NewStringNodeID(2, "Setpoint"), AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{}}},
	})
	f.respond(id.ReadResponse_Encoding_DefaultBinary, ua.StatusOK)
}

// readUsers returns the session user of every Read, in order ("none"
// without a session).
func readUsers(s *recSink) []string {
	var users []string
	for _, r := range s.reqs {
		if r.op.Name != "read" {
			continue
		}
		if sess := r.op.OPCUA.Session; sess != nil {
			users = append(users, sess.UserName)
		} else {
			users = append(users, "none")
		}
	}
	return users
}

// Past opcua.MaxSessions sessions on a flow, the one activated first is
// forgotten, as in the proxy. Replay's copy forgot an arbitrary one (the
// first a map iteration gave), so a replay of the same capture could
// attribute different requests to no user from one run to the next.
func TestOPCUASessionsBoundForgetsTheOldest(t *testing.T) {
	const n = 64 + 1
	path := writeCapture(t, func(w *synth.Writer) {
		f := newUAFlow(t, w)
		for i := range n {
			f.activate(fmt.Sprint("s", i), fmt.Sprint("user", i))
		}
		for i := range n {
			f.read(fmt.Sprint("s", i))
		}
		must(t, f.c.Close())
	})
	s := decode(t, nil, path)
	if len(s.problems) != 0 || len(s.resps) != 2*n {
		t.Fatalf("problems %v, %d responses", s.problemReasons(), len(s.resps))
	}
	users := readUsers(s)
	if len(users) != n {
		t.Fatalf("%d reads", len(users))
	}
	for i, u := range users {
		want := fmt.Sprint("user", i)
		if i == 0 {
			want = "none"
		}
		if u != want {
			t.Errorf("read in session s%d runs as %s, want %s", i, u, want)
		}
	}
}

// A CloseSession refused as a protocol violation is never forwarded by the
// proxy, so its session goes on there: it ends no session in replay either,
// whatever the captured server answered. (Replay's copy ended it; for an
// ActivateSession both already required a request that decodes.)
func TestOPCUARefusedCloseSessionEndsNoSession(t *testing.T) {
	path := writeCapture(t, func(w *synth.Writer) {
		f := newUAFlow(t, w)
		f.activate("A", "alice")
		f.read("A")
		// DeleteSubscriptions, the body's last byte, is a Boolean: 2 is
		// not a valid encoding (Part 6 §5.2.2.1).
		body, err := ua.Encode(&ua.CloseSessionRequest{RequestHeader: f.header("A"), DeleteSubscriptions: true})
		must(t, err)
		body[len(body)-1] = 2
		tid := uint16(id.CloseSessionRequest_Encoding_DefaultBinary)
		f.reqID++
		f.send(synth.ToServer, f.reqID, append([]byte{0x01, 0x00, byte(tid), byte(tid >> 8)}, body...))
		f.respond(id.CloseSessionResponse_Encoding_DefaultBinary, ua.StatusOK)
		f.read("A")
		must(t, f.c.Close())
	})
	s := decode(t, nil, path)
	if len(s.problems) != 0 {
		t.Fatalf("problems %v", s.problemReasons())
	}
	var rules []string
	for _, r := range s.reqs {
		rules = append(rules, r.op.Name+":"+r.Rule)
	}
	if got := fmt.Sprint(rules); got != "[activate_session: read: close_session:protocol.invalid_encoding read:]" {
		t.Fatalf("requests %s", got)
	}
	if got := fmt.Sprint(readUsers(s)); got != "[alice alice]" {
		t.Errorf("reads run as %s, want alice both", got)
	}
}
