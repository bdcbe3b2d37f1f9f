package proxy

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
)

// benchDevice is a minimal Modbus/TCP responder for benchmarks: FC 3 gets
// zeros, FC 6 and FC 16 their echo. It costs next to nothing, so the
// benchmark measures the path, not the device.
func benchDevice(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				buf := make([]byte, 260)
				out := make([]byte, 0, 260)
				for {
					if _, err := io.ReadFull(conn, buf[:7]); err != nil {
						return
					}
					n := int(buf[4])<<8 | int(buf[5])
					if _, err := io.ReadFull(conn, buf[7:6+n]); err != nil {
						return
					}
					out = append(out[:0], buf[0], buf[1], 0, 0)
					switch fc := buf[7]; fc {
					case 3:
						qty := int(buf[10])<<8 | int(buf[11])
						out = append(out, 0, byte(3+2*qty), buf[6], 3, byte(2*qty))
						out = append(out, make([]byte, 2*qty)...)
					case 6:
						out = append(out, buf[4:12]...)
					case 16:
						out = append(out, 0, 6, buf[6], 16, buf[8], buf[9], buf[10], buf[11])
					}
					if _, err := conn.Write(out); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// runLoad sends b.N requests over conns connections, one in flight per
// connection (a SCADA poll loop): 80% FC 3 reads of 10 registers, 20%
// writes (FC 16 of 2 registers, FC 6), to setpoints the reference policy
// allows.
func runLoad(b *testing.B, addr string, conns int) {
	b.Helper()
	var wg sync.WaitGroup
	per := b.N/conns + 1
	b.ResetTimer()
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			defer conn.Close()
			read := []byte{0, 0, 0, 0, 0, 6, 1, 3, 0, 10, 0, 10}
			w6 := []byte{0, 0, 0, 0, 0, 6, 1, 6, 0, 12, 0, 0}
			w16 := []byte{0, 0, 0, 0, 0, 11, 1, 16, 0, 14, 0, 2, 4, 0, 0, 0, 0}
			resp := make([]byte, 260)
			for i := 0; i < per; i++ {
				var req []byte
				switch i % 10 {
				case 3:
					req = w6
					req[11] = byte(i % 7) // a few distinct setpoint values
				case 7:
					req = w16
					req[14] = byte(i % 5)
				default:
					req = read
				}
				req[0], req[1] = byte(i>>8), byte(i)
				if _, err := conn.Write(req); err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(conn, resp[:6]); err != nil {
					b.Error(err)
					return
				}
				n := int(resp[4])<<8 | int(resp[5])
				if _, err := io.ReadFull(conn, resp[6:6+n]); err != nil {
					b.Error(err)
					return
				}
				if resp[7]&0x80 != 0 {
					b.Errorf("exception %d for function %d", resp[8], resp[7]&0x7f)
					return
				}
			}
		}(c)
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkModbusThroughput compares, in one run, a direct connection to
// the device with the proxy: allow-all policy and no audit (the data path
// alone), then the embedded reference policy with the audit file (the
// production path: every request decided and audited, writes only after
// their event is written).
//
//	go test -run '^$' -bench ModbusThroughput -benchtime 20000x ./proxy/
func BenchmarkModbusThroughput(b *testing.B) {
	dev := benchDevice(b)
	const conns = 8
	b.Run("direct", func(b *testing.B) { runLoad(b, dev, conns) })

	lc := listenerConfig(b, dev, "    max_outstanding: 4")
	b.Run("proxy-allow-all-no-audit", func(b *testing.B) {
		l := startProxy(b, lc, allowAll(), discard{})
		runLoad(b, l.Addr().String(), conns)
	})
	b.Run("proxy-reference-policy-audit-file", func(b *testing.B) {
		engine, err := policy.New(context.Background(), policy.Options{
			Source:          policy.Source{Path: "rules", FS: rules.FS},
			DecisionTimeout: 10 * time.Second,
		})
		if err != nil {
			b.Fatal(err)
		}
		defer engine.Close()
		sink, err := audit.OpenFile(filepath.Join(b.TempDir(), "audit.jsonl"), audit.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer sink.Close()
		lc := lc
		lc.Name = "plc-line1" // the reference policy's listener
		l := startProxy(b, lc, engine, sink)
		runLoad(b, l.Addr().String(), conns)
		st := sink.Stats()
		b.ReportMetric(st.EventsPerWrite(), "events/write")
	})
}

type discard struct{}

func (discard) Record(*audit.Event) error { return nil }
