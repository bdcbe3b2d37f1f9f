package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/replay"
)

// newLearnCmd is `conduit learn`: a baseline policy data file from recorded
// traffic.
func newLearnCmd() *cobra.Command {
	var (
		output     string
		configPath string
		minCount   int
	)
	cmd := &cobra.Command{
		Use:   "learn FILE... [-o learned.json] [--min-count K] [--config FILE]",
		Short: "Write the grants that allow the traffic of packet captures",
		Long: `Read pcap and pcapng files as 'conduit replay' does and write, for every client
address and listener, a grant "learned-<client>" in the reference policy's
data format (rules/README.md): Modbus units, read and write ranges with the
observed value extremes, diagnostic function codes; OPC UA read, browse and
subscribe, written nodes with numeric extremes, method calls, and the rest.
Only what was seen at least --min-count times (over all the files given) is
kept. Listeners come from --config, else they are synthetic
(<protocol>-<address>-<port>), as in replay.

With -o onto an existing file, the new grants are merged into it: a grant id
already there gets the union of both. The output is deterministic, so
learning the same captures again changes nothing. Put learned.json next to
your data.json; grant ids keep the two apart. Review it before use: it
allows what was seen, including what should not have happened.

Exit status: 0 written, 2 on an error.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			if minCount < 1 {
				return &exitCodeError{exitError, fmt.Errorf("--min-count %d: must be at least 1", minCount)}
			}
			opts := replay.LearnOptions{MinCount: minCount}
			if configPath != "" {
				c, err := config.Load(configPath)
				if err != nil {
					return &exitCodeError{exitError, err}
				}
				opts.Config = c
			}
			var existing *replay.Data
			if output != "" && output != "-" {
				b, err := os.ReadFile(output)
				switch {
				case errors.Is(err, fs.ErrNotExist):
				case err != nil:
					return &exitCodeError{exitError, err}
				default:
					if existing, err = replay.ParseData(b); err != nil {
						return &exitCodeError{exitError, fmt.Errorf("%s: %w (conduit learn merges only into its own files)", output, err)}
					}
				}
			}
			bar := progressBar(cmd.ErrOrStderr())
			if bar != nil {
				opts.Progress = bar.Update
			}
			l, err := replay.Learn(cmd.Context(), files, opts)
			if bar != nil {
				bar.Done()
			}
			if err != nil {
				return &exitCodeError{exitError, err}
			}
			data := l.Data
			if existing != nil {
				replay.MergeData(existing, data)
				data = existing
			}
			b, err := data.Encode()
			if err != nil {
				return &exitCodeError{exitError, err}
			}
			summary := cmd.OutOrStdout()
			if output == "" || output == "-" {
				if _, err := cmd.OutOrStdout().Write(b); err != nil {
					return &exitCodeError{exitError, err}
				}
				summary = cmd.ErrOrStderr()
			} else if err := writeFileAtomic(output, b); err != nil {
				return &exitCodeError{exitError, err}
			}
			printLearned(summary, l, output, existing != nil)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", `data file to write, merged into when it exists ("" or "-": standard output)`)
	cmd.Flags().StringVar(&configPath, "config", "", "configuration whose listeners flows are matched to (by listen or upstream address)")
	cmd.Flags().IntVar(&minCount, "min-count", 1, "keep only what was seen at least this many times")
	return cmd
}

func printLearned(w io.Writer, l *replay.Learned, output string, merged bool) {
	where := "standard output"
	if output != "" && output != "-" {
		where = output
		if merged {
			where += " (merged into the existing grants)"
		}
	}
	fmt.Fprintf(w, "learned %s; written to %s\n", l, where)
	for _, g := range l.Grants {
		fmt.Fprintf(w, "  %-40s %-28s from %d operations\n", g.Listener, g.ID, g.Operations)
	}
	if len(l.Inexpressible) > 0 {
		fmt.Fprintln(w, "seen but not expressible as grants (the reference policy denies them):")
		keys := make([]string, 0, len(l.Inexpressible))
		for k := range l.Inexpressible {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "  %6d  %s\n", l.Inexpressible[k], k)
		}
	}
}

// writeFileAtomic replaces path with b: a temporary file in the same
// directory, synced, then renamed, so a policy watcher never reads half a
// file.
func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
