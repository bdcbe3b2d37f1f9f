// Package load is the harness's Modbus/TCP load generator.
//
// A Pool holds N client connections (plain or TLS with a client
// certificate). Run drives them in one of two modes:
//
//   - closed loop (Rate 0): each connection keeps Depth requests in flight
//     (pipelined, distinct transaction ids) and sends the next one as soon
//     as a response comes back: saturation throughput. Latency is measured
//     from the write of each request.
//   - open loop (Rate > 0): one pacing thread schedules requests at a fixed
//     total rate, round robin over the connections, with clock_nanosleep on
//     absolute times (Go's timers round sub-millisecond sleeps up to a
//     millisecond when idle). Latency is measured from the *scheduled* send
//     time, so a target that stalls is charged for every request it
//     delayed (no coordinated omission); the service time from the actual
//     write is reported too. A connection with MaxInFlight requests
//     outstanding queues further ones, still timed from their schedule.
//
// Every response is validated against its request (see pending.check):
// transaction id pairing, header, unit, function, byte count or echo. An
// exception, a mismatch, a response that does not come within Timeout and
// an I/O error are errors, counted by kind.
package load

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/conduit-ot/conduit/bench/hist"
)

// Config describes one load run.
type Config struct {
	Addr string
	TLS  *tls.Config // nil: plain TCP
	// LocalAddrs, if set, are the source IPs connections bind to, round
	// robin (spreads many connections over more than one 4-tuple space).
	LocalAddrs []string

	Conns int
	Depth int // closed loop: requests in flight per connection (default 1)

	Rate        float64 // > 0: open loop, total requests per second
	MaxInFlight int     // open loop: per connection (default 16)

	WriteFrac float64 // fraction of writes, 0..1

	Warmup   time.Duration // not measured
	Duration time.Duration // measured
	Window   time.Duration // > 0: a time series with this resolution
	Timeout  time.Duration // a response later than this is an error (default 5s)
}

// Result is what one run measured. Counts and percentiles cover the
// measured period (after Warmup); Errors cover the whole run.
type Result struct {
	Mode     string  `json:"mode"` // "closed" or "open"
	Conns    int     `json:"conns"`
	Depth    int     `json:"depth,omitempty"`
	Rate     float64 `json:"rate,omitempty"`
	TLS      bool    `json:"tls"`
	Elapsed  float64 `json:"elapsed_s"`
	Requests uint64  `json:"requests"` // completed in the measured period
	RPS      float64 `json:"rps"`
	Sent     uint64  `json:"sent"` // all requests written, warm-up included

	Errors     uint64            `json:"errors"`
	ErrorKinds map[string]uint64 `json:"error_kinds,omitempty"`
	FirstError string            `json:"first_error,omitempty"`

	Latency hist.Summary  `json:"latency"`           // closed: from write; open: from schedule
	Service *hist.Summary `json:"service,omitempty"` // open loop: from the actual write

	Start  time.Time `json:"start"`
	Series []Window  `json:"series,omitempty"`
}

// Window is one slot of the time series (all of the run, warm-up included).
type Window struct {
	T      float64 `json:"t_s"` // start of the window, seconds since Start
	Count  uint64  `json:"count"`
	Errors uint64  `json:"errors"`
	MaxUs  float64 `json:"max_us"`
}

// Pool is a set of open connections.
type Pool struct {
	cfg   Config
	conns []*conn
}

type conn struct {
	nc  net.Conn
	idx int

	mu      sync.Mutex // open loop: the pacer and the reader both send
	pend    []pending
	backlog []int64 // open loop: scheduled times not yet sent
	tid     uint16
	mix     mix
	wbuf    []byte
}

// Dial opens cfg.Conns connections (64 at a time), with the TLS handshake
// when cfg.TLS is set. On error the connections opened so far are closed.
func Dial(ctx context.Context, cfg Config) (*Pool, error) {
	if cfg.Depth <= 0 {
		cfg.Depth = 1
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 16
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	p := &Pool{cfg: cfg, conns: make([]*conn, cfg.Conns)}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, 64)
	)
	for i := range p.conns {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			nc, err := p.dialOne(ctx, i)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if first == nil {
					first = fmt.Errorf("connection %d: %w", i, err)
				}
				return
			}
			p.conns[i] = &conn{nc: nc, idx: i, mix: mix{writeFrac: cfg.WriteFrac},
				tid: uint16(i * 7919)}
		}(i)
		if ctx.Err() != nil {
			break
		}
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	if first != nil {
		p.Close()
		return nil, first
	}
	return p, nil
}

