package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/conduit-ot/conduit/bench/load"
)

// options of `bench run`.
type options struct {
	out      string // scratch: binaries, PKI, configs, logs, audit files
	results  string // JSON results and profiles (committed)
	img      string // PNG plots (committed)
	repeats  int
	warmup   time.Duration
	duration time.Duration
	latDur   time.Duration
	rate     float64
	scale    int // connections doing work
	hold     int // connections held open
	primed   int // connections held open after one request each
	reload   time.Duration
	only     map[string]bool
	profile  time.Duration
	quick    bool
	conduit  string // a prebuilt conduit binary instead of building ./cmd/conduit
}

// scenario is one load shape.
type scenario struct {
	Key       string  `json:"key"`
	Title     string  `json:"title"`
	Conns     int     `json:"conns"`
	Depth     int     `json:"depth,omitempty"`
	Rate      float64 `json:"rate,omitempty"`
	WriteFrac float64 `json:"write_fraction"`
	dur       time.Duration
}

// target is one system under test.
type target struct {
	Key   string `json:"key"`
	Name  string `json:"name"`
	Label string `json:"label"`
	Addr  string `json:"addr"`
	TLS   bool   `json:"tls"`
	proc  *proc  // the proxy; nil for direct
	pprof string // Conduit's --pprof address
	audit string // Conduit's audit file
}

// RunRecord is one measurement.
type RunRecord struct {
	Scenario string       `json:"scenario"`
	Target   string       `json:"target"`
	Repeat   int          `json:"repeat"`
	Load     *load.Result `json:"load"`
	// CPU per completed request in the measured period, µs.
	ProxyCPU   float64 `json:"proxy_cpu_us_per_req,omitempty"`
	DeviceCPU  float64 `json:"device_cpu_us_per_req"`
	LoadgenCPU float64 `json:"loadgen_cpu_us_per_req"`
	// MachineBusy is the share of both cores busy during the measured
	// period, everything on the machine included.
	MachineBusy float64 `json:"machine_busy"`
	// CPUPressure is the share of the measured period in which some
	// runnable task on the machine waited for a CPU (/proc/pressure/cpu).
	CPUPressure float64 `json:"cpu_pressure"`
	LoadBefore  string  `json:"loadavg_before"`
	LoadAfter   string  `json:"loadavg_after"`
}

type harness struct {
	opt     options
	ctx     context.Context
	logf    func(string, ...any)
	conduit string
	self    string
	haproxy string
	pki     *pkiFiles
	cliTLS  *tls.Config
	device  *proc
	targets []*target
	report  *Report
}

func (h *harness) scenarios() []scenario {
	o := h.opt
	all := []scenario{
		{Key: "saturation", Title: "saturation, 8 connections, depth 1, 20 % writes", Conns: 8, Depth: 1, WriteFrac: 0.2, dur: o.duration},
		{Key: "latency", Title: fmt.Sprintf("fixed rate %g req/s, 8 connections, 20 %% writes", o.rate), Conns: 8, Rate: o.rate, WriteFrac: 0.2, dur: o.latDur},
		{Key: "depth8", Title: "saturation, 8 connections, depth 8 (pipelined), 20 % writes", Conns: 8, Depth: 8, WriteFrac: 0.2, dur: o.duration},
	}
	var out []scenario
	for _, s := range all {
		if h.want(s.Key) {
			out = append(out, s)
		}
	}
	return out
}

func (h *harness) want(key string) bool { return len(h.opt.only) == 0 || h.opt.only[key] }

