package policy_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
)

func TestRunTests(t *testing.T) {
	dir := policyDir(t, map[string]string{
		"p.rego": `package conduit

decision := {"allow": true, "reason": "read"} if input.operation.access == "read"

decision := {"allow": false, "reason": "other"} if input.operation.access != "read"

unused if input.never
`,
		"p_test.rego": `package conduit_test

import data.conduit

test_read if conduit.decision.allow with input as {"operation": {"access": "read"}}

test_wrong if conduit.decision.allow with input as {"operation": {"access": "write"}}

test_slow if {
	print("counting")
	count(numbers.range(1, 100000000)) > 0
}

todo_test_later if false
`,
	})
	rep, err := policy.RunTests(ctx, policy.Source{Path: dir}, policy.TestOptions{Coverage: true, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"data.conduit_test.test_read":       policy.TestPass + " p_test.rego:5",
		"data.conduit_test.test_wrong":      policy.TestFail + " p_test.rego:7",
		"data.conduit_test.test_slow":       policy.TestError + " p_test.rego:9",
		"data.conduit_test.todo_test_later": policy.TestSkip + " p_test.rego:14",
	}
	if len(rep.Results) != len(want) {
		t.Fatalf("results %+v", rep.Results)
	}
	for _, r := range rep.Results {
		w := strings.Fields(want[r.Name])
		if len(w) != 2 || r.Outcome != w[0] || r.Location != filepath.Join(dir, w[1]) {
			t.Errorf("%s: %s at %s, want %v", r.Name, r.Outcome, r.Location, w)
		}
	}
	if pass, fail, errored, skipped := rep.Counts(); pass != 1 || fail != 1 || errored != 1 || skipped != 1 || rep.Passed() {
		t.Errorf("counts %d %d %d %d, passed %v", pass, fail, errored, skipped, rep.Passed())
	}
	slow := rep.Results[2]
	if slow.Err == "" || !strings.Contains(slow.Output, "counting") {
		t.Errorf("erroring test: %+v", slow)
	}
	// Coverage only for the policy file: the unused rule body is line 7.
	if len(rep.Files) != 1 || rep.Files[0].File != filepath.Join(dir, "p.rego") {
		t.Fatalf("coverage files %+v", rep.Files)
	}
	if f := rep.Files[0]; f.Coverage <= 0 || f.Coverage >= 100 || len(f.NotCovered) != 1 || f.NotCovered[0] != "7" || rep.Coverage != f.Coverage {
		t.Errorf("coverage %+v, total %.1f", f, rep.Coverage)
	}
	if rep.Revision == "" || rep.Source != dir {
		t.Errorf("report %q %q", rep.Revision, rep.Source)
	}

	// A filter runs only matching tests.
	rep, err = policy.RunTests(ctx, policy.Source{Path: dir}, policy.TestOptions{Filter: "test_read"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 1 || !rep.Passed() || rep.Files != nil {
		t.Errorf("filtered %+v", rep)
	}
}

func TestRunTestsErrors(t *testing.T) {
	if _, err := policy.RunTests(ctx, policy.Source{Path: "/nonexistent"}, policy.TestOptions{}); !errors.Is(err, policy.ErrLoad) {
		t.Errorf("missing: %v", err)
	}
	dir := policyDir(t, map[string]string{"p.rego": allowAll, "p_test.rego": "package conduit_test\ntest_x if undefined_function(1)\n"})
	if _, err := policy.RunTests(ctx, policy.Source{Path: dir}, policy.TestOptions{}); !errors.Is(err, policy.ErrCompile) || !strings.Contains(err.Error(), "p_test.rego:2") {
		t.Errorf("compile error: %v", err)
	}
}

func TestReferencePolicyTests(t *testing.T) {
	rep, err := policy.RunTests(ctx, policy.Source{FS: rules.FS}, policy.TestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pass, _, _, _ := rep.Counts(); !rep.Passed() || pass < 100 {
		t.Errorf("reference policy: %d passed, passed %v", pass, rep.Passed())
	}
}
