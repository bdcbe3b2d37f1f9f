package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/sim"
)

// Attacks on an OPC UA listener, each from a hand-built client: the right
// refusal, nothing of it reaches the server, and a bystander session on the
// same listener keeps working.

type uaRig struct {
	srv       *sim.OPCUAServer
	rec       *memRecorder
	tp        *tap
	l         *Listener
	bystander *opcua.Client
	ctx       context.Context
}

func newUARig(t *testing.T, opcuaSection, extra string, simOpts sim.OPCUAOptions) *uaRig {
	t.Helper()
	simOpts.CountEvery = -1
	r := &uaRig{srv: startSimUA(t, simOpts), rec: &memRecorder{}, tp: &tap{}}
	r.l = startUAProxy(t, uaListenerConfig(t, r.srv.Addr(), opcuaSection, extra), referencePolicy(t), r.rec, r.tp)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	r.ctx = ctx
	r.bystander = gopcuaClient(t, ctx, proxyURL(r.l))
	return r
}

// stillWorks checks the bystander session: a read and an allowed write.
func (r *uaRig) stillWorks(t *testing.T) {
	t.Helper()
	if _, err := r.bystander.Node(ua.MustParseNodeID(sim.OPCUASetpoint)).Value(r.ctx); err != nil {
		t.Fatalf("bystander read: %v", err)
	}
	resp, err := r.bystander.Write(r.ctx, writeReq(sim.OPCUASetpoint, 10.0))
	if err != nil || resp.Results[0] != ua.StatusOK {
		t.Fatalf("bystander write: %v %v", resp, err)
	}
}

// upstreamTypes lists the chunk types the proxy sent on upstream
// connection i.
func (r *uaRig) upstreamTypes(t *testing.T, i int) string {
	var types []string
	for _, c := range splitChunks(t, r.tp.sent(i)) {
		types = append(types, c.typ+string(c.chunkType))
	}
	return strings.Join(types, " ")
}

// lastMalformed returns the rule of the last malformed-frame event.
func (r *uaRig) lastMalformed(t *testing.T) audit.Event {
	t.Helper()
	var evs []audit.Event
	waitFor(t, "malformed-frame event", func() bool {
		evs = r.rec.byAction(audit.ActionMalformed)
		return len(evs) > 0
	})
	return evs[len(evs)-1]
}

const (
	statusTooLarge         = 0x80800000
	statusDecodingError    = 0x80070000
	statusSequenceInvalid  = 0x80880000
	statusTimeout          = 0x800A0000
	statusTooManyOps       = 0x80100000
	statusUserAccessDenied = 0x801F0000
	statusInternalError    = 0x80020000
)

