package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	"github.com/conduit-ot/conduit/audit"
)

// Red-team attacks on the OPC UA path that the other tests do not cover.

// rawUAServer is a hand-written OPC UA server (SecurityPolicy None) for
// server misbehaviour no real implementation produces on purpose: it
// answers HEL and OPN, records every MSG it receives and hands each
// request to handle, which answers with reply.
type rawUAServer struct {
	t      *testing.T
	addr   string
	handle func(s *rawUAConn, reqID uint32, req any)
	seq0   uint32 // the number before the server's first chunk

	mu   sync.Mutex
	msgs []any // every MSG request received, decoded
}

type rawUAConn struct {
	srv     *rawUAServer
	conn    net.Conn
	partial map[uint32][]byte // the serve goroutine's
	mu      sync.Mutex
	seq     uint32
	tok     uint32 // the token of its MSG chunks; 0: rawUAToken
}

const rawUAChannel, rawUAToken = 7, 9

func startRawUAServer(t *testing.T, handle func(s *rawUAConn, reqID uint32, req any)) *rawUAServer {
	t.Helper()
	return startRawUAServerAt(t, 0, handle)
}

// startRawUAServerAt starts a rawUAServer whose first sequence number
// follows seq0.
func startRawUAServerAt(t *testing.T, seq0 uint32, handle func(s *rawUAConn, reqID uint32, req any)) *rawUAServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &rawUAServer{t: t, addr: ln.Addr().String(), handle: handle, seq0: seq0}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(&rawUAConn{srv: s, conn: conn, seq: s.seq0})
		}
	}()
	return s
}

func (s *rawUAServer) received() []any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]any(nil), s.msgs...)
}

func readUAChunk(r io.Reader) ([]byte, error) {
	h := make([]byte, 8)
	if _, err := io.ReadFull(r, h); err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint32(h[4:])
	if n < 8 || n > 1<<20 {
		return nil, errors.New("bad size")
	}
	b := make([]byte, n)
	copy(b, h)
	_, err := io.ReadFull(r, b[8:])
	return b, err
}

func (s *rawUAServer) serve(c *rawUAConn) {
	defer c.conn.Close()
	for {
		b, err := readUAChunk(c.conn)
		if err != nil {
			return
		}
		switch string(b[:3]) {
		case "HEL":
			var ack []byte
			ack = le32(ack, 0)
			ack = le32(ack, 65535)
			ack = le32(ack, 65535)
			ack = le32(ack, 0)
			ack = le32(ack, 0)
			c.write(header("ACK", 'F', ack))
		case "OPN":
			// Asymmetric header of a None OPN: channel id, policy,
			// certificate, thumbprint; then the sequence header.
			reqID := binary.LittleEndian.Uint32(b[16+int(binary.LittleEndian.Uint32(b[12:]))+8+4:])
			c.mu.Lock()
			c.writeOpenResponseLocked(s.t, reqID, rawUAToken)
			c.mu.Unlock()
		case "MSG":
			reqID := binary.LittleEndian.Uint32(b[20:])
			if c.partial == nil {
				c.partial = map[uint32][]byte{}
			}
			body := append(c.partial[reqID], b[24:]...)
			if b[3] == 'C' {
				c.partial[reqID] = body
				continue
			}
			delete(c.partial, reqID)
			if b[3] == 'A' {
				continue
			}
			_, req, err := ua.DecodeService(body)
			if err != nil {
				s.t.Errorf("server: undecodable request: %v", err)
				return
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, req)
			s.mu.Unlock()
			s.handle(c, reqID, req)
		case "CLO":
			return
		}
	}
}

// writeOpenResponseLocked sends an OpenSecureChannelResponse under
// SecurityPolicy None for reqID, issuing token tok, numbered at once.
// c.mu must be held.
func (c *rawUAConn) writeOpenResponseLocked(t testing.TB, reqID, tok uint32) {
	body := typed(t, id.OpenSecureChannelResponse_Encoding_DefaultBinary, &ua.OpenSecureChannelResponse{
		ResponseHeader: &ua.ResponseHeader{Timestamp: time.Now(), ServiceDiagnostics: &ua.DiagnosticInfo{},
			AdditionalHeader: ua.NewExtensionObject(nil)},
		SecurityToken: &ua.ChannelSecurityToken{ChannelID: rawUAChannel, TokenID: tok, CreatedAt: time.Now(), RevisedLifetime: 600000},
		ServerNonce:   []byte{},
	})
	var h []byte
	h = le32(h, rawUAChannel)
	h = uaString(h, policyNone) // asymmetric header: no certificate,
	h = le32(h, 0xFFFFFFFF)     // no thumbprint
	h = le32(h, 0xFFFFFFFF)
	c.seq++
	h = le32(h, c.seq)
	h = le32(h, reqID)
	c.conn.Write(header("OPN", 'F', append(h, body...)))
}

