package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
)

// newPolicyCmd is `conduit policy`: run a policy's Rego tests, evaluate one
// input document. Both default to the embedded reference policy.
func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Test a policy and evaluate inputs against it",
		Long: `Work with a Conduit policy: a directory of Rego modules and data files, or an
OPA bundle (.tar.gz), that defines data.conduit.decision (docs/policy.md).
Without a path, the embedded reference policy (rules/) is used.`,
	}
	cmd.AddCommand(newPolicyTestCmd(), newPolicyEvalCmd())
	return cmd
}

// policySource is the policy at path, or the embedded reference policy.
func policySource(path string) policy.Source {
	if path == "" {
		return policy.Source{Path: "rules", FS: rules.FS}
	}
	return policy.Source{Path: path}
}

func newPolicyTestCmd() *cobra.Command {
	var (
		run     string
		timeout time.Duration
		verbose bool
	)
	cmd := &cobra.Command{
		Use:   "test [DIR|BUNDLE]",
		Short: "Run a policy's Rego tests and report coverage",
		Long: `Run the Rego tests (rules named test_*) of a policy with OPA's tester, print
pass or fail per test and the line coverage of every policy file.

Exit status: 0 when every test passed, 1 when a test failed or errored (or
there is none), 2 when the policy could not be loaded or compiled.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := ""
			if len(args) == 1 {
				path = args[0]
			}
			src := policySource(path)
			rep, err := policy.RunTests(cmd.Context(), src, policy.TestOptions{Coverage: true, Timeout: timeout, Filter: run})
			if err != nil {
				return &exitCodeError{exitError, err}
			}
			printTestReport(cmd.OutOrStdout(), rep, verbose)
			pass, fail, errored, _ := rep.Counts()
			switch {
			case fail+errored > 0:
				return &exitCodeError{exitFound, fmt.Errorf("%s: %d of %d tests failed", src, fail+errored, pass+fail+errored)}
			case pass == 0:
				return &exitCodeError{exitFound, fmt.Errorf("%s: no tests", src)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&run, "run", "", "run only tests whose name matches this regular expression")
	cmd.Flags().DurationVar(&timeout, "timeout", policy.DefaultTestTimeout, "time limit of one test")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print the output (print()) of passing tests too")
	return cmd
}

func printTestReport(w io.Writer, rep *policy.TestReport, verbose bool) {
	for _, r := range rep.Results {
		label := strings.ToUpper(r.Outcome)
		fmt.Fprintf(w, "%-5s %s (%s, %s)\n", label, r.Name, r.Location, r.Duration.Round(time.Microsecond))
		if r.Err != "" {
			fmt.Fprintf(w, "      %s\n", r.Err)
		}
		if out := strings.TrimSpace(r.Output); out != "" && (verbose || r.Outcome != policy.TestPass) {
			for _, line := range strings.Split(out, "\n") {
				fmt.Fprintf(w, "      | %s\n", line)
			}
		}
	}
	pass, fail, errored, skipped := rep.Counts()
	fmt.Fprintf(w, "%s\npolicy %s, revision %s\nPASS %d  FAIL %d  ERROR %d  SKIP %d\n",
		strings.Repeat("-", 72), rep.Source, rep.Revision, pass, fail, errored, skipped)
	fmt.Fprintf(w, "coverage %.1f%%\n", rep.Coverage)
	for _, f := range rep.Files {
		fmt.Fprintf(w, "  %6.1f%%  %s", f.Coverage, f.File)
		if len(f.NotCovered) > 0 {
			fmt.Fprintf(w, "  (not covered: lines %s)", strings.Join(f.NotCovered, ", "))
		}
		fmt.Fprintln(w)
	}
}

// evalOutput is what `conduit policy eval` prints.
type evalOutput struct {
	ID            string `json:"id"`
	Allow         bool   `json:"allow"`
	Reason        string `json:"reason"`
	Rule          string `json:"rule,omitempty"`
	Revision      string `json:"revision"`
	Action        string `json:"action,omitempty"`
	ExceptionCode uint8  `json:"exception_code,omitempty"`
	Error         string `json:"error,omitempty"` // stable code when evaluation failed
}

func newPolicyEvalCmd() *cobra.Command {
	var (
		policyPath string
		inputPath  string
		noSchema   bool
		timeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "eval --input FILE [--policy DIR|BUNDLE]",
		Short: "Evaluate one input document and print the decision",
		Long: `Evaluate one input document (JSON, as in docs/policy.md and
examples/policy/) against a policy and print the decision as JSON: id,
allow, reason, rule, revision (and action, exception_code when the policy
sets them). The input is checked against the input schema first.

Exit status: 0 allow, 1 deny, 2 error (unreadable input, schema mismatch,
policy that does not load, evaluation that fails closed).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			doc, err := readInput(cmd.InOrStdin(), inputPath)
			if err != nil {
				return &exitCodeError{exitError, err}
			}
			if !noSchema {
				if err := policy.ValidateDocument(cmd.Context(), doc); err != nil {
					return &exitCodeError{exitError, fmt.Errorf("%s: %w (--no-schema-check to evaluate anyway)", inputPath, err)}
				}
			}
			e, err := policy.New(cmd.Context(), policy.Options{
				Source:          policySource(policyPath),
				DecisionTimeout: timeout,
				CacheSize:       -1,
			})
			if err != nil {
				return &exitCodeError{exitError, err}
			}
			defer e.Close()
			d := e.DecideJSON(cmd.Context(), doc)
			out := evalOutput{
				ID: d.ID, Allow: d.Allow, Reason: d.Reason, Rule: d.Rule, Revision: d.Revision,
				ExceptionCode: d.Exception, Error: policy.Code(d.Err),
			}
			if d.Action != policy.ActionDefault {
				out.Action = d.Action.String()
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			if err := enc.Encode(out); err != nil {
				return &exitCodeError{exitError, err}
			}
			switch {
			case d.Err != nil:
				return &exitCodeError{exitError, d.Err}
			case !d.Allow:
				return &exitCodeError{exitFound, errors.New("denied: " + d.Reason)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&policyPath, "policy", "", "policy directory or bundle (.tar.gz); default: the embedded reference policy")
	cmd.Flags().StringVarP(&inputPath, "input", "i", "", `input document (JSON); "-" reads standard input`)
	cmd.Flags().BoolVar(&noSchema, "no-schema-check", false, "evaluate an input that does not match the input schema")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Second, "decision timeout")
	_ = cmd.MarkFlagRequired("input")
	return cmd
}

// maxInputSize bounds an input document read by eval.
const maxInputSize = 16 << 20

func readInput(stdin io.Reader, path string) ([]byte, error) {
	var r io.Reader
	if path == "-" {
		r = stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxInputSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxInputSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxInputSize)
	}
	return b, nil
}
