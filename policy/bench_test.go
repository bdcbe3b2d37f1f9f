package policy_test

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
)

// Benchmarks of the decision path with the reference policy:
//
//	go test -run '^$' -bench . -benchmem ./policy/
//
// BenchmarkMix is the performance requirement: the median decision of the
// traffic mix must stay under 5µs (reported as p50-ns).

func BenchmarkInputBuild(b *testing.B) {
	for name, in := range map[string]*policy.Input{
		"read":  readHR("127.0.0.1:50100", 0, 10),
		"write": writeHR("127.0.0.1:50100", 10, 100, 200),
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := policy.Document(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchTimeout keeps a descheduled evaluation on a loaded machine from
// failing a benchmark that measures cost, not the timeout.
const benchTimeout = 10 * time.Second

// BenchmarkEvalMiss is a full evaluation: the cache is disabled.
func BenchmarkEvalMiss(b *testing.B) {
	e := reference(b, policy.Options{CacheSize: -1, DecisionTimeout: benchTimeout})
	for name, in := range map[string]*policy.Input{
		"read":       readHR("127.0.0.1:50100", 0, 10),
		"write":      writeHR("127.0.0.1:50100", 10, 100, 200),
		"write-deny": writeHR("127.0.0.1:50100", 15, 5000),
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if d := e.Decide(ctx, in); d.Err != nil {
					b.Fatal(d.Err)
				}
			}
		})
	}
}

// BenchmarkEvalHit is a decision answered from the cache.
func BenchmarkEvalHit(b *testing.B) {
	e := reference(b, policy.Options{DecisionTimeout: benchTimeout})
	for name, in := range map[string]*policy.Input{
		"read":  readHR("127.0.0.1:50100", 0, 10),
		"write": writeHR("127.0.0.1:50100", 10, 100, 200),
	} {
		b.Run(name, func(b *testing.B) {
			e.Decide(ctx, in)
			b.ReportAllocs()
			for b.Loop() {
				if d := e.Decide(ctx, in); !d.Allow {
					b.Fatal(d)
				}
			}
			if s := e.Stats(); s.CacheHits == 0 {
				b.Fatalf("no cache hits: %+v", s)
			}
		})
	}
}

// BenchmarkPlainOPA is the baseline the engine is measured against: the
// reference policy prepared once, evaluated with a Go map input (converted
// by OPA on every evaluation), no cache.
func BenchmarkPlainOPA(b *testing.B) {
	opts := []func(*rego.Rego){rego.Query(policy.Query)}
	err := fs.WalkDir(rules.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := fs.ReadFile(rules.FS, p)
		switch {
		case err != nil:
			return err
		case p == "data.json":
			var data map[string]any
			if err := util.UnmarshalJSON(raw, &data); err != nil {
				return err
			}
			opts = append(opts, rego.Store(inmem.NewFromObject(data)))
		case len(p) > 5 && p[len(p)-5:] == ".rego" && !(len(p) > 10 && p[len(p)-10:] == "_test.rego"):
			opts = append(opts, rego.Module(p, string(raw)))
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	pq, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		b.Fatal(err)
	}
	doc, err := policy.DocumentJSON(readHR("127.0.0.1:50100", 0, 10))
	if err != nil {
		b.Fatal(err)
	}
	var input map[string]any
	if err := json.Unmarshal(doc, &input); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		rs, err := pq.Eval(ctx, rego.EvalInput(input))
		if err != nil || len(rs) != 1 {
			b.Fatal(err, rs)
		}
	}
}

// BenchmarkMix is the traffic of the performance issue: 8 long-lived
// connections, 80% FC 3 reads of 10 registers, 20% writes (FC 16 of 2
// values, FC 6), few distinct shapes. It reports the median and 99th
// percentile latency of one Decide call, timed individually.
func BenchmarkMix(b *testing.B) {
	e := reference(b, policy.Options{DecisionTimeout: benchTimeout})
	const conns = 8
	shapes := make([][]*policy.Input, conns)
	for c := range conns {
		client := fmt.Sprintf("127.0.0.1:%d", 50100+c)
		for i := range 8 {
			shapes[c] = append(shapes[c], readHR(client, uint16(10*(i%4)), 10))
		}
		shapes[c] = append(shapes[c],
			writeHR(client, 10, 100, 200), // FC 16, 2 values
			writeHR(client, 12, 500),      // FC 6
		)
	}
	// Steady state: the few shapes are cached; the first request of each
	// is a miss and is not what the requirement is about.
	for _, s := range shapes {
		for _, in := range s {
			e.Decide(ctx, in)
		}
	}
	latencies := make([][]time.Duration, conns)
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for c := range conns {
		n := b.N / conns
		if c < b.N%conns {
			n++
		}
		wg.Go(func() {
			lat := make([]time.Duration, 0, n)
			s := shapes[c]
			for i := range n {
				in := s[i%len(s)]
				start := time.Now()
				d := e.Decide(ctx, in)
				lat = append(lat, time.Since(start))
				if !d.Allow {
					panic(d.Reason)
				}
			}
			latencies[c] = lat
		})
	}
	wg.Wait()
	b.StopTimer()
	all := slices.Concat(latencies...)
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Nanoseconds()), "p50-ns")
		b.ReportMetric(float64(all[len(all)*99/100].Nanoseconds()), "p99-ns")
	}
}
