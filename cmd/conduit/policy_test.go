package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run executes the conduit command in-process and returns its output and
// exit status.
func run(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	code = exitOK
	if err != nil {
		code = exitError
		var ce *exitCodeError
		if errors.As(err, &ce) {
			code = ce.code
		}
		errOut.WriteString(err.Error())
	}
	return out.String(), errOut.String(), code
}

func writePolicy(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const (
	allowRego = "package conduit\n\ndecision := {\"allow\": true, \"reason\": \"ok\"}\n"
	passTest  = "package conduit_test\n\nimport data.conduit\n\ntest_allows if conduit.decision.allow\n"
	failTest  = "package conduit_test\n\nimport data.conduit\n\ntest_denies if not conduit.decision.allow\n"
)

func TestPolicyTestReference(t *testing.T) {
	out, errOut, code := run(t, "", "policy", "test")
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{
		"PASS  data.conduit_test.test_allow_names_the_grant (conduit_test.rego:",
		"policy rules (embedded), revision sha256:",
		"FAIL 0  ERROR 0",
		"coverage 100.0%",
		"100.0%  modbus.rego",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestPolicyTestDir(t *testing.T) {
	dir := writePolicy(t, map[string]string{"p.rego": allowRego, "p_test.rego": passTest})
	if out, _, code := run(t, "", "policy", "test", dir); code != exitOK || !strings.Contains(out, "PASS  data.conduit_test.test_allows") || !strings.Contains(out, "coverage 100.0%") {
		t.Errorf("passing: exit %d\n%s", code, out)
	}

	dir = writePolicy(t, map[string]string{"p.rego": allowRego, "p_test.rego": passTest, "q_test.rego": failTest})
	out, errOut, code := run(t, "", "policy", "test", dir)
	if code != exitFound || !strings.Contains(out, "FAIL  data.conduit_test.test_denies ("+filepath.Join(dir, "q_test.rego")+":5") ||
		!strings.Contains(errOut, "1 of 2 tests failed") {
		t.Errorf("failing: exit %d\n%s\n%s", code, out, errOut)
	}
	if out, _, code := run(t, "", "policy", "test", "--run", "test_allows", dir); code != exitOK || strings.Contains(out, "test_denies") {
		t.Errorf("--run: exit %d\n%s", code, out)
	}

	dir = writePolicy(t, map[string]string{"p.rego": allowRego})
	if _, errOut, code := run(t, "", "policy", "test", dir); code != exitFound || !strings.Contains(errOut, "no tests") {
		t.Errorf("no tests: exit %d %s", code, errOut)
	}

	dir = writePolicy(t, map[string]string{"p.rego": "package conduit\n\ndecision := \n"})
	if _, errOut, code := run(t, "", "policy", "test", dir); code != exitError || !strings.Contains(errOut, filepath.Join(dir, "p.rego")+":") {
		t.Errorf("broken policy: exit %d %s", code, errOut)
	}
}

func evalJSON(t *testing.T, out string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	return m
}

func TestPolicyEval(t *testing.T) {
	examples := filepath.Join("..", "..", "examples", "policy")

	out, _, code := run(t, "", "policy", "eval", "--input", filepath.Join(examples, "modbus-write-setpoint.json"))
	d := evalJSON(t, out)
	if code != exitOK || d["allow"] != true || d["rule"] != "grant/demo-loopback" || d["id"] == "" ||
		!strings.HasPrefix(d["revision"].(string), "sha256:") || d["reason"] != "allowed by grant demo-loopback on listener plc-line1" {
		t.Errorf("allow: exit %d %v", code, d)
	}

	out, errOut, code := run(t, "", "policy", "eval", "-i", filepath.Join(examples, "modbus-write-too-high.json"))
	d = evalJSON(t, out)
	if code != exitFound || d["allow"] != false || d["rule"] != "conduit.modbus.value" || d["exception_code"] != 3.0 ||
		!strings.Contains(errOut, "denied: write of 5000") {
		t.Errorf("deny: exit %d %v %s", code, d, errOut)
	}

	// From standard input, against a policy directory.
	doc, err := os.ReadFile(filepath.Join(examples, "modbus-read.json"))
	if err != nil {
		t.Fatal(err)
	}
	dir := writePolicy(t, map[string]string{"p.rego": "package conduit\n\ndecision := {\"allow\": false, \"reason\": \"no\", \"action\": \"reset\"}\n"})
	out, _, code = run(t, string(doc), "policy", "eval", "--policy", dir, "--input", "-")
	if d := evalJSON(t, out); code != exitFound || d["action"] != "reset" || d["reason"] != "no" {
		t.Errorf("stdin: exit %d %v", code, d)
	}
}

func TestPolicyEvalErrors(t *testing.T) {
	examples := filepath.Join("..", "..", "examples", "policy")
	input := filepath.Join(examples, "modbus-read.json")

	// A policy that fails closed: the decision is printed, with its code.
	dir := writePolicy(t, map[string]string{"p.rego": "package conduit\n\ndecision := {\"allow\": true, \"reason\": \"x\"} if input.nothing\n"})
	out, _, code := run(t, "", "policy", "eval", "--policy", dir, "--input", input)
	if d := evalJSON(t, out); code != exitError || d["allow"] != false || d["error"] != "undefined" {
		t.Errorf("undefined: exit %d %v", code, d)
	}

	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"protocol": "modbus", "listener": "plc-line1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := run(t, "", "policy", "eval", "--input", bad); code != exitError || !strings.Contains(errOut, "does not match the input schema") {
		t.Errorf("schema: exit %d %s", code, errOut)
	}
	if out, _, code := run(t, "", "policy", "eval", "--no-schema-check", "--input", bad); code != exitFound || evalJSON(t, out)["rule"] != "conduit.default" {
		t.Errorf("--no-schema-check: exit %d %s", code, out)
	}
	for name, args := range map[string][]string{
		"missing input":  {"policy", "eval", "--input", filepath.Join(examples, "nope.json")},
		"no input flag":  {"policy", "eval"},
		"missing policy": {"policy", "eval", "--policy", "/nonexistent", "--input", input},
	} {
		if _, errOut, code := run(t, "", args...); code != exitError {
			t.Errorf("%s: exit %d %s", name, code, errOut)
		}
	}
}
