package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/conduit-ot/conduit/bench/load"
)

// Report is everything one `bench run` measured; it is written as JSON and
// rendered as Markdown and PNG.
type Report struct {
	Command  string    `json:"command"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Machine  Machine   `json:"machine"`
	Options  struct {
		Repeats  int     `json:"repeats"`
		Warmup   string  `json:"warmup"`
		Duration string  `json:"duration"`
		Latency  string  `json:"latency_duration"`
		Rate     float64 `json:"rate"`
	} `json:"options"`
	Targets   []target     `json:"targets"`
	Scenarios []scenario   `json:"scenarios"`
	Runs      []*RunRecord `json:"runs"`

	Counters []Counters   `json:"counters,omitempty"`
	Profiles []*Breakdown `json:"profiles,omitempty"`

	ScaleScenario  scenario       `json:"scale_scenario"`
	Scale          *ScaleResult   `json:"scale,omitempty"`
	ReloadScenario scenario       `json:"reload_scenario"`
	Reloads        []ReloadResult `json:"reloads,omitempty"`
	OPCUA          []OPCUAResult  `json:"opcua,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	CPU        string `json:"cpu"`
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	MemKiB     int64  `json:"mem_kib"`
	Kernel     string `json:"kernel"`
	Go         string `json:"go"`
	HAProxy    string `json:"haproxy"`
	Conduit    string `json:"conduit"` // conduit version of the binary measured
	NoFile     uint64 `json:"rlimit_nofile"`
}

func (r *Report) save(file string) error {
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(file, append(b, '\n'), 0o644)
}

func loadReport(file string) (*Report, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return &r, nil
}

// agg is the median over the repeats of one scenario on one target.
type agg struct {
	n                                    int
	rps, p50, p90, p99, p999, max, svc99 float64
	proxyCPU, devCPU, loadgenCPU, busy   float64
	pressure                             float64
	errors                               uint64
	loadMin, loadMax                     float64
}

func (r *Report) agg(scenario, tgt string) agg {
	var a agg
	var rps, p50, p90, p99, p999, mx, svc, pc, dc, lc, busy, psi []float64
	a.loadMin = math.Inf(1)
	for _, run := range r.Runs {
		if run.Scenario != scenario || run.Target != tgt || run.Repeat == 0 {
			continue
		}
		l := run.Load
		a.n++
		rps = append(rps, l.RPS)
		p50 = append(p50, l.Latency.P50)
		p90 = append(p90, l.Latency.P90)
		p99 = append(p99, l.Latency.P99)
		p999 = append(p999, l.Latency.P999)
		mx = append(mx, l.Latency.Max)
		if l.Service != nil {
			svc = append(svc, l.Service.P99)
		}
		pc = append(pc, run.ProxyCPU)
		dc = append(dc, run.DeviceCPU)
		lc = append(lc, run.LoadgenCPU)
		busy = append(busy, run.MachineBusy)
		psi = append(psi, run.CPUPressure)
		a.errors += l.Errors
		for _, s := range []string{run.LoadBefore, run.LoadAfter} {
			var one float64
			if _, err := fmt.Sscanf(s, "%f", &one); err == nil {
				a.loadMin, a.loadMax = min(a.loadMin, one), max(a.loadMax, one)
			}
		}
	}
	m := load.Median
	a.rps, a.p50, a.p90, a.p99, a.p999, a.max, a.svc99 = m(rps), m(p50), m(p90), m(p99), m(p999), m(mx), m(svc)
	a.proxyCPU, a.devCPU, a.loadgenCPU, a.busy, a.pressure = m(pc), m(dc), m(lc), m(busy), m(psi)
	return a
}

// haproxyRef is the baseline of the same security: B for plain, C for TLS.
func (r *Report) haproxyRef(t target) string {
	switch {
	case t.Key == "A":
		return ""
	case t.TLS:
		return "C"
	default:
		return "B"
	}
}

func ratio(a, b float64) string {
	if b == 0 || a == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func f0(v float64) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", v)
}

func f1(v float64) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", v)
}

