// Command bench is the side-by-side benchmark harness (docs/benchmarks.md).
//
//	go run ./bench run                # the whole harness, from the repository root
//	go run ./bench run -quick         # a smoke test of every scenario (about 3 minutes)
//	go run ./bench report FILE.json   # re-render Markdown and plots from a result file
//	go run ./bench breakdown -requests N FILE.pprof   # where the CPU of a profile goes
//	go run ./bench device -listen ADDR
//	go run ./bench load -addr ADDR [-conns N -depth D | -rate R] [-tls-dir DIR]
//
// `run` builds cmd/conduit, installs HAProxy if it is missing (apt-get),
// makes certificates with `conduit pki`, starts the fast device, HAProxy
// (mode tcp and mTLS) and Conduit (plain and mTLS, the real binary with the
// reference policy and the audit file), measures every scenario on every
// target interleaved, profiles Conduit, and writes bench/results/*.json,
// bench/results/latest.md and docs/img/bench-*.png.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/conduit-ot/conduit/bench/device"
	"github.com/conduit-ot/conduit/bench/load"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(ctx, os.Args[2:])
	case "report":
		err = cmdReport(os.Args[2:])
	case "device":
		err = cmdDevice(ctx, os.Args[2:])
	case "load":
		err = cmdLoad(ctx, os.Args[2:])
	case "breakdown":
		err = cmdBreakdown(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go run ./bench run|report|device|load [flags]   (see bench/README.md)")
	os.Exit(2)
}

func cmdRun(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var o options
	var only string
	fs.StringVar(&o.out, "out", "bench/out", "scratch directory: binaries, PKI, configurations, logs, audit files")
	fs.StringVar(&o.results, "results", "bench/results", "where the JSON results, latest.md and the CPU profiles go")
	fs.StringVar(&o.img, "img", "docs/img", "where the PNG plots go")
	fs.IntVar(&o.repeats, "repeats", 3, "interleaved repeats of scenarios 1-3")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured warm-up of every run")
	fs.DurationVar(&o.duration, "duration", 8*time.Second, "measured period of a saturation run")
	fs.DurationVar(&o.latDur, "latency-duration", 15*time.Second, "measured period of a fixed-rate run")
	fs.Float64Var(&o.rate, "rate", 2000, "request rate of the fixed-rate scenario")
	fs.IntVar(&o.scale, "scale", 1000, "connections doing work in the scale scenario (0: only the held-open connections)")
	fs.IntVar(&o.hold, "hold", 10000, "idle connections held open in the scale scenario")
	fs.IntVar(&o.primed, "primed", 5000, "connections held open after one request each (an upstream connection each)")
	fs.DurationVar(&o.reload, "reload-duration", 12*time.Second, "measured period of a reload run")
	fs.DurationVar(&o.profile, "profile", 8*time.Second, "CPU profile length (0: no profile or perf counters)")
	fs.StringVar(&only, "only", "", "comma-separated subset: saturation,latency,depth8,profile,scale,reload,opcua")
	fs.StringVar(&o.conduit, "conduit", "", "measure this conduit binary instead of building ./cmd/conduit")
	fs.BoolVar(&o.quick, "quick", false, "short runs, one repeat, fewer connections: a smoke test of the harness")
	docs := fs.String("docs", "docs/benchmarks.md", "the document whose Results section a full run replaces (\"\": none; -only and -quick runs leave it alone)")
	fs.Parse(args)
	if o.quick {
		o.repeats, o.warmup, o.duration, o.latDur, o.reload, o.profile = 1, time.Second, 2*time.Second, 3*time.Second, 4*time.Second, 2*time.Second
		o.scale, o.hold, o.primed = 200, 1000, 500
	}
	if only != "" {
		o.only = map[string]bool{}
		for _, s := range strings.Split(only, ",") {
			o.only[strings.TrimSpace(s)] = true
		}
	}
	if _, err := os.Stat("cmd/conduit"); err != nil {
		return fmt.Errorf("run it from the repository root (no cmd/conduit here)")
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	r := &Report{Command: "go run ./bench " + strings.Join(os.Args[1:], " "), Started: time.Now(), Machine: machineInfo()}
	r.Command = strings.TrimSpace(r.Command)
	r.Options.Repeats, r.Options.Warmup, r.Options.Duration, r.Options.Latency, r.Options.Rate =
		o.repeats, o.warmup.String(), o.duration.String(), o.latDur.String(), o.rate
	h := &harness{opt: o, ctx: ctx, logf: logf, report: r}
	logf("open files limit %d; load average %s", r.Machine.NoFile, loadavg())
	err := h.runAll()
	r.Finished = time.Now()
	if len(r.Runs) == 0 && r.Scale == nil && len(r.Reloads) == 0 && len(r.OPCUA) == 0 {
		return err
	}
	name := "run-" + r.Started.UTC().Format("20060102-150405")
	if o.quick {
		name += "-quick"
	}
	file := filepath.Join(o.results, name+".json")
	if serr := r.save(file); serr != nil {
		return serr
	}
	if perr := r.plots(o.img); perr != nil {
		logf("plots: %v", perr)
	}
	md := r.Markdown(imgRel(o.results, o.img))
	if werr := os.WriteFile(filepath.Join(o.results, "latest.md"), []byte(md), 0o644); werr != nil {
		return werr
	}
	fmt.Println(md)
	logf("results: %s, %s, plots in %s", file, filepath.Join(o.results, "latest.md"), o.img)
	switch {
	case *docs == "":
	case o.quick || o.only != nil || err != nil:
		logf("%s not updated: not a complete full run", *docs)
	default:
		if derr := updateDocs(*docs, md); derr != nil {
			return derr
		}
		logf("results written into %s", *docs)
	}
	return err
}

// The markers around the harness's part of docs/benchmarks.md.
const (
	resultsBegin = "<!-- bench:results:begin (go run ./bench run writes what follows, up to the end marker) -->"
	resultsEnd   = "<!-- bench:results:end -->"
)

// updateDocs replaces the text between the results markers of the document
// at path with md.
func updateDocs(path, md string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	out, err := spliceResults(string(b), md)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.WriteFile(path, []byte(out), 0o644)
}

// spliceResults returns doc with what lies between its results markers
// replaced by md; both markers must be there once, in order.
func spliceResults(doc, md string) (string, error) {
	i, j := strings.Index(doc, resultsBegin), strings.Index(doc, resultsEnd)
	if i < 0 || j < 0 || j < i || strings.Count(doc, resultsBegin) != 1 || strings.Count(doc, resultsEnd) != 1 {
		return "", fmt.Errorf("needs one %q and, after it, one %q", resultsBegin, resultsEnd)
	}
	return doc[:i+len(resultsBegin)] + "\n\n" + strings.TrimSpace(md) + "\n\n" + doc[j:], nil
}

// imgRel is the plots' directory as seen from docs/benchmarks.md.
func imgRel(results, img string) string {
	rel, err := filepath.Rel("docs", img)
	if err != nil {
		return img
	}
	return filepath.ToSlash(rel)
}

func cmdReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	img := fs.String("img", "", "also write the PNG plots to this directory")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: bench report [-img DIR] FILE.json")
	}
	r, err := loadReport(fs.Arg(0))
	if err != nil {
		return err
	}
	if *img != "" {
		if err := r.plots(*img); err != nil {
			return err
		}
	}
	fmt.Print(r.Markdown("img"))
	return nil
}

