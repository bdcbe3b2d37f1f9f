package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/sim"
)

// The mTLS benchmarks (docs/benchmarks.md, "mTLS"):
//
//	go test ./proxy -run '^$' -bench 'MTLS' -benchmem -count 5
//
// Every benchmark runs the real listener, the real audit encoder (writing
// to io.Discard) and a policy.Decider that answers at once, so what
// differs between the variants is the transport. Client and proxy share
// the machine: a handshake costs both sides' cryptography here.

// benchRecorder is the real audit encoder and sink, writing to io.Discard.
func benchRecorder(b *testing.B) audit.Recorder {
	s := audit.NewWriter(io.Discard, audit.Options{Observer: audit.Observer{Version: "bench"}})
	b.Cleanup(func() { s.Close() })
	return s
}

type fixedDecider bool

func (d fixedDecider) Decide(context.Context, *policy.Input) policy.Decision {
	return policy.Decision{ID: "bench", Allow: bool(d), Reason: "bench"}
}

// readReq is Read Holding Registers, unit 1, register 10, quantity 1; the
// answer is 11 bytes, a refusal (exception) 9.
var readReq = []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 10, 0, 1}

// BenchmarkMTLSConnect measures new connections per second: connect, the
// full mutual TLS 1.3 handshake (ECDSA P-256 certificates from the local
// CA, chain and CRL checked), one request and its answer, close. The
// policy denies, so the proxy answers with an exception and never dials
// the device: the number is the listener's, not the device's. "plain" is
// the same without TLS.
func BenchmarkMTLSConnect(b *testing.B) {
	ca := newTestCA(b, "Bench")
	lt := newListenerTLS(b, ca)
	client := ca.issue(b, pki.IssueRequest{Name: "hmi", Role: "operator"})
	rec := benchRecorder(b)
	mtls := startTLSProxy(b, tlsListenerConfig(b, "plc-tls", "127.0.0.1:1", lt.yaml("")), fixedDecider(false), rec, tlsProxyOptions{noWatch: true})
	plain := startTLSProxy(b, tlsListenerConfig(b, "plc-plain", "127.0.0.1:1", ""), fixedDecider(false), rec, tlsProxyOptions{noWatch: true})
	cfg := tlsClientConfig(b, client, ca)

	run := func(b *testing.B, dial func() (net.Conn, error)) {
		resp := make([]byte, 9)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			c, err := dial()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Write(readReq); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, resp); err != nil {
				b.Fatal(err)
			}
			if resp[7] != 0x83 {
				b.Fatalf("response % x", resp)
			}
			c.Close()
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
	}
	b.Run("mtls", func(b *testing.B) {
		d := &net.Dialer{Timeout: 3 * time.Second}
		run(b, func() (net.Conn, error) { return tls.DialWithDialer(d, "tcp", mtls.addr(), cfg) })
	})
	b.Run("plain", func(b *testing.B) {
		run(b, func() (net.Conn, error) { return net.DialTimeout("tcp", plain.addr(), 3*time.Second) })
	})
}

// BenchmarkMTLSRequests measures Modbus requests per second over one
// established connection to the simulated PLC (simonvetter/modbus's
// server): straight to the device, through the plain listener, and
// through the mTLS listener. One request in flight at a time, as a
// polling HMI does.
func BenchmarkMTLSRequests(b *testing.B) {
	ca := newTestCA(b, "Bench")
	lt := newListenerTLS(b, ca)
	client := ca.issue(b, pki.IssueRequest{Name: "hmi", Role: "operator"})
	plc, err := sim.StartPLC(sim.PLCOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { plc.Close() })
	rec := benchRecorder(b)
	mtls := startTLSProxy(b, tlsListenerConfig(b, "plc-tls", plc.Addr(), lt.yaml("")), fixedDecider(true), rec, tlsProxyOptions{noWatch: true})
	plain := startTLSProxy(b, tlsListenerConfig(b, "plc-plain", plc.Addr(), ""), fixedDecider(true), rec, tlsProxyOptions{noWatch: true})

	run := func(b *testing.B, c net.Conn) {
		defer c.Close()
		resp := make([]byte, 11)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if _, err := c.Write(readReq); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, resp); err != nil {
				b.Fatal(err)
			}
			if resp[7] != 3 {
				b.Fatalf("response % x", resp)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	}
	dial := func(b *testing.B, addr string) net.Conn {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	b.Run("direct", func(b *testing.B) { run(b, dial(b, plc.Addr())) })
	b.Run("plain", func(b *testing.B) { run(b, dial(b, plain.addr())) })
	b.Run("mtls", func(b *testing.B) {
		c, err := tls.Dial("tcp", mtls.addr(), tlsClientConfig(b, client, ca))
		if err != nil {
			b.Fatal(err)
		}
		run(b, c)
	})
}