func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// Markdown renders the results as the tables of docs/benchmarks.md.
func (r *Report) Markdown(imgRel string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("Run: `%s`, %s → %s (UTC); %d repeats interleaved (A B C D E per scenario, then again); medians. ",
		r.Command, r.Started.UTC().Format("2006-01-02 15:04"), r.Finished.UTC().Format("15:04"), r.Options.Repeats)
	p("Machine: %d × %s, %d MiB, Linux %s, %s, %s. Load generator, device and proxy share the cores (GOMAXPROCS %d everywhere, HAProxy `nbthread 2`, nothing pinned).\n\n",
		r.Machine.CPUs, r.Machine.CPU, r.Machine.MemKiB>>10, r.Machine.Kernel, r.Machine.Go, r.Machine.HAProxy, r.Machine.GOMAXPROCS)

	for _, sc := range r.Scenarios {
		a0 := r.agg(sc.Key, "A")
		p("#### %s\n\n", sc.Title)
		if sc.Rate > 0 {
			p("| target | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | p99 − HAProxy p99 | service p99 µs | proxy CPU µs/req | errors | load (1 min) | CPU pressure |\n")
			p("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		} else {
			p("| target | req/s | × direct | × HAProxy | p50 µs | p99 µs | p99.9 µs | proxy CPU µs/req | errors | load (1 min) | CPU pressure |\n")
			p("|---|---|---|---|---|---|---|---|---|---|---|\n")
		}
		for _, t := range r.Targets {
			a := r.agg(sc.Key, t.Key)
			if a.n == 0 {
				continue
			}
			ref := r.haproxyRef(t)
			load := fmt.Sprintf("%.1f–%.1f | %.0f %%", a.loadMin, a.loadMax, 100*a.pressure)
			if sc.Rate > 0 {
				diff := "–"
				if ref != "" && ref != t.Key {
					diff = fmt.Sprintf("%+.0f µs", a.p99-r.agg(sc.Key, ref).p99)
				}
				p("| %s %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", t.Key, t.Label,
					f0(a.p50), f0(a.p90), f0(a.p99), f0(a.p999), f0(a.max), diff, f0(a.svc99), f1(a.proxyCPU), a.errors, load)
				continue
			}
			xh := "–"
			if ref != "" {
				xh = ratio(a.rps, r.agg(sc.Key, ref).rps)
			}
			p("| %s %s | %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", t.Key, t.Label, thousands(a.rps), ratio(a.rps, a0.rps), xh,
				f0(a.p50), f0(a.p99), f0(a.p999), f1(a.proxyCPU), a.errors, load)
		}
		p("\n")
	}
	if a := r.agg("depth8", "A"); a.n > 0 {
		s := r.agg("saturation", "A")
		p("Device ceiling: %.1f µs of device CPU per request at depth 1 and %.1f µs at depth 8, i.e. about %s req/s per core at depth 1; "+
			"direct at depth 8 reached %s req/s with the load generator on the same cores (load generator %.1f µs/req).\n\n",
			s.devCPU, a.devCPU, thousands(1e6/s.devCPU), thousands(a.rps), a.loadgenCPU)
	}
	if len(r.Counters) > 0 {
		p("#### Per-request system calls and context switches (scenario 1, `perf stat`, one extra run each)\n\n")
		p("| target | req/s | process CPU µs/req | syscalls/req | context switches/req |\n|---|---|---|---|---|\n")
		for _, c := range r.Counters {
			name := c.Target
			for _, t := range r.Targets {
				if t.Key == c.Target {
					name = t.Key + " " + t.Label
					if t.Key == "A" {
						name += " (the device process)"
					}
				}
			}
			cpu := f1(c.ProxyCPU)
			p("| %s | %s | %s | %.2f | %.2f |\n", name, thousands(c.RPS), cpu, c.SyscallsPerReq, c.CtxSwitchesPerReq)
		}
		p("\n")
	}
	if s := r.Scale; s != nil {
		p("#### Scale: %s\n\n", r.ScaleScenario.Title)
		p("| target | req/s | × direct | p50 µs | p99 µs | p99.9 µs | max µs | proxy CPU µs/req | errors |\n|---|---|---|---|---|---|---|---|---|\n")
		var direct float64
		for _, w := range s.Work {
			if w.Target == "A" {
				direct = w.Load.RPS
			}
		}
		for _, w := range s.Work {
			label := w.Target
			for _, t := range r.Targets {
				if t.Key == w.Target {
					label = t.Key + " " + t.Label
				}
			}
			l := w.Load
			p("| %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", label, thousands(l.RPS), ratio(l.RPS, direct),
				f0(l.Latency.P50), f0(l.Latency.P99), f0(l.Latency.P999), f0(l.Latency.Max), f1(w.ProxyCPU), l.Errors)
		}
		p("\n| Conduit | connections held open | each sent a request first | opened in | RSS before → after | RSS per connection |\n|---|---|---|---|---|---|\n")
		for _, hr := range s.Holds {
			name := map[string]string{"D": "plain", "E": "mTLS"}[hr.Target]
			res := fmt.Sprintf("%.1f KiB", hr.PerConnKiB)
			if hr.Errors != "" {
				res += " (error: " + hr.Errors + ")"
			}
			p("| %s | %s | %v | %.1f s | %d → %d MiB | %s |\n", name, thousands(float64(hr.Conns)), hr.Primed, hr.OpenSeconds,
				hr.RSSBefore>>20, hr.RSSAfter>>20, res)
		}
		p("\n")
	}
	if len(r.Reloads) > 0 {
		p("#### Reloads under load: %s\n\n", r.ReloadScenario.Title)
		p("| target | reload | reloads sent / audited | requests | errors | p99 µs | max µs before | max µs within −0.5 s…+2 s of a reload |\n|---|---|---|---|---|---|---|---|\n")
		for _, rr := range r.Reloads {
			name := map[string]string{"D": "D Conduit plain", "E": "E Conduit mTLS"}[rr.Target]
			l := rr.Run.Load
			p("| %s | %s (SIGHUP) | %d / %d | %s | %d | %s | %s | %s |\n", name, rr.Kind, len(rr.ReloadAt), rr.Reloaded,
				thousands(float64(l.Requests)), l.Errors, f0(l.Latency.P99), f0(rr.MaxBefore), f0(rr.MaxAround))
		}
		p("\n")
	}
	r.opcuaMarkdown(p)
	if imgRel != "" {
		p("![Throughput per target](%s/bench-throughput.png)\n\n![Latency percentiles at a fixed rate](%s/bench-latency.png)\n\n", imgRel, imgRel)
	}
	for _, bd := range r.Profiles {
		p("#### Where Conduit's CPU goes: target %s, scenario 1 (%s req/s, %.1f µs CPU/request measured from /proc)\n\n", bd.Target, thousands(bd.RPS), bd.ProxyCPU)
		p("Profile `%s` (%.1f CPU-seconds sampled over ≈ %s requests).\n\n", bd.Profile, bd.Seconds, thousands(bd.Requests))
		p("| where | share | µs/request | hottest leaf |\n|---|---|---|---|\n")
		var sum float64
		for _, c := range bd.Rows {
			sum += c.PerReq
			p("| %s | %.1f %% | %.2f | `%s` |\n", c.Name, 100*c.Share, c.PerReq, c.Top)
		}
		p("| **total** | 100 %% | **%.1f** | |\n\n", sum)
	}
	return b.String()
}

// thousandTicks labels the default ticks as 250,000 instead of 250000.00.
type thousandTicks struct{}

func (thousandTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = thousands(ts[i].Value)
		}
	}
	return ts
}

