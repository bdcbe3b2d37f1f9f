package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	svmodbus "github.com/simonvetter/modbus"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/audit/audittest"
	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/proxy"
	"github.com/conduit-ot/conduit/replay/internal/synth"
	"github.com/conduit-ot/conduit/rules"
	"github.com/conduit-ot/conduit/sim"
)

// TestReplayOfProxiedTraffic records real traffic through the proxy and
// replays it: replay must report exactly the operations the proxy's audit
// trail recorded, with the same decisions.
//
// A Modbus client (github.com/simonvetter/modbus) and a raw one talk to a
// simulated PLC (sim.StartPLC, on the same library's server) through a
// proxy.Listener deciding with the embedded reference policy. Between the
// clients and the proxy sits a tap: a relay that records every chunk it
// reads on its proxy-side connection, so the capture shows the connection
// exactly as the proxy saw it (same client address and port). The chunks
// are written to a pcap with synthetic TCP/IP headers, one segment each,
// in the order they were read — reliable in CI, where dumpcap on the
// loopback interface needs privileges.
func TestReplayOfProxiedTraffic(t *testing.T) {
	ctx := context.Background()
	plc, err := sim.StartPLC(sim.PLCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer plc.Close()
	engine, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: "rules", FS: rules.FS}})
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()
	cfg, err := config.Parse("test.yaml", []byte(fmt.Sprintf(`listeners:
  - name: plc-line1
    protocol: modbus
    listen: 127.0.0.1:0
    upstream: %s
policy:
  path: unused
audit:
  file: unused
`, plc.Addr())))
	if err != nil {
		t.Fatal(err)
	}
	rec := audittest.NewMemory()
	l, err := proxy.New(proxy.Options{Listener: cfg.Listeners[0], Decider: engine, Recorder: rec})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Listen(); err != nil {
		t.Fatal(err)
	}
	go l.Serve()
	defer func() {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		l.Shutdown(c)
	}()
	tap := startTap(t, l.Addr().String())

	// The HMI: reads and writes, some outside the demo grant.
	cl, err := svmodbus.NewClient(&svmodbus.ClientConfiguration{URL: "tcp://" + tap.addr(), Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Open(); err != nil {
		t.Fatal(err)
	}
	ok := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	refused := func(err error) {
		t.Helper()
		if err == nil {
			t.Fatal("the proxy allowed what the policy denies")
		}
	}
	_, err = cl.ReadRegisters(0, 10, svmodbus.HOLDING_REGISTER)
	ok(err)
	ok(cl.WriteRegister(10, 500))
	refused(cl.WriteRegister(15, 5000)) // above the grant's max 1000
	ok(cl.WriteRegisters(11, []uint16{100, 200}))
	_, err = cl.ReadCoils(0, 16)
	ok(err)
	ok(cl.WriteCoil(3, true))
	refused(cl.WriteCoil(20, true)) // coils 0..15 only
	_, err = cl.ReadRegisters(200, 5, svmodbus.HOLDING_REGISTER)
	refused(err)
	ok(cl.SetUnitId(2))
	_, err = cl.ReadRegisters(0, 1, svmodbus.HOLDING_REGISTER)
	refused(err) // unit 2
	ok(cl.SetUnitId(1))
	_, err = cl.ReadRegisters(0, 4, svmodbus.INPUT_REGISTER)
	ok(err)
	cl.Close()

	// A raw client: a protocol violation (answered by the proxy itself), a
	// diagnostic echo, then a request whose PDU is longer than FC 3 allows
	// (libmodbus issue 514), for which the proxy closes the connection.
	raw, err := net.Dial("tcp", tap.addr())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"0101 0000 0006 01 03 0000 0000", "0102 0000 0006 01 08 0000 1234"} {
		if _, err := raw.Write(hexb(f)); err != nil {
			t.Fatal(err)
		}
		if _, err := readADU(raw); err != nil {
			t.Fatal(err)
		}
	}
	raw.Write(hexb("0103 0000 000b 01 03 0000 0001 06 0001 0002"))
	raw.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := readADU(raw); err == nil {
		t.Fatal("the proxy answered a smuggled PDU")
	}
	raw.Close()
	tap.close()

	// Wait for the proxy to record the end of both connections.
	deadline := time.Now().Add(5 * time.Second)
	for len(eventsOf(rec, audit.ActionConnectionClose)) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	path := tap.writePcap(t)

	var recs []Record
	rep, err := Replay(ctx, []string{path}, Options{
		Decider: engine,
		Config:  &config.Config{Listeners: []config.Listener{{Name: "plc-line1", Protocol: "modbus", Listen: l.Addr().String(), Upstream: plc.Addr()}}},
		Records: func(r *Record) { recs = append(recs, *r) },
	})
	if err != nil {
		t.Fatal(err)
	}

	audited := eventsOf(rec, audit.ActionRequest)
	var replayed []Record
	for _, r := range recs {
		if r.Type == "operation" {
			replayed = append(replayed, r)
		}
	}
	if len(audited) != 12 || len(replayed) != len(audited) {
		t.Fatalf("the proxy audited %d operations, replay found %d", len(audited), len(replayed))
	}
	for i, ev := range audited {
		r := replayed[i]
		if got, want := opSummary(t, r), auditSummary(t, ev); got != want {
			t.Errorf("operation %d:\nreplay %s\n audit %s", i+1, got, want)
		}
		// A denied request was answered by the proxy with the exception
		// the capture shows.
		if !ev.Allowed && (r.Response == nil || r.Response.Status != "exception" || r.Response.ExceptionCode != ev.ExceptionCode) {
			t.Errorf("operation %d: denied with exception %d by the proxy, replay saw %+v", i+1, ev.ExceptionCode, r.Response)
		}
	}
	if rep.Allowed != 7 || rep.Denied != 5 || rep.ProtocolViolations != 1 {
		t.Errorf("replay: %d allowed, %d denied, %d violations", rep.Allowed, rep.Denied, rep.ProtocolViolations)
	}
	// The smuggled PDU: one malformed-frame event, one malformed problem.
	bad := eventsOf(rec, audit.ActionMalformed)
	if len(bad) != 1 || rep.Malformed != 1 || len(rep.Problems) != 1 ||
		bad[0].Rule != "framing."+rep.Problems[0].Reason || rep.Problems[0].Offset != 24 {
		t.Errorf("malformed: audit %+v, replay %d %+v", bad, rep.Malformed, rep.Problems)
	}
}

