package proxy

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/sim"
)

// Write requests per second, gopcua client → simulated server, directly
// and through the proxy (docs/benchmarks.md, "OPC UA"):
//
//	go test ./proxy -run '^$' -bench OPCUAWrite -benchmem -benchtime 3s

type discardRecorder struct{}

func (discardRecorder) Record(*audit.Event) error { return nil }

func BenchmarkOPCUAWrite(b *testing.B) {
	srv := startSimUA(b, sim.OPCUAOptions{CountEvery: -1})
	lc := uaListenerConfig(b, srv.Addr(), "", "")
	var discard audit.Recorder = discardRecorder{}
	auditFile := func() audit.Recorder {
		sink, err := audit.OpenFile(filepath.Join(b.TempDir(), "audit.jsonl"), audit.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { sink.Close() })
		return sink
	}
	for _, tc := range []struct {
		name     string
		decider  func() policy.Decider
		recorder func() audit.Recorder
	}{
		{"direct", nil, nil},
		{"proxy-allow-all", func() policy.Decider { return allowAll() }, func() audit.Recorder { return discard }},
		{"proxy-reference-policy", func() policy.Decider { return referencePolicy(b) }, func() audit.Recorder { return discard }},
		// The production path: reference policy, every event in the audit
		// file before the write is forwarded.
		{"proxy-reference-policy-audit-file", func() policy.Decider { return referencePolicy(b) }, auditFile},
	} {
		for _, parallel := range []int{1, 8} {
			name := tc.name
			if parallel > 1 {
				name += "-parallel8"
			}
			b.Run(name, func(b *testing.B) {
				endpoint := srv.Endpoint()
				if tc.decider != nil {
					l := startUAProxy(b, lc, tc.decider(), tc.recorder(), nil)
					endpoint = proxyURL(l)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				defer cancel()
				c := gopcuaClient(b, ctx, endpoint)
				req := writeReq(sim.OPCUASetpoint, 750.0)
				write := func() {
					resp, err := c.Write(ctx, req)
					if err != nil || resp.Results[0] != ua.StatusOK {
						b.Fatalf("write: %v %v", resp, err)
					}
				}
				write() // warm up: session, policy cache
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				if parallel == 1 {
					for b.Loop() {
						write()
					}
				} else {
					b.SetParallelism(parallel)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							write()
						}
					})
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writes/s")
			})
		}
	}
}
