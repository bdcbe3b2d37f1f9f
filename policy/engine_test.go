package policy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/policy"
)

func TestReferencePolicy(t *testing.T) {
	e := reference(t, policy.Options{})
	cases := []struct {
		name  string
		in    *policy.Input
		allow bool
		rule  string
		exc   uint8
		why   string
	}{
		{"read", readHR("127.0.0.1:50100", 0, 10), true, "grant/demo-loopback", 0,
			"allowed by grant demo-loopback on listener plc-line1"},
		{"setpoint", writeHR("127.0.0.1:50100", 15, 750), true, "grant/demo-loopback", 0,
			"allowed by grant demo-loopback on listener plc-line1"},
		{"setpoint too high", writeHR("127.0.0.1:50100", 15, 5000), false, "conduit.modbus.value", 3,
			"write of 5000 to holding_registers 15 exceeds max 1000 for listener plc-line1"},
		{"echo", diagnostics("127.0.0.1:50100", 0), true, "grant/demo-loopback", 0,
			"allowed by grant demo-loopback on listener plc-line1"},
		{"listen only", diagnostics("127.0.0.1:50100", 4), false, "conduit.modbus.function", 1,
			"function 8 subfunction 4 (force listen only) is not allowed on listener plc-line1"},
		{"stranger", readHR("10.9.9.9:50100", 0, 10), false, "conduit.client", 0,
			"client 10.9.9.9 has no grant on listener plc-line1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := e.Decide(ctx, c.in)
			if d.Allow != c.allow || d.Rule != c.rule || d.Reason != c.why || d.Exception != c.exc || d.Err != nil || d.DryRun {
				t.Errorf("decision %+v\nwant allow=%v rule=%q exception=%d reason=%q", d, c.allow, c.rule, c.exc, c.why)
			}
			if d.ID == "" || d.Revision != e.Revision() || !strings.HasPrefix(d.Revision, "sha256:") {
				t.Errorf("id %q revision %q (engine %q)", d.ID, d.Revision, e.Revision())
			}
		})
	}
	if in := readHR("127.0.0.1:50100", 0, 10); true {
		in.Identity = engineerIdentity()
		in.Client = netipMust("10.20.1.5:50100")
		if d := e.Decide(ctx, writeWithIdentity(in)); !d.Allow || d.Rule != "grant/engineers" {
			t.Errorf("engineer write: %+v", d)
		}
	}
}

