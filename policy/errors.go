package policy

import "errors"

// Error is a policy failure with a stable code. The codes never change once
// released: they are audit reasons (event.reason "policy error: <code>: ...")
// and metric labels. Errors returned by this package wrap one of the Err*
// values below, so errors.Is works on them and Code recovers the code.
type Error struct {
	Code string // stable, snake_case
	Msg  string // human-readable summary
}

func (e *Error) Error() string { return e.Msg }

// Errors of one decision. Each turns the decision into a deny (fail closed).
var (
	// ErrUndefined: data.conduit.decision has no value for this input.
	ErrUndefined = &Error{"undefined", "decision undefined"}
	// ErrMultiple: the policy produced more than one decision (two rules
	// yielding different values for data.conduit.decision).
	ErrMultiple = &Error{"multiple", "more than one decision"}
	// ErrShape: the decision is not {"allow": bool, "reason": string, ...}.
	ErrShape = &Error{"shape", "malformed decision"}
	// ErrEval: evaluation failed (a built-in error in strict mode, a
	// conflict in a helper rule, ...).
	ErrEval = &Error{"eval", "evaluation failed"}
	// ErrTimeout: evaluation took longer than the decision timeout.
	ErrTimeout = &Error{"timeout", "decision timeout"}
	// ErrCanceled: the caller's context ended before the decision.
	ErrCanceled = &Error{"canceled", "decision canceled"}
	// ErrInput: the input document could not be built (nil Input or
	// Operation, protocol mismatch, a value that is not JSON).
	ErrInput = &Error{"input", "invalid input"}
	// ErrPanic: a panic during the decision, caught by the backstop.
	ErrPanic = &Error{"panic", "internal error"}
	// ErrNoPolicy: the engine has no policy version (nil *Engine).
	ErrNoPolicy = &Error{"no_policy", "no policy loaded"}
)

// Errors of loading a policy version. A failed load or reload keeps the
// previous version running.
var (
	// ErrLoad: files could not be read or parsed (the message names the file
	// and line).
	ErrLoad = &Error{"load", "policy load failed"}
	// ErrCompile: the policy does not compile, or does not define
	// data.conduit.decision.
	ErrCompile = &Error{"compile", "policy compile failed"}
	// ErrTests: a Rego test of the new version failed or errored.
	ErrTests = &Error{"tests", "policy tests failed"}
)

// Code returns the stable code of err ("undefined", "timeout", ...), or
// "internal" when err carries none, or "" for nil.
func Code(err error) string {
	if err == nil {
		return ""
	}
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	return "internal"
}
