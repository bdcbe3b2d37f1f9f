// Package hist is a log-linear latency histogram in the spirit of
// HdrHistogram: values below 64 are exact, above that every power of two is
// split into 64 linear sub-buckets, so a reported percentile is within 1.6 %
// of the true value, over the whole range of int64 nanoseconds, in a fixed
// 30 KiB. Record is lock-free (atomic adds), so all connections of a run
// share one histogram.
package hist

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

const (
	subBits = 6
	sub     = 1 << subBits // sub-buckets per power of two
	buckets = sub + (64-subBits)*sub
)

// H is a histogram of durations. The zero value is ready to use.
type H struct {
	counts [buckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64 // nanoseconds
	max    atomic.Int64
}

func index(v uint64) int {
	if v < sub {
		return int(v)
	}
	k := bits.Len64(v) - 1 // v in [2^k, 2^(k+1)), k >= subBits
	shift := k - subBits
	return sub + shift*sub + int(v>>shift) - sub
}

// upper returns the highest value that falls into bucket i.
func upper(i int) uint64 {
	if i < sub {
		return uint64(i)
	}
	shift := (i - sub) / sub
	m := uint64((i-sub)%sub + sub)
	return (m+1)<<shift - 1
}

// Record adds one duration (negative durations count as zero).
func (h *H) Record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[index(v)].Add(1)
	h.n.Add(1)
	h.sum.Add(v)
	for {
		m := h.max.Load()
		if int64(v) <= m || h.max.CompareAndSwap(m, int64(v)) {
			break
		}
	}
}

// Count returns the number of recorded values.
func (h *H) Count() uint64 { return h.n.Load() }

// Max returns the largest recorded value (exact).
func (h *H) Max() time.Duration { return time.Duration(h.max.Load()) }

// Mean returns the mean of the recorded values.
func (h *H) Mean() time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

// Quantile returns the value at quantile q (0..1): the upper bound of the
// bucket holding the ceil(q*n)-th smallest value, capped at the exact max.
func (h *H) Quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = min(max(rank, 1), n)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			return min(time.Duration(upper(i)), h.Max())
		}
	}
	return h.Max()
}

// Merge adds the counts of o to h.
func (h *H) Merge(o *H) {
	for i := range o.counts {
		if c := o.counts[i].Load(); c != 0 {
			h.counts[i].Add(c)
		}
	}
	h.n.Add(o.n.Load())
	h.sum.Add(o.sum.Load())
	for {
		m, om := h.max.Load(), o.max.Load()
		if om <= m || h.max.CompareAndSwap(m, om) {
			break
		}
	}
}

// Summary is the usual set of percentiles, in microseconds.
type Summary struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean_us"`
	P50   float64 `json:"p50_us"`
	P90   float64 `json:"p90_us"`
	P99   float64 `json:"p99_us"`
	P999  float64 `json:"p99_9_us"`
	Max   float64 `json:"max_us"`
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Summarize returns h's percentiles.
func (h *H) Summarize() Summary {
	return Summary{
		Count: h.Count(),
		Mean:  us(h.Mean()),
		P50:   us(h.Quantile(0.50)),
		P90:   us(h.Quantile(0.90)),
		P99:   us(h.Quantile(0.99)),
		P999:  us(h.Quantile(0.999)),
		Max:   us(h.Max()),
	}
}
