package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/replay"
)

// newReplayCmd is `conduit replay`: what would a policy have done with
// recorded traffic.
func newReplayCmd() *cobra.Command {
	var (
		policyPath string
		configPath string
		format     string
	)
	cmd := &cobra.Command{
		Use:   "replay [--policy DIR|BUNDLE] [--config FILE] [--format text|json] FILE...",
		Short: "Decide every operation of packet captures with a policy, as the proxy would",
		Long: `Read pcap and pcapng files, reassemble every TCP connection, decode its
Modbus/TCP and OPC UA requests with the proxy's own decoders and decide each
with the policy exactly as the proxy would (docs/replay.md).

Without --policy the embedded reference policy decides. With --config, flows
are matched to the configured listeners by server address (listen or
upstream); without it each server address gets a synthetic listener named
<protocol>-<address>-<port>. The client identity is unknown in a capture
(null); address and port come from the flow.

--format text prints a summary: flows, operations per function code or
service, allowed and denied with the reasons, responses and exceptions,
malformed frames and where they are. --format json prints one JSON line per
operation (time, flow, the policy input, the decision, the response) and per
problem, then a summary line.

Exit status: 0 when no operation would be denied, 1 when one would, 2 on an
error (unreadable capture, policy or configuration). A policy repository's
CI can gate on it:

  conduit replay --policy . captures/*.pcapng`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			if format != "text" && format != "json" {
				return &exitCodeError{exitError, fmt.Errorf("--format %q: use text or json", format)}
			}
			opts := replay.Options{}
			var cfg *config.Config
			if configPath != "" {
				c, err := config.Load(configPath)
				if err != nil {
					return &exitCodeError{exitError, err}
				}
				cfg, opts.Config = c, c
			}
			e, desc, err := replayEngine(cmd, policyPath, cfg)
			if err != nil {
				return &exitCodeError{exitError, err}
			}
			defer e.Close()
			opts.Decider = e

			out := bufio.NewWriterSize(cmd.OutOrStdout(), 64<<10)
			var enc *json.Encoder
			var werr error
			if format == "json" {
				enc = json.NewEncoder(out)
				enc.SetEscapeHTML(false)
				var line []byte
				opts.Records = func(r *replay.Record) {
					if werr == nil {
						line = r.AppendJSON(line[:0])
						_, werr = out.Write(line)
					}
				}
			}
			bar := progressBar(cmd.ErrOrStderr())
			if bar != nil {
				opts.Progress = bar.Update
			}
			rep, rerr := replay.Replay(cmd.Context(), files, opts)
			if bar != nil {
				bar.Done()
			}
			if rep == nil {
				return &exitCodeError{exitError, rerr}
			}
			rep.Policy, rep.Revision, rep.ConfigFile = desc, e.Revision(), configPath

			code := exitOK
			switch {
			case rerr != nil:
				code = exitError
			case rep.WouldDeny():
				code = exitFound
			}
			if enc != nil {
				if werr == nil {
					werr = enc.Encode(rep.Summary(code))
				}
			} else {
				werr = rep.WriteText(out)
			}
			if err := out.Flush(); werr == nil {
				werr = err
			}
			switch {
			case rerr != nil:
				return &exitCodeError{exitError, rerr}
			case werr != nil:
				return &exitCodeError{exitError, werr}
			case code == exitFound:
				return &exitCodeError{exitFound, fmt.Errorf("%d of %d operations would be denied", rep.Denied, rep.Operations)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&policyPath, "policy", "", "policy directory or bundle (.tar.gz); default: the embedded reference policy")
	cmd.Flags().StringVar(&configPath, "config", "", "configuration whose listeners flows are matched to (by listen or upstream address)")
	cmd.Flags().StringVar(&format, "format", "text", "output: text (summary) or json (one line per operation, then a summary)")
	return cmd
}

// replayEngine loads the policy for replay and learn's checks: --policy, or
// the embedded reference policy (said so in the output). Rego tests are not
// run (`conduit policy test` does that), the decision cache is on.
func replayEngine(cmd *cobra.Command, path string, cfg *config.Config) (*policy.Engine, string, error) {
	src := policySource(path)
	desc := src.String()
	if path == "" {
		desc = "embedded reference policy (rules/): --policy not given"
		if cfg != nil && cfg.Policy.Path != "" {
			desc += fmt.Sprintf("; the configuration's policy.path %q is not used", cfg.Policy.Path)
		}
	}
	// A replay sees every shape of a week's traffic, and each connection's
	// client port makes its own cache key: room for more than the proxy's
	// default.
	opts := policy.Options{Source: src, CacheSize: replayCacheSize}
	if cfg != nil {
		opts.DecisionTimeout = cfg.Policy.DecisionTimeout.D()
	}
	e, err := policy.New(cmd.Context(), opts)
	if err != nil {
		return nil, "", err
	}
	return e, desc, nil
}

// replayCacheSize is the decision cache of replay and learn's engine.
const replayCacheSize = 1 << 16

// progressBar returns a progress bar for w when w is a terminal, else nil.
func progressBar(w io.Writer) *replay.ProgressBar {
	f, ok := w.(*os.File)
	if !ok {
		return nil
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	return replay.NewProgressBar(w)
}