func (p *Pool) dialOne(ctx context.Context, i int) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if n := len(p.cfg.LocalAddrs); n > 0 {
		ip := net.ParseIP(p.cfg.LocalAddrs[i%n])
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	nc, err := d.DialContext(ctx, "tcp", p.cfg.Addr)
	if err != nil {
		return nil, err
	}
	if p.cfg.TLS == nil {
		return nc, nil
	}
	tc := tls.Client(nc, p.cfg.TLS)
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// Len returns the number of connections.
func (p *Pool) Len() int { return len(p.conns) }

// Close closes every connection.
func (p *Pool) Close() {
	for _, c := range p.conns {
		if c != nil {
			c.nc.Close()
		}
	}
}

// Prime sends one read on every connection and checks its answer, so that
// the target has done the work a first request costs (for a proxy: the
// upstream connection).
func (p *Pool) Prime(ctx context.Context) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, 64)
	)
	for _, c := range p.conns {
		sem <- struct{}{}
		wg.Add(1)
		go func(c *conn) {
			defer func() { <-sem; wg.Done() }()
			if err := c.once(p.cfg.Timeout); err != nil {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("connection %d: %w", c.idx, err)
				}
				mu.Unlock()
			}
		}(c)
	}
	wg.Wait()
	return first
}

func (c *conn) once(timeout time.Duration) error {
	m := mix{}
	c.tid++
	req, pd := m.next(nil, c.tid)
	c.nc.SetDeadline(time.Now().Add(timeout))
	defer c.nc.SetDeadline(time.Time{})
	if _, err := c.nc.Write(req); err != nil {
		return err
	}
	buf := make([]byte, 260)
	have := 0
	for {
		n, err := c.nc.Read(buf[have:])
		have += n
		if adu, ok := frame(buf[:have]); ok {
			if adu == nil {
				return errors.New("bad MBAP header")
			}
			if uint16(adu[0])<<8|uint16(adu[1]) != pd.tid {
				return errors.New("transaction id mismatch")
			}
			if e := pd.check(adu); e != "" {
				return fmt.Errorf("invalid response: %s", e)
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// frame returns the first whole ADU of b (ok true); ok true with a nil ADU
// means an invalid header.
func frame(b []byte) ([]byte, bool) {
	if len(b) < 6 {
		return nil, false
	}
	l := int(b[4])<<8 | int(b[5])
	if b[2] != 0 || b[3] != 0 || l < 2 || l > 254 {
		return nil, true
	}
	if len(b) < 6+l {
		return nil, false
	}
	return b[:6+l], true
}

// Error kinds.
var errorKinds = []string{"exception", "wrong_function", "byte_count", "echo", "bad_header",
	"unmatched_tid", "timeout", "io"}

type run struct {
	cfg      Config
	base     time.Time
	mStart   int64 // ns since base: the measured period
	mEnd     int64
	stopping atomic.Bool

	lat, svc  hist.H
	completed atomic.Uint64 // in the measured period
	sent      atomic.Uint64
	errs      map[string]*atomic.Uint64
	firstMu   sync.Mutex
	firstErr  string

	window time.Duration
	series []windowSlot
}

type windowSlot struct {
	count, errors atomic.Uint64
	max           atomic.Int64
}

func (r *run) now() int64 { return int64(time.Since(r.base)) }

func (r *run) fail(kind string, n uint64, detail string) {
	if n == 0 {
		return
	}
	r.errs[kind].Add(n)
	if r.window > 0 {
		if i := int(r.now() / int64(r.window)); i < len(r.series) {
			r.series[i].errors.Add(n)
		}
	}
	r.firstMu.Lock()
	if r.firstErr == "" {
		r.firstErr = kind + ": " + detail
	}
	r.firstMu.Unlock()
}

// done records a validated response that arrived at now.
func (r *run) done(p *pending, now int64, open bool) {
	from := p.sent
	if open {
		from = p.sched
	}
	lat := time.Duration(now - from)
	if r.window > 0 {
		if i := int(now / int64(r.window)); i < len(r.series) {
			s := &r.series[i]
			s.count.Add(1)
			for {
				m := s.max.Load()
				if int64(lat) <= m || s.max.CompareAndSwap(m, int64(lat)) {
					break
				}
			}
		}
	}
	if now < r.mStart || now >= r.mEnd {
		return
	}
	r.completed.Add(1)
	r.lat.Record(lat)
	if open {
		r.svc.Record(time.Duration(now - p.sent))
	}
}

// Run drives the pool for cfg.Warmup + cfg.Duration, then waits (at most
// Timeout) for the requests in flight. A pool is meant for one Run.
func (p *Pool) Run(ctx context.Context) (*Result, error) {
	cfg := p.cfg
	r := &run{cfg: cfg, errs: map[string]*atomic.Uint64{}, window: cfg.Window}
	for _, k := range errorKinds {
		r.errs[k] = new(atomic.Uint64)
	}
	total := cfg.Warmup + cfg.Duration
	if r.window > 0 {
		r.series = make([]windowSlot, int(total/r.window)+int(cfg.Timeout/r.window)+2)
	}
	r.base = time.Now()
	r.mStart, r.mEnd = int64(cfg.Warmup), int64(total)

	var wg sync.WaitGroup
	open := cfg.Rate > 0
	for _, c := range p.conns {
		wg.Add(1)
		go func(c *conn) {
			defer wg.Done()
			if open {
				c.openReader(r)
			} else {
				c.closedLoop(r)
			}
		}(c)
	}
	stop := func() {
		r.stopping.Store(true)
		if !open {
			return // each closed-loop connection stops after its next answer
		}
		// Wake open-loop readers that wait for nothing.
		for _, c := range p.conns {
			c.mu.Lock()
			if len(c.pend) == 0 && len(c.backlog) == 0 {
				c.nc.SetReadDeadline(time.Now())
			}
			c.mu.Unlock()
		}
	}
	if open {
		p.pace(ctx, r, total)
		stop()
	} else {
		select {
		case <-time.After(total):
		case <-ctx.Done():
		}
		stop()
	}
	wg.Wait()

	res := &Result{
		Mode: "closed", Conns: len(p.conns), Depth: cfg.Depth, TLS: cfg.TLS != nil,
		Elapsed:  cfg.Duration.Seconds(),
		Requests: r.completed.Load(),
		Sent:     r.sent.Load(),
		Latency:  r.lat.Summarize(),
		Start:    r.base,
	}
	if open {
		res.Mode, res.Depth, res.Rate = "open", 0, cfg.Rate
		s := r.svc.Summarize()
		res.Service = &s
	}
	res.RPS = float64(res.Requests) / res.Elapsed
	for k, v := range r.errs {
		if n := v.Load(); n > 0 {
			if res.ErrorKinds == nil {
				res.ErrorKinds = map[string]uint64{}
			}
			res.ErrorKinds[k] = n
			res.Errors += n
		}
	}
	res.FirstError = r.firstErr
	for i := range r.series {
		s := &r.series[i]
		res.Series = append(res.Series, Window{
			T: (time.Duration(i) * r.window).Seconds(), Count: s.count.Load(), Errors: s.errors.Load(),
			MaxUs: float64(s.max.Load()) / 1e3,
		})
	}
	return res, ctx.Err()
}

// closedLoop keeps Depth requests in flight on c until the run stops, then
// collects the answers still due.
func (c *conn) closedLoop(r *run) {
	depth := r.cfg.Depth
	in := make([]byte, 4096)
	c.pend = make([]pending, 0, depth)
	out := make([]byte, 0, depth*17)
	now := r.now()
	for range depth {
		out = c.add(out, now, now)
	}
	if !c.write(r, out, depth) {
		return
	}
	have := 0
	for {
		c.nc.SetReadDeadline(time.Now().Add(r.cfg.Timeout))
		n, err := c.nc.Read(in[have:])
		now := r.now()
		have += n
		start, done := 0, 0
		for {
			adu, ok := frame(in[start:have])
			if !ok {
				break
			}
			if adu == nil {
				r.fail("bad_header", 1, "invalid MBAP header")
				c.lose(r, "io", "connection desynchronised")
				return
			}
			start += len(adu)
			c.complete(r, adu, now, false)
			done++
		}
		have = copy(in, in[start:have])
		if err != nil {
			if r.stopping.Load() && len(c.pend) == 0 {
				return
			}
			kind := "io"
			if errors.Is(err, errDeadline) {
				kind = "timeout"
			}
			c.lose(r, kind, err.Error())
			return
		}
		if r.stopping.Load() {
			if len(c.pend) == 0 {
				return
			}
			continue
		}
		if done > 0 {
			out = out[:0]
			for range done {
				out = c.add(out, now, now)
			}
			if !c.write(r, out, done) {
				return
			}
		}
	}
}

// errDeadline is what a read past its deadline returns.
var errDeadline = os.ErrDeadlineExceeded

// add appends the next request of the mix and registers it as pending.
func (c *conn) add(out []byte, sched, now int64) []byte {
	c.tid++
	out, p := c.mix.next(out, c.tid)
	p.sched, p.sent = sched, now
	c.pend = append(c.pend, p)
	return out
}

func (c *conn) write(r *run, b []byte, n int) bool {
	c.nc.SetWriteDeadline(time.Now().Add(r.cfg.Timeout))
	if _, err := c.nc.Write(b); err != nil {
		c.lose(r, "io", err.Error())
		return false
	}
	r.sent.Add(uint64(n))
	return true
}

// complete pairs a response with its request (by transaction id) and
// validates it.
func (c *conn) complete(r *run, adu []byte, now int64, open bool) {
	tid := uint16(adu[0])<<8 | uint16(adu[1])
	for i := range c.pend {
		if c.pend[i].tid == tid {
			p := c.pend[i]
			last := len(c.pend) - 1
			c.pend[i] = c.pend[last]
			c.pend = c.pend[:last]
			if e := p.check(adu); e != "" {
				r.fail(e, 1, fmt.Sprintf("function %d address %d: response % x", p.fc, p.addr, adu))
				return
			}
			r.done(&p, now, open)
			return
		}
	}
	r.fail("unmatched_tid", 1, fmt.Sprintf("transaction id %d", tid))
}

// lose counts every request still owed on c as failed.
func (c *conn) lose(r *run, kind, detail string) {
	r.fail(kind, uint64(len(c.pend)+len(c.backlog)), detail)
	c.pend, c.backlog = c.pend[:0], c.backlog[:0]
}

// pace is the open loop's scheduler: request i is due at i/Rate seconds
// after the start, on connection i mod N.
func (p *Pool) pace(ctx context.Context, r *run, total time.Duration) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// The default 50 µs timer slack would add up to 50 µs to every wake-up.
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	var mono unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono)
	// r.base was taken a moment before mono: schedule on mono, measure on
	// r.base, and the difference (well under a microsecond) is on our side.
	base := mono.Nano() - r.now()
	n := len(p.conns)
	for i := int64(0); ; i++ {
		off := int64(float64(i) * 1e9 / r.cfg.Rate)
		if off >= int64(total) || ctx.Err() != nil {
			return
		}
		if r.now() < off {
			ts := unix.NsecToTimespec(base + off)
			for unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &ts, nil) == unix.EINTR {
			}
		}
		p.conns[i%int64(n)].send(r, off)
	}
}

// send writes a request scheduled at sched, or queues it when the
// connection has MaxInFlight requests outstanding.
func (c *conn) send(r *run, sched int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pend) >= r.cfg.MaxInFlight {
		c.backlog = append(c.backlog, sched)
		return
	}
	c.sendLocked(r, sched)
}