func TestOPCUAAttacks(t *testing.T) {
	r := newUARig(t, chunkLimits, "", sim.OPCUAOptions{})
	addr := r.l.Addr().String()

	t.Run("chunk flood without a final chunk", func(t *testing.T) {
		c := dialUARaw(t, addr)
		c.open(addr)
		up := r.tp.count() - 1
		c.reqID++
		part := make([]byte, 4000)
		for i := 0; i < 200; i++ {
			c.conn.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := c.conn.Write(c.msgChunk('C', c.reqID, part, 0)); err != nil {
				break // the proxy closed the connection
			}
		}
		if st := c.expectERR(); st != statusTooLarge {
			t.Fatalf("ERR 0x%08X", st)
		}
		if got := r.upstreamTypes(t, up); got != "HELF OPNF" {
			t.Fatalf("upstream saw %s", got)
		}
		if ev := r.lastMalformed(t); ev.Rule != "framing.limit_chunk_count" {
			t.Fatalf("malformed event %+v", ev)
		}
		r.stillWorks(t)
	})

	t.Run("declared size beyond the limit", func(t *testing.T) {
		c := dialUARaw(t, addr)
		// The HEL asks for 16 MiB buffers: the server is offered the
		// proxy's 8 KiB, and the client is told 8 KiB.
		c.send(hello(16<<20, 16<<20, 0, 0, "opc.tcp://"+addr))
		ack := c.mustRecv("ACKF")
		if recv, send := binary.LittleEndian.Uint32(ack[12:]), binary.LittleEndian.Uint32(ack[16:]); recv > 8192 || send > 8192 {
			t.Fatalf("ACK to the client: receive %d, send %d", recv, send)
		}
		up := r.tp.count() - 1
		hel := splitChunks(t, r.tp.sent(up))[0].raw
		if recv, send := binary.LittleEndian.Uint32(hel[12:]), binary.LittleEndian.Uint32(hel[16:]); recv != 8192 || send != 8192 {
			t.Fatalf("HEL to the server: receive %d, send %d", recv, send)
		}
		// A chunk declaring 2 GiB: refused on its header, before its body.
		c.send([]byte{'M', 'S', 'G', 'F', 0xFF, 0xFF, 0xFF, 0x7F})
		if st := c.expectERR(); st != statusTooLarge {
			t.Fatalf("ERR 0x%08X", st)
		}
		if got := r.upstreamTypes(t, up); got != "HELF" {
			t.Fatalf("upstream saw %s", got)
		}
		r.stillWorks(t)
	})

	t.Run("huge array count", func(t *testing.T) {
		// The WriteRequest that makes gopcua v0.9.0 allocate 2^29 elements:
		// a NodesToWrite count of 2^29 in a message of a few dozen bytes.
		c := dialUARaw(t, addr)
		c.open(addr)
		up := r.tp.count() - 1
		body := writeBody(t, 9, sim.OPCUASetpoint, 1.0)
		hdr, err := ua.Encode(rawReqHeader(9))
		if err != nil {
			t.Fatal(err)
		}
		binary.LittleEndian.PutUint32(body[4+len(hdr):], 1<<29)
		writes := len(r.srv.Writes())
		c.request(body)
		if st := c.expectERR(); st != statusDecodingError {
			t.Fatalf("ERR 0x%08X", st)
		}
		if got := r.upstreamTypes(t, up); got != "HELF OPNF" {
			t.Fatalf("upstream saw %s", got)
		}
		if len(r.srv.Writes()) != writes {
			t.Fatal("the server received a write")
		}
		if ev := r.lastMalformed(t); ev.Rule != "decode.array_too_long" || len(ev.Bytes) == 0 {
			t.Fatalf("malformed event %+v", ev)
		}
		r.stillWorks(t)
	})

	t.Run("sequence number gap", func(t *testing.T) {
		c := dialUARaw(t, addr)
		c.open(addr)
		up := r.tp.count() - 1
		c.request(readBody(t, 3, sim.OPCUASetpoint))
		if id, _ := c.response(); id != c.reqID {
			t.Fatalf("response to %d", id)
		}
		c.reqID++
		c.send(c.msgChunk('F', c.reqID, readBody(t, 4, sim.OPCUASetpoint), 1)) // skips one number
		if st := c.expectERR(); st != statusSequenceInvalid {
			t.Fatalf("ERR 0x%08X", st)
		}
		if got := r.upstreamTypes(t, up); got != "HELF OPNF MSGF" {
			t.Fatalf("upstream saw %s", got)
		}
		if ev := r.lastMalformed(t); ev.Rule != "framing.bad_sequence_number" {
			t.Fatalf("malformed event %+v", ev)
		}
		r.stillWorks(t)
	})

	for _, tc := range []struct {
		name string
		edit func([]byte) []byte
		rule string
	}{
		{"a message longer than what it encodes", func(b []byte) []byte { return append(b, 0) }, "decode.trailing_bytes"},
		{"a message shorter than what it encodes", func(b []byte) []byte { return b[:len(b)-1] }, "decode.truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialUARaw(t, addr)
			c.open(addr)
			up := r.tp.count() - 1
			writes := len(r.srv.Writes())
			c.request(tc.edit(writeBody(t, 5, sim.OPCUASetpoint, 20.0)))
			if st := c.expectERR(); st != statusDecodingError {
				t.Fatalf("ERR 0x%08X", st)
			}
			if got := r.upstreamTypes(t, up); got != "HELF OPNF" {
				t.Fatalf("upstream saw %s", got)
			}
			if len(r.srv.Writes()) != writes {
				t.Fatal("the server received a write")
			}
			if ev := r.lastMalformed(t); ev.Rule != tc.rule {
				t.Fatalf("malformed event %+v", ev)
			}
			r.stillWorks(t)
		})
	}

	t.Run("denied write over a raw channel", func(t *testing.T) {
		// The ServiceFault answers the request's RequestId and
		// RequestHandle, and the next response follows it in sequence.
		c := dialUARaw(t, addr)
		c.open(addr)
		writes := len(r.srv.Writes())
		reqID := c.request(writeBody(t, 77, sim.OPCUASetpoint, 99999.0))
		b := c.mustRecv("MSGF")
		faultSeq := binary.LittleEndian.Uint32(b[16:])
		_, svc, err := ua.DecodeService(b[24:])
		if err != nil {
			t.Fatal(err)
		}
		f, ok := svc.(*ua.ServiceFault)
		if !ok || binary.LittleEndian.Uint32(b[20:]) != reqID || f.ResponseHeader.RequestHandle != 77 || f.ResponseHeader.ServiceResult != statusUserAccessDenied {
			t.Fatalf("answer %T %+v", svc, svc)
		}
		c.request(readBody(t, 78, sim.OPCUASetpoint))
		b = c.mustRecv("MSGF")
		if seq := binary.LittleEndian.Uint32(b[16:]); seq != faultSeq+1 {
			t.Fatalf("sequence %d after the fault's %d", seq, faultSeq)
		}
		if len(r.srv.Writes()) != writes {
			t.Fatal("the server received the denied write")
		}
	})

	t.Run("idle client", func(t *testing.T) {
		lc := uaListenerConfig(t, r.srv.Addr(), "", "    timeouts:\n      idle: 300ms")
		rec := &memRecorder{}
		l := startUAProxy(t, lc, referencePolicy(t), rec, nil)
		c := dialUARaw(t, l.Addr().String())
		c.open(l.Addr().String())
		c.expectClosed()
		waitFor(t, "connection-close event", func() bool { return len(rec.byAction(audit.ActionConnectionClose)) == 1 })
		if ev := rec.byAction(audit.ActionConnectionClose)[0]; ev.Reason != "idle timeout" {
			t.Fatalf("close reason %q", ev.Reason)
		}
	})

	t.Run("no HEL", func(t *testing.T) {
		// The handshake timeout is 10s by default; a second listener with
		// a short one shows it.
		lc := uaListenerConfig(t, r.srv.Addr(), "", "    timeouts:\n      handshake: 200ms")
		l := startUAProxy(t, lc, referencePolicy(t), r.rec, nil)
		c := dialUARaw(t, l.Addr().String())
		start := time.Now()
		if st := c.expectERR(); st != statusTimeout {
			t.Fatalf("ERR 0x%08X", st)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("closed after %s", d)
		}
	})
}

