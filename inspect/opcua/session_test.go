package opcua

import (
	"fmt"
	"testing"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// Session tracking as the proxy and replay drive it: each request decoded
// by a Decoder, Attach, SessionChangeOf; each response's header to Response with
// the change of the request it answers.

const (
	statusGood      uint32 = 0
	statusUncertain uint32 = 0x40000000
	statusBadUser   uint32 = 0x801F0000 // Bad_UserAccessDenied
)

// sessionTokens are the AuthenticationTokens of the tests, by name. "i7"
// and "i7full" are the same NodeId, i=7, in its two-byte and its full
// numeric encoding.
var sessionTokens = map[string]*ua.NodeID{
	"null":   ua.NewNumericNodeID(0, 0),
	"A":      ua.NewByteStringNodeID(0, []byte("token-of-session-A")),
	"B":      ua.NewNumericNodeID(1, 4242),
	"C":      ua.NewGUIDNodeID(1, "72962B91-FA75-4AE6-8D28-B404DC7DAF63"),
	"i7":     ua.NewTwoByteNodeID(7),
	"i7full": ua.NewNumericNodeID(0, 7),
}

func tokenHeader(token string, handle uint32) *ua.RequestHeader {
	h := reqHeader(handle)
	if token != "" {
		tok, ok := sessionTokens[token]
		if !ok {
			tok = ua.NewStringNodeID(1, token) // any other name: a string token
		}
		h.AuthenticationToken = tok
	}
	return h
}

func activateBody(t testing.TB, token, user string) []byte {
	identity := ua.NewExtensionObject(&ua.AnonymousIdentityToken{PolicyID: "anon"})
	if user != "" {
		identity = ua.NewExtensionObject(&ua.UserNameIdentityToken{PolicyID: "u", UserName: user, Password: []byte("pw")})
	}
	return withTypeID(t, id.ActivateSessionRequest_Encoding_DefaultBinary, &ua.ActivateSessionRequest{
		RequestHeader:      tokenHeader(token, 1),
		ClientSignature:    &ua.SignatureData{},
		LocaleIDs:          []string{"en"},
		UserIdentityToken:  identity,
		UserTokenSignature: &ua.SignatureData{},
	})
}

func closeBody(t testing.TB, token string) []byte {
	return withTypeID(t, id.CloseSessionRequest_Encoding_DefaultBinary, &ua.CloseSessionRequest{
		RequestHeader: tokenHeader(token, 2), DeleteSubscriptions: true,
	})
}

func readAsBody(t testing.TB, token string) []byte {
	return withTypeID(t, id.ReadRequest_Encoding_DefaultBinary, &ua.ReadRequest{
		RequestHeader: tokenHeader(token, 3),
		NodesToRead:   []*ua.ReadValueID{{NodeID: ua.NewStringNodeID(2, "Setpoint"), AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{}}},
	})
}

// sessionRig is one connection's decoder and sessions.
type sessionRig struct {
	t  testing.TB
	d  *Decoder
	s  Sessions
	op opTest
}

func newSessionRig(t testing.TB) *sessionRig { return &sessionRig{t: t, d: NewDecoder(Limits{})} }

// request decodes body, attaches its session and returns its change and
// the session its operation shows ("none", "anonymous:" or
// "username:<name>").
func (r *sessionRig) request(body []byte) (SessionChange, string) {
	r.t.Helper()
	info, err := r.d.DecodeRequest(body, ChannelSecurity{Mode: SecurityModeNone}, &r.op.Operation)
	if err != nil {
		r.t.Fatal(err)
	}
	r.s.Attach(&r.op.Operation, &info)
	c := SessionChangeOf(&r.op.Operation, &info)
	sess := "none"
	if s := r.op.OPCUA.Session; s != nil {
		sess = s.IdentityType + ":" + s.UserName
	}
	return c, sess
}

// readAs is the session a Read with token runs in.
func (r *sessionRig) readAs(token string) string {
	r.t.Helper()
	c, sess := r.request(readAsBody(r.t, token))
	if !c.IsZero() {
		r.t.Fatalf("a Read asks a session change: %+v", c)
	}
	return sess
}

// sessionStep is one request of a test: an ActivateSession (user: "" for
// anonymous), a CloseSession, a Read whose session is checked, or the
// answer to an earlier, held request.
type sessionStep struct {
	do     string // "activate", "close", "read", "answer"
	token  string
	user   string
	hold   bool   // activate, close: not answered now (see "answer")
	ref    int    // answer: the index of the step answered
	rtype  uint32 // the response's type id; 0: the request's own response
	status uint32 // the response's ServiceResult
	want   string // read: the session the Read runs in
}

func activate(token, user string) sessionStep {
	return sessionStep{do: "activate", token: token, user: user}
}
func closeSession(token string) sessionStep { return sessionStep{do: "close", token: token} }
func readAs(token, want string) sessionStep {
	return sessionStep{do: "read", token: token, want: want}
}

func TestSessions(t *testing.T) {
	activateResp := uint32(id.ActivateSessionResponse_Encoding_DefaultBinary)
	closeResp := uint32(id.CloseSessionResponse_Encoding_DefaultBinary)
	for _, tc := range []struct {
		name  string
		steps []sessionStep
		n     int // sessions tracked at the end
	}{
		{"activate, good response, attach", []sessionStep{
			readAs("A", "none"), // before: no session
			activate("A", "alice"),
			readAs("A", "username:alice"),
			readAs("B", "none"),
			readAs("null", "none"),
			readAs("", "none"),
		}, 1},
		{"anonymous identity", []sessionStep{
			activate("A", ""),
			readAs("A", "anonymous:"),
		}, 1},
		{"bad response: no session", []sessionStep{
			{do: "activate", token: "A", user: "alice", status: statusBadUser},
			readAs("A", "none"),
		}, 0},
		{"uncertain response: no session", []sessionStep{
			{do: "activate", token: "A", user: "alice", status: statusUncertain},
			readAs("A", "none"),
		}, 0},
		{"service fault: no session", []sessionStep{
			{do: "activate", token: "A", user: "alice", rtype: id.ServiceFault_Encoding_DefaultBinary},
			readAs("A", "none"),
		}, 0},
		{"good response of another service: no session", []sessionStep{
			{do: "activate", token: "A", user: "alice", rtype: closeResp},
			readAs("A", "none"),
		}, 0},
		{"unanswered activate: no session", []sessionStep{
			{do: "activate", token: "A", user: "alice", hold: true},
			readAs("A", "none"),
		}, 0},
		{"the activate request shows the identity it asks for", []sessionStep{
			activate("A", "alice"),
			// ActivateSession on an existing session (a user change): the
			// request runs as the new identity, not the old session's.
			{do: "activate", token: "A", user: "bob", hold: true},
			readAs("A", "username:alice"),
			{do: "answer", ref: 1},
			readAs("A", "username:bob"),
		}, 1},
		{"close", []sessionStep{
			activate("A", "alice"),
			closeSession("A"),
			readAs("A", "none"),
		}, 0},
		{"close refused: the session stays", []sessionStep{
			activate("A", "alice"),
			{do: "close", token: "A", status: statusBadUser},
			readAs("A", "username:alice"),
			{do: "close", token: "A", rtype: activateResp},
			readAs("A", "username:alice"),
		}, 1},
		{"close before its response: the session stays until it", []sessionStep{
			activate("A", "alice"),
			{do: "close", token: "A", hold: true},
			readAs("A", "username:alice"),
			{do: "answer", ref: 1},
			readAs("A", "none"),
		}, 0},
		{"close of an unknown session", []sessionStep{
			activate("A", "alice"),
			closeSession("B"),
			readAs("A", "username:alice"),
		}, 1},
		{"two sessions on one channel", []sessionStep{
			activate("A", "alice"),
			activate("B", ""),
			readAs("A", "username:alice"),
			readAs("B", "anonymous:"),
			readAs("A", "username:alice"),
			readAs("C", "none"),
			closeSession("A"),
			readAs("A", "none"),
			readAs("B", "anonymous:"),
		}, 1},
		{"responses out of order", []sessionStep{
			{do: "activate", token: "A", user: "alice", hold: true},
			{do: "activate", token: "B", user: "bob", hold: true},
			{do: "answer", ref: 1},
			readAs("A", "none"),
			readAs("B", "username:bob"),
			{do: "answer", ref: 0},
			readAs("A", "username:alice"),
			readAs("B", "username:bob"),
		}, 2},
		{"a token encoded differently names no session", []sessionStep{
			activate("i7", "alice"),
			readAs("i7", "username:alice"),
			readAs("i7full", "none"),
			closeSession("i7full"), // closes nothing either
			readAs("i7", "username:alice"),
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newSessionRig(t)
			changes := make([]SessionChange, len(tc.steps))
			answer := func(i int) {
				st := tc.steps[i]
				rtype := st.rtype
				if rtype == 0 {
					rtype = activateResp
					if st.do == "close" {
						rtype = closeResp
					}
				}
				r.s.Response(changes[i], ResponseHeader{TypeID: rtype, ServiceResult: st.status})
			}
			for i, st := range tc.steps {
				var sess string
				switch st.do {
				case "activate":
					changes[i], sess = r.request(activateBody(t, st.token, st.user))
					want := "anonymous:"
					if st.user != "" {
						want = "username:" + st.user
					}
					if sess != want || changes[i].IsZero() {
						t.Fatalf("step %d: ActivateSession runs as %s (change %+v), want %s", i, sess, changes[i], want)
					}
				case "close":
					changes[i], _ = r.request(closeBody(t, st.token))
					if changes[i].IsZero() {
						t.Fatalf("step %d: CloseSession asks no change", i)
					}
				case "read":
					if got := r.readAs(st.token); got != st.want {
						t.Fatalf("step %d: Read with token %q runs as %s, want %s", i, st.token, got, st.want)
					}
				case "answer":
					answer(st.ref)
				}
				if (st.do == "activate" || st.do == "close") && !st.hold {
					answer(i)
				}
			}
			if r.s.Len() != tc.n {
				t.Errorf("%d sessions tracked, want %d", r.s.Len(), tc.n)
			}
		})
	}
}

// TestSessionsBound: past MaxSessions the session activated first is
// forgotten (the proxy's rule; replay forgot an arbitrary one), its
// requests run in no session; activating a known session again or closing
// one takes no slot.
func TestSessionsBound(t *testing.T) {
	r := newSessionRig(t)
	tok := func(i int) string { return fmt.Sprintf("s%d", i) }
	good := func(c SessionChange, typeID uint32) {
		r.s.Response(c, ResponseHeader{TypeID: typeID})
	}
	activateResp := uint32(id.ActivateSessionResponse_Encoding_DefaultBinary)
	for i := range MaxSessions {
		c, _ := r.request(activateBody(t, tok(i), tok(i)))
		good(c, activateResp)
	}
	if r.s.Len() != MaxSessions {
		t.Fatalf("%d sessions", r.s.Len())
	}
	// Activating s0 again (a new user) changes it in place: no eviction.
	c, _ := r.request(activateBody(t, tok(0), "again"))
	good(c, activateResp)
	if got := r.readAs(tok(0)); got != "username:again" || r.s.Len() != MaxSessions {
		t.Fatalf("s0: %s, %d sessions", got, r.s.Len())
	}
	// One more: s0, the oldest, goes; every other stays.
	c, _ = r.request(activateBody(t, tok(MaxSessions), tok(MaxSessions)))
	good(c, activateResp)
	if r.s.Len() != MaxSessions {
		t.Fatalf("%d sessions", r.s.Len())
	}
	if got := r.readAs(tok(0)); got != "none" {
		t.Fatalf("the oldest session is still attached: %s", got)
	}
	for i := 1; i <= MaxSessions; i++ {
		if got, want := r.readAs(tok(i)), "username:"+tok(i); got != want {
			t.Fatalf("%s runs as %s, want %s", tok(i), got, want)
		}
	}
	// Closing s1 frees a slot: the next activation evicts nothing, and the
	// one after evicts s2, now the oldest.
	c, _ = r.request(closeBody(t, tok(1)))
	good(c, uint32(id.CloseSessionResponse_Encoding_DefaultBinary))
	for _, i := range []int{MaxSessions + 1, MaxSessions + 2} {
		c, _ = r.request(activateBody(t, tok(i), tok(i)))
		good(c, activateResp)
	}
	for i, want := range map[int]string{1: "none", 2: "none", 3: "username:s3", MaxSessions + 1: "username:s65", MaxSessions + 2: "username:s66"} {
		if got := r.readAs(tok(i)); got != want {
			t.Errorf("%s runs as %s, want %s", tok(i), got, want)
		}
	}
	if r.s.Len() != MaxSessions {
		t.Errorf("%d sessions", r.s.Len())
	}
}

// Requests that decoded to no service, or opaque ones, change nothing.
func TestSessionRequestOfOtherMessages(t *testing.T) {
	var s Sessions
	var op opTest
	d := NewDecoder(Limits{})
	d.FillOpaque(MessageMsg, ChannelSecurity{Mode: SecurityModeSignAndEncrypt}, &op.Operation)
	info := RequestInfo{}
	s.Attach(&op.Operation, &info)
	if c := SessionChangeOf(&op.Operation, &info); !c.IsZero() || op.OPCUA.Session != nil {
		t.Fatalf("opaque: %+v %+v", c, op.OPCUA.Session)
	}
	s.Response(SessionChange{}, ResponseHeader{TypeID: id.ActivateSessionResponse_Encoding_DefaultBinary})
	if s.Len() != 0 {
		t.Fatal("a zero change activated a session")
	}
}

// ClosesConnection: the decode errors that end the connection are those of
// a body that does not match its own structure or breaks a cap; the rest
// refuse one request.
func TestClosesConnection(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{errorf(CodeTruncated, "x"), true},
		{errorf(CodeTrailingBytes, "x"), true},
		{errorf(CodeArrayTooLong, "x"), true},
		{errorf(CodeDepthExceeded, "x"), true},
		{errorf(CodeTooManyValues, "x"), true},
		{fmt.Errorf("wrapped: %w", ErrTruncated), true},
		{errorf(CodeUnknownService, "x"), false},
		{errorf(CodeUnknownExtObject, "x"), false},
		{errorf(CodeInvalidEncoding, "x"), false},
		{errorf(CodeUnexpectedMessage, "x"), false},
		{fmt.Errorf("not ours"), false},
		{nil, false},
	} {
		if got := ClosesConnection(tc.err); got != tc.want {
			t.Errorf("ClosesConnection(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	// From a real body: cut short, or with a byte too many.
	body := readAsBody(t, "A")
	var op opTest
	for _, b := range [][]byte{body[:len(body)-1], append(body[:len(body):len(body)], 0)} {
		if _, err := NewDecoder(Limits{}).DecodeRequest(b, ChannelSecurity{}, &op.Operation); !ClosesConnection(err) {
			t.Errorf("%d of %d bytes: %v does not close", len(b), len(body), err)
		}
	}
}
