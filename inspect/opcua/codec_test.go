package opcua

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/conduit-ot/conduit/inspect"
)

// Real chunks from local_nodeopcua_none_session.pcapng (node-opcua 2.186.4)
// and opc_open62541_client-server_minimal.pcap (open62541), annotated.

const helloHex = `
48454c 46 38000000      // "HEL", final, 56 bytes
00000000                // ProtocolVersion 0
00000a00                // ReceiveBufferSize 655360
00000a00                // SendBufferSize 655360
00000000                // MaxMessageSize 0 (no limit)
00000000                // MaxChunkCount 0 (no limit)
18000000 6f70632e7463703a2f2f3132372e302e302e313a34383430 // EndpointUrl "opc.tcp://127.0.0.1:4840"
`

const ackHex = `
41434b 46 1c000000      // "ACK", final, 28 bytes
00000000                // ProtocolVersion 0
00000800                // ReceiveBufferSize 524288
00000800                // SendBufferSize 524288
00000001                // MaxMessageSize 16777216
00010000                // MaxChunkCount 256
`

// Not in the captures: encoded by EncodeError and checked byte by byte.
const errHex = `
455252 46 1f000000      // "ERR", final, 31 bytes
00008080                // Error Bad_TcpMessageTooLarge (0x80800000)
0f000000 6368756e6b20746f6f206c61726765 // Reason "chunk too large"
`

const openHex = `
4f504e 46 84000000      // "OPN", final, 132 bytes
00000000                // SecureChannelId 0 (issue)
2f000000 687474703a2f2f6f7063666f756e646174696f6e2e6f72672f55412f5365637572697479506f6c696379234e6f6e65 // SecurityPolicyUri #None
ffffffff                // SenderCertificate null
ffffffff                // ReceiverCertificateThumbprint null
01000000                // SequenceNumber 1
01000000                // RequestId 1
0100be01                // TypeId: four-byte NodeId i=446 OpenSecureChannelRequest
0000                    //   RequestHeader.AuthenticationToken null
0001e735657add01        //   Timestamp
01000000                //   RequestHandle 1
00000000                //   ReturnDiagnostics
ffffffff                //   AuditEntryId null
983a0000                //   TimeoutHint 15000
000000                  //   AdditionalHeader: null NodeId, no body
00000000                // ClientProtocolVersion 0
00000000                // RequestType Issue
01000000                // SecurityMode None
ffffffff                // ClientNonce null
c0270900                // RequestedLifetime 600000
`

const openRespHex = `
4f504e 46 87000000      // "OPN", final, 135 bytes
02000000                // SecureChannelId 2 (assigned)
2f000000 687474703a2f2f6f7063666f756e646174696f6e2e6f72672f55412f5365637572697479506f6c696379234e6f6e65 // #None
ffffffff ffffffff       // SenderCertificate, ReceiverCertificateThumbprint null
01000000 01000000       // SequenceNumber 1, RequestId 1
0100c101                // TypeId i=449 OpenSecureChannelResponse
204fe735657add01 01000000 00000000 00 00000000 000000 // ResponseHeader: Timestamp, RequestHandle 1, Good, no diagnostics, empty StringTable, no AdditionalHeader
00000000                // ServerProtocolVersion
02000000                // SecurityToken.ChannelId 2
01000000                // SecurityToken.TokenId 1
204fe735657add01        // SecurityToken.CreatedAt
c0270900                // SecurityToken.RevisedLifetime
ffffffff                // ServerNonce null
`

const writeHex = `
4d5347 46 73000000      // "MSG", final, 115 bytes
02000000                // SecureChannelId 2
01000000                // TokenId 1
08000000                // SequenceNumber 8
08000000                // RequestId 8
0100a102                // TypeId i=673 WriteRequest
05 0000 10000000 346e3031ec7f164540e63b17c1ea8c5e // AuthenticationToken: ByteString NodeId, 16 bytes
e076f035657add01        // Timestamp
08000000                // RequestHandle 8
00000000                // ReturnDiagnostics
00000000                // AuditEntryId "" (empty, not null)
983a0000                // TimeoutHint 15000
000000                  // AdditionalHeader null
01000000                // NodesToWrite: 1
03 0100 08000000 536574706f696e74 //   NodeId: string, ns=1, "Setpoint"
0d000000                //   AttributeId 13 (Value)
ffffffff                //   IndexRange null
01                      //   DataValue mask: value only
0b 8fc2f5285c938840     //   Variant Double 786.42
`

