// Package policy decides whether an operation may pass. It embeds OPA (v1
// API), prepares each policy version once off the data path, swaps versions
// atomically and fails closed: an undefined result, more than one result, an
// evaluation error or a timeout is a deny.
//
// The data path sees only the Decider interface below; it never imports OPA.
package policy

import (
	"context"
	"net/netip"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/pki"
)

// Query is the entry point every policy must define. It evaluates to an
// object {"allow": bool, "reason": string, ...}; see docs/policy.md.
const Query = "data.conduit.decision"

// Input is everything the policy may read about one operation. The input
// document (docs/policy.md) is built from it, by the same code for live
// traffic and for capture replay.
//
// Decide does not retain an Input: Op may point into a decoder's scratch
// buffers. Protocol must equal Op.Protocol (a mismatch is a deny, ErrInput).
type Input struct {
	Protocol string // inspect.ProtocolModbus or inspect.ProtocolOPCUA
	Listener string // listener name from the configuration
	Upstream string // upstream device address (host:port)

	Client   netip.AddrPort // client address as seen by the proxy
	Identity *pki.Identity  // verified TLS client identity; nil without mTLS

	Op *inspect.Operation
}

// Action is what the proxy does with a denied operation.
type Action uint8

const (
	// ActionDefault means "the listener's configured deny action".
	ActionDefault Action = iota
	// ActionRefuse answers with the protocol's refusal (Modbus exception,
	// OPC UA ServiceFault) and keeps the connection.
	ActionRefuse
	// ActionReset closes the client connection with a TCP reset.
	ActionReset
	// ActionDrop sends nothing and keeps the connection (the client times
	// out).
	ActionDrop
)

var actionNames = [...]string{
	ActionDefault: "default",
	ActionRefuse:  "exception",
	ActionReset:   "reset",
	ActionDrop:    "drop",
}

// String returns the configuration and policy name of a.
func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "default"
}

// ParseAction maps a configuration or policy string to an Action. "" is
// ActionDefault; "exception" and "refuse" both mean ActionRefuse.
func ParseAction(s string) (Action, bool) {
	switch s {
	case "", "default":
		return ActionDefault, true
	case "exception", "refuse", "fault":
		return ActionRefuse, true
	case "reset":
		return ActionReset, true
	case "drop":
		return ActionDrop, true
	}
	return ActionDefault, false
}

// Decision is the outcome of one evaluation.
type Decision struct {
	ID     string // unique decision id, also written to the audit event
	Allow  bool
	Reason string // human-readable; from the policy, or why evaluation failed
	Rule   string // optional rule id the policy names (ECS rule.id)

	// Action and Exception are optional policy choices for a deny
	// (decision.action, decision.exception_code); zero means the listener
	// default.
	Action    Action
	Exception uint8

	Revision string // policy revision that decided (ECS rule.version)

	// Err is set when the decision is a deny because evaluation failed
	// (undefined, multiple results, error, timeout): fail closed.
	Err error

	// DryRun is set when the policy denied but the engine runs in monitor
	// mode: Allow is then true and the audit event says "would deny".
	DryRun bool
}

// Decider is what the data path needs of the policy engine.
type Decider interface {
	// Decide evaluates in. It never returns an allow on error: every failure
	// is a Decision with Allow false and Err set.
	Decide(ctx context.Context, in *Input) Decision
}

// DeciderFunc adapts a function to the Decider interface, e.g. a fixed
// decision in tests of the data path.
type DeciderFunc func(ctx context.Context, in *Input) Decision

// Decide calls f.
func (f DeciderFunc) Decide(ctx context.Context, in *Input) Decision { return f(ctx, in) }