func eventsOf(m *audittest.Memory, action string) []audit.Event {
	var out []audit.Event
	for _, ev := range m.Events() {
		if ev.Action == action {
			out = append(out, ev)
		}
	}
	return out
}

// opSummary and auditSummary render what must agree: client, operation,
// Modbus fields, decision.
func opSummary(t *testing.T, r Record) string {
	t.Helper()
	var in struct {
		Client struct {
			Address string
			Port    int
		}
		Operation struct{ Name string }
		Modbus    struct {
			Unit, Function, Address, Quantity int
			Values                            []int
		}
	}
	if err := json.Unmarshal(r.Input, &in); err != nil {
		t.Fatal(err)
	}
	m := in.Modbus
	return fmt.Sprintf("%s:%d %s unit %d fc %d addr %d qty %d values %v allow %v rule %q reason %q",
		in.Client.Address, in.Client.Port, in.Operation.Name, m.Unit, m.Function, m.Address, m.Quantity, m.Values,
		r.Decision.Allow, r.Decision.Rule, r.Decision.Reason)
}

func auditSummary(t *testing.T, ev audit.Event) string {
	t.Helper()
	m := ev.Op.Modbus
	var vals []int
	for _, v := range m.Values {
		vals = append(vals, int(v))
	}
	return fmt.Sprintf("%s:%d %s unit %d fc %d addr %d qty %d values %v allow %v rule %q reason %q",
		ev.Source.Addr(), ev.Source.Port(), ev.Op.Name, m.Unit, m.Function, m.Address, m.Quantity, vals,
		ev.Allowed, ev.Rule, ev.Reason)
}

func readADU(c net.Conn) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	hdr := make([]byte, 6)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return nil, err
	}
	body := make([]byte, int(hdr[4])<<8|int(hdr[5]))
	if _, err := io.ReadFull(c, body); err != nil {
		return nil, err
	}
	return append(hdr, body...), nil
}

// tap is a TCP relay in front of the proxy that records, per connection,
// every chunk read on its proxy-side connection, in order.
type tap struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []*tapConn
	wg     sync.WaitGroup
}

type tapConn struct {
	client, server netip.AddrPort // the proxy-side connection: what the proxy sees
	chunks         []tapChunk
}

type tapChunk struct {
	toServer bool
	at       time.Time
	b        []byte
}

func startTap(t *testing.T, target string) *tap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{ln: ln, target: target}
	tp.wg.Add(1)
	go func() {
		defer tp.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			tc := &tapConn{
				client: d.LocalAddr().(*net.TCPAddr).AddrPort(),
				server: d.RemoteAddr().(*net.TCPAddr).AddrPort(),
			}
			tp.mu.Lock()
			tp.conns = append(tp.conns, tc)
			tp.mu.Unlock()
			tp.wg.Add(2)
			go tp.pipe(tc, c, d, true)
			go tp.pipe(tc, d, c, false)
		}
	}()
	return tp
}

func (tp *tap) addr() string { return tp.ln.Addr().String() }

// pipe copies src to dst, recording each chunk before forwarding it.
func (tp *tap) pipe(tc *tapConn, src, dst net.Conn, toServer bool) {
	defer tp.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			tp.mu.Lock()
			tc.chunks = append(tc.chunks, tapChunk{toServer, time.Now(), append([]byte(nil), buf[:n]...)})
			tp.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			// Either side ended (EOF, reset, closed by the other pipe):
			// end both, as the proxy and the client would see it.
			src.Close()
			dst.Close()
			return
		}
	}
}

func (tp *tap) close() {
	tp.ln.Close()
	tp.wg.Wait()
}

// writePcap writes the recorded connections, one after the other, each
// with a handshake and FINs around its chunks.
func (tp *tap) writePcap(t *testing.T) string {
	t.Helper()
	var buf bytes.Buffer
	w, err := synth.NewWriter(&buf, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	w.Step = time.Microsecond
	for _, tc := range tp.conns {
		if len(tc.chunks) == 0 {
			continue
		}
		c := w.Conn(tc.client, tc.server)
		w.Now = tc.chunks[0].at.Add(-time.Millisecond)
		must(t, c.Handshake())
		for _, ch := range tc.chunks {
			w.Now = ch.at
			d := synth.ToClient
			if ch.toServer {
				d = synth.ToServer
			}
			must(t, c.Send(d, ch.b))
		}
		must(t, c.Close())
	}
	path := filepath.Join(t.TempDir(), "proxied.pcap")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if keep := os.Getenv("REPLAY_KEEP_PROXY_PCAP"); keep != "" {
		os.WriteFile(keep, buf.Bytes(), 0o644)
	}
	return path
}
