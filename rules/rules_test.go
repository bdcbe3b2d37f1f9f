package rules_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// The fork scenario: a plant's security team copies this directory, adds
// grants in their own data files and replaces data.json. The tests of the
// rules decide against fixture grants of their own, so they must stay green
// whatever the data holds; only data_test.rego tests the data.

// dataTestFile holds the tests of the example grants (data.json).
const dataTestFile = "data_test.rego"

// learnedJSON adds grants as `conduit learn` writes them, in a file of its
// own next to data.json: one for another client on plc-line1, and one for
// a loopback client, who then matches two grants (demo-loopback too).
const learnedJSON = `{
  "grants": {
    "plc-line1": {
      "learned-10.1.1.5": {
        "description": "learned 2026-05-04..2026-05-11 from 18211 requests",
        "clients": {"cidrs": ["10.1.1.5/32"]},
        "modbus": {
          "units": [1],
          "read": {"holding_registers": [{"start": 0, "end": 19}], "coils": [{"start": 0, "end": 7}]},
          "write": {"holding_registers": [{"start": 12, "end": 12, "min": 100, "max": 400}]},
          "functions": [{"function": 8, "subfunctions": [0]}]
        }
      },
      "learned-127.0.0.1": {
        "description": "learned 2026-05-04..2026-05-11 from 912 requests",
        "clients": {"cidrs": ["127.0.0.1/32"]},
        "modbus": {
          "units": [1],
          "read": {"holding_registers": [{"start": 200, "end": 209}]},
          "write": {"holding_registers": [{"start": 200, "end": 203, "min": 0, "max": 50}]}
        }
      }
    }
  }
}`

// otherPlantJSON is another plant's data.json: the same listener names with
// different grants (loopback may only read 0..49, setpoints up to 800 from
// the HMI network, no diagnostics), and a listener of its own.
const otherPlantJSON = `{
  "grants": {
    "plc-line1": {
      "hmi": {
        "description": "HMI panels on the cell network: read the process image, write setpoints 10-19 up to 800.",
        "clients": {"cidrs": ["10.40.1.0/24"]},
        "modbus": {
          "units": [1, 2],
          "read": {
            "holding_registers": [{"start": 0, "end": 199}],
            "input_registers": [{"start": 0, "end": 199}],
            "coils": [{"start": 0, "end": 31}]
          },
          "write": {"holding_registers": [{"start": 10, "end": 19, "min": 0, "max": 800}]}
        }
      },
      "local-tools": {
        "description": "Tools on the proxy host: read only.",
        "clients": {"cidrs": ["127.0.0.0/8"]},
        "modbus": {"units": [1], "read": {"holding_registers": [{"start": 0, "end": 49}]}}
      },
      "scada": {
        "description": "The SCADA server, by SPIFFE id.",
        "clients": {"uris": ["spiffe://plant.example/scada"]},
        "modbus": {
          "units": [1, 2],
          "read": {"holding_registers": [{"start": 0, "end": 199}], "input_registers": [{"start": 0, "end": 199}]},
          "functions": [{"function": 43, "subfunctions": [14]}]
        }
      }
    },
    "press-plc": {
      "press-hmi": {
        "clients": {"cidrs": ["10.40.2.10/32"], "common_names": ["press-hmi"]},
        "modbus": {
          "units": [3],
          "read": {"holding_registers": [{"start": 0, "end": 99}], "coils": [{"start": 0, "end": 15}]},
          "write": {"coils": [{"start": 0, "end": 3, "min": 1}]}
        }
      }
    },
    "opcua-line1": {
      "mes": {
        "clients": {"common_names": ["mes-01"]},
        "opcua": {"read": true, "browse": true, "subscribe": true, "user_names": ["mes"]}
      }
    }
  }
}`

// otherPlantDataTest is the data_test.rego that team writes for its grants
// (README.md quotes test_hmi_setpoint_limit).
const otherPlantDataTest = `package conduit_test

import data.conduit

test_reference_data_is_valid if {
	errors := conduit.data_errors
	print("data_errors:", errors)
	count(errors) == 0
}

test_local_tools_read_only if {
	decide_data(read_hr(loopback, 0, 50)).allow
	decide_data(read_hr(loopback, 0, 51)).allow == false
	decide_data(write_hr(loopback, 12, 500)).allow == false
}

test_hmi_setpoint_limit if {
	decide_data(write_hr(plain("10.40.1.7"), 12, 800)).allow
	d := decide_data(write_hr(plain("10.40.1.7"), 12, 801))
	d.allow == false
	d.exception_code == 3
}
`

