package replay

import (
	"bytes"
	"context"
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/inspect/capture"
	"github.com/conduit-ot/conduit/replay/internal/synth"
)

// recSink records everything the decoders produce, with the operations
// cloned.
type recSink struct {
	flows    []*Flow
	reqs     []recReq
	resps    []Response
	lost     []uint64
	problems []Problem
}

type recReq struct {
	Request
	op *inspect.Operation
}

func (s *recSink) flowStart(*Flow)                {}
func (s *recSink) flowEnd(f *Flow)                { s.flows = append(s.flows, f) }
func (s *recSink) response(rs *Response)          { s.resps = append(s.resps, *rs) }
func (s *recSink) unanswered(_ *Flow, seq uint64) { s.lost = append(s.lost, seq) }
func (s *recSink) problem(p *Problem)             { s.problems = append(s.problems, *p) }
func (s *recSink) request(rq *Request)            { s.reqs = append(s.reqs, recReq{*rq, rq.Input.Op.Clone()}) }
func (s *recSink) names() (names []string) {
	return mapSlice(s.reqs, func(r recReq) string { return r.op.Name })
}
func (s *recSink) problemReasons() (rs []string) {
	return mapSlice(s.problems, func(p Problem) string { return p.Kind + ":" + p.Reason })
}
func mapSlice[T, U any](ts []T, f func(T) U) []U {
	out := []U{}
	for _, t := range ts {
		out = append(out, f(t))
	}
	return out
}
func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
func hexb(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// Modbus ADUs used below (MBAP: transaction id, protocol 0, length, unit).
var (
	// FC 3 read holding registers 10..11, transaction 1, and its response.
	readHR  = hexb("0001 0000 0006 01 03 000a 0002")
	readHRr = hexb("0001 0000 0007 01 03 04 0001 0002")
	// FC 6 write holding register 15 := 500, transaction 2, and its echo.
	writeHR  = hexb("0002 0000 0006 01 06 000f 01f4")
	writeHRr = hexb("0002 0000 0006 01 06 000f 01f4")
	// FC 1 read coils 0..7, transaction 3, answered with exception 2.
	readCoils    = hexb("0003 0000 0006 01 01 0000 0008")
	readCoilsExc = hexb("0003 0000 0003 01 81 02")
	// FC 3 with quantity 0: a protocol violation (exception 3).
	readZero = hexb("0004 0000 0006 01 03 0000 0000")
)

// writeCapture makes a pcap file with build and returns its path.
func writeCapture(t *testing.T, build func(w *synth.Writer)) string {
	t.Helper()
	var buf bytes.Buffer
	w, err := synth.NewWriter(&buf, time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	build(w)
	path := filepath.Join(t.TempDir(), "c.pcap")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func decode(t *testing.T, cfg *config.Config, files ...string) *recSink {
	t.Helper()
	s := &recSink{}
	if _, err := newPipeline(s, newListenerSet(cfg)).read(context.Background(), files, nil); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(s.flows, func(a, b *Flow) int { return int(a.ID) - int(b.ID) })
	return s
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestModbusPipelinedAndSplit(t *testing.T) {
	path := writeCapture(t, func(w *synth.Writer) {
		c := w.Conn(ap("10.0.0.1:40000"), ap("10.0.0.2:502"))
		must(t, c.Handshake())
		// Two requests in one segment, both responses in one segment.
		must(t, c.Send(synth.ToServer, append(slices.Clone(readHR), writeHR...)))
		must(t, c.Send(synth.ToClient, append(slices.Clone(readHRr), writeHRr...)))
		// One request across three segments: 5, 4 and 3 bytes.
		must(t, c.Send(synth.ToServer, readCoils[:5]))
		must(t, c.Send(synth.ToServer, readCoils[5:9]))
		must(t, c.Send(synth.ToServer, readCoils[9:]))
		must(t, c.Send(synth.ToClient, readCoilsExc))
		must(t, c.Close())
	})
	s := decode(t, nil, path)
	if got := s.names(); !slices.Equal(got, []string{"read_holding_registers", "write_single_register", "read_coils"}) {
		t.Fatalf("requests %v", got)
	}
	if s.reqs[2].Offset != 24 || s.reqs[1].Offset != 12 {
		t.Errorf("offsets %d %d, want 12 24", s.reqs[1].Offset, s.reqs[2].Offset)
	}
	if w := s.reqs[1].op.Modbus; w.Address != 15 || !slices.Equal(w.Values, []uint16{500}) {
		t.Errorf("write %+v", w)
	}
	if len(s.resps) != 3 || s.resps[2].Exception != 2 || s.resps[2].RequestSeq != s.reqs[2].Seq || s.resps[2].Req.Code != 1 {
		t.Errorf("responses %+v", s.resps)
	}
	for _, r := range s.resps {
		if r.RequestSeq == 0 || r.Err != nil {
			t.Errorf("response %+v not paired or invalid", r)
		}
	}
	f := s.flows[0]
	if f.Kind != KindModbus || f.ClassifiedBy != ByPort || f.Listener != "modbus-10.0.0.2-502" || f.Upstream != "10.0.0.2:502" ||
		f.Synthetic != true || f.MidStream || f.End != capture.EndFIN || f.Requests != 3 || f.Responses != 3 {
		t.Errorf("flow %+v", f)
	}
	if len(s.problems)+len(s.lost) != 0 {
		t.Errorf("problems %v unanswered %v", s.problems, s.lost)
	}
}

func TestModbusReorderRetransmitGap(t *testing.T) {
	path := writeCapture(t, func(w *synth.Writer) {
		c := w.Conn(ap("10.0.0.1:40000"), ap("10.0.0.2:502"))
		must(t, c.Handshake())
		// The second request is captured before the first, and the first
		// twice.
		must(t, c.SendAt(synth.ToServer, 12, writeHR))
		must(t, c.SendAt(synth.ToServer, 0, readHR))
		must(t, c.SendAt(synth.ToServer, 0, readHR))
		c.Next[synth.ToServer] = 24
		// A request is lost and never retransmitted (12 bytes), then one
		// arrives whose first 5 bytes are lost, then an aligned one.
		c.Next[synth.ToServer] += 12
		must(t, c.Send(synth.ToServer, readCoils))
		c.Next[synth.ToServer] += 5
		must(t, c.Send(synth.ToServer, readHR[5:]))
		must(t, c.Send(synth.ToServer, writeHR))
		w.Now = w.Now.Add(10 * time.Second) // past the gap timeout
		must(t, c.Send(synth.ToClient, readHRr))
		must(t, c.Close())
	})
	s := decode(t, nil, path)
	if got := s.names(); !slices.Equal(got, []string{"read_holding_registers", "write_single_register", "read_coils", "write_single_register"}) {
		t.Fatalf("requests %v", got)
	}
	if s.reqs[2].Offset != 36 || s.reqs[3].Offset != 60 {
		t.Errorf("offsets after the gaps: %d %d, want 36 60", s.reqs[2].Offset, s.reqs[3].Offset)
	}
	// The 7 bytes after the second hole do not frame: skipped, not malformed.
	if got := s.problemReasons(); !slices.Equal(got, []string{"skipped:bad_protocol_id"}) {
		t.Errorf("problems %v", got)
	}
	if p := s.problems[0]; p.Offset != 53 || p.Length != 7 || p.Dir != capture.ClientToServer {
		t.Errorf("skipped %+v", p)
	}
	if len(s.resps) != 1 || s.resps[0].RequestSeq != s.reqs[0].Seq {
		t.Errorf("responses %+v", s.resps)
	}
	// Transaction 2 is reused while in flight, so the first is unanswered;
	// at the end the rest are.
	if len(s.lost) != 3 {
		t.Errorf("unanswered %v", s.lost)
	}
}

func TestModbusMidStreamAndRoles(t *testing.T) {
	path := writeCapture(t, func(w *synth.Writer) {
		// No handshake: the capture starts with a response, then the rest
		// of a request cut by the capture start, then a whole request.
		c := w.Conn(ap("10.0.0.1:40000"), ap("10.0.0.2:502"))
		must(t, c.Send(synth.ToClient, readHRr))
		must(t, c.Send(synth.ToServer, readCoils[4:]))
		must(t, c.Send(synth.ToServer, writeHR))
		// A fuzzer's SYN from port 502: the port decides who serves.
		d := w.Conn(ap("10.0.0.2:502"), ap("10.0.0.9:3000"))
		must(t, d.Handshake())
		must(t, d.Send(synth.ToClient, readHR))
	})
	s := decode(t, nil, path)
	if got := s.names(); !slices.Equal(got, []string{"write_single_register", "read_holding_registers"}) {
		t.Fatalf("requests %v", got)
	}
	if s.resps[0].RequestSeq != 0 {
		t.Errorf("the first response has no request: %+v", s.resps[0])
	}
	f := s.flows[0]
	if !f.MidStream || f.Client != ap("10.0.0.1:40000") {
		t.Errorf("flow %+v", f)
	}
	g := s.flows[1]
	if g.Client != ap("10.0.0.9:3000") || g.Server != ap("10.0.0.2:502") || !g.MidStream || g.Requests != 1 {
		t.Errorf("swapped flow %+v", g)
	}
	if got := s.problemReasons(); !slices.Equal(got, []string{"skipped:bad_protocol_id"}) {
		t.Errorf("problems %v", got)
	}
}

func TestNotModbusTLSAndSniffing(t *testing.T) {
	tlsHello := hexb("16 0301 0005 01 000001 00")
	path := writeCapture(t, func(w *synth.Writer) {
		// HTTP to port 502.
		c := w.Conn(ap("10.0.0.1:40000"), ap("10.0.0.2:502"))
		must(t, c.Handshake())
		must(t, c.Send(synth.ToServer, []byte("GET / HTTP/1.1\r\n\r\n")))
		must(t, c.Send(synth.ToClient, []byte("HTTP/1.1 400 Bad Request\r\n\r\n")))
		// TLS to 802 (mbaps): encrypted, not a problem.
		d := w.Conn(ap("10.0.0.1:40001"), ap("10.0.0.2:802"))
		must(t, d.Handshake())
		must(t, d.Send(synth.ToServer, tlsHello))
		// TLS to 502: not Modbus.
		e := w.Conn(ap("10.0.0.1:40002"), ap("10.0.0.2:502"))
		must(t, e.Handshake())
		must(t, e.Send(synth.ToServer, tlsHello))
		// Modbus on an unusual port is sniffed; SSH on one is ignored.
		f := w.Conn(ap("10.0.0.1:40003"), ap("10.0.0.3:1502"))
		must(t, f.Handshake())
		must(t, f.Send(synth.ToServer, readHR))
		g := w.Conn(ap("10.0.0.1:40004"), ap("10.0.0.3:22"))
		must(t, g.Handshake())
		must(t, g.Send(synth.ToServer, []byte("SSH-2.0-OpenSSH_9.2\r\n")))
	})
	s := decode(t, nil, path)
	if got := s.names(); !slices.Equal(got, []string{"read_holding_registers"}) {
		t.Fatalf("requests %v", got)
	}
	kinds := mapSlice(s.flows, func(f *Flow) string {
		return f.Kind + "/" + f.ClassifiedBy + "/" + map[bool]string{true: "not", false: ""}[f.NotProtocol]
	})
	slices.Sort(kinds)
	if want := []string{"modbus/port/not", "modbus/port/not", "modbus/sniff/", "other//", "tls/port/"}; !slices.Equal(kinds, want) {
		t.Errorf("flows %v, want %v", kinds, want)
	}
	// HTTP and TLS to 502: never protocol id 0. (The HTTP server's answer
	// is not reported again.)
	if got := s.problemReasons(); !slices.Equal(got, []string{"malformed:bad_protocol_id", "malformed:bad_protocol_id"}) {
		t.Errorf("problems %v", got)
	}
	if s.reqs[0].Flow.Listener != "modbus-10.0.0.3-1502" {
		t.Errorf("listener %q", s.reqs[0].Flow.Listener)
	}
}

func TestModbusResponsesAndViolations(t *testing.T) {
	path := writeCapture(t, func(w *synth.Writer) {
		c := w.Conn(ap("10.0.0.1:40000"), ap("10.0.0.2:502"))
		must(t, c.Handshake())
		must(t, c.Send(synth.ToServer, readZero))
		must(t, c.Send(synth.ToClient, hexb("0004 0000 0003 01 83 03")))
		// A response whose byte count does not fit the request.
		must(t, c.Send(synth.ToServer, readHR))
		must(t, c.Send(synth.ToClient, hexb("0001 0000 0005 01 03 02 0001")))
		// An unsolicited response.
		must(t, c.Send(synth.ToClient, writeHRr))
		// A request whose PDU is longer than FC 3 says (libmodbus 514):
		// malformed; decoding resumes at the next segment.
		must(t, c.Send(synth.ToServer, hexb("0005 0000 000b 01 03 0000 0001 06 0001 0002")))
		must(t, c.Send(synth.ToServer, writeHR))
		must(t, c.Close())
	})
	s := decode(t, nil, path)
	if got := s.names(); !slices.Equal(got, []string{"read_holding_registers", "read_holding_registers", "write_single_register"}) {
		t.Fatalf("requests %v", got)
	}
	if r := s.reqs[0]; r.Refused == nil || r.Rule != "protocol.bad_quantity" {
		t.Errorf("violation %+v", r.Request)
	}
	if r := s.resps[0]; r.Exception != 3 || r.RequestSeq != s.reqs[0].Seq || r.Err != nil {
		t.Errorf("exception to the violation %+v", r)
	}
	if r := s.resps[1]; r.Err == nil || r.Reason != "byte_count_mismatch" || r.RequestSeq != s.reqs[1].Seq {
		t.Errorf("invalid response %+v", r)
	}
	if r := s.resps[2]; r.RequestSeq != 0 || r.Err != nil {
		t.Errorf("unsolicited %+v", r)
	}
	if got := s.problemReasons(); !slices.Equal(got, []string{"malformed:length_mismatch"}) {
		t.Errorf("problems %v", got)
	}
	if p := s.problems[0]; !p.Framed || p.Offset != 24 || p.Bytes[7] != 3 {
		t.Errorf("malformed %+v", p)
	}
}

func TestListenersFromConfig(t *testing.T) {
	cfg := &config.Config{Listeners: []config.Listener{
		{Name: "plc-line1", Protocol: "modbus", Listen: "0.0.0.0:5020", Upstream: "192.168.1.10:502"},
		{Name: "plc-line2", Protocol: "modbus", Listen: "127.0.0.1:5021", Upstream: "plc2.plant.example:502"},
		{Name: "ua", Protocol: "opcua", Listen: ":4841", Upstream: "192.168.1.20:4840",
			OPCUA: &config.OPCUA{SecurityMode: "sign_and_encrypt"}},
	}}
	path := writeCapture(t, func(w *synth.Writer) {
		for _, srv := range []string{"10.9.9.9:5020", "192.168.1.10:502", "127.0.0.1:5021", "192.168.1.11:502", "127.0.0.1:7000"} {
			c := w.Conn(ap("10.0.0.1:40000"), ap(srv))
			must(t, c.Handshake())
			must(t, c.Send(synth.ToServer, readHR))
		}
	})
	s := decode(t, cfg, path)
	got := mapSlice(s.reqs, func(r recReq) string { return r.Flow.Listener + " " + r.Flow.ClassifiedBy + " " + r.Flow.Upstream })
	want := []string{
		"plc-line1 config 192.168.1.10:502", // the listen port, any address
		"plc-line1 config 192.168.1.10:502", // the upstream address (an OT-side capture)
		"plc-line2 config plc2.plant.example:502",
		"modbus-192.168.1.11-502 port 192.168.1.11:502",
		"modbus-127.0.0.1-7000 sniff 127.0.0.1:7000",
	}
	if !slices.Equal(got, want) {
		t.Errorf("listeners\n got %q\nwant %q", got, want)
	}
	ls := newListenerSet(cfg)
	if len(ls.notes) != 1 || !strings.Contains(ls.notes[0], "plc2.plant.example:502 is a host name") {
		t.Errorf("notes %q", ls.notes)
	}
	if l := ls.match(ap("10.1.1.1:4841")); l == nil || l.name != "ua" || l.mode.String() != "sign_and_encrypt" {
		t.Errorf("opcua listener %+v", l)
	}
}

// TestResponseBeforeItsRequest: a request captured before its response but
// held back by reassembly behind a hole (a segment the capture lost) reaches
// the decoder after the response, when the hole is given up; they are
// still paired. The response to the lost request waits, then is reported
// unsolicited.
func TestResponseBeforeItsRequest(t *testing.T) {
	path := writeCapture(t, func(w *synth.Writer) {
		c := w.Conn(ap("10.0.0.1:40000"), ap("10.0.0.2:502"))
		must(t, c.Handshake())
		must(t, c.SendAt(synth.ToServer, 12, writeHR)) // readHR (0..11) is never captured
		must(t, c.Send(synth.ToClient, readHRr))
		must(t, c.Send(synth.ToClient, writeHRr))
		c.Next[synth.ToServer] = 24
		w.Now = w.Now.Add(capture.DefaultGapTimeout + time.Second) // reassembly gives up the hole
		must(t, c.Send(synth.ToServer, readCoils))
		must(t, c.Send(synth.ToClient, readCoilsExc))
		w.Now = w.Now.Add(earlyWait + time.Second)
		must(t, c.Send(synth.ToServer, readZero))
		must(t, c.Close())
	})
	s := decode(t, nil, path)
	if got := s.names(); !slices.Equal(got, []string{"write_single_register", "read_coils", "read_holding_registers"}) {
		t.Fatalf("requests %v", got)
	}
	got := mapSlice(s.resps, func(r Response) uint64 { return r.RequestSeq })
	want := []uint64{s.reqs[0].Seq, s.reqs[1].Seq, 0}
	if !slices.Equal(got, want) {
		t.Errorf("responses answer %v, want %v", got, want)
	}
	if s.resps[2].Function != 3 || !slices.Equal(s.lost, []uint64{s.reqs[2].Seq}) {
		t.Errorf("unsolicited %+v, unanswered %v", s.resps[2], s.lost)
	}
}

// TestSnapLengthCut: a segment cut by the snap length is a hole: the
// request in it is skipped, the next one decoded.
func TestSnapLengthCut(t *testing.T) {
	path := writeCapture(t, func(w *synth.Writer) {
		c := w.Conn(ap("10.0.0.1:40000"), ap("10.0.0.2:502"))
		must(t, c.Handshake())
		must(t, c.SendCut(synth.ToServer, readHR, 8)) // 4 of its 12 bytes not captured
		must(t, c.Send(synth.ToClient, readHRr))
		must(t, c.Send(synth.ToServer, writeHR))
		must(t, c.Send(synth.ToClient, writeHRr))
		must(t, c.Close())
	})
	s := decode(t, nil, path)
	if got := s.names(); !slices.Equal(got, []string{"write_single_register"}) {
		t.Fatalf("requests %v", got)
	}
	if got := s.problemReasons(); !slices.Equal(got, []string{"skipped:gap"}) {
		t.Errorf("problems %v", got)
	}
	if p := s.problems[0]; p.Offset != 0 || p.Length != 8 {
		t.Errorf("skipped %+v", p)
	}
	// The response to the cut request has nothing to answer: it waits for
	// a request, then is reported unsolicited, after the write's.
	if s.reqs[0].Offset != 12 || len(s.resps) != 2 || s.resps[0].RequestSeq != s.reqs[0].Seq || s.resps[1].RequestSeq != 0 || s.resps[1].Function != 3 {
		t.Errorf("offset %d, responses %+v", s.reqs[0].Offset, s.resps)
	}
}

// TestOPCUAOpaqueAndMidStream: a SignAndEncrypt channel gives opaque
// operations (with the client certificate the OPN shows), not errors; a
// session picked up mid-stream is found to be unencrypted and decoded.
func TestOPCUAOpaqueAndMidStream(t *testing.T) {
	s := decode(t, nil, filepath.Join(pcapDir, "opc_open62541_client-server_encrypted.pcap"))
	var opaque []string
	for _, r := range s.reqs {
		if u := r.op.OPCUA; u.Opaque {
			opaque = append(opaque, r.op.Name)
			if u.SecurityMode != "sign_and_encrypt" || !strings.HasSuffix(u.SecurityPolicy, "#Basic128Rsa15") || len(u.ClientCertThumbprint) != 40 {
				t.Errorf("opaque operation %+v", u)
			}
		}
	}
	want := []string{"open_secure_channel", "opaque", "opaque", "opaque", "opaque", "close_secure_channel"}
	if !slices.Equal(opaque, want) {
		t.Errorf("opaque operations %v, want %v", opaque, want)
	}
	if len(s.problems) != 0 {
		t.Errorf("problems %+v", s.problems)
	}

	s = decode(t, nil, filepath.Join("testdata", "opcua_midstream.pcap"))
	if len(s.reqs) != 23 || len(s.problems) != 0 {
		t.Fatalf("%d requests, problems %v", len(s.reqs), s.problemReasons())
	}
	for _, r := range s.reqs {
		if u := r.op.OPCUA; u.Opaque || u.SecurityMode != "none" || r.Refused != nil {
			t.Errorf("mid-stream request %s: %+v %v", r.op.Name, u, r.Refused)
		}
	}
	if f := s.flows[0]; !f.MidStream || f.Kind != KindOPCUA || f.Responses != 22 {
		t.Errorf("flow %+v", f)
	}
}
