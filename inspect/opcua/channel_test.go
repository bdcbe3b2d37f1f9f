package opcua

import (
	"bytes"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/inspect"
)

// chunk builds one MSG chunk on channel 2 token 1 (the node-opcua session)
// with the given chunk type, sequence number, request id, body and a
// trailing fake signature of sig bytes.
func chunk(ct byte, seq, reqID uint32, body []byte, sig int) []byte {
	size := symBodyStart + len(body) + sig
	b := make([]byte, HeaderSize, size)
	putHeader(b, MessageMsg, ct, uint32(size))
	b = binary.LittleEndian.AppendUint32(b, 2)
	b = binary.LittleEndian.AppendUint32(b, 1)
	b = binary.LittleEndian.AppendUint32(b, seq)
	b = binary.LittleEndian.AppendUint32(b, reqID)
	b = append(b, body...)
	return append(b, bytes.Repeat([]byte{0x5A}, sig)...)
}

// fakeClock is an injectable clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestReassembly(t *testing.T) {
	write := unhex(t, writeHex)[symBodyStart:]
	t.Run("three chunks, interleaved with another request", func(t *testing.T) {
		c := session(t, Config{})
		parts := [][]byte{write[:10], write[10:40], write[40:]}
		read := unhex(t, "0100 7702"+requestHeader29+"0000000000000000 00000000 ffffffff") // ReadRequest, maxAge 0, Both... no nodes
		steps := []struct {
			b    []byte
			done bool
		}{
			{chunk('C', 2, 8, parts[0], 0), false},
			{chunk('F', 3, 9, read, 0), true},
			{chunk('C', 4, 8, parts[1], 0), false},
			{chunk('F', 5, 8, parts[2], 0), true},
		}
		var msgs []*Message
		for i, s := range steps {
			m, err := c.Feed(ClientToServer, s.b)
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			if m.Complete != s.done {
				t.Fatalf("step %d complete=%v", i, m.Complete)
			}
			if m.Complete {
				var op opTest
				info, err := c.Decode(m, &op.Operation)
				if err != nil {
					t.Fatalf("step %d decode: %v", i, err)
				}
				msgs = append(msgs, m)
				if i == 3 {
					if op.Name != "write" || info.RequestHandle != 8 || len(m.Chunks) != 3 || !bytes.Equal(m.Body, write) {
						t.Errorf("reassembled %s handle %d chunks %d", op.Name, info.RequestHandle, len(m.Chunks))
					}
					for j, want := range []int{0, 2, 3} {
						if !bytes.Equal(m.Chunks[j], steps[want].b) {
							t.Errorf("chunk %d is not the original", j)
						}
					}
				}
			}
		}
	})
	t.Run("abort discards", func(t *testing.T) {
		c := session(t, Config{})
		mustFeed(t, c, chunk('C', 2, 8, write[:10], 0))
		abort := unhex(t, "00000680 04000000 73746f70") // Bad_RequestTooLarge? any status, reason "stop"
		m := mustFeed(t, c, chunk('A', 3, 8, abort, 0))
		if !m.Aborted || !m.Complete || m.RequestID != 8 {
			t.Errorf("abort message %+v", m)
		}
		// The rest of the aborted message alone is not a valid request.
		m = mustFeed(t, c, chunk('F', 4, 8, write[10:], 0))
		var op opTest
		if _, err := c.Decode(m, &op.Operation); err == nil {
			t.Error("the tail of an aborted message decoded")
		}
	})
	caps := []struct {
		name string
		lim  Limits
		feed func(c *Channel) error
		want error
	}{
		{"chunks per message", Limits{MaxChunkCount: 3}, func(c *Channel) error {
			for i := uint32(0); i < 3; i++ { // the third C leaves no room for the F
				if _, err := c.Feed(ClientToServer, chunk('C', 2+i, 8, write[:4], 0)); err != nil {
					return err
				}
			}
			return nil
		}, ErrChunkCount},
		{"message bytes", Limits{MaxMessageSize: 100}, func(c *Channel) error {
			for i := uint32(0); i < 5; i++ {
				if _, err := c.Feed(ClientToServer, chunk('C', 2+i, 8, make([]byte, 30), 0)); err != nil {
					return err
				}
			}
			return nil
		}, ErrMessageSize},
		{"single chunk over message bytes", Limits{MaxMessageSize: 50}, func(c *Channel) error {
			_, err := c.Feed(ClientToServer, chunk('F', 2, 8, make([]byte, 51), 0))
			return err
		}, ErrMessageSize},
		{"open requests", Limits{MaxOpenRequests: 2}, func(c *Channel) error {
			for i := uint32(0); i < 3; i++ {
				if _, err := c.Feed(ClientToServer, chunk('C', 2+i, 100+i, write[:4], 0)); err != nil {
					return err
				}
			}
			return nil
		}, ErrOpenRequests},
		{"chunk size", Limits{MaxChunkSize: 9000}, func(c *Channel) error {
			_, err := c.Feed(ClientToServer, chunk('F', 2, 8, make([]byte, 9000), 0))
			return err
		}, ErrChunkTooLarge},
	}
	for _, tc := range caps {
		t.Run(tc.name, func(t *testing.T) {
			c := session(t, Config{Limits: tc.lim})
			err := tc.feed(c)
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			// Poisoned: everything after fails the same way.
			if _, err2 := c.Feed(ClientToServer, chunk('F', 99, 1, write, 0)); err2 != err {
				t.Errorf("after error: %v", err2)
			}
		})
	}
	t.Run("deadline", func(t *testing.T) {
		clk := &fakeClock{t: time.Unix(1000, 0)}
		c := session(t, Config{Now: clk.now, Limits: Limits{MessageTimeout: 5 * time.Second}})
		mustFeed(t, c, chunk('C', 2, 8, write[:10], 0))
		clk.t = clk.t.Add(5 * time.Second)
		if err := c.Expire(); err != nil {
			t.Fatalf("at the deadline: %v", err)
		}
		clk.t = clk.t.Add(time.Millisecond)
		if err := c.Expire(); !errors.Is(err, ErrMessageTimeout) {
			t.Fatalf("after the deadline: %v", err)
		}
		if _, err := c.Feed(ClientToServer, chunk('F', 3, 8, write[10:], 0)); !errors.Is(err, ErrMessageTimeout) {
			t.Errorf("feed after timeout: %v", err)
		}
	})
}

