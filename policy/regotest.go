package policy

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"
)

// Test outcomes (TestResult.Outcome).
const (
	TestPass  = "pass"
	TestFail  = "fail"
	TestError = "error"
	TestSkip  = "skip" // todo_test_ rules
)

// TestResult is the result of one Rego test rule.
type TestResult struct {
	Name     string // data.conduit_test.test_write_too_high
	Location string // file:line of the test rule
	Outcome  string // TestPass, TestFail, TestError or TestSkip
	Err      string // the evaluation error, for TestError
	Output   string // what the test printed (print())
	Duration time.Duration
}

// FileCoverage is the coverage of one policy file (test files excluded).
type FileCoverage struct {
	File            string
	Coverage        float64 // percent of lines with an expression or rule head
	CoveredLines    int
	NotCoveredLines int
	NotCovered      []string // line ranges without coverage: "12", "30-34"
}

// TestReport is the result of running a policy's Rego tests.
type TestReport struct {
	Source   string
	Revision string
	Results  []TestResult   // sorted by file and line
	Files    []FileCoverage // sorted by file; nil without coverage
	Coverage float64        // over all policy files; 0 without coverage
}

// Counts returns the number of tests per outcome.
func (r *TestReport) Counts() (pass, fail, errored, skipped int) {
	for _, t := range r.Results {
		switch t.Outcome {
		case TestPass:
			pass++
		case TestFail:
			fail++
		case TestError:
			errored++
		case TestSkip:
			skipped++
		}
	}
	return
}

// Passed reports whether no test failed or errored.
func (r *TestReport) Passed() bool {
	_, fail, errored, _ := r.Counts()
	return fail == 0 && errored == 0
}

// failures describes the failed and errored tests, one per line, for a
// refused reload.
func (r *TestReport) failures() string {
	var b strings.Builder
	for _, t := range r.Results {
		if t.Outcome != TestFail && t.Outcome != TestError {
			continue
		}
		fmt.Fprintf(&b, "\n\t%s: %s %s", t.Location, strings.ToUpper(t.Outcome), t.Name)
		if t.Err != "" {
			fmt.Fprintf(&b, ": %s", t.Err)
		}
		if out := strings.TrimSpace(t.Output); out != "" {
			if len(out) > 500 {
				out = out[:500] + "..."
			}
			fmt.Fprintf(&b, " (output: %s)", out)
		}
	}
	return b.String()
}

// TestOptions configure RunTests.
type TestOptions struct {
	Coverage bool          // compute coverage per policy file
	Timeout  time.Duration // per test; 0 means 5s
	Filter   string        // regular expression on test names; "" runs all
	// Parallel is how many tests run at once; 0 means one per CPU. A
	// reload runs them one at a time, so that they take one CPU and leave
	// the others to the data path.
	Parallel int
}

// DefaultTestTimeout bounds one Rego test.
const DefaultTestTimeout = 5 * time.Second

// RunTests loads the policy at src and runs its Rego tests (rules named
// test_* in any module, usually in *_test.rego files) with OPA's tester. An
// error means the policy could not be loaded or compiled; failing tests are
// reported in the TestReport, not as an error.
func RunTests(ctx context.Context, src Source, opts TestOptions) (*TestReport, error) {
	snap, err := src.load()
	if err != nil {
		return nil, err
	}
	rep, err := runTests(ctx, snap, opts)
	if err != nil {
		return nil, err
	}
	rep.Source = src.String()
	return rep, nil
}

func runTests(ctx context.Context, snap *snapshot, opts TestOptions) (*TestReport, error) {
	timeout := cmp.Or(opts.Timeout, DefaultTestTimeout)
	store := inmem.NewFromObject(snap.data) // round-trips: a private copy
	txn, err := store.NewTransaction(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTests, err)
	}
	defer store.Abort(ctx, txn)

	runner := tester.NewRunner().
		SetCompiler(ast.NewCompiler().WithEnablePrintStatements(true).WithCapabilities(capabilities())).
		SetStore(store).
		SetModules(snap.modules).
		SetTimeout(timeout).
		CapturePrintOutput(true).
		RaiseBuiltinErrors(false).
		Filter(opts.Filter)
	if opts.Parallel > 0 {
		runner.SetParallel(opts.Parallel)
	}
	var cov *cover.Cover
	if opts.Coverage {
		cov = cover.New()
		runner.SetCoverageQueryTracer(cov).SetCoverageRuns([]cover.Kind{})
	}
	ch, err := runner.RunTests(ctx, txn)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrCompile, err)
	}
	rep := &TestReport{Revision: snap.revision}
	for tr := range ch {
		rep.Results = append(rep.Results, testResult(tr))
	}
	// The runner stops at a cancelled context without a result for the
	// tests it did not run: the report would count no failure, and an
	// untested version would pass. It is an error instead.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: the tests did not finish (%d of them ran): %v", ErrTests, len(rep.Results), err)
	}
	slices.SortFunc(rep.Results, func(a, b TestResult) int {
		return cmp.Or(compareLocation(a.Location, b.Location), strings.Compare(a.Name, b.Name))
	})
	if cov != nil {
		coverage(rep, cov.Report(snap.productionModules()), snap)
	}
	return rep, nil
}

func testResult(tr *tester.Result) TestResult {
	r := TestResult{
		Name:     tr.Package + "." + tr.Name,
		Outcome:  TestPass,
		Output:   string(tr.Output),
		Duration: tr.Duration,
	}
	if tr.Location != nil {
		r.Location = tr.Location.File + ":" + strconv.Itoa(tr.Location.Row)
	}
	switch {
	case tr.Skip:
		r.Outcome = TestSkip
	case tr.Error != nil:
		r.Outcome, r.Err = TestError, tr.Error.Error()
	case tr.Fail:
		r.Outcome = TestFail
	}
	return r
}

func compareLocation(a, b string) int {
	fa, la := splitLocation(a)
	fb, lb := splitLocation(b)
	return cmp.Or(strings.Compare(fa, fb), cmp.Compare(la, lb))
}

func splitLocation(loc string) (string, int) {
	i := strings.LastIndexByte(loc, ':')
	if i < 0 {
		return loc, 0
	}
	n, _ := strconv.Atoi(loc[i+1:])
	return loc[:i], n
}

func coverage(rep *TestReport, cr cover.Report, snap *snapshot) {
	var covered, notCovered int
	for name := range snap.productionModules() {
		fr := cr.Files[name]
		fc := FileCoverage{File: name}
		if fr != nil {
			fc.CoveredLines, fc.NotCoveredLines = fr.CoveredLines, fr.NotCoveredLines
			fc.Coverage = fr.Coverage
			for _, r := range fr.NotCovered {
				s := strconv.Itoa(r.Start.Row)
				if r.End.Row != r.Start.Row {
					s += "-" + strconv.Itoa(r.End.Row)
				}
				if n := len(fc.NotCovered); n == 0 || fc.NotCovered[n-1] != s {
					fc.NotCovered = append(fc.NotCovered, s)
				}
			}
		}
		covered += fc.CoveredLines
		notCovered += fc.NotCoveredLines
		rep.Files = append(rep.Files, fc)
	}
	slices.SortFunc(rep.Files, func(a, b FileCoverage) int { return strings.Compare(a.File, b.File) })
	if total := covered + notCovered; total > 0 {
		rep.Coverage = 100 * float64(covered) / float64(total)
	}
}
