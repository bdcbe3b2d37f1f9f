package policy

import (
	"context"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// outcome is what the policy decided for one document: the part of a
// Decision that a cache hit can reuse.
type outcome struct {
	allow     bool
	reason    string
	rule      string
	action    Action
	exception uint8
}

var (
	keyAllow     = ast.StringTerm("allow")
	keyReason    = ast.StringTerm("reason")
	keyRule      = ast.StringTerm("rule")
	keyAction    = ast.StringTerm("action")
	keyException = ast.StringTerm("exception_code")
)

// astResult makes rego return result values as ast.Value: the shape is
// checked on the AST, without converting the decision to Go maps.
func astResult(t *ast.Term, _ *rego.EvalContext) (any, error) { return t.Value, nil }

// parseResult checks the result set of Query and extracts the decision.
// Anything but exactly one object {"allow": bool, "reason": string, ...} is
// an error, and an error is a deny.
func parseResult(rs rego.ResultSet) (outcome, error) {
	switch {
	case len(rs) == 0:
		return outcome{}, fmt.Errorf("%w: %s has no value for this input", ErrUndefined, Query)
	case len(rs) > 1:
		return outcome{}, fmt.Errorf("%w: %s has %d values", ErrMultiple, Query, len(rs))
	case len(rs[0].Expressions) != 1:
		return outcome{}, fmt.Errorf("%w: %d expressions in the result", ErrShape, len(rs[0].Expressions))
	}
	v, ok := rs[0].Expressions[0].Value.(ast.Value)
	if !ok {
		return outcome{}, fmt.Errorf("%w: unexpected result type %T", ErrShape, rs[0].Expressions[0].Value)
	}
	return parseDecision(v)
}

func parseDecision(v ast.Value) (outcome, error) {
	obj, ok := v.(ast.Object)
	if !ok {
		return outcome{}, fmt.Errorf("%w: %s must be an object, got %s", ErrShape, Query, ast.ValueName(v))
	}
	var o outcome
	allow := obj.Get(keyAllow)
	if allow == nil {
		return outcome{}, fmt.Errorf("%w: %s has no \"allow\"", ErrShape, Query)
	}
	b, ok := allow.Value.(ast.Boolean)
	if !ok {
		return outcome{}, fmt.Errorf("%w: \"allow\" must be a boolean, got %s", ErrShape, ast.ValueName(allow.Value))
	}
	o.allow = bool(b)

	reason := obj.Get(keyReason)
	if reason == nil {
		return outcome{}, fmt.Errorf("%w: %s has no \"reason\"", ErrShape, Query)
	}
	s, ok := reason.Value.(ast.String)
	if !ok {
		return outcome{}, fmt.Errorf("%w: \"reason\" must be a string, got %s", ErrShape, ast.ValueName(reason.Value))
	}
	o.reason = truncate(string(s), MaxReasonLen)

	if t := obj.Get(keyRule); t != nil {
		s, ok := t.Value.(ast.String)
		if !ok {
			return outcome{}, fmt.Errorf("%w: \"rule\" must be a string, got %s", ErrShape, ast.ValueName(t.Value))
		}
		o.rule = truncate(string(s), MaxRuleLen)
	}
	if t := obj.Get(keyAction); t != nil {
		s, ok := t.Value.(ast.String)
		if !ok {
			return outcome{}, fmt.Errorf("%w: \"action\" must be a string, got %s", ErrShape, ast.ValueName(t.Value))
		}
		a, ok := ParseAction(string(s))
		if !ok {
			return outcome{}, fmt.Errorf("%w: \"action\" %q is not one of exception, reset, drop", ErrShape, string(s))
		}
		o.action = a
	}
	if t := obj.Get(keyException); t != nil {
		n, ok := t.Value.(ast.Number)
		if !ok {
			return outcome{}, fmt.Errorf("%w: \"exception_code\" must be a number, got %s", ErrShape, ast.ValueName(t.Value))
		}
		code, ok := n.Int()
		if !ok || code < 1 || code > 255 {
			return outcome{}, fmt.Errorf("%w: \"exception_code\" %s is not an integer in 1..255", ErrShape, n.String())
		}
		o.exception = uint8(code)
	}
	// Other keys are ignored, so that a policy may carry extra detail (and
	// a newer policy still runs on an older Conduit).
	return o, nil
}

// Bounds of the decision's strings: they are copied into every audit
// event and may be built from the input (an OPC UA value of megabytes).
// Longer ones are cut, at a character boundary, and end in "...".
const (
	MaxReasonLen = 1024
	MaxRuleLen   = 256
)

// truncate cuts s to at most n bytes, at a UTF-8 character boundary, and
// marks the cut with "...".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "..."
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// classifyEvalError maps an evaluation error to the package's codes. ctx is
// the evaluation's context (with the decision timeout); decisionRules holds
// the locations of the rules defining Query, so that their conflict (two
// decisions) is told apart from a conflict inside a helper rule.
func classifyEvalError(ctx context.Context, err error, decisionRules map[string]bool) error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("%w: %v", ErrCanceled, err)
	}
	var te *topdown.Error
	if errors.As(err, &te) {
		switch te.Code {
		case topdown.ConflictErr:
			if te.Location != nil && decisionRules[te.Location.String()] {
				return fmt.Errorf("%w: %v", ErrMultiple, err)
			}
		case topdown.CancelErr:
			return fmt.Errorf("%w: %v", ErrCanceled, err)
		}
	}
	return fmt.Errorf("%w: %v", ErrEval, err)
}
