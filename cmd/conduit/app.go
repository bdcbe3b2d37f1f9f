package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/proxy"
)

// app is a running Conduit: the audit trail, the policy engine, the TLS
// sources and one proxy.Listener per configured listener. run and demo both
// build one.
type app struct {
	cfg    *config.Config
	log    *zap.Logger
	sink   *audit.Sink    // the audit file
	rec    audit.Recorder // sink, or sink + stdout copy
	engine *policy.Engine

	serverTLS []*pki.ServerTLS
	clientTLS []*pki.ClientTLS
	listeners []*proxy.Listener
	metrics   *http.Server
	serveErr  chan error
}

// appOptions are what a caller may override in the configuration.
type appOptions struct {
	// Policy replaces the configured policy source (the demo uses the
	// embedded reference policy).
	Policy *policy.Source
	// AuditCopy also receives every audit event (standard output with
	// audit.stdout).
	AuditCopy io.Writer
	Log       *zap.Logger
}

// newLogger builds the operational logger from the configuration.
func newLogger(c config.Log, w io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, err
	}
	ec := zap.NewProductionEncoderConfig()
	ec.TimeKey = "time"
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if c.Format == "console" {
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		enc = zapcore.NewJSONEncoder(ec)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), level)), nil
}

// startApp builds every piece and binds every listener; nothing is served
// until serve. On error everything built so far is closed again.
func startApp(ctx context.Context, cfg *config.Config, opts appOptions) (_ *app, err error) {
	// Not the named result: every error return sets that to nil, and the
	// cleanup below needs what was built.
	a := &app{cfg: cfg, log: opts.Log, serveErr: make(chan error, len(cfg.Listeners)+1)}
	if a.log == nil {
		a.log = zap.NewNop()
	}
	defer func() {
		if err != nil {
			a.close()
		}
	}()

	// The audit trail first: without it nothing may be forwarded.
	obs := audit.Observer{Version: version}
	a.sink, err = audit.OpenFile(cfg.Audit.File, audit.Options{Observer: obs, Fsync: cfg.Audit.Fsync, MaxDelay: cfg.Audit.ReadDelay.D(), Connections: cfg.Limits.MaxConnections})
	if err != nil {
		return nil, fmt.Errorf("audit.file: %w", err)
	}
	a.rec = a.sink
	copyTo := opts.AuditCopy
	if copyTo == nil && cfg.Audit.Stdout {
		copyTo = os.Stdout
	}
	if copyTo != nil {
		a.rec = audit.Multi(a.sink, audit.NewWriter(copyTo, audit.Options{Observer: obs}))
	}
	a.record(&audit.Event{Action: audit.ActionStart, Outcome: audit.OutcomeSuccess, Reason: "conduit " + version + " starting"})

	popts := policy.FromConfig(cfg.Policy)
	if opts.Policy != nil {
		popts.Source = *opts.Policy
	}
	popts.OnReload = a.policyReloaded
	a.engine, err = policy.New(ctx, popts)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := proxy.NewMetrics(reg)
	slots := proxy.NewSlots(cfg.Limits.MaxConnections)
	connIDs := new(atomic.Uint64)
	slogger := slog.New(zapslog.NewHandler(a.log.Core(), zapslog.WithName("pki")))

	for i := range cfg.Listeners {
		lc := cfg.Listeners[i]
		po := proxy.Options{
			Listener: lc,
			Decider:  a.engine,
			Recorder: a.rec,
			Log:      a.log,
			Metrics:  metrics,
			Slots:    slots,
			ConnIDs:  connIDs,
		}
		if lc.TLS != nil {
			name := lc.Name
			st, err := pki.NewServerTLS(ctx, lc.TLS, pki.ServerOptions{
				Logger:   slogger.With("listener", name),
				OnReload: func(r pki.ReloadResult) { a.certReloaded(name, r) },
			})
			if err != nil {
				return nil, fmt.Errorf("listeners[%d] (%s).tls: %w", i, name, err)
			}
			a.serverTLS = append(a.serverTLS, st)
			po.ServerTLS = st
		}
		if lc.UpstreamTLS != nil {
			ct, err := pki.NewUpstreamTLS(lc.UpstreamTLS)
			if err != nil {
				return nil, fmt.Errorf("listeners[%d] (%s).upstream_tls: %w", i, lc.Name, err)
			}
			a.clientTLS = append(a.clientTLS, ct)
			po.UpstreamClientTLS = ct
		}
		l, err := proxy.New(po)
		if err != nil {
			return nil, err
		}
		if err := l.Listen(); err != nil {
			return nil, err
		}
		a.listeners = append(a.listeners, l)
	}

	if cfg.Metrics.Listen != "" {
		ln, err := net.Listen("tcp", cfg.Metrics.Listen)
		if err != nil {
			return nil, fmt.Errorf("metrics.listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		a.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go a.metrics.Serve(ln)
	}
	return a, nil
}

// serve starts accepting on every listener.
func (a *app) serve() {
	for _, l := range a.listeners {
		a.log.Info("listening", zap.String("listener", l.Name()), zap.Stringer("addr", l.Addr()))
		go func(l *proxy.Listener) {
			if err := l.Serve(); err != nil && !errors.Is(err, proxy.ErrClosed) {
				a.serveErr <- err
			}
		}(l)
	}
}

// reload is SIGHUP: audit file (logrotate), policy, TLS material. The
// audit file is reopened first, so that the events of this reload (the
// policy-reload event is written on every SIGHUP) start the new file with
// the continued sequence: a new file left empty would make a restart
// begin the sequence at 1 again.
func (a *app) reload(ctx context.Context) {
	a.log.Info("reloading (SIGHUP)")
	if err := a.sink.Reopen(); err != nil {
		a.log.Error("audit file reopen failed", zap.Error(err))
	}
	if err := a.engine.Reload(ctx); err != nil {
		a.log.Error("policy reload refused; the previous policy keeps running", zap.Error(err))
	}
	for _, st := range a.serverTLS {
		if err := st.Reload(); err != nil {
			a.log.Error("TLS reload: some files were refused; their previous version keeps running", zap.Error(err))
		}
	}
	for _, ct := range a.clientTLS {
		if err := ct.Reload(); err != nil {
			a.log.Error("upstream TLS reload refused", zap.Error(err))
		}
	}
}

// shutdown stops accepting, drains every connection until ctx ends, then
// closes everything.
func (a *app) shutdown(ctx context.Context) error {
	var errs []error
	done := make(chan error, len(a.listeners))
	for _, l := range a.listeners {
		go func(l *proxy.Listener) { done <- l.Shutdown(ctx) }(l)
	}
	for range a.listeners {
		if err := <-done; err != nil {
			errs = append(errs, err)
		}
	}
	a.listeners = nil
	a.record(&audit.Event{Action: audit.ActionStop, Outcome: audit.OutcomeSuccess, Reason: "conduit stopped"})
	a.close()
	return errors.Join(errs...)
}

func (a *app) close() {
	for _, l := range a.listeners {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		l.Shutdown(ctx)
	}
	if a.metrics != nil {
		a.metrics.Close()
	}
	for _, st := range a.serverTLS {
		st.Close()
	}
	if a.engine != nil {
		a.engine.Close()
	}
	if a.sink != nil {
		a.sink.Close()
	}
}

func (a *app) record(ev *audit.Event) {
	if a.rec == nil {
		return
	}
	if err := a.rec.Record(ev); err != nil {
		a.log.Error("audit write failed", zap.String("action", ev.Action), zap.Error(err))
	}
}

// policyReloaded audits every policy load attempt.
func (a *app) policyReloaded(ev policy.ReloadEvent) {
	out := audit.Event{Action: audit.ActionPolicyReload, Outcome: audit.OutcomeSuccess, Revision: ev.Running}
	switch {
	case ev.Err != nil:
		out.Outcome = audit.OutcomeFailure
		out.Reason = fmt.Sprintf("%s: policy %s refused, %s keeps running: %v", ev.Trigger, ev.Source, orNone(ev.Running), ev.Err)
		a.log.Error("policy refused", zap.String("trigger", ev.Trigger), zap.String("running", ev.Running), zap.Error(ev.Err))
	case ev.Unchanged:
		out.Reason = fmt.Sprintf("%s: policy %s unchanged", ev.Trigger, ev.Revision)
	default:
		out.Reason = fmt.Sprintf("%s: policy %s loaded from %s (%d files, %d tests passed, previous %s)", ev.Trigger, ev.Revision, ev.Source, len(ev.Files), ev.Tests, orNone(ev.Previous))
		a.log.Info("policy loaded", zap.String("trigger", ev.Trigger), zap.String("revision", ev.Revision), zap.Int("tests", ev.Tests), zap.Bool("cache", ev.CacheEnabled))
	}
	a.record(&out)
}

func (a *app) certReloaded(listener string, r pki.ReloadResult) {
	out := audit.Event{Action: audit.ActionCertReload, Outcome: audit.OutcomeSuccess, Listener: listener}
	if r.Err != nil {
		out.Outcome = audit.OutcomeFailure
		out.Reason = fmt.Sprintf("reloaded %v; refused (previous kept): %v", r.Changed, r.Err)
	} else {
		out.Reason = fmt.Sprintf("reloaded %v", r.Changed)
	}
	a.record(&out)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
