package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/policy"
)

func newValidateCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "validate --config FILE",
		Short: "Check a configuration and the policy and certificates it names",
		Long: `Check a configuration without starting the proxy: the YAML (every error
names the file, the line and the field), the policy (it must compile and pass
its own Rego tests when run_tests is on) and each listener's TLS material.
Exits 0 when everything would load, 2 otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			opts := policy.FromConfig(cfg.Policy)
			opts.Watch = false
			engine, err := policy.New(cmd.Context(), opts)
			if err != nil {
				return fmt.Errorf("%s: policy.path %s: %w", path, cfg.Policy.Path, err)
			}
			rev := engine.Revision()
			engine.Close()
			for i, l := range cfg.Listeners {
				if l.TLS != nil && l.TLS.StepCA == nil {
					st, err := pki.NewServerTLS(cmd.Context(), l.TLS, pki.ServerOptions{NoWatch: true})
					if err != nil {
						return fmt.Errorf("%s: listeners[%d].tls: %w", path, i, err)
					}
					st.Close()
				}
				if l.UpstreamTLS != nil {
					if _, err := pki.NewUpstreamTLS(l.UpstreamTLS); err != nil {
						return fmt.Errorf("%s: listeners[%d].upstream_tls: %w", path, i, err)
					}
				}
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: ok: %d listener(s), policy %s (revision %s)\n", path, len(cfg.Listeners), cfg.Policy.Path, rev)
			for _, l := range cfg.Listeners {
				mode := "plain TCP"
				if l.TLS != nil {
					mode = "mTLS " + l.TLS.MinVersion + "+"
				}
				fmt.Fprintf(out, "  %-20s %-6s %s -> %s (%s)\n", l.Name, l.Protocol, l.Listen, l.Upstream, mode)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "conduit.yaml", "configuration file")
	return cmd
}