// A request the server never answers gets Bad_Timeout on a None channel;
// the session goes on. Requests beyond max_outstanding are refused with
// Bad_TooManyOperations without reaching the server.
func TestOPCUAResponseTimeoutAndOutstanding(t *testing.T) {
	r := newUARig(t, "", "    max_outstanding: 2\n    timeouts:\n      response: 400ms",
		sim.OPCUAOptions{Unanswered: []string{sim.OPCUAMode}})
	addr := r.l.Addr().String()
	c := dialUARaw(t, addr)
	c.open(addr)
	first := c.request(writeBody(t, 11, sim.OPCUAMode, "a"))
	second := c.request(writeBody(t, 12, sim.OPCUAMode, "b"))
	third := c.request(writeBody(t, 13, sim.OPCUAMode, "c"))

	faults := map[uint32]*ua.ServiceFault{}
	for len(faults) < 3 {
		reqID, svc := c.response()
		f, ok := svc.(*ua.ServiceFault)
		if !ok {
			t.Fatalf("answer %T", svc)
		}
		if len(faults) == 0 && reqID != third {
			t.Fatalf("first answer for request %d, want the refused %d", reqID, third)
		}
		faults[reqID] = f
	}
	if f := faults[third]; f.ResponseHeader.ServiceResult != statusTooManyOps || f.ResponseHeader.RequestHandle != 13 {
		t.Fatalf("third: %+v", f.ResponseHeader)
	}
	for reqID, handle := range map[uint32]uint32{first: 11, second: 12} {
		if f := faults[reqID]; f.ResponseHeader.ServiceResult != statusTimeout || f.ResponseHeader.RequestHandle != handle {
			t.Fatalf("request %d: %+v", reqID, f.ResponseHeader)
		}
	}
	// The server received the two it hangs on, not the refused third.
	if w := r.srv.Writes(); len(w) != 2 {
		t.Fatalf("server received %d writes", len(w))
	}
	// The channel goes on, renumbered around the injected faults.
	id := c.request(readBody(t, 14, sim.OPCUASetpoint))
	if got, svc := c.response(); got != id {
		t.Fatalf("response %d %T", got, svc)
	}
	r.stillWorks(t)
}

