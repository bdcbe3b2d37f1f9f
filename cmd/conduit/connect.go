package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/pki/tunnel"
)

// newConnectCmd is `conduit connect`: plain TCP in on the legacy client's
// host, mutual TLS out to the appliance.
func newConnectCmd() *cobra.Command {
	var (
		listen, to   string
		opts         pki.ClientOptions
		maxConns     int
		dialTO, hsTO time.Duration
		verbose      bool
	)
	cmd := &cobra.Command{
		Use:   "connect --listen 127.0.0.1:502 --to appliance:802 --cert C --key K --ca CA",
		Short: "Give a legacy (plain TCP) Modbus client mutual TLS to the appliance",
		Long: `Listen for plain TCP on the legacy client's own host and carry each
connection over mutual TLS to a Conduit appliance, presenting the client
certificate. Keep --listen on 127.0.0.1: the plain side is unauthenticated.
SIGHUP reloads the certificate, key and CA; SIGINT/SIGTERM stop.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Caught before anything listens: SIGHUP's default action
			// ends the process (see run).
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			defer catchSIGPIPE()()
			ctls, err := pki.NewClientTLS(opts)
			if err != nil {
				return err
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			tun, err := tunnel.New(tunnel.Config{
				Target: to, TLS: ctls.Config, MaxConns: maxConns,
				DialTimeout: dialTO, HandshakeTimeout: hsTO, Logger: log,
			})
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			if host, _, _ := net.SplitHostPort(ln.Addr().String()); !net.ParseIP(host).IsLoopback() {
				log.Warn("the plain-TCP side listens beyond loopback: anyone who reaches it uses this certificate", "listen", ln.Addr().String())
			}
			fmt.Fprintf(cmd.OutOrStdout(), "conduit connect: %s -> %s (mTLS as %q)\n", ln.Addr(), to, ctls.Leaf().Subject)

			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						if err := ctls.Reload(); err != nil {
							log.Error("reload failed; keeping the previous certificate", "err", err)
						} else {
							log.Info("certificate reloaded", "subject", ctls.Leaf().Subject.String())
						}
					}
				}
			}()
			errc := make(chan error, 1)
			go func() { errc <- tun.Serve(ln) }()
			select {
			case err := <-errc:
				tun.Close()
				return err
			case <-ctx.Done():
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				tun.Shutdown(sctx)
				return nil
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:502", "plain TCP address for the legacy client")
	f.StringVar(&to, "to", "", "appliance address, host:port (Modbus/TCP Security: 802)")
	f.StringVar(&opts.CertFile, "cert", "", "client certificate (chain)")
	f.StringVar(&opts.KeyFile, "key", "", "client private key")
	f.StringVar(&opts.CAFile, "ca", "", "CA certificate(s) that verify the appliance")
	f.StringVar(&opts.ServerName, "server-name", "", "name expected in the appliance certificate (default: the host of --to)")
	f.StringVar(&opts.MinVersion, "min-version", "1.3", "minimum TLS version: 1.3 or 1.2")
	f.IntVar(&maxConns, "max-conns", tunnel.DefaultMaxConns, "maximum concurrent connections")
	f.DurationVar(&dialTO, "dial-timeout", tunnel.DefaultDialTimeout, "timeout to connect to the appliance")
	f.DurationVar(&hsTO, "handshake-timeout", tunnel.DefaultHandshakeTimeout, "timeout of the TLS handshake")
	f.BoolVarP(&verbose, "verbose", "v", false, "log every connection")
	for _, req := range []string{"to", "cert", "key", "ca"} {
		cmd.MarkFlagRequired(req)
	}
	return cmd
}
