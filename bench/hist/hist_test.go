package hist

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestIndexUpperRoundTrip(t *testing.T) {
	for _, v := range []uint64{0, 1, 63, 64, 65, 127, 128, 1000, 123456789, 1 << 40, 1<<63 - 1} {
		i := index(v)
		if i < 0 || i >= buckets {
			t.Fatalf("index(%d) = %d out of range", v, i)
		}
		if up := upper(i); up < v {
			t.Errorf("upper(index(%d)) = %d < value", v, up)
		}
		if i > 0 && upper(i-1) >= v {
			t.Errorf("value %d also fits bucket %d (upper %d)", v, i-1, upper(i-1))
		}
	}
}

// Quantiles are within the documented 1/64 relative error of exact
// percentiles of sorted samples.
func TestQuantileAccuracy(t *testing.T) {
	var h H
	r := rand.New(rand.NewPCG(1, 2))
	samples := make([]time.Duration, 100000)
	for i := range samples {
		// log-normal-ish latencies from 20 µs to tens of ms
		d := time.Duration(20000 * (1 + r.ExpFloat64()*r.ExpFloat64()*10))
		samples[i] = d
		h.Record(d)
	}
	slices.Sort(samples)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := samples[int(q*float64(len(samples)))-1]
		got := h.Quantile(q)
		if got < exact || float64(got-exact) > float64(exact)/64+1 {
			t.Errorf("q%.3f = %v, exact %v", q, got, exact)
		}
	}
	if h.Max() != samples[len(samples)-1] {
		t.Errorf("max %v, want %v", h.Max(), samples[len(samples)-1])
	}
	var m H
	m.Merge(&h)
	if m.Quantile(0.99) != h.Quantile(0.99) || m.Count() != h.Count() {
		t.Error("merge changed the distribution")
	}
}
