// Package audit writes the audit trail: one structured event per decision,
// connection, malformed frame and policy reload, as JSON lines with Elastic
// Common Schema (ECS) field names, encoded with zap.
//
// The audit trail is separate from the operational log. It never decides: it
// records what the proxy decided, and reports whether the record is durable so
// that the proxy can refuse a write whose event could not be written.
//
// Every field written, its ECS level and meaning, and the event.category and
// event.type of each action are listed in FIELDS.md beside this file.
//
// Recorders: OpenFile (the audit file, group commit, optional fdatasync),
// NewWriter (a stream such as stdout), Multi (a tee that needs every copy).
// Package audittest has the recorders and readers for tests.
package audit

import (
	"net/netip"
	"time"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/pki"
)

// Action values (ECS event.action).
const (
	ActionRequest         = "request"          // a decided operation
	ActionConnectionOpen  = "connection-open"  // client accepted (after TLS)
	ActionConnectionClose = "connection-close" // client connection ended
	ActionHandshake       = "tls-handshake"    // a refused TLS handshake
	ActionMalformed       = "malformed-frame"  // framing could not be trusted
	ActionUnsolicited     = "unsolicited-response"
	ActionPolicyReload    = "policy-reload"
	ActionCertReload      = "certificate-reload"
	ActionStart           = "start"
	ActionStop            = "stop"
	// ActionAuditFailure is written by a recorder itself, after a failed
	// batch, to say which sequence numbers are missing from the trail and
	// why (see FIELDS.md, conduit.audit.*).
	ActionAuditFailure = "audit-write-failure"
)

// Outcome values (ECS event.outcome).
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
	OutcomeUnknown = "unknown"
)

// Event is one audit record. The recorder assigns Seq and, when zero, Time.
// Fields map to ECS as noted; empty fields are omitted from the output.
type Event struct {
	Seq  uint64    // event.sequence: strictly increasing per audit file
	Time time.Time // @timestamp

	Action  string // event.action
	Outcome string // event.outcome
	Reason  string // event.reason

	// Decision fields, for ActionRequest events.
	DecisionID string // event.id
	Allowed    bool   // event.type: "allowed" or "denied"; event.category "network"
	DryRun     bool   // conduit.dry_run: denied by policy, allowed by monitor mode
	Rule       string // rule.id
	Revision   string // rule.version
	DenyAction string // conduit.deny_action: "exception", "reset", "drop", "close"

	Listener string         // observer.ingress.interface.name and conduit.listener
	ConnID   uint64         // conduit.connection_id
	Source   netip.AddrPort // source.ip, source.port
	Dest     netip.AddrPort // destination.ip, destination.port (the device)
	Protocol string         // network.protocol: "modbus", "opcua"

	Identity   *pki.Identity // tls.client.x509.*, tls.client.hash.sha256
	TLSVersion string        // tls.version ("1.3")

	Op *inspect.Operation // operation.access/name, modbus.* or opcua.*

	// Response details: the Modbus exception code or OPC UA status code
	// the client received (sent by the proxy for a deny, by the device
	// otherwise, when known).
	ExceptionCode uint8  // modbus.exception_code
	StatusCode    uint32 // opcua.status_code

	// Bytes is the raw frame for malformed-frame events (truncated to a
	// bounded prefix by the recorder), hex-encoded as conduit.frame.
	Bytes []byte

	// lost is set only on the notice a recorder writes after a failed
	// batch (ActionAuditFailure).
	lost *lostRange
}

// Recorder writes events. Record returns only when the event is written to
// the sink (for a file: write(2) returned), or with the error that prevented
// it: a caller about to forward a write must deny it on error.
//
// Implementations are safe for concurrent use and may group the writes of
// concurrent callers into one system call (group commit).
type Recorder interface {
	Record(ev *Event) error
}

// BatchRecorder is a Recorder that can record several events with one wait
// (Sink.RecordBatch).
type BatchRecorder interface {
	Recorder
	// RecordBatch records evs in order and returns when all of them are
	// written or failed; errs[i] (len(errs) == len(evs)) is the outcome
	// of evs[i], as Record would have returned it.
	RecordBatch(evs []*Event, errs []error)
}

// Enqueuer is a Recorder that can queue events without waiting for their
// write (Sink.Enqueue).
type Enqueuer interface {
	Recorder
	// Enqueue queues evs in order, or nothing and returns false; errs[i]
	// is set when evs[i] could not be encoded (it is not in the trail).
	Enqueue(evs []*Event, errs []error) bool
}

// Enqueue queues evs with r when r is an Enqueuer that accepts them, and
// reports whether it did. When it did not, the caller records them with
// RecordBatch.
func Enqueue(r Recorder, evs []*Event, errs []error) bool {
	if q, ok := r.(Enqueuer); ok {
		return q.Enqueue(evs, errs)
	}
	return false
}

// RecordBatch records evs with r: in one call when r is a BatchRecorder,
// with one Record per event otherwise. errs[i] is the outcome of evs[i].
func RecordBatch(r Recorder, evs []*Event, errs []error) {
	if br, ok := r.(BatchRecorder); ok {
		br.RecordBatch(evs, errs)
		return
	}
	for i, ev := range evs {
		errs[i] = r.Record(ev)
	}
}