func (c *rawUAConn) write(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conn.Write(b)
}

// msg returns a final MSG chunk carrying body for reqID, numbered at once.
func (c *rawUAConn) msg(reqID uint32, body []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seq >= 4294966271 {
		c.seq = 0 // wrap (Part 6 §6.7.2.4): the next number is 1
	}
	c.seq++
	tok := c.tok
	if tok == 0 {
		tok = rawUAToken
	}
	var b []byte
	b = le32(b, rawUAChannel)
	b = le32(b, tok)
	b = le32(b, c.seq)
	b = le32(b, reqID)
	return header("MSG", 'F', append(b, body...))
}

func readResponseBody(t *testing.T, handle uint32, v float64) []byte {
	return typed(t, id.ReadResponse_Encoding_DefaultBinary, &ua.ReadResponse{
		ResponseHeader: &ua.ResponseHeader{Timestamp: time.Now(), RequestHandle: handle,
			ServiceDiagnostics: &ua.DiagnosticInfo{}, AdditionalHeader: ua.NewExtensionObject(nil)},
		Results: []*ua.DataValue{{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(v)}},
	})
}

// A late response must never be paired with a later request that reuses
// its RequestId. The server holds its answer to a read of node A past the
// response timeout; the client, told Bad_Timeout, reuses the RequestId for
// a read of node B. The server then sends the late answer for A (1.0) and
// the answer for B (2.0). Before the fix the client got A's value as B's
// (and the pairing could as well have applied a late ActivateSession
// answer to another ActivateSession: the proxy would attribute the session
// an identity the server never granted).
func TestOPCUALateResponseIsNotPairedWithAReusedRequestID(t *testing.T) {
	type held struct {
		c     *rawUAConn
		chunk []byte
	}
	var mu sync.Mutex
	var late []held
	srv := startRawUAServer(t, func(c *rawUAConn, reqID uint32, req any) {
		rr, ok := req.(*ua.ReadRequest)
		if !ok {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if rr.NodesToRead[0].NodeID.String() == "ns=1;s=A" {
			late = append(late, held{c, c.msg(reqID, readResponseBody(t, rr.RequestHeader.RequestHandle, 1.0))})
			return
		}
		for _, h := range late {
			h.c.write(h.chunk)
		}
		late = nil
		c.write(c.msg(reqID, readResponseBody(t, rr.RequestHeader.RequestHandle, 2.0)))
	})
	rec := &memRecorder{}
	l := startUAProxy(t, uaListenerConfig(t, srv.addr, "", "    timeouts:\n      response: 200ms"), allowAll(), rec, nil)
	addr := l.Addr().String()
	c := dialUARaw(t, addr)
	c.open(addr)

	id1 := c.request(readBody(t, 1, "ns=1;s=A"))
	got, svc := c.response()
	if f, ok := svc.(*ua.ServiceFault); !ok || got != id1 || f.ResponseHeader.ServiceResult != statusTimeout {
		t.Fatalf("first answer: request %d %T %+v", got, svc, svc)
	}
	// The same RequestId again.
	c.send(c.msgChunk('F', id1, readBody(t, 2, "ns=1;s=B"), 0))
	for {
		typ, b, err := c.recv()
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		if typ == "ERRF" {
			// Refused like a RequestId in flight: it cannot be paired.
			c.expectClosed()
			break
		}
		if typ != "MSGF" {
			t.Fatalf("got %s", typ)
		}
		_, svc, err := ua.DecodeService(b[24:])
		if err != nil {
			t.Fatal(err)
		}
		if rr, ok := svc.(*ua.ReadResponse); ok {
			if v := rr.Results[0].Value.Value(); v != 2.0 {
				t.Fatalf("the read of B was answered with %v: the late answer for A", v)
			}
			break
		}
	}
	// A late answer may still come: the reused id was not forwarded.
	for _, req := range srv.received() {
		if rr, ok := req.(*ua.ReadRequest); ok && rr.NodesToRead[0].NodeID.String() == "ns=1;s=B" {
			t.Fatal("the request reusing a timed-out RequestId reached the server")
		}
	}
	waitFor(t, "the refusal's event", func() bool {
		for _, ev := range rec.byAction(audit.ActionRequest) {
			if !ev.Allowed && ev.Rule == "proxy.outstanding" {
				return true
			}
		}
		return false
	})
}

// A server that answers a request it never received — the RequestId of a
// write the proxy denied and answered with a ServiceFault — must not give
// the client a second answer for it; the sequence numbers stay contiguous
// around the injected fault and the dropped answer.
func TestOPCUAServerAnswerToADeniedRequestIsDropped(t *testing.T) {
	srv := startRawUAServer(t, func(c *rawUAConn, reqID uint32, req any) {
		rr, ok := req.(*ua.ReadRequest)
		if !ok {
			return
		}
		// First a forged answer for the request before this one (the
		// denied write), then the real one.
		c.write(c.msg(reqID-1, readResponseBody(t, 77, 666)))
		c.write(c.msg(reqID, readResponseBody(t, rr.RequestHeader.RequestHandle, 2.0)))
	})
	rec := &memRecorder{}
	l := startUAProxy(t, uaListenerConfig(t, srv.addr, "", ""), denyWrites(), rec, nil)
	addr := l.Addr().String()
	c := dialUARaw(t, addr)
	c.open(addr)

	wid := c.request(writeBody(t, 77, "ns=1;s=A", 1.0))
	b := c.mustRecv("MSGF")
	faultSeq := binary.LittleEndian.Uint32(b[16:])
	if got := binary.LittleEndian.Uint32(b[20:]); got != wid {
		t.Fatalf("fault for request %d, want %d", got, wid)
	}
	for i := 0; i < 3; i++ {
		rid := c.request(readBody(t, uint32(80+i), "ns=1;s=B"))
		b := c.mustRecv("MSGF")
		if got := binary.LittleEndian.Uint32(b[20:]); got != rid {
			t.Fatalf("answer for request %d, want %d (a second answer for the denied write?)", got, rid)
		}
		if seq := binary.LittleEndian.Uint32(b[16:]); seq != faultSeq+1+uint32(i) {
			t.Fatalf("sequence %d, want %d", seq, faultSeq+1+uint32(i))
		}
		_, svc, err := ua.DecodeService(b[24:])
		if err != nil {
			t.Fatal(err)
		}
		if rr, ok := svc.(*ua.ReadResponse); !ok || rr.Results[0].Value.Value() != 2.0 {
			t.Fatalf("answer %T %+v", svc, svc)
		}
	}
	for _, req := range srv.received() {
		if _, ok := req.(*ua.WriteRequest); ok {
			t.Fatal("the denied write reached the server")
		}
	}
	waitFor(t, "unsolicited events", func() bool { return len(rec.byAction(audit.ActionUnsolicited)) == 3 })
}

// An abort chunk from the client for a request the proxy already decided
// and forwarded is withheld from the server (it never saw a partial
// message to abort); the request's answer still comes, and the numbering
// toward the server stays contiguous.
func TestOPCUAClientAbortForAForwardedRequestIsWithheld(t *testing.T) {
	var seqs []uint32
	var kinds []string
	held := make(chan func(), 1)
	srv := startRawUAServer(t, func(c *rawUAConn, reqID uint32, req any) {
		rr, ok := req.(*ua.ReadRequest)
		if !ok {
			return
		}
		resp := c.msg(reqID, readResponseBody(t, rr.RequestHeader.RequestHandle, 2.0))
		if rr.RequestHeader.RequestHandle == 1 {
			// Answer the first read only when the next request came.
			held <- func() { c.write(resp) }
			return
		}
		select {
		case f := <-held:
			f()
		default:
		}
		c.write(resp)
	})
	tp := &tap{}
	rec := &memRecorder{}
	l := startUAProxy(t, uaListenerConfig(t, srv.addr, "", ""), allowAll(), rec, tp)
	addr := l.Addr().String()
	c := dialUARaw(t, addr)
	c.open(addr)
	first := c.request(readBody(t, 1, "ns=1;s=B"))
	// Abort the request already sent: Error (StatusCode) and Reason.
	var abort []byte
	abort = le32(abort, 0x80000000)
	abort = uaString(abort, "changed my mind")
	c.send(c.msgChunk('A', first, abort, 0))
	second := c.request(readBody(t, 2, "ns=1;s=B"))
	got := map[uint32]bool{}
	for len(got) < 2 {
		id, _ := c.response()
		got[id] = true
	}
	if !got[first] || !got[second] {
		t.Fatalf("answers for %v", got)
	}
	for _, ch := range splitChunks(t, tp.sent(0)) {
		kinds = append(kinds, ch.typ+string(ch.chunkType))
		if ch.typ == "MSG" {
			seqs = append(seqs, ch.seq)
		}
	}
	for _, k := range kinds {
		if k == "MSGA" {
			t.Fatalf("the abort chunk reached the server: %v", kinds)
		}
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Fatalf("sequence numbers toward the server %v", seqs)
		}
	}
}

