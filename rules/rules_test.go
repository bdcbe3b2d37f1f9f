package rules_test

import (
	"context"
	"testing"

	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
)

// minCoverage is the line coverage the Rego tests must keep on the policy
// modules (tests excluded).
const minCoverage = 95.0

// TestRego runs the Rego tests of the reference policy with OPA's tester, so
// that `go test ./...` fails when a Rego test fails.
func TestRego(t *testing.T) {
	rep, err := policy.RunTests(context.Background(), policy.Source{Path: "rules", FS: rules.FS}, policy.TestOptions{Coverage: true})
	if err != nil {
		t.Fatalf("load reference policy: %v", err)
	}
	pass, fail, errored, skipped := rep.Counts()
	for _, r := range rep.Results {
		switch r.Outcome {
		case policy.TestFail, policy.TestError:
			t.Errorf("%s: %s %s %s\n%s", r.Location, r.Outcome, r.Name, r.Err, r.Output)
		}
	}
	if pass == 0 {
		t.Fatal("no Rego test passed")
	}
	if skipped > 0 {
		t.Errorf("%d Rego tests skipped (todo_test_)", skipped)
	}
	t.Logf("%d passed, %d failed, %d errored; coverage %.1f%%", pass, fail, errored, rep.Coverage)
	for _, f := range rep.Files {
		t.Logf("  %s: %.1f%% (not covered: %v)", f.File, f.Coverage, f.NotCovered)
	}
	if rep.Coverage < minCoverage {
		t.Errorf("coverage %.1f%% is below %.1f%%", rep.Coverage, minCoverage)
	}
}