func (c *conn) sendLocked(r *run, sched int64) {
	c.wbuf = c.add(c.wbuf[:0], sched, r.now())
	c.nc.SetWriteDeadline(time.Now().Add(r.cfg.Timeout))
	if _, err := c.nc.Write(c.wbuf); err != nil {
		c.lose(r, "io", err.Error())
		return
	}
	r.sent.Add(1)
	if len(c.pend) == 1 {
		// The first request in flight arms the response timeout.
		c.nc.SetReadDeadline(time.Now().Add(r.cfg.Timeout))
	}
}

// openReader reads and validates responses in the open loop, and sends
// queued requests as slots free up.
func (c *conn) openReader(r *run) {
	in := make([]byte, 4096)
	have := 0
	for {
		n, err := c.nc.Read(in[have:])
		now := r.now()
		have += n
		start := 0
		c.mu.Lock()
		for {
			adu, ok := frame(in[start:have])
			if !ok {
				break
			}
			if adu == nil {
				r.fail("bad_header", 1, "invalid MBAP header")
				c.lose(r, "io", "connection desynchronised")
				c.mu.Unlock()
				return
			}
			start += len(adu)
			c.complete(r, adu, now, true)
			for len(c.backlog) > 0 && len(c.pend) < r.cfg.MaxInFlight {
				s := c.backlog[0]
				c.backlog = c.backlog[1:]
				c.sendLocked(r, s)
			}
		}
		if len(c.pend) > 0 {
			c.nc.SetReadDeadline(time.Now().Add(r.cfg.Timeout))
		} else if r.stopping.Load() {
			c.mu.Unlock()
			return
		} else {
			c.nc.SetReadDeadline(time.Time{})
		}
		have = copy(in, in[start:have])
		if err != nil {
			idle := len(c.pend) == 0 && len(c.backlog) == 0
			if r.stopping.Load() && idle {
				c.mu.Unlock()
				return
			}
			if errors.Is(err, errDeadline) && idle {
				// A deadline armed for a request that was answered
				// meanwhile.
				c.mu.Unlock()
				continue
			}
			kind := "io"
			if errors.Is(err, errDeadline) {
				kind = "timeout"
			}
			c.lose(r, kind, err.Error())
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
	}
}

// Median returns the median of xs (the mean of the middle two for an even
// count); 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