// A write split over two chunks with a read between them: the write is
// decided on its whole body (denied here, so nothing of it reaches the
// server, not even its first chunk), the read goes on, and whatever the
// server receives is numbered without gaps or reordering, in the order
// it is sent.
func TestOPCUAInterleavedChunksReachTheServerInSequence(t *testing.T) {
	for _, deny := range []bool{true, false} {
		name := "allowed"
		d := allowAll()
		if deny {
			name, d = "denied", denyWrites()
		}
		t.Run(name, func(t *testing.T) {
			srv := startRawUAServer(t, func(c *rawUAConn, reqID uint32, req any) {
				switch r := req.(type) {
				case *ua.ReadRequest:
					c.write(c.msg(reqID, readResponseBody(t, r.RequestHeader.RequestHandle, 2.0)))
				case *ua.WriteRequest:
					c.write(c.msg(reqID, typed(t, id.WriteResponse_Encoding_DefaultBinary, &ua.WriteResponse{
						ResponseHeader: &ua.ResponseHeader{Timestamp: time.Now(), RequestHandle: r.RequestHeader.RequestHandle,
							ServiceDiagnostics: &ua.DiagnosticInfo{}, AdditionalHeader: ua.NewExtensionObject(nil)},
						Results: []ua.StatusCode{ua.StatusOK},
					})))
				}
			})
			tp := &tap{}
			l := startUAProxy(t, uaListenerConfig(t, srv.addr, "", ""), d, &memRecorder{}, tp)
			addr := l.Addr().String()
			c := dialUARaw(t, addr)
			c.open(addr)
			w := writeBody(t, 5, "ns=1;s=A", 1.0)
			c.reqID++
			wid := c.reqID
			c.send(c.msgChunk('C', wid, w[:10], 0))
			rid := c.request(readBody(t, 6, "ns=1;s=B"))
			if got, _ := c.response(); got != rid {
				t.Fatalf("answer for %d, want the read %d", got, rid)
			}
			c.send(c.msgChunk('F', wid, w[10:], 0))
			if got, _ := c.response(); got != wid {
				t.Fatalf("answer for %d, want the write %d", got, wid)
			}
			rid = c.request(readBody(t, 7, "ns=1;s=B"))
			if got, _ := c.response(); got != rid {
				t.Fatalf("answer for %d, want the read %d", got, rid)
			}
			var seqs []uint32
			var kinds []string
			waitFor(t, "the last read upstream", func() bool { return len(srv.received()) >= 2 })
			for _, ch := range splitChunks(t, tp.sent(0)) {
				if ch.typ == "OPN" {
					seqs = append(seqs, opnSequence(ch.raw))
				}
				if ch.typ == "MSG" {
					seqs = append(seqs, ch.seq)
					kinds = append(kinds, fmt.Sprintf("%c/%d", ch.chunkType, ch.req))
				}
			}
			writes := 0
			for _, req := range srv.received() {
				if _, ok := req.(*ua.WriteRequest); ok {
					writes++
				}
			}
			if deny && (writes != 0 || len(kinds) != 2) {
				t.Fatalf("the denied write reached the server: %v", kinds)
			}
			for i := 1; i < len(seqs); i++ {
				if seqs[i] != seqs[i-1]+1 {
					t.Fatalf("sequence numbers toward the server %v (chunks %v)", seqs, kinds)
				}
			}
		})
	}
}