// An allowed write whose audit event cannot be written is denied.
func TestOPCUAAuditFailureDeniesWrite(t *testing.T) {
	r := newUARig(t, "", "", sim.OPCUAOptions{})
	r.rec.fail = func(ev *audit.Event) bool {
		return ev.Action == audit.ActionRequest && ev.Allowed && ev.Op != nil && ev.Op.Name == "write"
	}
	writes := len(r.srv.Writes())
	_, err := r.bystander.Write(r.ctx, writeReq(sim.OPCUASetpoint, 10.0))
	if !errors.Is(err, ua.StatusBadInternalError) {
		t.Fatalf("write with a failing audit: %v", err)
	}
	if len(r.srv.Writes()) != writes {
		t.Fatal("the server received a write whose audit event was not written")
	}
	if _, err := r.bystander.Node(ua.MustParseNodeID(sim.OPCUASetpoint)).Value(r.ctx); err != nil {
		t.Fatalf("read after: %v", err)
	}
}

// Two sessions on one secure channel: each request is attributed to the
// session its AuthenticationToken names, not to the last one activated.
func TestOPCUATwoSessionsOnOneChannel(t *testing.T) {
	r := newUARig(t, "", "", sim.OPCUAOptions{})
	addr := r.l.Addr().String()
	c := dialUARaw(t, addr)
	c.open(addr)
	alice := c.session(t, &ua.UserNameIdentityToken{PolicyID: "username", UserName: "alice", Password: []byte("pw")})
	anon := c.session(t, &ua.AnonymousIdentityToken{PolicyID: "anonymous"})

	users := func() []string {
		var out []string
		for _, ev := range requestEvents(r.rec, "read") {
			if ev.ConnID != r.rec.byAction(audit.ActionConnectionOpen)[1].ConnID {
				continue // the bystander's
			}
			s := ev.Op.OPCUA.Session
			if s == nil {
				out = append(out, "none")
			} else {
				out = append(out, s.IdentityType+":"+s.UserName)
			}
		}
		return out
	}
	for i, tok := range []*ua.NodeID{alice, anon, alice, ua.NewNumericNodeID(0, 4242)} {
		c.request(readBodyAs(t, tok, uint32(200+i), sim.OPCUASetpoint))
		c.response()
	}
	if got := strings.Join(users(), ","); got != "username:alice,anonymous:,username:alice,none" {
		t.Fatalf("sessions of the reads: %s", got)
	}
}

