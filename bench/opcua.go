package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/ua"

	"github.com/conduit-ot/conduit/bench/hist"
	"github.com/conduit-ot/conduit/bench/load"
	"github.com/conduit-ot/conduit/sim"
)

// OPCUAResult is one OPC UA write run: a gopcua client writing the
// simulated server's setpoint, one write in flight, direct or through
// Conduit (security mode None, reference policy, audit file on).
type OPCUAResult struct {
	Target   string       `json:"target"` // "direct" or "conduit"
	Rep      int          `json:"rep"`
	Writes   uint64       `json:"writes"`
	Errors   uint64       `json:"errors"`
	Seconds  float64      `json:"seconds"`
	WPS      float64      `json:"writes_per_s"`
	Latency  hist.Summary `json:"latency"`
	ProxyCPU float64      `json:"proxy_cpu_us_per_write,omitempty"`
}

// opcuaRuns measures OPC UA writes direct to the simulated server (gopcua's
// server, in the harness process) and through a Conduit process with an
// opcua listener, interleaved, o.repeats times each. The client runs in the
// harness process too, so client and server costs are the same on both
// paths; what differs is Conduit.
func (h *harness) opcuaRuns() error {
	srv, err := sim.StartOPCUA(sim.OPCUAOptions{CountEvery: -1})
	if err != nil {
		return fmt.Errorf("opcua server: %w", err)
	}
	defer srv.Close()
	t, err := h.startConduitOPCUA(srv.Addr())
	if err != nil {
		return err
	}
	defer t.proc.stop()
	targets := []struct{ name, url string }{
		{"direct", "opc.tcp://" + srv.Addr()},
		{"conduit", "opc.tcp://" + t.Addr},
	}
	dur := h.opt.duration
	for rep := 1; rep <= h.opt.repeats; rep++ {
		for _, tg := range targets {
			var cpu0 time.Duration
			if tg.name == "conduit" {
				cpu0 = t.proc.cpu()
			}
			res, err := opcuaWrites(h.ctx, tg.url, h.opt.warmup, dur)
			if err != nil {
				return fmt.Errorf("opcua %s: %w", tg.name, err)
			}
			res.Target, res.Rep = tg.name, rep
			if tg.name == "conduit" && res.Writes > 0 {
				// Warm-up writes included: CPU over everything the
				// client sent in this run.
				res.ProxyCPU = float64(t.proc.cpu()-cpu0) / float64(time.Microsecond) / float64(res.Writes+res.warm)
			}
			h.logf("  opcua       %-13s rep %d: %8.0f writes/s  p50 %6.0f µs  p99 %6.0f µs  max %7.0f µs  errors %d",
				tg.name, rep, res.WPS, res.Latency.P50, res.Latency.P99, res.Latency.Max, res.Errors)
			h.report.OPCUA = append(h.report.OPCUA, res.OPCUAResult)
		}
	}
	return nil
}

type opcuaRun struct {
	OPCUAResult
	warm uint64
}

// opcuaWrites connects a gopcua client (a session, security None) to url
// and writes the setpoint, one write at a time, for warmup (not measured)
// and then dur. A write whose service or per-node status is not Good is an
// error.
func opcuaWrites(ctx context.Context, url string, warmup, dur time.Duration) (*opcuaRun, error) {
	c, err := opcua.NewClient(url, opcua.SecurityMode(ua.MessageSecurityModeNone),
		opcua.AutoReconnect(false), opcua.RequestTimeout(5*time.Second))
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = c.Connect(cctx)
	cancel()
	if err != nil {
		return nil, err
	}
	defer c.Close(context.Background())
	req := &ua.WriteRequest{NodesToWrite: []*ua.WriteValue{{
		NodeID:      ua.MustParseNodeID(sim.OPCUASetpoint),
		AttributeID: ua.AttributeIDValue,
		Value:       &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(500.0)},
	}}}
	r := &opcuaRun{}
	var h hist.H
	write := func() bool {
		resp, err := c.Write(ctx, req)
		return err == nil && len(resp.Results) == 1 && resp.Results[0] == ua.StatusOK
	}
	for end := time.Now().Add(warmup); time.Now().Before(end); {
		write()
		r.warm++
	}
	start := time.Now()
	for end := start.Add(dur); ; {
		t0 := time.Now()
		if t0.After(end) || ctx.Err() != nil {
			break
		}
		if write() {
			h.Record(time.Since(t0))
			r.Writes++
		} else {
			r.Errors++
		}
	}
	r.Seconds = time.Since(start).Seconds()
	r.WPS = float64(r.Writes) / r.Seconds
	r.Latency = h.Summarize()
	return r, nil
}

// startConduitOPCUA starts `conduit run` with one opcua listener in front
// of the simulated server: reference policy, audit file on, defaults
// otherwise.
func (h *harness) startConduitOPCUA(upstream string) (*target, error) {
	name := "conduit-opcua"
	t, dir, err := h.newConduitTarget(name, false)
	if err != nil {
		return nil, err
	}
	addr := t.Addr
	cfg := fmt.Sprintf(`# Written by go run ./bench run: the reference policy, the audit file on.
listeners:
  - name: opcua-line1
    protocol: opcua
    listen: %s
    upstream: %s
    opcua:
      security_mode: none
policy:
  path: %s
  watch: false
audit:
  file: %s
`, addr, upstream, abs(filepath.Join(h.opt.out, "policy")), t.audit)
	cfgPath := filepath.Join(dir, "conduit.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	t.proc, err = start(name, h.logPath(name), addr, nil, h.conduit, "run", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// opcuaMarkdown is the OPC UA table: medians over the repeats.
func (r *Report) opcuaMarkdown(p func(string, ...any)) {
	if len(r.OPCUA) == 0 {
		return
	}
	med := func(target string, f func(OPCUAResult) float64) float64 {
		var v []float64
		for _, x := range r.OPCUA {
			if x.Target == target {
				v = append(v, f(x))
			}
		}
		return load.Median(v)
	}
	p("#### OPC UA: writes, one in flight (gopcua client → gopcua server, security mode None)\n\n")
	p("| target | writes/s | × direct | p50 µs | p99 µs | p99.9 µs | max µs | proxy CPU µs/write | errors |\n|---|---|---|---|---|---|---|---|---|\n")
	direct := med("direct", func(x OPCUAResult) float64 { return x.WPS })
	for _, tg := range []struct{ key, name string }{{"direct", "direct to the server"}, {"conduit", "Conduit (reference policy, audit file)"}} {
		wps := med(tg.key, func(x OPCUAResult) float64 { return x.WPS })
		cpu := "–"
		if tg.key == "conduit" {
			cpu = f1(med(tg.key, func(x OPCUAResult) float64 { return x.ProxyCPU }))
		}
		var errs uint64
		for _, x := range r.OPCUA {
			if x.Target == tg.key {
				errs += x.Errors
			}
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", tg.name, thousands(wps), ratio(wps, direct),
			f0(med(tg.key, func(x OPCUAResult) float64 { return x.Latency.P50 })),
			f0(med(tg.key, func(x OPCUAResult) float64 { return x.Latency.P99 })),
			f0(med(tg.key, func(x OPCUAResult) float64 { return x.Latency.P999 })),
			f0(med(tg.key, func(x OPCUAResult) float64 { return x.Latency.Max })), cpu, errs)
	}
	p("\nThe client and the simulated server run in the harness process, on the same two cores as Conduit; their cost (gopcua's, far above Conduit's) is the same on both paths.\n\n")
}