func cmdDevice(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("device", flag.ExitOnError)
	addr := fs.String("listen", "127.0.0.1:15020", "address to answer Modbus/TCP on")
	fs.Parse(args)
	s, err := device.Listen(*addr)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "device listening on %s\n", s.Addr())
	<-ctx.Done()
	fmt.Fprintf(os.Stderr, "device: %d requests answered\n", s.Requests())
	return s.Close()
}

func cmdLoad(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	var cfg load.Config
	tlsDir := fs.String("tls-dir", "", "a `conduit pki` directory: connect with TLS 1.3 and its bench-client certificate")
	fs.StringVar(&cfg.Addr, "addr", "127.0.0.1:5020", "target")
	fs.IntVar(&cfg.Conns, "conns", 8, "connections")
	fs.IntVar(&cfg.Depth, "depth", 1, "closed loop: requests in flight per connection")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open loop: total requests per second (0: closed loop)")
	fs.Float64Var(&cfg.WriteFrac, "writes", 0.2, "fraction of writes")
	fs.DurationVar(&cfg.Warmup, "warmup", time.Second, "unmeasured warm-up")
	fs.DurationVar(&cfg.Duration, "duration", 5*time.Second, "measured period")
	fs.Parse(args)
	if *tlsDir != "" {
		p := &pkiFiles{rootCA: filepath.Join(*tlsDir, "root_ca.crt"),
			clientChain: filepath.Join(*tlsDir, "certs", "bench-client.chain.crt"),
			cliKey:      filepath.Join(*tlsDir, "certs", "bench-client.key")}
		var err error
		if cfg.TLS, err = p.clientTLS(); err != nil {
			return err
		}
	}
	pool, err := load.Dial(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	res, err := pool.Run(ctx)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

func cmdBreakdown(args []string) error {
	fs := flag.NewFlagSet("breakdown", flag.ExitOnError)
	n := fs.Float64("requests", 0, "requests served during the profile (for µs per request)")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: bench breakdown -requests N FILE.pprof")
	}
	bd, err := breakdown(fs.Arg(0), *n)
	if err != nil {
		return err
	}
	fmt.Printf("%.2f CPU-seconds sampled\n", bd.Seconds)
	for _, c := range bd.Rows {
		fmt.Printf("%-48s %5.1f %%  %6.2f µs/req  %s\n", c.Name, 100*c.Share, c.PerReq, c.Top)
	}
	return nil
}