// opnSequence reads the sequence number of an OPN chunk under
// SecurityPolicy None (no certificate, no thumbprint).
func opnSequence(b []byte) uint32 {
	off := 12 + 4 + int(binary.LittleEndian.Uint32(b[12:])) + 8
	return binary.LittleEndian.Uint32(b[off:])
}

// A server that sends OpenSecureChannel responses nobody asked for, each
// with a new token: the proxy's channel must not take the tokens from them
// (it then refused the client's own, still valid, token and blamed the
// client). The forged OPN is the server's fault: audited as a malformed
// upstream message, the client gets an ERR.
func TestOPCUAUnsolicitedOpenResponseIsTheServersFault(t *testing.T) {
	srv := startRawUAServer(t, func(c *rawUAConn, reqID uint32, req any) {
		rr, ok := req.(*ua.ReadRequest)
		if !ok {
			return
		}
		if rr.RequestHeader.RequestHandle == 1 {
			for tok := uint32(10); tok <= 11; tok++ {
				c.mu.Lock()
				c.writeOpenResponseLocked(t, 900+tok, tok)
				c.tok = tok
				c.mu.Unlock()
			}
		}
		c.write(c.msg(reqID, readResponseBody(t, rr.RequestHeader.RequestHandle, 2.0)))
	})
	rec := &memRecorder{}
	l := startUAProxy(t, uaListenerConfig(t, srv.addr, "", ""), allowAll(), rec, nil)
	addr := l.Addr().String()
	c := dialUARaw(t, addr)
	c.open(addr)
	c.request(readBody(t, 1, "ns=1;s=B"))
	// Whatever came before, the connection ends with an ERR.
	for {
		typ, _, err := c.recv()
		if err != nil {
			break
		}
		if typ == "ERRF" {
			break
		}
		// The read's answer got through: the client goes on with the
		// token it was given.
		c.request(readBody(t, 2, "ns=1;s=B"))
	}
	c.expectClosed()
	waitFor(t, "the malformed event", func() bool { return len(rec.byAction(audit.ActionMalformed)) > 0 })
	for _, ev := range rec.byAction(audit.ActionMalformed) {
		if !strings.HasPrefix(ev.Reason, "upstream:") {
			t.Fatalf("the client was blamed for the server's forged OPN: %q (%s)", ev.Reason, ev.Rule)
		}
	}
}