// A CloseSession the proxy refuses as a protocol violation never reaches
// the server: its session goes on, and later requests still run in it. A
// valid CloseSession, once the server accepted it, ends it. (Replay follows
// the same rule: opcua.Sessions.)
func TestOPCUARefusedCloseSessionKeepsTheSession(t *testing.T) {
	r := newUARig(t, "", "", sim.OPCUAOptions{})
	addr := r.l.Addr().String()
	c := dialUARaw(t, addr)
	c.open(addr)
	alice := c.session(t, &ua.UserNameIdentityToken{PolicyID: "username", UserName: "alice", Password: []byte("pw")})
	closeBody := func(handle uint32) []byte {
		hdr := rawReqHeader(handle)
		hdr.AuthenticationToken = alice
		return typed(t, id.CloseSessionRequest_Encoding_DefaultBinary, &ua.CloseSessionRequest{RequestHeader: hdr, DeleteSubscriptions: true})
	}
	read := func(handle uint32) {
		t.Helper()
		reqID := c.request(readBodyAs(t, alice, handle, sim.OPCUASetpoint))
		if got, svc := c.response(); got != reqID {
			t.Fatalf("answer to %d (%T), want the read %d", got, svc, reqID)
		}
	}

	read(300)
	bad := closeBody(301)
	bad[len(bad)-1] = 2 // DeleteSubscriptions: a Boolean must be 0 or 1
	c.request(bad)
	if _, svc := c.response(); svc.(*ua.ServiceFault).ResponseHeader.ServiceResult != ua.StatusBadDecodingError {
		t.Fatalf("malformed CloseSession: %+v", svc)
	}
	read(302)
	c.request(closeBody(303))
	if _, svc := c.response(); svc.(*ua.CloseSessionResponse).ResponseHeader.ServiceResult != ua.StatusOK {
		t.Fatalf("CloseSession: %+v", svc)
	}
	read(304)

	var got []string
	for _, ev := range r.rec.byAction(audit.ActionRequest) {
		if ev.Op == nil || ev.ConnID != r.rec.byAction(audit.ActionConnectionOpen)[1].ConnID {
			continue // the bystander's
		}
		switch ev.Op.Name {
		case "read", "close_session":
			user := "none"
			if s := ev.Op.OPCUA.Session; s != nil {
				user = s.UserName
			}
			if strings.HasPrefix(ev.Rule, "protocol.") {
				user += ":" + ev.Rule
			}
			got = append(got, ev.Op.Name+":"+user)
		}
	}
	want := "read:alice close_session:none:protocol.invalid_encoding read:alice close_session:alice read:none"
	if strings.Join(got, " ") != want {
		t.Fatalf("requests\n%s\nwant\n%s", strings.Join(got, " "), want)
	}
}

// The policy's deny actions on a None channel: drop withholds the request
// without an answer and the channel goes on (renumbered); reset ends the
// connection with a TCP reset.
func TestOPCUADenyActions(t *testing.T) {
	srv := startSimUA(t, sim.OPCUAOptions{CountEvery: -1})
	for _, action := range []policy.Action{policy.ActionDrop, policy.ActionReset} {
		t.Run(action.String(), func(t *testing.T) {
			rec := &memRecorder{}
			d := &funcDecider{fn: func(in *policy.Input) policy.Decision {
				if in.Op.Access == inspect.AccessWrite {
					return policy.Decision{Reason: "no writes", Action: action}
				}
				return policy.Decision{Allow: true, Reason: "ok"}
			}}
			l := startUAProxy(t, uaListenerConfig(t, srv.Addr(), "", ""), d, rec, nil)
			addr := l.Addr().String()
			c := dialUARaw(t, addr)
			c.open(addr)
			writes := len(srv.Writes())
			c.request(writeBody(t, 21, sim.OPCUASetpoint, 1.0))
			if action == policy.ActionReset {
				c.expectClosed()
			} else {
				// No answer to the write; the next request is answered, in
				// sequence.
				id := c.request(readBody(t, 22, sim.OPCUASetpoint))
				if got, svc := c.response(); got != id {
					t.Fatalf("answer to %d (%T), want the read %d", got, svc, id)
				}
			}
			if len(srv.Writes()) != writes {
				t.Fatal("the server received the denied write")
			}
			evs := requestEvents(rec, "write")
			if len(evs) != 1 || evs[0].Allowed || evs[0].DenyAction != action.String() || evs[0].StatusCode != 0 {
				t.Fatalf("events %+v", evs)
			}
		})
	}
}