func mustFeed(t testing.TB, c *Channel, b []byte) *Message {
	t.Helper()
	m, err := c.Feed(ClientToServer, b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestChannelRejects(t *testing.T) {
	write := unhex(t, writeHex)[symBodyStart:]
	for _, tc := range []struct {
		name string
		run  func(c *Channel) error
		want error
	}{
		{"sequence gap", func(c *Channel) error { _, err := c.Feed(ClientToServer, chunk('F', 3, 8, write, 0)); return err }, ErrSequence},
		{"sequence repeat", func(c *Channel) error { _, err := c.Feed(ClientToServer, chunk('F', 1, 8, write, 0)); return err }, ErrSequence},
		{"other channel", func(c *Channel) error {
			b := chunk('F', 2, 8, write, 0)
			b[8] = 3
			_, err := c.Feed(ClientToServer, b)
			return err
		}, ErrChannelMismatch},
		{"unknown token", func(c *Channel) error {
			b := chunk('F', 2, 8, write, 0)
			b[12] = 9
			_, err := c.Feed(ClientToServer, b)
			return err
		}, ErrChannelMismatch},
		{"CLO from server", func(c *Channel) error {
			b := unhex(t, closeHex)
			_, err := c.Feed(ServerToClient, b)
			return err
		}, ErrUnexpectedMessage},
		{"message after CLO", func(c *Channel) error {
			b := unhex(t, closeHex)
			SetSequenceNumber(b, 2)
			if _, err := c.Feed(ClientToServer, b); err != nil {
				return err
			}
			_, err := c.Feed(ClientToServer, chunk('F', 3, 8, write, 0))
			return err
		}, ErrUnexpectedMessage},
		{"second HEL", func(c *Channel) error { _, err := c.Feed(ClientToServer, unhex(t, helloHex)); return err }, ErrUnexpectedMessage},
		{"ERR from client", func(c *Channel) error {
			_, err := c.Feed(ClientToServer, EncodeError(nil, StatusBadTCPInternalError, "x"))
			return err
		}, ErrUnexpectedMessage},
		{"issue on an established channel", func(c *Channel) error {
			b := unhex(t, openHex)
			b[8] = 2 // channel id 2, but RequestType Issue
			SetSequenceNumber(b, 2)
			_, err := c.Feed(ClientToServer, b)
			return err
		}, ErrUnexpectedMessage},
		{"unknown policy", func(c *Channel) error {
			b := bytes.Replace(unhex(t, openHex), []byte("#None"), []byte("#Nope"), 1)
			b[8] = 2
			_, err := c.Feed(ClientToServer, b)
			return err
		}, ErrUnsupportedPolicy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := session(t, Config{})
			if err := tc.run(c); !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("MSG before HEL", func(t *testing.T) {
		c := NewChannel(Config{})
		if _, err := c.Feed(ClientToServer, chunk('F', 1, 1, write, 0)); !errors.Is(err, ErrUnexpectedMessage) {
			t.Errorf("error %v", err)
		}
	})
	t.Run("renewal keeps the old token valid", func(t *testing.T) {
		c := session(t, Config{})
		req := unhex(t, openHex)
		req[8] = 2                                        // channel 2
		req[len(req)-16] = 1                              // RequestType Renew
		if err := SetSequenceNumber(req, 2); err != nil { // after the handshake
			t.Fatal(err)
		}
		m := mustFeed(t, c, req)
		if m.OpenRequestType != 1 {
			t.Fatalf("request type %d", m.OpenRequestType)
		}
		resp := unhex(t, openRespHex)
		resp[len(resp)-20] = 2 // SecurityToken.TokenId 2
		SetSequenceNumber(resp, 2)
		if _, err := c.Feed(ServerToClient, resp); err != nil {
			t.Fatal(err)
		}
		if c.TokenID() != 2 {
			t.Fatalf("token %d", c.TokenID())
		}
		old := chunk('F', 3, 8, write, 0) // token 1
		if _, err := c.Feed(ClientToServer, old); err != nil {
			t.Errorf("old token: %v", err)
		}
		nu := chunk('F', 4, 9, write, 0)
		nu[12] = 2
		if _, err := c.Feed(ClientToServer, nu); err != nil {
			t.Errorf("new token: %v", err)
		}
	})
}

func TestSequenceWrap(t *testing.T) {
	for _, tc := range []struct {
		prev, next uint32
		ok         bool
	}{
		{1, 2, true},
		{4294966270, 4294966271, true},
		{4294966271, 1, true}, // node-opcua wraps here
		{4294966272, 0, true}, // above the threshold: wrap below 1024
		{4294967295, 5, true},
		{4294967295, 0, true},     // plain uint32 increment
		{4294966270, 1, false},    // not yet above the threshold
		{4294966272, 1024, false}, // must land below 1024
		{5, 5, false},
		{5, 7, false},
	} {
		if got := nextSequenceOK(tc.prev, tc.next); got != tc.ok {
			t.Errorf("%d -> %d: %v, want %v", tc.prev, tc.next, got, tc.ok)
		}
	}
}

func TestRenumberer(t *testing.T) {
	t.Run("identity until a drop", func(t *testing.T) {
		var r Renumberer
		for _, in := range []uint32{4294966270, 4294966271, 1, 2} { // the sender's own wrap passes through
			if out := r.Forward(in); out != in {
				t.Errorf("Forward(%d) = %d", in, out)
			}
		}
	})
	t.Run("forwarded out of order", func(t *testing.T) {
		// 11 is the first chunk of a message held until its final chunk
		// 13; 12, a message of its own, goes out first.
		var r Renumberer
		got := []uint32{r.Forward(10), r.Forward(12), r.Forward(11), r.Forward(13), r.Forward(14)}
		if want := []uint32{10, 11, 12, 13, 14}; !equalU32(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
	t.Run("held chunks dropped after a later message", func(t *testing.T) {
		var r Renumberer
		got := []uint32{r.Forward(10), r.Forward(12)}
		r.Drop(11)
		r.Drop(13)
		got = append(got, r.Forward(14))
		if want := []uint32{10, 11, 12}; !equalU32(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
	t.Run("drop client to server", func(t *testing.T) {
		var r Renumberer
		got := []uint32{r.Forward(10), r.Forward(11)}
		r.Drop(12)
		got = append(got, r.Forward(13), r.Forward(14))
		if want := []uint32{10, 11, 12, 13}; !equalU32(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
	t.Run("inject server to client", func(t *testing.T) {
		var r Renumberer
		if _, ok := r.Inject(); ok {
			t.Error("inject before any chunk")
		}
		got := []uint32{r.Forward(1)}
		s, _ := r.Inject()
		got = append(got, s, r.Forward(2), r.Forward(3))
		if want := []uint32{1, 2, 3, 4}; !equalU32(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
	t.Run("across the wrap after injections", func(t *testing.T) {
		var r Renumberer
		var out []uint32
		out = append(out, r.Forward(4294966268))
		s, _ := r.Inject()
		out = append(out, s)
		for _, in := range []uint32{4294966269, 4294966270, 4294966271, 1, 2} {
			out = append(out, r.Forward(in))
		}
		want := []uint32{4294966268, 4294966269, 4294966270, 4294966271, 4294966272, 1, 2}
		if !equalU32(out, want) {
			t.Fatalf("got %v, want %v", out, want)
		}
		for i := 1; i < len(out); i++ {
			if !nextSequenceOK(out[i-1], out[i]) {
				t.Errorf("%d -> %d is not accepted by a receiver", out[i-1], out[i])
			}
		}
	})
	t.Run("drops across the wrap", func(t *testing.T) {
		var r Renumberer
		out := []uint32{r.Forward(4294966270)}
		r.Drop(4294966271)
		for _, in := range []uint32{1, 2, 3} {
			out = append(out, r.Forward(in))
		}
		for i := 1; i < len(out); i++ {
			if !nextSequenceOK(out[i-1], out[i]) {
				t.Errorf("%v: %d -> %d is not accepted", out, out[i-1], out[i])
			}
		}
	})
}

func equalU32(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// signedSession opens a channel under Basic256Sha256 with the mode declared
// by the listener; the OPN bodies are opaque (random bytes stand in for the
// asymmetric encryption).
func signedSession(t testing.TB, mode SecurityMode, policy string) *Channel {
	c := NewChannel(Config{SecurityMode: mode})
	for _, s := range []struct {
		dir Direction
		b   []byte
	}{{ClientToServer, unhex(t, helloHex)}, {ServerToClient, unhex(t, ackHex)}} {
		if _, err := c.Feed(s.dir, s.b); err != nil {
			t.Fatal(err)
		}
	}
	opn := func(chID uint32) []byte {
		b := make([]byte, HeaderSize)
		b = binary.LittleEndian.AppendUint32(b, chID)
		b = appendString(b, policy)
		b = binary.LittleEndian.AppendUint32(b, 0xFFFFFFFF) // no certificate
		b = binary.LittleEndian.AppendUint32(b, 0xFFFFFFFF)
		b = append(b, bytes.Repeat([]byte{0xC3}, 256)...) // encrypted
		putHeader(b, MessageOpen, ChunkFinal, uint32(len(b)))
		return b
	}
	if m, err := c.Feed(ClientToServer, opn(0)); err != nil || !m.Opaque {
		t.Fatalf("OPN: %v", err)
	}
	if _, err := c.Feed(ServerToClient, opn(2)); err != nil {
		t.Fatalf("OPN response: %v", err)
	}
	return c
}

func TestSignModeStripsSignature(t *testing.T) {
	write := unhex(t, writeHex)[symBodyStart:]
	for _, tc := range []struct {
		policy string
		sig    int
	}{
		{PolicyBasic256Sha256, 32}, {PolicyAes128Sha256RsaOaep, 32}, {PolicyAes256Sha256RsaPss, 32},
		{PolicyBasic128Rsa15, 20}, {PolicyBasic256, 20},
	} {
		t.Run(tc.policy[len("http://opcfoundation.org/UA/SecurityPolicy#"):], func(t *testing.T) {
			c := signedSession(t, SecurityModeSign, tc.policy)
			m := mustFeed(t, c, chunk('C', 7, 8, write[:20], tc.sig))
			if m.Complete {
				t.Fatal("intermediate chunk complete")
			}
			m = mustFeed(t, c, chunk('F', 8, 8, write[20:], tc.sig))
			if !bytes.Equal(m.Body, write) {
				t.Fatalf("body not stripped of the %d-byte signatures", tc.sig)
			}
			var op opTest
			info, err := c.Decode(m, &op.Operation)
			if err != nil {
				t.Fatal(err)
			}
			if op.Name != "write" || info.RequestHandle != 8 || op.OPCUA.SecurityMode != "sign" || op.OPCUA.SecurityPolicy != tc.policy || op.OPCUA.Opaque {
				t.Errorf("op %+v %+v", op.Operation, op.OPCUA)
			}
			// No rewriting under Sign: the signature covers the bytes.
			if err := c.SetSequenceNumber(m.Chunks[0], 1); !errors.Is(err, ErrNotRewritable) {
				t.Errorf("SetSequenceNumber under sign: %v", err)
			}
		})
	}
	t.Run("signature longer than the chunk", func(t *testing.T) {
		c := signedSession(t, SecurityModeSign, PolicyBasic256Sha256)
		if _, err := c.Feed(ClientToServer, chunk('F', 7, 8, nil, 10)); !errors.Is(err, ErrTruncated) {
			t.Errorf("error %v", err)
		}
	})
	t.Run("policy on a none listener", func(t *testing.T) {
		c := NewChannel(Config{})
		c.Feed(ClientToServer, unhex(t, helloHex))
		c.Feed(ServerToClient, unhex(t, ackHex))
		b := make([]byte, HeaderSize)
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = appendString(b, PolicyBasic256Sha256)
		b = append(b, bytes.Repeat([]byte{0xFF}, 8+64)...)
		putHeader(b, MessageOpen, ChunkFinal, uint32(len(b)))
		if _, err := c.Feed(ClientToServer, b); !errors.Is(err, ErrSecurityMismatch) {
			t.Errorf("error %v", err)
		}
	})
}

func TestSignAndEncryptCaptureIsOpaque(t *testing.T) {
	// The encrypted open62541 capture: flow 1's OPN carries the client
	// certificate in clear.
	st := replay(t, "opc_open62541_client-server_encrypted.pcap", func(int) Config { return Config{SecurityMode: SecurityModeSignAndEncrypt} })
	if len(st.errors) != 0 {
		t.Fatal(st.errors)
	}
	var opn []byte
	for _, ch := range st.chunks {
		if string(ch[:3]) == "OPN" && bytes.Contains(ch, []byte("Basic128Rsa15")) {
			opn = ch
			break
		}
	}
	ah, _, err := ParseAsymmetricHeader(opn)
	if err != nil {
		t.Fatal(err)
	}
	subject, thumb, err := CertificateInfo(ah.SenderCertificate)
	if err != nil || subject == "" {
		t.Fatalf("certificate: %q %v", subject, err)
	}
	leaf, _ := leafDER(ah.SenderCertificate)
	sum := sha1.Sum(leaf)
	if thumb != hex.EncodeToString(sum[:]) {
		t.Errorf("thumbprint %s", thumb)
	}
	if len(ah.ReceiverCertificateThumbprint) != 20 {
		t.Errorf("receiver thumbprint % x", ah.ReceiverCertificateThumbprint)
	}
	var opaque int
	names := map[string]int{}
	for _, op := range st.ops {
		u := op.OPCUA
		if !u.Opaque {
			continue
		}
		opaque++
		names[op.Name]++
		if op.Access != inspect.AccessOther || u.SecurityMode != "sign_and_encrypt" ||
			u.SecurityPolicy != PolicyBasic128Rsa15 || u.ClientCertSubject != subject || u.ClientCertThumbprint != thumb {
			t.Errorf("opaque op %+v %+v", op, u)
		}
		if (op.Name == "opaque") != (u.TypeID == 0) {
			t.Errorf("opaque %s with type id %d", op.Name, u.TypeID)
		}
	}
	// Client side of flow 1: 1 OPN, 4 MSG requests, 1 CLO (tshark: 2 OPN,
	// 8 MSG, 1 CLO in both directions).
	if want := map[string]int{"open_secure_channel": 1, "opaque": 4, "close_secure_channel": 1}; opaque != 6 || !reflect.DeepEqual(names, want) {
		t.Errorf("opaque requests %v", names)
	}
	t.Logf("client certificate %q sha1 %s", subject, thumb)
}
