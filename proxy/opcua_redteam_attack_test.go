package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
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

	mu   sync.Mutex
	msgs []any // every MSG request received, decoded
}

type rawUAConn struct {
	srv  *rawUAServer
	conn net.Conn
	mu   sync.Mutex
	seq  uint32
}

const rawUAChannel, rawUAToken = 7, 9

func startRawUAServer(t *testing.T, handle func(s *rawUAConn, reqID uint32, req any)) *rawUAServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &rawUAServer{t: t, addr: ln.Addr().String(), handle: handle}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(&rawUAConn{srv: s, conn: conn})
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
			off := 12 + 4 + int(binary.LittleEndian.Uint32(b[12:])) + 8
			reqID := binary.LittleEndian.Uint32(b[off+4:])
			body := typed(s.t, id.OpenSecureChannelResponse_Encoding_DefaultBinary, &ua.OpenSecureChannelResponse{
				ResponseHeader: &ua.ResponseHeader{Timestamp: time.Now(), ServiceDiagnostics: &ua.DiagnosticInfo{},
					AdditionalHeader: ua.NewExtensionObject(nil)},
				SecurityToken: &ua.ChannelSecurityToken{ChannelID: rawUAChannel, TokenID: rawUAToken, CreatedAt: time.Now(), RevisedLifetime: 600000},
				ServerNonce:   []byte{},
			})
			var h []byte
			h = le32(h, rawUAChannel)
			h = uaString(h, policyNone)
			h = le32(h, 0xFFFFFFFF)
			h = le32(h, 0xFFFFFFFF)
			c.mu.Lock()
			c.seq++
			h = le32(h, c.seq)
			h = le32(h, reqID)
			c.conn.Write(header("OPN", 'F', append(h, body...)))
			c.mu.Unlock()
		case "MSG":
			reqID := binary.LittleEndian.Uint32(b[20:])
			_, req, err := ua.DecodeService(b[24:])
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

func (c *rawUAConn) write(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conn.Write(b)
}

// msg returns a final MSG chunk carrying body for reqID, numbered at once.
func (c *rawUAConn) msg(reqID uint32, body []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	var b []byte
	b = le32(b, rawUAChannel)
	b = le32(b, rawUAToken)
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
