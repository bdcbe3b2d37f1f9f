package replay

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/conduit-ot/conduit/policy"
)

// Record is one line of `conduit replay --format json`: an operation with
// its policy input and decision (and the response it got), or a problem.
type Record struct {
	Type      string    `json:"type"` // "operation" or "problem"
	Seq       uint64    `json:"seq,omitempty"`
	Time      time.Time `json:"time"`
	File      string    `json:"file"`
	Flow      uint64    `json:"flow"`
	Client    string    `json:"client"`
	Server    string    `json:"server"`
	Direction string    `json:"direction,omitempty"`
	Offset    int64     `json:"offset"`

	// Input is the policy input document, exactly as the policy saw it.
	Input    json.RawMessage `json:"input,omitempty"`
	Decision *RecordDecision `json:"decision,omitempty"`
	Response *RecordResponse `json:"response,omitempty"`
	Problem  *RecordProblem  `json:"problem,omitempty"`
}

// RecordDecision is the decision of a Record.
type RecordDecision struct {
	Allow         bool   `json:"allow"`
	Reason        string `json:"reason"`
	Rule          string `json:"rule,omitempty"`
	ID            string `json:"id,omitempty"`
	Revision      string `json:"revision,omitempty"`
	Action        string `json:"action,omitempty"`
	ExceptionCode uint8  `json:"exception_code,omitempty"`
	// Policy is false for a protocol violation the proxy refuses without
	// asking the policy.
	Policy bool   `json:"policy"`
	Error  string `json:"error,omitempty"` // stable code when evaluation failed (a deny)
}

// RecordResponse is what the device answered, when captured.
type RecordResponse struct {
	// Status: "ok", "exception" (Modbus), "fault" (OPC UA ServiceFault or
	// ERR), "invalid" (failed validation), "none" (no response captured).
	Status        string    `json:"status"`
	Time          time.Time `json:"time,omitzero"`
	ExceptionCode uint8     `json:"exception_code,omitempty"`
	StatusCode    string    `json:"status_code,omitempty"` // OPC UA, e.g. "BadNotWritable (0x803B0000)"
	Reason        string    `json:"reason,omitempty"`
	Error         string    `json:"error,omitempty"`
}

// RecordProblem describes a Problem record.
type RecordProblem struct {
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
	Detail string `json:"detail"`
	Length int    `json:"length,omitempty"`
	Bytes  string `json:"bytes,omitempty"` // hex, at most 32 bytes
}

// recordQueue holds a flow's operation records until their responses are
// known, so that they come out in request order, each complete.
type recordQueue struct {
	recs []*pendingRecord
}

type pendingRecord struct {
	rec  Record
	seq  uint64
	done bool
}

// maxQueued bounds the records held per flow: past it the oldest is written
// without its response.
const maxQueued = 2 * maxPending

