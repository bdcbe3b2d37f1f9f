package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/conduit-ot/conduit/config"
)

func newRunCmd() *cobra.Command {
	var (
		path      string
		drain     time.Duration
		pprofAddr string
	)
	cmd := &cobra.Command{
		Use:   "run --config FILE",
		Short: "Run the proxy",
		Long: `Run the proxy with the configuration in FILE (docs/config.md).

Signals: SIGHUP reloads the policy and the TLS material and reopens the audit
file; SIGTERM and SIGINT stop accepting, let every connection finish the
requests it has in flight (at most --drain), then exit.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			log, err := newLogger(cfg.Log, os.Stderr)
			if err != nil {
				return err
			}
			defer log.Sync()
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			// SIGHUP is caught before anything listens: its default
			// action ends the process, and a logrotate or a deploy
			// script may send it while the listeners are coming up. One
			// that arrives then is a reload once the loop below runs.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			// The audit copy's failure on a broken stdout then denies
			// the operations (fail closed) and is logged.
			defer catchSIGPIPE()()
			a, err := startApp(ctx, cfg, appOptions{Log: log})
			if err != nil {
				return err
			}
			if pprofAddr != "" {
				srv, err := startPprof(pprofAddr)
				if err != nil {
					a.close()
					return err
				}
				defer srv.Close()
				log.Warn("profiling endpoint on (--pprof): unauthenticated, for benchmarks only", zap.String("addr", pprofAddr))
			}
			a.serve()
			log.Info("conduit running", zap.String("config", path), zap.String("version", version), zap.String("policy", a.engine.Revision()))

			var serveErr error
		loop:
			for {
				select {
				case <-hup:
					// Under ctx: SIGTERM cancels a reload in progress
					// (a policy's Rego tests can take minutes) instead
					// of waiting for it; bounded like a watch reload.
					rctx, cancel := context.WithTimeout(ctx, reloadTimeout)
					a.reload(rctx)
					cancel()
				case serveErr = <-a.serveErr:
					log.Error("listener failed; stopping", zap.Error(serveErr))
					break loop
				case <-ctx.Done():
					break loop
				}
			}
			log.Info("shutting down: draining connections", zap.Duration("deadline", drain))
			sctx, cancel := context.WithTimeout(context.Background(), drain)
			defer cancel()
			if err := a.shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				log.Warn("shutdown", zap.Error(err))
			}
			if serveErr != nil {
				return fmt.Errorf("listener: %w", serveErr)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "conduit.yaml", "configuration file")
	cmd.Flags().DurationVar(&drain, "drain", 30*time.Second, "how long SIGTERM waits for connections to finish")
	cmd.Flags().StringVar(&pprofAddr, "pprof", "", "serve the Go profiler (net/http/pprof) on this address, e.g. 127.0.0.1:6060 (benchmarks; unauthenticated: loopback only)")
	return cmd
}

// reloadTimeout bounds one SIGHUP reload (policy compile and Rego tests).
const reloadTimeout = 2 * time.Minute

// catchSIGPIPE makes a write to a broken standard output or standard error
// fail with EPIPE instead of ending the process (Go's default for fds 1
// and 2): a log shipper or journald going away must not take every plant
// connection with it, unannounced. It returns the function that stops
// catching.
func catchSIGPIPE() (stop func()) {
	pipe := make(chan os.Signal, 1)
	signal.Notify(pipe, syscall.SIGPIPE)
	return func() { signal.Stop(pipe) }
}