func sequenceFollows(prev, next uint32) bool {
	return next == prev+1 || (prev >= 4294966271 && next < 1024)
}

// Many denials across the client's and the server's sequence number wrap:
// every number the server and the client receive follows the one before
// (Part 6 §6.7.2.4), around withheld requests and injected ServiceFaults.
func TestOPCUARenumberingAcrossTheWrap(t *testing.T) {
	srv := startRawUAServerAt(t, 4294966271-5, func(c *rawUAConn, reqID uint32, req any) {
		if rr, ok := req.(*ua.ReadRequest); ok {
			c.write(c.msg(reqID, readResponseBody(t, rr.RequestHeader.RequestHandle, 2.0)))
		}
	})
	tp := &tap{}
	l := startUAProxy(t, uaListenerConfig(t, srv.addr, "", ""), denyWrites(), &memRecorder{}, tp)
	addr := l.Addr().String()
	c := dialUARaw(t, addr)
	c.seq = 4294966271 - 12
	c.open(addr)
	var fromProxy []uint32
	for i := 0; i < 30; i++ {
		if c.seq >= 4294966271 {
			c.seq = 0 // the client wraps: its next number is 1
		}
		var want uint32
		if i%3 == 0 {
			want = c.request(readBody(t, uint32(i), "ns=1;s=B"))
		} else {
			want = c.request(writeBody(t, uint32(i), "ns=1;s=A", 1.0))
		}
		b := c.mustRecv("MSGF")
		if got := binary.LittleEndian.Uint32(b[20:]); got != want {
			t.Fatalf("answer for %d, want %d", got, want)
		}
		fromProxy = append(fromProxy, binary.LittleEndian.Uint32(b[16:]))
	}
	for i := 1; i < len(fromProxy); i++ {
		if !sequenceFollows(fromProxy[i-1], fromProxy[i]) {
			t.Fatalf("client received %d after %d: %v", fromProxy[i], fromProxy[i-1], fromProxy)
		}
	}
	var toServer []uint32
	waitFor(t, "the reads at the server", func() bool { return len(srv.received()) == 10 })
	for _, ch := range splitChunks(t, tp.sent(0)) {
		switch ch.typ {
		case "OPN":
			toServer = append(toServer, opnSequence(ch.raw))
		case "MSG":
			toServer = append(toServer, ch.seq)
		}
	}
	if len(toServer) != 11 {
		t.Fatalf("the server received %d chunks, want the OPN and 10 reads", len(toServer))
	}
	for i := 1; i < len(toServer); i++ {
		if !sequenceFollows(toServer[i-1], toServer[i]) {
			t.Fatalf("server received %d after %d: %v", toServer[i], toServer[i-1], toServer)
		}
	}
}