func (r *replayer) record(rq *Request, d *policy.Decision) {
	doc, err := policy.DocumentJSON(rq.Input)
	if err != nil {
		doc, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	pr := &pendingRecord{seq: rq.Seq, done: !rq.ExpectsResponse}
	pr.rec = Record{
		Type: "operation", Seq: rq.Seq, Time: rq.Time, File: rq.Flow.File, Flow: rq.Flow.ID,
		Client: rq.Flow.Client.String(), Server: rq.Flow.Server.String(), Offset: rq.Offset,
		Input: doc,
		Decision: &RecordDecision{
			Allow: d.Allow, Reason: d.Reason, Rule: d.Rule, ID: d.ID, Revision: d.Revision,
			ExceptionCode: d.Exception, Policy: rq.Refused == nil, Error: policy.Code(d.Err),
		},
	}
	if d.Action != policy.ActionDefault {
		pr.rec.Decision.Action = d.Action.String()
	}
	q := r.queues[rq.Flow]
	if q == nil {
		q = &recordQueue{}
		r.queues[rq.Flow] = q
	}
	q.recs = append(q.recs, pr)
	if len(q.recs) > maxQueued {
		q.recs[0].done = true
	}
	r.flush(q)
}

// find returns the queued record of seq (records are queued in seq order).
func (q *recordQueue) find(seq uint64) *pendingRecord {
	i := sort.Search(len(q.recs), func(i int) bool { return q.recs[i].seq >= seq })
	if i < len(q.recs) && q.recs[i].seq == seq {
		return q.recs[i]
	}
	return nil
}

func (r *replayer) recordResponse(rs *Response) {
	if rs.RequestSeq == 0 {
		return
	}
	q := r.queues[rs.Flow]
	if q == nil {
		return
	}
	pr := q.find(rs.RequestSeq)
	if pr == nil {
		return
	}
	resp := &RecordResponse{Status: "ok", Time: rs.Time}
	switch {
	case rs.Err != nil:
		resp.Status, resp.Reason, resp.Error = "invalid", rs.Reason, rs.Err.Error()
	case rs.Exception != 0:
		resp.Status, resp.ExceptionCode = "exception", rs.Exception
	case rs.Fault:
		resp.Status, resp.StatusCode = "fault", StatusName(rs.Status)
	case rs.Status != 0:
		resp.StatusCode = StatusName(rs.Status)
	}
	pr.rec.Response = resp
	pr.done = true
	r.flush(q)
}

func (r *replayer) recordUnanswered(f *Flow, seq uint64) {
	q := r.queues[f]
	if q == nil {
		return
	}
	if pr := q.find(seq); pr != nil {
		pr.rec.Response = &RecordResponse{Status: "none"}
		pr.done = true
		r.flush(q)
	}
}

// flush writes the complete records at the head of q.
func (r *replayer) flush(q *recordQueue) {
	n := 0
	for n < len(q.recs) && q.recs[n].done {
		r.opts.Records(&q.recs[n].rec)
		q.recs[n] = nil
		n++
	}
	if n > 0 {
		q.recs = append(q.recs[:0], q.recs[n:]...)
	}
}

// flushFlow writes every record of an ended flow.
func (r *replayer) flushFlow(f *Flow) {
	q := r.queues[f]
	if q == nil {
		return
	}
	for _, pr := range q.recs {
		if !pr.done && pr.rec.Response == nil {
			pr.rec.Response = &RecordResponse{Status: "none"}
		}
		pr.done = true
	}
	r.flush(q)
	delete(r.queues, f)
}

func problemRecord(p *Problem) *Record {
	return &Record{
		Type: "problem", Time: p.Time, File: p.Flow.File, Flow: p.Flow.ID,
		Client: p.Flow.Client.String(), Server: p.Flow.Server.String(),
		Direction: p.Dir.String(), Offset: p.Offset,
		Problem: &RecordProblem{
			Kind: p.Kind, Reason: p.Reason, Detail: p.Detail, Length: p.Length, Bytes: hex.EncodeToString(p.Bytes),
		},
	}
}

// StatusName renders an OPC UA status code with its name, e.g.
// "BadNotWritable (0x803B0000)".
func StatusName(code uint32) string {
	name := "status"
	if d, ok := ua.StatusCodes[ua.StatusCode(code)]; ok {
		name = d.Name
	}
	return fmt.Sprintf("%s (0x%08X)", name, code)
}

// Summary is the last line of `conduit replay --format json`: the report's
// totals and tables.
type Summary struct {
	Type     string   `json:"type"` // "summary"
	Files    []string `json:"files"`
	Policy   string   `json:"policy"`
	Revision string   `json:"revision,omitempty"`
	Config   string   `json:"config,omitempty"`

	Flows              FlowCounts       `json:"flows"`
	Operations         int              `json:"operations"`
	Allowed            int              `json:"allowed"`
	Denied             int              `json:"denied"`
	ProtocolViolations int              `json:"protocol_violations"`
	DecisionErrors     int              `json:"decision_errors"`
	Listeners          []ListenerStats  `json:"listeners"`
	PerOperation       []OperationStats `json:"per_operation"`
	Denials            []DenialStats    `json:"denials"`
	Responses          ResponseStats    `json:"responses"`
	// Faults counts OPC UA ServiceFaults and ERR by status name.
	Faults       map[string]int `json:"faults,omitempty"`
	Malformed    int            `json:"malformed"`
	Skipped      int            `json:"skipped"`
	SkippedBytes int64          `json:"skipped_bytes"`
	Capture      CaptureSummary `json:"capture"`
	ExitStatus   int            `json:"exit_status"`
}

// CaptureSummary is what the reader met in the files.
type CaptureSummary struct {
	Packets            uint64   `json:"packets"`
	Bytes              uint64   `json:"bytes"`
	TCPSegments        uint64   `json:"tcp_segments"`
	NonTCP             uint64   `json:"non_tcp"`
	Gaps               uint64   `json:"gaps"`
	GapBytes           uint64   `json:"gap_bytes"`
	OutOfOrder         uint64   `json:"out_of_order"`
	RetransmittedBytes uint64   `json:"retransmitted_bytes"`
	TruncatedPackets   uint64   `json:"truncated_packets"`
	Warnings           []string `json:"warnings,omitempty"`
}

// Summary returns the report as the JSON summary record; exit is the exit
// status the command ends with.
func (r *Report) Summary(exit int) *Summary {
	s := &Summary{
		Type: "summary", Files: r.Files, Policy: r.Policy, Revision: r.Revision, Config: r.ConfigFile,
		Flows: r.Flows, Operations: r.Operations, Allowed: r.Allowed, Denied: r.Denied,
		ProtocolViolations: r.ProtocolViolations, DecisionErrors: r.DecisionErrors,
		Listeners: r.Listeners, PerOperation: r.PerOperation, Denials: r.Denials, Responses: r.Responses,
		Malformed: r.Malformed, Skipped: r.Skipped, SkippedBytes: r.SkippedBytes, ExitStatus: exit,
	}
	for code, n := range r.Responses.FaultCodes {
		if s.Faults == nil {
			s.Faults = map[string]int{}
		}
		s.Faults[StatusName(code)] += n
	}
	c := &r.Capture
	s.Capture = CaptureSummary{
		Packets: c.Packets, Bytes: c.Bytes, TCPSegments: c.TCPPackets, NonTCP: c.NonTCP,
		Gaps: c.Gaps, GapBytes: c.GapBytes, OutOfOrder: c.OutOfOrder,
		RetransmittedBytes: c.RetransmittedBytes, TruncatedPackets: c.TruncatedPackets,
	}
	for _, w := range c.Warnings {
		s.Capture.Warnings = append(s.Capture.Warnings, w.String())
	}
	if s.Listeners == nil {
		s.Listeners = []ListenerStats{}
	}
	if s.PerOperation == nil {
		s.PerOperation = []OperationStats{}
	}
	if s.Denials == nil {
		s.Denials = []DenialStats{}
	}
	return s
}