// TestFailClosed: every way a policy can fail to produce one well-formed
// decision is a deny with Err set, a stable code and a "policy error" reason.
func TestFailClosed(t *testing.T) {
	cases := []struct {
		name   string
		policy string
		want   error
		reason string
	}{
		{"undefined", `decision := {"allow": true, "reason": "never"} if input.nothing`,
			policy.ErrUndefined, "policy error: decision undefined: data.conduit.decision has no value for this input"},
		{"two rules disagree", "decision := {\"allow\": true, \"reason\": \"a\"} if input.protocol\ndecision := {\"allow\": false, \"reason\": \"b\"} if input.listener",
			policy.ErrMultiple, "policy error: more than one decision: "},
		{"non-boolean allow", `decision := {"allow": "yes", "reason": "x"}`,
			policy.ErrShape, `policy error: malformed decision: "allow" must be a boolean, got string`},
		{"missing allow", `decision := {"reason": "x"}`,
			policy.ErrShape, `policy error: malformed decision: data.conduit.decision has no "allow"`},
		{"non-string reason", `decision := {"allow": false, "reason": 7}`,
			policy.ErrShape, `policy error: malformed decision: "reason" must be a string, got number`},
		{"missing reason", `decision := {"allow": true}`,
			policy.ErrShape, `policy error: malformed decision: data.conduit.decision has no "reason"`},
		{"bad action", `decision := {"allow": false, "reason": "x", "action": "explode"}`,
			policy.ErrShape, `policy error: malformed decision: "action" "explode" is not one of exception, reset, drop`},
		{"non-string action", `decision := {"allow": false, "reason": "x", "action": 1}`,
			policy.ErrShape, `policy error: malformed decision: "action" must be a string, got number`},
		{"non-string rule", `decision := {"allow": false, "reason": "x", "rule": ["r"]}`,
			policy.ErrShape, `policy error: malformed decision: "rule" must be a string, got array`},
		{"exception code 0", `decision := {"allow": false, "reason": "x", "exception_code": 0}`,
			policy.ErrShape, `policy error: malformed decision: "exception_code" 0 is not an integer in 1..255`},
		{"exception code 256", `decision := {"allow": false, "reason": "x", "exception_code": 256}`,
			policy.ErrShape, `policy error: malformed decision: "exception_code" 256 is not an integer in 1..255`},
		{"exception code string", `decision := {"allow": false, "reason": "x", "exception_code": "2"}`,
			policy.ErrShape, `policy error: malformed decision: "exception_code" must be a number, got string`},
		{"not an object", `decision := true`,
			policy.ErrShape, "policy error: malformed decision: data.conduit.decision must be an object, got boolean"},
		{"a set", `decision contains {"allow": true, "reason": "x"}`,
			policy.ErrShape, "policy error: malformed decision: data.conduit.decision must be an object, got set"},
		{"evaluation error", "keys := {k: v | some v in [1, 2]; k := \"same\"}\ndecision := {\"allow\": keys.same == 1, \"reason\": \"x\"}",
			policy.ErrEval, "policy error: evaluation failed: "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := engineFor(t, map[string]string{"p.rego": "package conduit\n" + c.policy + "\n"}, policy.Options{})
			d := e.Decide(ctx, readHR("127.0.0.1:50100", 0, 10))
			if d.Allow || d.Err == nil || !errors.Is(d.Err, c.want) {
				t.Fatalf("decision %+v, want deny with %v", d, c.want)
			}
			if !strings.HasPrefix(d.Reason, c.reason) {
				t.Errorf("reason %q, want prefix %q", d.Reason, c.reason)
			}
			if d.ID == "" || d.Revision == "" {
				t.Errorf("decision without id or revision: %+v", d)
			}
			if got, want := policy.Code(d.Err), c.want.(*policy.Error).Code; got != want {
				t.Errorf("Code = %q, want %q", got, want)
			}
			// A failure is never cached: the second decision fails the same way.
			if d2 := e.Decide(ctx, readHR("127.0.0.1:50100", 0, 10)); d2.Allow || !errors.Is(d2.Err, c.want) {
				t.Errorf("second decision %+v", d2)
			}
			if s := e.Stats(); s.Errors != 2 || s.CacheLen != 0 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

func TestActionAndException(t *testing.T) {
	e := engineFor(t, map[string]string{"p.rego": `package conduit
decision := {"allow": false, "reason": "go away", "rule": "r1", "action": "reset", "exception_code": 4, "detail": {"ignored": true}}
`}, policy.Options{})
	d := e.Decide(ctx, readHR("127.0.0.1:50100", 0, 10))
	if d.Allow || d.Err != nil || d.Action != policy.ActionReset || d.Exception != 4 || d.Rule != "r1" || d.Reason != "go away" {
		t.Errorf("decision %+v", d)
	}
}

// slowPolicy takes far longer than any decision timeout: numbers.range
// builds a 100-million element array, and OPA checks for cancellation while
// it does.
const slowPolicy = `package conduit
decision := {"allow": count(numbers.range(1, 100000000)) > 0, "reason": "slow"}
`

func TestTimeout(t *testing.T) {
	e := engineFor(t, map[string]string{"slow.rego": slowPolicy}, policy.Options{DecisionTimeout: 20 * time.Millisecond})
	start := time.Now()
	d := e.Decide(ctx, readHR("127.0.0.1:50100", 0, 10))
	took := time.Since(start)
	if d.Allow || !errors.Is(d.Err, policy.ErrTimeout) || !strings.HasPrefix(d.Reason, "policy error: decision timeout") {
		t.Fatalf("decision %+v, want a timeout deny", d)
	}
	// Generous bound for loaded CI machines; the point is that it does not
	// run the policy to completion (seconds).
	if took > 2*time.Second {
		t.Errorf("timeout decision took %v", took)
	}
}

func TestCanceled(t *testing.T) {
	e := engineFor(t, map[string]string{"slow.rego": slowPolicy}, policy.Options{DecisionTimeout: time.Minute})
	c, cancel := context.WithCancel(ctx)
	time.AfterFunc(20*time.Millisecond, cancel)
	d := e.Decide(c, readHR("127.0.0.1:50100", 0, 10))
	if d.Allow || !errors.Is(d.Err, policy.ErrCanceled) {
		t.Fatalf("decision %+v, want a canceled deny", d)
	}
}

// explosive panics when encoded: a decoder bug that reaches the engine.
type explosive struct{}

func (explosive) MarshalJSON() ([]byte, error) { panic("decoder bug") }

func TestPanicBackstop(t *testing.T) {
	for _, cache := range []int{0, -1} {
		e := reference(t, policy.Options{CacheSize: cache})
		in := &policy.Input{Protocol: inspect.ProtocolOPCUA, Listener: "opcua-line1", Client: netipMust("127.0.0.1:1"),
			Op: &inspect.Operation{Protocol: inspect.ProtocolOPCUA, Access: inspect.AccessWrite, Name: "write",
				OPCUA: &inspect.OPCUA{Service: "Write", Writes: []inspect.OPCUAWrite{{NodeID: "ns=2;s=Line1.Mode", Attribute: "Value", Value: explosive{}}}}}}
		d := e.Decide(ctx, in)
		if d.Allow || !errors.Is(d.Err, policy.ErrPanic) || !strings.Contains(d.Reason, "decoder bug") || d.ID == "" {
			t.Errorf("cache %d: decision %+v, want a panic deny", cache, d)
		}
		// The engine keeps working.
		if d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); !d.Allow {
			t.Errorf("after the panic: %+v", d)
		}
	}
}

func TestBadInputs(t *testing.T) {
	e := reference(t, policy.Options{})
	for name, in := range map[string]*policy.Input{
		"nil":               nil,
		"no operation":      {Protocol: inspect.ProtocolModbus, Listener: "plc-line1"},
		"protocol mismatch": {Protocol: inspect.ProtocolOPCUA, Op: &inspect.Operation{Protocol: inspect.ProtocolModbus}},
	} {
		if d := e.Decide(ctx, in); d.Allow || !errors.Is(d.Err, policy.ErrInput) {
			t.Errorf("%s: %+v", name, d)
		}
	}
	var nilEngine *policy.Engine
	if d := nilEngine.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); d.Allow || !errors.Is(d.Err, policy.ErrNoPolicy) || d.ID == "" {
		t.Errorf("nil engine: %+v", d)
	}
	if d := nilEngine.DecideJSON(ctx, []byte(`{}`)); d.Allow || !errors.Is(d.Err, policy.ErrNoPolicy) {
		t.Errorf("nil engine JSON: %+v", d)
	}
}

func TestDryRun(t *testing.T) {
	e := reference(t, policy.Options{DryRun: true})
	strict := reference(t, policy.Options{})
	// A read the policy denies (a client the data file grants nothing)
	// passes in monitor mode, with the policy's reason kept.
	denied := readHR("10.9.9.9:50100", 0, 10)
	want := strict.Decide(ctx, denied)
	if want.Allow {
		t.Fatalf("the reference policy allows %+v", denied)
	}
	if d := e.Decide(ctx, denied); !d.Allow || !d.DryRun || d.Reason != want.Reason || d.Rule != want.Rule {
		t.Errorf("dry-run denied read: %+v, want allow with %q", d, want.Reason)
	}
	if d := e.Decide(ctx, readHR("127.0.0.1:50100", 0, 10)); !d.Allow || d.DryRun {
		t.Errorf("dry-run allow: %+v", d)
	}
	// A denied write or diagnostic stays denied: monitor mode never lets a
	// write reach a device the policy did not allow.
	if d := e.Decide(ctx, writeHR("127.0.0.1:50100", 15, 5000)); d.Allow || d.DryRun || d.Reason != "write of 5000 to holding_registers 15 exceeds max 1000 for listener plc-line1" || d.Rule != "conduit.modbus.value" {
		t.Errorf("dry-run denied write: %+v", d)
	}
	if d := e.Decide(ctx, diagnostics("127.0.0.1:50100", 4)); d.Allow || d.DryRun {
		t.Errorf("dry-run denied diagnostic: %+v", d)
	}
	// The same for raw documents.
	doc := func(in *policy.Input) []byte {
		v, err := policy.Document(in)
		if err != nil {
			t.Fatal(err)
		}
		return []byte(v.String())
	}
	if d := e.DecideJSON(ctx, doc(denied)); !d.Allow || !d.DryRun {
		t.Errorf("dry-run denied read document: %+v", d)
	}
	if d := e.DecideJSON(ctx, doc(writeHR("127.0.0.1:50100", 15, 5000))); d.Allow || d.DryRun {
		t.Errorf("dry-run denied write document: %+v", d)
	}
	// Dry-run relaxes the policy, never fail-closed.
	broken := engineFor(t, map[string]string{"p.rego": "package conduit\ndecision := {\"allow\": false} if input.x\n"}, policy.Options{DryRun: true})
	if d := broken.Decide(ctx, readHR("127.0.0.1:50100", 0, 10)); d.Allow || d.DryRun || d.Err == nil {
		t.Errorf("dry-run with an undefined decision: %+v", d)
	}
}

func TestDecisionIDsUnique(t *testing.T) {
	engines := []*policy.Engine{reference(t, policy.Options{}), reference(t, policy.Options{CacheSize: -1})}
	const goroutines, each = 8, 500
	ids := make(chan string, goroutines*each)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			e := engines[g%2]
			for i := range each {
				ids <- e.Decide(ctx, readHR("127.0.0.1:50100", uint16(i%3), 1)).ID
			}
		})
	}
	wg.Wait()
	close(ids)
	seen := make(map[string]bool, goroutines*each)
	for id := range ids {
		if id == "" || seen[id] {
			t.Fatalf("id %q empty or repeated", id)
		}
		seen[id] = true
	}
}