// plots writes the throughput and latency PNGs.
func (r *Report) plots(dir string) error {
	var labels []string
	for _, t := range r.Targets {
		labels = append(labels, t.Key+" "+t.Name)
	}
	// Throughput.
	p := plot.New()
	p.Title.Text = "Modbus/TCP requests per second (8 connections, 20 % writes; median)"
	p.Y.Label.Text = "requests/s"
	w := vg.Points(16)
	i := 0
	for _, sc := range []struct{ key, name string }{{"saturation", "depth 1"}, {"depth8", "depth 8 (pipelined)"}} {
		var vals plotter.Values
		for _, t := range r.Targets {
			vals = append(vals, r.agg(sc.key, t.Key).rps)
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.Color = plotutil.Color(i)
		bars.LineStyle.Width = 0
		bars.Offset = vg.Length(2*i-1) * w / 2
		p.Add(bars)
		p.Legend.Add(sc.name, bars)
		i++
	}
	p.Legend.Top = true
	p.Y.Tick.Marker = thousandTicks{}
	p.NominalX(labels...)
	if err := p.Save(9*vg.Inch, 4.5*vg.Inch, filepath.Join(dir, "bench-throughput.png")); err != nil {
		return err
	}

	// Latency percentiles at the fixed rate.
	var lat *scenario
	for i := range r.Scenarios {
		if r.Scenarios[i].Rate > 0 {
			lat = &r.Scenarios[i]
		}
	}
	if lat == nil {
		return nil
	}
	p = plot.New()
	p.Title.Text = fmt.Sprintf("Latency at a fixed %g req/s, from the scheduled send (median of repeats)", lat.Rate)
	p.Y.Label.Text = "µs (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	for j, t := range r.Targets {
		a := r.agg(lat.Key, t.Key)
		if a.n == 0 {
			continue
		}
		pts := plotter.XYs{{X: 0, Y: a.p50}, {X: 1, Y: a.p90}, {X: 2, Y: a.p99}, {X: 3, Y: a.p999}, {X: 4, Y: a.max}}
		l, s, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		c := plotutil.Color(j)
		l.Color, s.Color = c, c
		l.Width = vg.Points(1.5)
		s.Shape = plotutil.Shape(j)
		p.Add(l, s)
		p.Legend.Add(t.Key+" "+t.Name, l, s)
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.NominalX("p50", "p90", "p99", "p99.9", "max")
	p.Add(plotter.NewGrid())
	return p.Save(9*vg.Inch, 4.5*vg.Inch, filepath.Join(dir, "bench-latency.png"))
}