func TestForkedPolicy(t *testing.T) {
	ref := runRegoTests(t, policy.Source{Path: "rules", FS: rules.FS})
	all, ruleTests, dataTests := testNames(ref)
	if len(dataTests) == 0 || len(ruleTests) == 0 {
		t.Fatalf("reference policy: %d rule tests, %d tests in %s", len(ruleTests), len(dataTests), dataTestFile)
	}

	t.Run("learned grants in their own file", func(t *testing.T) {
		dir := copyPolicy(t)
		writeFile(t, dir, "learned.json", learnedJSON)
		requirePassed(t, runRegoTests(t, policy.Source{Path: dir}), all)

		e := newEngine(t, dir)
		requireDecision(t, e, readHR("plc-line1", "10.1.1.5", 0, 20), true, "grant/learned-10.1.1.5")
		requireDecision(t, e, readHR("plc-line1", "127.0.0.1", 200, 10), true, "grant/learned-127.0.0.1")
		requireDecision(t, e, readHR("plc-line1", "127.0.0.1", 10, 4), true, "grant/demo-loopback")
	})

	t.Run("another plant's data", func(t *testing.T) {
		dir := copyPolicy(t)
		writeFile(t, dir, "data.json", otherPlantJSON)

		// The shipped data tests check the example grants: they fail,
		// and nothing else does.
		rep := runRegoTests(t, policy.Source{Path: dir})
		failed := 0
		for _, r := range rep.Results {
			if r.Outcome == policy.TestPass {
				continue
			}
			if resultFile(r) != dataTestFile {
				t.Errorf("%s: %s %s %s\n%s", r.Location, r.Outcome, r.Name, r.Err, r.Output)
			}
			failed++
		}
		if failed == 0 {
			t.Errorf("the tests of the example grants pass with another plant's grants")
		}
		if _, err := policy.New(context.Background(), policy.Options{Source: policy.Source{Path: dir}, RunTests: true}); !errors.Is(err, policy.ErrTests) {
			t.Errorf("engine with the example data tests and another plant's data: %v, want %v", err, policy.ErrTests)
		}

		// Without them, every test of the rules passes and the engine
		// accepts the policy.
		if err := os.Remove(filepath.Join(dir, dataTestFile)); err != nil {
			t.Fatal(err)
		}
		rep = runRegoTests(t, policy.Source{Path: dir})
		requirePassed(t, rep, ruleTests)
		if rep.Coverage < minCoverage {
			t.Errorf("the tests of the rules alone cover %.1f%%, below %.1f%%", rep.Coverage, minCoverage)
		}
		newEngine(t, dir)

		// With the team's own data tests, as README.md describes.
		writeFile(t, dir, dataTestFile, otherPlantDataTest)
		want := slices.Concat(ruleTests, []string{
			"data.conduit_test.test_hmi_setpoint_limit",
			"data.conduit_test.test_local_tools_read_only",
			"data.conduit_test.test_reference_data_is_valid",
		})
		requirePassed(t, runRegoTests(t, policy.Source{Path: dir}), want)
		e := newEngine(t, dir)
		requireDecision(t, e, readHR("plc-line1", "10.40.1.7", 100, 100), true, "grant/hmi")
		requireDecision(t, e, readHR("plc-line1", "127.0.0.1", 10, 50), false, "conduit.modbus.read")
	})
}

// runRegoTests runs the Rego tests of src, with coverage.
func runRegoTests(t *testing.T, src policy.Source) *policy.TestReport {
	t.Helper()
	rep, err := policy.RunTests(context.Background(), src, policy.TestOptions{Coverage: true})
	if err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	return rep
}

// testNames returns the names of every test of rep, sorted, and split into
// the tests of the rules and those of data_test.rego.
func testNames(rep *policy.TestReport) (all, ruleTests, dataTests []string) {
	for _, r := range rep.Results {
		all = append(all, r.Name)
		if resultFile(r) == dataTestFile {
			dataTests = append(dataTests, r.Name)
		} else {
			ruleTests = append(ruleTests, r.Name)
		}
	}
	slices.Sort(all)
	slices.Sort(ruleTests)
	slices.Sort(dataTests)
	return all, ruleTests, dataTests
}

// requirePassed fails unless exactly the tests named want ran, and passed.
func requirePassed(t *testing.T, rep *policy.TestReport, want []string) {
	t.Helper()
	for _, r := range rep.Results {
		if r.Outcome != policy.TestPass {
			t.Errorf("%s: %s %s %s\n%s", r.Location, r.Outcome, r.Name, r.Err, r.Output)
		}
	}
	got, _, _ := testNames(rep)
	want = slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Errorf("ran %d tests, want %d:\n got %v\nwant %v", len(got), len(want), got, want)
	}
}

// resultFile is the base name of the file holding the test of r.
func resultFile(r policy.TestResult) string {
	file := r.Location
	if i := strings.LastIndexByte(file, ':'); i >= 0 {
		file = file[:i]
	}
	return filepath.Base(file)
}

// copyPolicy copies the embedded reference policy into a new directory, as
// a team forking it does.
func copyPolicy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(dir, rules.FS); err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// newEngine loads the policy in dir as Conduit does by default: it refuses
// a version whose Rego tests fail.
func newEngine(t *testing.T, dir string) *policy.Engine {
	t.Helper()
	e, err := policy.New(context.Background(), policy.Options{Source: policy.Source{Path: dir}, RunTests: true})
	if err != nil {
		t.Fatalf("engine refuses the policy: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// readHR is the input document of an FC 3 read from client address.
func readHR(listener, address string, first, quantity int) []byte {
	return fmt.Appendf(nil, `{
  "protocol": "modbus", "listener": %q, "upstream": "127.0.0.1:5020",
  "client": {"address": %q, "port": 50100, "identity": null},
  "operation": {"access": "read", "name": "read_holding_registers"},
  "modbus": {"unit": 1, "function": 3, "table": "holding_registers", "address": %d, "quantity": %d}
}`, listener, address, first, quantity)
}

// requireDecision fails unless e decides doc with allow and rule.
func requireDecision(t *testing.T, e *policy.Engine, doc []byte, allow bool, rule string) {
	t.Helper()
	d := e.DecideJSON(context.Background(), doc)
	if d.Err != nil || d.Allow != allow || d.Rule != rule {
		t.Errorf("decision for %s: allow %v, rule %q, reason %q, err %v; want allow %v, rule %q", doc, d.Allow, d.Rule, d.Reason, d.Err, allow, rule)
	}
}