// setup builds Conduit, makes the PKI, the configurations, and starts the
// device and the four proxies.
func (h *harness) setup() error {
	o := h.opt
	for _, d := range []string{o.out, o.results, o.img, filepath.Join(o.out, "bin"), filepath.Join(o.out, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	var err error
	if h.self, err = os.Executable(); err != nil {
		return err
	}
	if o.conduit != "" {
		h.conduit = abs(o.conduit)
	} else {
		h.conduit = abs(filepath.Join(o.out, "bin", "conduit"))
		h.logf("building %s", h.conduit)
		if err := runCmd(h.ctx, "go", "build", "-o", h.conduit, "./cmd/conduit"); err != nil {
			return err
		}
	}
	if v, err := exec.Command(h.conduit, "version").CombinedOutput(); err == nil {
		h.report.Machine.Conduit = strings.TrimSpace(string(v))
	}
	if h.haproxy, err = ensureHAProxy(h.ctx, h.logf); err != nil {
		return err
	}
	out, _ := exec.Command(h.haproxy, "-v").Output()
	h.report.Machine.HAProxy = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])

	if h.pki, err = makePKI(h.ctx, h.conduit, filepath.Join(o.out, "pki")); err != nil {
		return err
	}
	if h.cliTLS, err = h.pki.clientTLS(); err != nil {
		return err
	}
	if err := h.copyPolicy(); err != nil {
		return err
	}

	devAddr, _ := freePort()
	h.device, err = start("device", h.logPath("device"), devAddr, nil, h.self, "device", "--listen", devAddr)
	if err != nil {
		return err
	}
	h.targets = append(h.targets, &target{Key: "A", Name: "direct", Label: "direct to the device", Addr: devAddr})

	for _, t := range []struct {
		key, name, label, cfg string
		tls                   bool
	}{
		{"B", "haproxy-tcp", "HAProxy 2.6 mode tcp", "tcp.cfg", false},
		{"C", "haproxy-mtls", "HAProxy 2.6 TLS 1.3, verify required", "mtls.cfg", true},
	} {
		addr, _ := freePort()
		cfg, _ := filepath.Abs(filepath.Join("bench", "haproxy", t.cfg))
		env := []string{"BENCH_LISTEN=" + addr, "BENCH_DEVICE=" + devAddr, "BENCH_CRT=" + abs(h.pki.haproxyPEM), "BENCH_CA=" + abs(h.pki.rootCA)}
		p, err := start(t.name, h.logPath(t.name), addr, env, h.haproxy, "-db", "-f", cfg)
		if err != nil {
			return err
		}
		h.targets = append(h.targets, &target{Key: t.key, Name: t.name, Label: t.label, Addr: addr, TLS: t.tls, proc: p})
	}
	for _, t := range []struct {
		key, name, label string
		tls              bool
	}{
		{"D", "conduit", "Conduit plain", false},
		{"E", "conduit-mtls", "Conduit mTLS (TLS 1.3)", true},
	} {
		ct, err := h.startConduit(t.name, devAddr, t.tls, true)
		if err != nil {
			return err
		}
		ct.Key, ct.Label = t.key, t.label
		h.targets = append(h.targets, ct)
	}
	return nil
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

func (h *harness) logPath(name string) string {
	return filepath.Join(h.opt.out, "logs", name+".log")
}

// copyPolicy copies the reference policy (rules/*.rego, *.json) to
// out/policy, which the reload scenario edits.
func (h *harness) copyPolicy() error {
	dst := filepath.Join(h.opt.out, "policy")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir("rules")
	if err != nil {
		return err
	}
	for _, e := range entries {
		if ext := filepath.Ext(e.Name()); ext != ".rego" && ext != ".json" {
			continue
		}
		b, err := os.ReadFile(filepath.Join("rules", e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// startConduit writes a configuration for the real binary (reference
// policy, audit file on, defaults otherwise) and starts `conduit run`.
func (h *harness) startConduit(name, devAddr string, withTLS, pprof bool) (*target, error) {
	t, dir, err := h.newConduitTarget(name, withTLS)
	if err != nil {
		return nil, err
	}
	addr := t.Addr
	tlsCfg := ""
	if withTLS {
		tlsCfg = fmt.Sprintf(`
    tls:
      cert_file: %s
      key_file: %s
      client_ca_file: %s
      min_version: "1.3"`, abs(h.pki.serverChain), abs(h.pki.srvKey), abs(h.pki.rootCA))
	}
	cfg := fmt.Sprintf(`# Written by go run ./bench run: the reference policy, the audit file on,
# every other setting at its default except the connection caps (the scale
# scenario holds %d connections).
listeners:
  - name: plc-line1
    protocol: modbus
    listen: %s
    upstream: %s
    max_connections: 12000%s
policy:
  path: %s
  watch: false   # the reload scenario reloads with SIGHUP
audit:
  file: %s
limits:
  max_connections: 12000
`, h.opt.hold, addr, devAddr, tlsCfg, abs(filepath.Join(h.opt.out, "policy")), t.audit)
	cfgPath := filepath.Join(dir, "conduit.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	argv := []string{h.conduit, "run", "--config", cfgPath}
	if pprof {
		t.pprof, _ = freePort()
		argv = append(argv, "--pprof", t.pprof)
	}
	t.proc, err = start(name, h.logPath(name), addr, nil, argv...)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// newConduitTarget makes out/NAME for a Conduit target (its configuration
// and a fresh audit file) and picks its listen address.
func (h *harness) newConduitTarget(name string, withTLS bool) (*target, string, error) {
	dir, err := filepath.Abs(filepath.Join(h.opt.out, name))
	if err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	addr, _ := freePort()
	t := &target{Name: name, Addr: addr, TLS: withTLS, audit: filepath.Join(dir, "audit.jsonl")}
	os.Remove(t.audit)
	return t, dir, nil
}

func (h *harness) stopAll() {
	for _, t := range h.targets {
		if t.proc != nil {
			t.proc.stop()
		}
	}
	if h.device != nil {
		h.device.stop()
	}
}

func (h *harness) loadConfig(sc scenario, t *target) load.Config {
	cfg := load.Config{
		Addr: t.Addr, Conns: sc.Conns, Depth: sc.Depth, Rate: sc.Rate, WriteFrac: sc.WriteFrac,
		Warmup: h.opt.warmup, Duration: sc.dur, Timeout: 5 * time.Second,
	}
	if t.TLS {
		cfg.TLS = h.cliTLS
	}
	return cfg
}

// measure runs one scenario against one target and samples the CPU time
// of the proxy, the device and the load generator over the measured
// period.
func (h *harness) measure(sc scenario, t *target, rep int, window time.Duration, during func(start time.Time)) (*RunRecord, error) {
	if t.audit != "" {
		// Keep the disk in check: the sink appends (O_APPEND), so a
		// truncated file simply continues at its new end.
		os.Truncate(t.audit, 0)
	}
	cfg := h.loadConfig(sc, t)
	cfg.Window = window
	pool, err := load.Dial(h.ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", sc.Key, t.Name, err)
	}
	defer pool.Close()
	rec := &RunRecord{Scenario: sc.Key, Target: t.Key, Repeat: rep, LoadBefore: loadavg()}

	type sample struct {
		proxy, dev, self time.Duration
		busy, total      int64
		stall            time.Duration
		at               time.Time
	}
	take := func() sample {
		s := sample{dev: h.device.cpu(), self: procCPU(os.Getpid())}
		if t.proc != nil {
			s.proxy = t.proc.cpu()
		}
		s.busy, s.total = machineCPU()
		s.stall, s.at = cpuStall(), time.Now()
		return s
	}
	samples := make(chan sample, 2)
	go func() {
		start := time.Now()
		time.Sleep(h.opt.warmup)
		samples <- take()
		if during != nil {
			go during(start)
		}
		time.Sleep(sc.dur)
		samples <- take()
	}()
	res, err := pool.Run(h.ctx)
	if err != nil {
		return nil, err
	}
	a, b := <-samples, <-samples
	rec.Load = res
	rec.LoadAfter = loadavg()
	if n := float64(res.Requests); n > 0 {
		per := func(d time.Duration) float64 { return float64(d.Microseconds()) / n }
		if t.proc != nil {
			rec.ProxyCPU = per(b.proxy - a.proxy)
		}
		rec.DeviceCPU = per(b.dev - a.dev)
		rec.LoadgenCPU = per(b.self - a.self)
	}
	if b.total > a.total {
		rec.MachineBusy = float64(b.busy-a.busy) / float64(b.total-a.total)
	}
	if d := b.at.Sub(a.at); d > 0 {
		rec.CPUPressure = float64(b.stall-a.stall) / float64(d)
	}
	h.logf("  %-11s %-13s rep %d: %8.0f req/s  p50 %6.0f µs  p99 %6.0f µs  p99.9 %6.0f µs  max %7.0f µs  proxy %5.1f µs/req  errors %d  load %s  busy %.0f%%  cpu pressure %.0f%%",
		sc.Key, t.Name, rep, res.RPS, res.Latency.P50, res.Latency.P99, res.Latency.P999, res.Latency.Max, rec.ProxyCPU, res.Errors, rec.LoadAfter,
		100*rec.MachineBusy, 100*rec.CPUPressure)
	if res.Errors > 0 {
		h.logf("    errors: %v (first: %s)", res.ErrorKinds, res.FirstError)
	}
	return rec, nil
}

// runAll is the whole harness.
func (h *harness) runAll() error {
	if err := h.setup(); err != nil {
		return err
	}
	defer h.stopAll()
	r := h.report

	// 1-3: interleaved, A B C D E per scenario, repeated.
	scs := h.scenarios()
	for _, sc := range scs {
		r.Scenarios = append(r.Scenarios, sc)
	}
	for _, t := range h.targets {
		r.Targets = append(r.Targets, *t)
	}
	for rep := 1; rep <= h.opt.repeats; rep++ {
		h.logf("repeat %d/%d", rep, h.opt.repeats)
		for _, sc := range scs {
			for _, t := range h.targets {
				rec, err := h.measure(sc, t, rep, 0, nil)
				if err != nil {
					return err
				}
				rec.Load.Series = nil
				r.Runs = append(r.Runs, rec)
			}
		}
	}
	if h.want("profile") && h.opt.profile > 0 {
		if err := h.profileRuns(); err != nil {
			return err
		}
	}
	if h.want("scale") {
		if err := h.scaleRuns(); err != nil {
			return err
		}
	}
	if h.want("reload") {
		if err := h.reloadRuns(); err != nil {
			return err
		}
	}
	if h.want("opcua") {
		if err := h.opcuaRuns(); err != nil {
			return err
		}
	}
	return nil
}

// profileRuns repeats scenario 1 once per proxy with perf stat counting
// syscalls and context switches, and once more for each Conduit with a
// CPU profile; these runs are not in the medians.
func (h *harness) profileRuns() error {
	sc := scenario{Key: "saturation", Conns: 8, Depth: 1, WriteFrac: 0.2, dur: h.opt.duration}
	h.logf("counters: perf stat during scenario 1 (not in the medians)")
	for _, t := range h.targets {
		pid := h.device.pid()
		if t.proc != nil {
			pid = t.proc.pid()
		}
		var out string
		rec, err := h.measure(sc, t, 0, 0, func(time.Time) { out = perfStat(pid, sc.dur) })
		if err != nil {
			return err
		}
		// perf counts over the measured period less its last 0.5 s.
		c := parsePerf(out, float64(rec.Load.Requests)*(sc.dur.Seconds()-0.5)/sc.dur.Seconds())
		c.Target = t.Key
		c.RPS = rec.Load.RPS
		c.ProxyCPU = rec.ProxyCPU
		h.report.Counters = append(h.report.Counters, c)
		h.logf("    %s: %.2f syscalls/req, %.2f context switches/req (%s)", t.Name, c.SyscallsPerReq, c.CtxSwitchesPerReq, c.Note)
	}
	h.logf("CPU profiles of Conduit during scenario 1 (not in the medians)")
	for _, t := range h.targets {
		if t.pprof == "" {
			continue
		}
		secs := int(h.opt.profile.Seconds())
		sc := sc
		sc.dur = h.opt.profile + time.Second
		file := filepath.Join(h.opt.results, "profiles", t.Name+".cpu.pprof")
		os.MkdirAll(filepath.Dir(file), 0o755)
		var perr error
		rec, err := h.measure(sc, t, 0, 0, func(time.Time) {
			perr = fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", t.pprof, secs), file)
		})
		if err != nil {
			return err
		}
		time.Sleep(time.Second) // the profile is written as the run ends
		if perr != nil {
			return perr
		}
		bd, err := breakdown(file, rec.Load.RPS*float64(secs))
		if err != nil {
			return err
		}
		bd.Target = t.Key
		bd.RPS = rec.Load.RPS
		bd.ProxyCPU = rec.ProxyCPU
		bd.Profile = filepath.ToSlash(file)
		h.report.Profiles = append(h.report.Profiles, bd)
	}
	return nil
}

func fetch(url, file string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s: %s", url, resp.Status, b)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// ScaleResult is scenario 4.
type ScaleResult struct {
	Work  []*RunRecord `json:"work"`  // scale connections doing work, per target
	Holds []HoldResult `json:"holds"` // connections held open, Conduit only
}

// HoldResult is one held-open measurement on a fresh Conduit process.
type HoldResult struct {
	Target      string  `json:"target"`
	Conns       int     `json:"conns"`
	Primed      bool    `json:"primed"` // each sent one request (upstream dialed)
	RSSBefore   int64   `json:"rss_before"`
	RSSAfter    int64   `json:"rss_after"`
	PerConnKiB  float64 `json:"rss_per_conn_kib"`
	OpenSeconds float64 `json:"open_s"`
	Errors      string  `json:"errors,omitempty"`
	HeapProfile string  `json:"heap_profile,omitempty"`
	// The Go runtime's view of the same growth (runtime.MemStats read
	// through the pprof endpoint next to each RSS reading, no GC forced):
	// what RSS is made of.
	HeapInusePerConnKiB  float64 `json:"heap_inuse_per_conn_kib,omitempty"`
	StackInusePerConnKiB float64 `json:"stack_inuse_per_conn_kib,omitempty"`
}

func (h *harness) scaleRuns() error {
	o := h.opt
	sc := scenario{Key: "scale", Title: fmt.Sprintf("%d connections, depth 1, 20 %% writes", o.scale), Conns: o.scale, Depth: 1, WriteFrac: 0.2, dur: o.duration}
	h.report.ScaleScenario = sc
	sr := &ScaleResult{}
	if o.scale > 0 { // -scale 0: the held-open connections only
		h.logf("scale: %d connections doing work", o.scale)
		for _, t := range h.targets {
			rec, err := h.measure(sc, t, 1, 0, nil)
			if err != nil {
				return err
			}
			sr.Work = append(sr.Work, rec)
		}
	}
	h.report.Scale = sr
	devAddr := h.targets[0].Addr
	for _, t := range []struct {
		key, name string
		tls       bool
	}{{"D", "conduit-scale", false}, {"E", "conduit-mtls-scale", true}} {
		for _, hold := range []struct {
			n      int
			primed bool
		}{{o.hold, false}, {o.primed, true}} {
			if hold.n == 0 {
				continue
			}
			hr, err := h.holdOpen(t.key, t.name, devAddr, t.tls, hold.n, hold.primed)
			if err != nil {
				return err
			}
			sr.Holds = append(sr.Holds, *hr)
		}
	}
	return nil
}

// holdOpen starts a fresh Conduit, opens n connections (and with primed,
// sends one request on each), and measures the growth of its RSS.
func (h *harness) holdOpen(key, name, devAddr string, withTLS bool, n int, primed bool) (*HoldResult, error) {
	ct, err := h.startConduit(name, devAddr, withTLS, true)
	if err != nil {
		return nil, err
	}
	defer ct.proc.stop()
	time.Sleep(2 * time.Second) // let start-up garbage be collected
	hr := &HoldResult{Target: key, Conns: n, Primed: primed, RSSBefore: ct.proc.rss()}
	msBefore := memStats(ct.pprof)
	cfg := load.Config{Addr: ct.Addr, Conns: n, Timeout: 30 * time.Second}
	if withTLS {
		cfg.TLS = h.cliTLS
	}
	t0 := time.Now()
	pool, err := load.Dial(h.ctx, cfg)
	if err != nil {
		hr.Errors = err.Error()
		h.logf("  hold %d on %s: %v", n, name, err)
		return hr, nil
	}
	defer pool.Close()
	if primed {
		if err := pool.Prime(h.ctx); err != nil {
			hr.Errors = err.Error()
		}
	}
	hr.OpenSeconds = time.Since(t0).Seconds()
	time.Sleep(3 * time.Second)
	hr.RSSAfter = ct.proc.rss()
	hr.PerConnKiB = float64(hr.RSSAfter-hr.RSSBefore) / float64(n) / 1024
	if msAfter := memStats(ct.pprof); msBefore != nil && msAfter != nil {
		perConn := func(k string) float64 { return float64(msAfter[k]-msBefore[k]) / float64(n) / 1024 }
		hr.HeapInusePerConnKiB, hr.StackInusePerConnKiB = perConn("HeapInuse"), perConn("StackInuse")
	}
	// What the heap holds (after a GC), for the analysis of the RSS.
	heap := filepath.Join(h.opt.results, "profiles", fmt.Sprintf("%s-hold-%d-primed-%v.heap.pprof", name, n, primed))
	os.MkdirAll(filepath.Dir(heap), 0o755)
	if err := fetch("http://"+ct.pprof+"/debug/pprof/heap?gc=1", heap); err == nil {
		hr.HeapProfile = filepath.ToSlash(heap)
	}
	h.logf("  hold %d connections on %s (primed %v): RSS %d → %d MiB, %.1f KiB per connection (heap in use %.1f, stacks %.1f), opened in %.1f s %s",
		n, name, primed, hr.RSSBefore>>20, hr.RSSAfter>>20, hr.PerConnKiB, hr.HeapInusePerConnKiB, hr.StackInusePerConnKiB, hr.OpenSeconds, hr.Errors)
	return hr, nil
}

// memStats reads the runtime.MemStats of a Go process from the "# Name =
// value" lines of its /debug/pprof/heap?debug=1 page (nil if it cannot).
func memStats(pprofAddr string) map[string]int64 {
	resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/heap?debug=1")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		return nil
	}
	ms := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(l, "# "), " = ")
		if !ok || !strings.HasPrefix(l, "# ") {
			continue
		}
		if k == "Stack" { // "# Stack = StackInuse / StackSys"
			v, _, _ = strings.Cut(v, " / ")
			k = "StackInuse"
		}
		if x, err := strconv.ParseInt(v, 10, 64); err == nil {
			ms[k] = x
		}
	}
	return ms
}

// ReloadResult is scenario 5.
type ReloadResult struct {
	Target     string        `json:"target"`
	Kind       string        `json:"kind"` // policy or certificate
	Run        *RunRecord    `json:"run"`
	ReloadAt   []float64     `json:"reload_at_s"`  // seconds since the run's start
	Reloaded   int           `json:"reloads_seen"` // reload events in the audit trail
	MaxAround  float64       `json:"max_us_around_reload"`
	MaxBefore  float64       `json:"max_us_before"`
	WindowSize time.Duration `json:"window_ns"`
}

func (h *harness) reloadRuns() error {
	o := h.opt
	sc := scenario{Key: "reload", Title: "saturation (8 connections, depth 1, 20 % writes) with reloads", Conns: 8, Depth: 1, WriteFrac: 0.2, dur: o.reload}
	h.report.ReloadScenario = sc
	window := 100 * time.Millisecond
	for _, t := range h.targets {
		if t.Key != "D" && t.Key != "E" {
			continue
		}
		kind := "policy"
		if t.TLS {
			kind = "certificate"
		}
		// The new certificates are issued before the run; in it, a
		// certificate reload is a rename and SIGHUP, as a policy
		// reload is a write of data.json and SIGHUP.
		var staged []string
		if kind == "certificate" {
			for i := 1; i <= 2; i++ {
				dir, err := h.pki.stageServer(h.ctx, h.conduit, i)
				if err != nil {
					return err
				}
				staged = append(staged, dir)
			}
		}
		var at []float64
		n := 0
		rec, err := h.measure(sc, t, 1, window, func(start time.Time) {
			// Two reloads in the measured period, a third of the way in
			// and two thirds.
			for i := 1; i <= 2; i++ {
				time.Sleep(time.Until(start.Add(o.warmup + time.Duration(i)*sc.dur/3)))
				var err error
				if kind == "policy" {
					err = h.changePolicy(i)
				} else {
					err = h.pki.installServer(staged[i-1])
				}
				if err != nil {
					h.logf("  reload preparation failed: %v", err)
					continue
				}
				at = append(at, time.Since(start).Seconds())
				t.proc.signal(syscall.SIGHUP)
				n++
			}
		})
		if err != nil {
			return err
		}
		rr := ReloadResult{Target: t.Key, Kind: kind, Run: rec, ReloadAt: at, WindowSize: window}
		action := `"action":"policy-reload"`
		if kind == "certificate" {
			action = `"action":"certificate-reload"`
		}
		if b, err := os.ReadFile(t.audit); err == nil {
			rr.Reloaded = strings.Count(string(b), action)
		}
		for _, w := range rec.Load.Series {
			near := false
			for _, a := range at {
				if w.T >= a-0.5 && w.T <= a+2 {
					near = true
				}
			}
			if near {
				rr.MaxAround = max(rr.MaxAround, w.MaxUs)
			} else if w.T >= o.warmup.Seconds() && (len(at) == 0 || w.T < at[0]-0.5) {
				rr.MaxBefore = max(rr.MaxBefore, w.MaxUs)
			}
		}
		h.logf("  %s reload on %s: %d requests, %d errors, max latency %.0f µs around the reloads (%.0f µs before), %d reload events audited",
			kind, t.Name, rec.Load.Requests, rec.Load.Errors, rr.MaxAround, rr.MaxBefore, rr.Reloaded)
		h.report.Reloads = append(h.report.Reloads, rr)
	}
	return nil
}

// changePolicy edits the policy data (a grant's description: a new
// revision that decides the same) so that SIGHUP compiles, tests and swaps
// in a new version.
func (h *harness) changePolicy(i int) error {
	p := filepath.Join(h.opt.out, "policy", "data.json")
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		return err
	}
	g := doc["grants"].(map[string]any)["plc-line1"].(map[string]any)["demo-loopback"].(map[string]any)
	d := g["description"].(string)
	if k := strings.Index(d, " [bench reload"); k >= 0 {
		d = d[:k]
	}
	g["description"] = fmt.Sprintf("%s [bench reload %d at %s]", d, i, time.Now().Format(time.RFC3339Nano))
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(p, out, 0o644)
}

func machineInfo() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0)}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		b := make([]byte, 0, len(u.Release))
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b = append(b, byte(c))
		}
		m.Kernel = string(b)
	}
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
		m.NoFile = rl.Cur
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		fmt.Sscanf(string(b), "MemTotal: %d kB", &m.MemKiB)
	}
	return m
}