const callHex = `
4d5347 46 7e000000      // "MSG", final, 126 bytes
02000000 01000000       // SecureChannelId 2, TokenId 1
0b000000 0b000000       // SequenceNumber 11, RequestId 11
0100c802                // TypeId i=712 CallRequest
05 0000 10000000 346e3031ec7f164540e63b17c1ea8c5e 5088f135657add01 0b000000 00000000 00000000 983a0000 000000 // RequestHeader, RequestHandle 11
01000000                // MethodsToCall: 1
03 0100 05000000 506c616e74 //   ObjectId ns=1;s=Plant
03 0100 03000000 416464 //   MethodId ns=1;s=Add
02000000                //   InputArguments: 2
0b 0000000000000440     //     Double 2.5
0b 0000000000001040     //     Double 4
`

const closeHex = `
434c4f 46 39000000      // "CLO", final, 57 bytes
02000000 01000000       // SecureChannelId 2, TokenId 1
1b000000 1b000000       // SequenceNumber 27, RequestId 27
0100c401                // TypeId i=452 CloseSecureChannelRequest
0000 70562a37657add01 1b000000 00000000 00000000 983a0000 000000 // RequestHeader, no token, RequestHandle 27
`

func TestHelloAckErrCodec(t *testing.T) {
	hel := unhex(t, helloHex)
	wantHel := Hello{ReceiveBufferSize: 655360, SendBufferSize: 655360, EndpointURL: "opc.tcp://127.0.0.1:4840"}
	ack := unhex(t, ackHex)
	wantAck := Acknowledge{ReceiveBufferSize: 524288, SendBufferSize: 524288, MaxMessageSize: 16777216, MaxChunkCount: 256}
	errb := unhex(t, errHex)
	wantErr := ErrorMessage{Error: StatusBadTCPMessageTooLarge, Reason: "chunk too large"}

	t.Run("decode", func(t *testing.T) {
		h, err := DecodeHello(hel)
		if err != nil || h != wantHel {
			t.Errorf("hello %+v, %v", h, err)
		}
		a, err := DecodeAcknowledge(ack)
		if err != nil || a != wantAck {
			t.Errorf("ack %+v, %v", a, err)
		}
		e, err := DecodeError(errb)
		if err != nil || e != wantErr {
			t.Errorf("err %+v, %v", e, err)
		}
	})
	t.Run("encode", func(t *testing.T) {
		b, err := wantHel.Encode(nil)
		if err != nil || !bytes.Equal(b, hel) {
			t.Errorf("hello % x, %v", b, err)
		}
		if b := wantAck.Encode(nil); !bytes.Equal(b, ack) {
			t.Errorf("ack % x", b)
		}
		if b := EncodeError(nil, wantErr.Error, wantErr.Reason); !bytes.Equal(b, errb) {
			t.Errorf("err % x", b)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		for name, b := range map[string][]byte{
			"hello size lies":        append(append([]byte(nil), hel[:4]...), append([]byte{0x39, 0, 0, 0}, hel[8:]...)...),
			"hello trailing byte":    func() []byte { b := append(append([]byte(nil), hel...), 0); b[4]++; return b }(),
			"hello buffer too small": func() []byte { b := append([]byte(nil), hel...); b[12], b[13], b[14] = 0xff, 0x1f, 0; return b }(),
			"hello url length lies":  func() []byte { b := append([]byte(nil), hel...); b[28] = 0x19; return b }(),
			"hello intermediate":     func() []byte { b := append([]byte(nil), hel...); b[3] = 'C'; return b }(),
		} {
			if _, err := DecodeHello(b); err == nil {
				t.Errorf("%s: no error", name)
			}
		}
		if _, err := DecodeAcknowledge(ack[:27]); err == nil {
			t.Error("short ack: no error")
		}
	})
}

func TestClamp(t *testing.T) {
	l := Limits{MaxChunkSize: 65535, MaxMessageSize: 1 << 20, MaxChunkCount: 32}
	h := ClampHello(Hello{ReceiveBufferSize: 655360, SendBufferSize: 8192, MaxMessageSize: 0, MaxChunkCount: 0, EndpointURL: "x"}, l)
	want := Hello{ReceiveBufferSize: 65535, SendBufferSize: 8192, MaxMessageSize: 1 << 20, MaxChunkCount: 32, EndpointURL: "x"}
	if h != want {
		t.Errorf("ClampHello = %+v, want %+v", h, want)
	}
	a := ClampAcknowledge(Acknowledge{ReceiveBufferSize: 9000, SendBufferSize: 1 << 30, MaxMessageSize: 100000, MaxChunkCount: 1000}, l)
	wantA := Acknowledge{ReceiveBufferSize: 9000, SendBufferSize: 65535, MaxMessageSize: 100000, MaxChunkCount: 32}
	if a != wantA {
		t.Errorf("ClampAcknowledge = %+v, want %+v", a, wantA)
	}
	// The clamped HEL encodes and decodes to itself.
	b, err := h.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := DecodeHello(b); err != nil || back != h {
		t.Errorf("round trip %+v, %v", back, err)
	}
}

// handshake is the real node-opcua handshake: HEL, ACK, OPN, OPN response.
var handshake = func() [4][]byte {
	var h [4][]byte
	for i, s := range []string{helloHex, ackHex, openHex, openRespHex} {
		h[i] = unhex(nil, s)
	}
	return h
}()

// session feeds the handshake into a new Channel.
func session(t testing.TB, cfg Config) *Channel {
	t.Helper()
	c := NewChannel(cfg)
	for i, dir := range []Direction{ClientToServer, ServerToClient, ClientToServer, ServerToClient} {
		if _, err := c.Feed(dir, append([]byte(nil), handshake[i]...)); err != nil {
			t.Fatalf("handshake: %v", err)
		}
	}
	return c
}

func TestOpenSecureChannel(t *testing.T) {
	c := NewChannel(Config{})
	if _, err := c.Feed(ClientToServer, unhex(t, helloHex)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Feed(ServerToClient, unhex(t, ackHex)); err != nil {
		t.Fatal(err)
	}
	if got := c.MaxChunkSize(ClientToServer); got != DefaultMaxChunkSize {
		t.Errorf("max chunk c→s %d", got)
	}
	msg, err := c.Feed(ClientToServer, unhex(t, openHex))
	if err != nil {
		t.Fatal(err)
	}
	if !msg.Complete || msg.Opaque || msg.SequenceNumber != 1 || msg.RequestID != 1 || msg.OpenRequestType != 0 {
		t.Errorf("OPN request message %+v", msg)
	}
	var op opTest
	info, err := c.Decode(msg, &op.Operation)
	if err != nil || info.RequestHandle != 1 || op.Name != "open_secure_channel" || op.Access != inspect.AccessOther {
		t.Errorf("decode OPN: %+v %v %+v", info, err, op.Operation)
	}
	if _, err := c.Feed(ServerToClient, unhex(t, openRespHex)); err != nil {
		t.Fatal(err)
	}
	sec := c.Security()
	if c.SecureChannelID() != 2 || c.TokenID() != 1 || sec.Mode != SecurityModeNone || sec.Policy != PolicyNone {
		t.Errorf("channel %d token %d security %+v", c.SecureChannelID(), c.TokenID(), sec)
	}
}

func TestDecodeWriteCallClose(t *testing.T) {
	for _, tc := range []struct {
		name   string
		hex    string
		handle uint32
		want   inspect.Operation
	}{
		{"write", writeHex, 8, inspect.Operation{Protocol: "opcua", Access: inspect.AccessWrite, Name: "write", OPCUA: &inspect.OPCUA{
			Service: "Write", TypeID: 673, SecurityMode: "none", SecurityPolicy: PolicyNone,
			Writes: []inspect.OPCUAWrite{{NodeID: "ns=1;s=Setpoint", Attribute: "Value", Value: 786.42, Type: "Double"}},
		}}},
		{"call", callHex, 11, inspect.Operation{Protocol: "opcua", Access: inspect.AccessWrite, Name: "call", OPCUA: &inspect.OPCUA{
			Service: "Call", TypeID: 712, SecurityMode: "none", SecurityPolicy: PolicyNone,
			Calls: []inspect.OPCUACall{{ObjectID: "ns=1;s=Plant", MethodID: "ns=1;s=Add", Arguments: []any{2.5, 4.0}}},
		}}},
		{"close", closeHex, 27, inspect.Operation{Protocol: "opcua", Access: inspect.AccessOther, Name: "close_secure_channel", OPCUA: &inspect.OPCUA{
			Service: "CloseSecureChannel", TypeID: 452, SecurityMode: "none", SecurityPolicy: PolicyNone,
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chunk := unhex(t, tc.hex)
			t.Run("decode", func(t *testing.T) {
				c := session(t, Config{})
				// The handshake ended at sequence number 1: renumber the
				// chunk as the next one (on a copy).
				in := append([]byte(nil), chunk...)
				if err := c.SetSequenceNumber(in, 2); err != nil {
					t.Fatal(err)
				}
				msg, err := c.Feed(ClientToServer, in)
				if err != nil {
					t.Fatal(err)
				}
				var op opTest
				info, err := c.Decode(msg, &op.Operation)
				if err != nil {
					t.Fatal(err)
				}
				if !info.HeaderOK || info.RequestHandle != tc.handle {
					t.Errorf("info %+v, want handle %d", info, tc.handle)
				}
				if !reflect.DeepEqual(op.Operation, tc.want) {
					g, _ := json.Marshal(op.Operation)
					w, _ := json.Marshal(tc.want)
					t.Errorf("got  %s\nwant %s", g, w)
				}
			})
			t.Run("encode", func(t *testing.T) {
				// Re-chunking the body with the chunk's ids reproduces it.
				h, _ := ParseHeader(chunk, DefaultMaxChunkSize)
				seq := le32(chunk[16:])
				out, err := AppendMessage(nil, ChunkParams{Type: h.Type, SecureChannelID: le32(chunk[8:]), TokenID: le32(chunk[12:]), RequestID: le32(chunk[20:])},
					chunk[24:], DefaultMaxChunkSize, 0, func() uint32 { return seq })
				if err != nil || !bytes.Equal(out, chunk) {
					t.Errorf("re-encoded\n% x\nwant\n% x (%v)", out, chunk, err)
				}
			})
		})
	}
}

func TestDecodeActivateSessionUserName(t *testing.T) {
	body := unhex(t, `
0100d301                // TypeId i=467 ActivateSessionRequest (open62541 capture, chunk body)
04 0100 024989f8846a012a40543533b25b4524 // AuthenticationToken: GUID NodeId ns=1
b22bccf275cad501        // Timestamp
05000000                // RequestHandle 5
00000000                // ReturnDiagnostics
ffffffff                // AuditEntryId null
c0270900                // TimeoutHint
000000                  // AdditionalHeader null
ffffffff ffffffff       // ClientSignature: Algorithm, Signature null
ffffffff                // ClientSoftwareCertificates null
ffffffff                // LocaleIds null
0100 4401               // UserIdentityToken TypeId: four-byte i=324 UserNameIdentityToken
01 36000000             //   binary body, 54 bytes
19000000 6f70656e36323534312d757365726e616d652d706f6c696379 // PolicyId "open62541-username-policy"
05000000 7573657231     //   UserName "user1"
08000000 70617373776f7264 // Password "password" (never exposed)
ffffffff                //   EncryptionAlgorithm null
ffffffff ffffffff       // UserTokenSignature null
`)
	d := NewDecoder(Limits{})
	var op opTest
	info, err := d.DecodeRequest(body, ChannelSecurity{Mode: SecurityModeNone, Policy: PolicyNone}, &op.Operation)
	if err != nil {
		t.Fatal(err)
	}
	if info.RequestHandle != 5 || !info.HasAuthToken || op.Name != "activate_session" || op.Access != inspect.AccessOther {
		t.Errorf("info %+v op %+v", info, op.Operation)
	}
	if s := op.OPCUA.Session; s == nil || *s != (inspect.OPCUASession{IdentityType: "username", UserName: "user1"}) {
		t.Errorf("session %+v", s)
	}
	j, _ := json.Marshal(op.Operation)
	if bytes.Contains(j, []byte("password")) || bytes.Contains(j, []byte("cGFzc3dvcmQ")) {
		t.Errorf("password leaked: %s", j)
	}
}

func TestDecodeRejectsTrailingAndUnknown(t *testing.T) {
	body := unhex(t, writeHex)[24:]
	d := NewDecoder(Limits{})
	var op opTest
	sec := ChannelSecurity{Mode: SecurityModeNone}
	if _, err := d.DecodeRequest(append(append([]byte(nil), body...), 0), sec, &op.Operation); !errors.Is(err, ErrTrailingBytes) {
		t.Errorf("trailing byte: %v", err)
	}
	if _, err := d.DecodeRequest(body[:len(body)-1], sec, &op.Operation); !errors.Is(err, ErrTruncated) {
		t.Errorf("truncated: %v", err)
	}
	// Unknown type id: other, deny by default, handle still known.
	unk := append([]byte{0x01, 0x00, 0x39, 0x30}, body[4:]...) // i=12345
	info, err := d.DecodeRequest(unk, sec, &op.Operation)
	if !errors.Is(err, ErrUnknownService) || op.Access != inspect.AccessOther || op.Name != "unknown_service" || !info.HeaderOK || info.RequestHandle != 8 {
		t.Errorf("unknown: %v %+v %+v", err, info, op.Operation)
	}
	// A Variant holding an unknown ExtensionObject in a Write is denied.
	eo := unhex(t, `
0100a102 0000 0000000000000000 01000000 00000000 ffffffff 00000000 000000 // WriteRequest, RequestHandle 1
01000000 0100 0100 0d000000 ffffffff // 1 WriteValue: i=1, Value, no range
01 16                                  // DataValue with a Variant of ExtensionObject
0201 00a0860100 01 01000000 00         // TypeId ns=1;i=100000, binary body of 1 byte
`)
	if _, err := d.DecodeRequest(eo, sec, &op.Operation); !errors.Is(err, ErrUnknownExtObject) {
		t.Errorf("unknown extension object: %v", err)
	}
	if !strings.Contains(string(unhex(t, writeHex)), "Setpoint") {
		t.Fatal("fixture")
	}
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