func TestDecideJSON(t *testing.T) {
	e := reference(t, policy.Options{})
	doc, err := policy.DocumentJSON(writeHR("127.0.0.1:50100", 15, 5000))
	if err != nil {
		t.Fatal(err)
	}
	fromJSON := e.DecideJSON(ctx, doc)
	fromInput := e.Decide(ctx, writeHR("127.0.0.1:50100", 15, 5000))
	if !sameDecision(fromJSON, fromInput) {
		t.Errorf("JSON %+v\ninput %+v", fromJSON, fromInput)
	}
	if d := e.DecideJSON(ctx, []byte(`{"protocol": `)); d.Allow || !errors.Is(d.Err, policy.ErrInput) {
		t.Errorf("bad JSON: %+v", d)
	}
}

func TestFromConfig(t *testing.T) {
	no := false
	c := config.Default().Policy
	c.Path, c.DryRun, c.RunTests = "/etc/conduit/policy", true, &no
	o := policy.FromConfig(c)
	if o.Path != "/etc/conduit/policy" || !o.DryRun || o.DecisionTimeout != config.DefaultDecisionTimeout || !o.Watch || o.RunTests {
		t.Errorf("options %+v", o)
	}
}

func TestDeciderFunc(t *testing.T) {
	var d policy.Decider = policy.DeciderFunc(func(context.Context, *policy.Input) policy.Decision {
		return policy.Decision{Allow: true, Reason: "fake"}
	})
	if got := d.Decide(ctx, nil); !got.Allow || got.Reason != "fake" {
		t.Errorf("decision %+v", got)
	}
}