// A server response the proxy cannot decode exactly — here a ReadResponse
// with one byte after its end, which a lenient client might ignore and
// another might read as the start of something else — never reaches the
// client: the server is not trusted any more, the client gets an ERR,
// the connection closes, and the event blames the server. A well-formed
// response with a vendor structure (an ExtensionObject of the server's
// namespace) passes.
func TestOPCUAUndecodableServerResponseNeverReachesTheClient(t *testing.T) {
	srv := startRawUAServer(t, func(c *rawUAConn, reqID uint32, req any) {
		rr, ok := req.(*ua.ReadRequest)
		if !ok {
			return
		}
		body := readResponseBody(t, rr.RequestHeader.RequestHandle, 2.0)
		switch rr.NodesToRead[0].NodeID.String() {
		case "ns=1;s=Vendor":
			// The value is a structure of namespace 2 the proxy does not
			// know: type id ns=2;i=5001, a 4-byte body.
			body = typed(t, id.ReadResponse_Encoding_DefaultBinary, &ua.ReadResponse{
				ResponseHeader: &ua.ResponseHeader{Timestamp: time.Now(), RequestHandle: rr.RequestHeader.RequestHandle,
					ServiceDiagnostics: &ua.DiagnosticInfo{}, AdditionalHeader: ua.NewExtensionObject(nil)},
				Results: []*ua.DataValue{{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(ua.NewExtensionObject(&ua.Range{Low: 1, High: 9}))}},
			})
			i := bytes.Index(body, []byte{0x01, 0x00, 0x76, 0x03}) // Range, i=886
			if i < 0 {
				t.Error("no Range type id")
				return
			}
			body[i+1] = 2
		case "ns=1;s=Smuggle":
			body = append(body, 0x00)
		}
		c.write(c.msg(reqID, body))
	})
	rec := &memRecorder{}
	l := startUAProxy(t, uaListenerConfig(t, srv.addr, "", ""), allowAll(), rec, nil)
	addr := l.Addr().String()
	c := dialUARaw(t, addr)
	c.open(addr)

	id1 := c.request(readBody(t, 1, "ns=1;s=Vendor"))
	if got, svc := c.response(); got != id1 {
		t.Fatalf("vendor structure: answer to %d", got)
	} else if _, ok := svc.(*ua.ReadResponse); !ok {
		t.Fatalf("vendor structure: %T", svc)
	}
	c.request(readBody(t, 2, "ns=1;s=Smuggle"))
	typ, _, err := c.recv()
	if err != nil || typ != "ERRF" {
		t.Fatalf("after an undecodable response: %s %v, want ERR", typ, err)
	}
	c.expectClosed()
	waitFor(t, "the malformed event", func() bool { return len(rec.byAction(audit.ActionMalformed)) > 0 })
	ev := rec.byAction(audit.ActionMalformed)[0]
	if !strings.HasPrefix(ev.Reason, "upstream:") || !strings.Contains(ev.Reason, "trailing") {
		t.Fatalf("event %q (%s)", ev.Reason, ev.Rule)
	}
}