// The decision's reason and rule go into every audit event; a policy that
// builds them from the input (an OPC UA value of megabytes) or an error
// quoting such values must not make one event that large. They are cut at
// a character boundary.
func TestDecisionStringsBounded(t *testing.T) {
	big := strings.Repeat("é", 1<<20) // 2 MiB, two bytes a character
	e := engineFor(t, map[string]string{"p.rego": fmt.Sprintf(`package conduit
decision := {"allow": false, "reason": %q, "rule": %q} if input.listener == "plc-line1"
decision := {"allow": false, "reason": "a"} if input.listener == "conflict"
decision := {"allow": true, "reason": %q} if input.listener == "conflict"
`, big, big, big)}, policy.Options{})
	d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1))
	if len(d.Reason) > policy.MaxReasonLen || len(d.Rule) > policy.MaxRuleLen ||
		!utf8.ValidString(d.Reason) || !utf8.ValidString(d.Rule) || !strings.HasSuffix(d.Reason, "...") {
		t.Errorf("reason %d bytes, rule %d bytes (valid UTF-8: %v, %v)", len(d.Reason), len(d.Rule), utf8.ValidString(d.Reason), utf8.ValidString(d.Rule))
	}
	in := readHR("127.0.0.1:1", 0, 1)
	in.Listener = "conflict"
	d = e.Decide(ctx, in)
	if d.Err == nil || d.Allow || len(d.Reason) > policy.MaxReasonLen || !utf8.ValidString(d.Reason) {
		t.Errorf("conflict: allow %v, err %v, reason %d bytes", d.Allow, d.Err != nil, len(d.Reason))
	}
}
