package replay

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"
	"unicode/utf8"

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
	recs           []*pendingRecord
	client, server string // the flow's addresses, formatted once
	// docs caches the input documents of the flow's Modbus requests by
	// their ADU after the transaction id: polling repeats a few requests,
	// and policy.DocumentJSON is the costly part of a record.
	docs map[string]json.RawMessage
}

// maxDocs bounds a flow's document cache; a full cache is emptied.
const maxDocs = 256

// document returns the policy input document of rq as JSON: from the
// flow's cache for a Modbus request seen before, else policy.DocumentJSON,
// the one definition of the document.
func (q *recordQueue) document(rq *Request) json.RawMessage {
	var key []byte
	if len(rq.Frame) > 2 {
		key = rq.Frame[2:]
		if doc, ok := q.docs[string(key)]; ok {
			return doc
		}
	}
	doc, err := policy.DocumentJSON(rq.Input)
	if err != nil {
		doc, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	if key != nil {
		if q.docs == nil || len(q.docs) >= maxDocs {
			q.docs = make(map[string]json.RawMessage)
		}
		q.docs[string(key)] = doc
	}
	return doc
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
	q := r.queues[rq.Flow]
	if q == nil {
		q = &recordQueue{client: rq.Flow.Client.String(), server: rq.Flow.Server.String()}
		r.queues[rq.Flow] = q
	}
	pr := &pendingRecord{seq: rq.Seq, done: !rq.ExpectsResponse}
	pr.rec = Record{
		Type: "operation", Seq: rq.Seq, Time: rq.Time, File: rq.Flow.File, Flow: rq.Flow.ID,
		Client: q.client, Server: q.server, Offset: rq.Offset,
		Input: q.document(rq),
		Decision: &RecordDecision{
			Allow: d.Allow, Reason: d.Reason, Rule: d.Rule, ID: d.ID, Revision: d.Revision,
			ExceptionCode: d.Exception, Policy: rq.Refused == nil, Error: policy.Code(d.Err),
		},
	}
	if d.Action != policy.ActionDefault {
		pr.rec.Decision.Action = d.Action.String()
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

// AppendJSON appends r as one line of JSON (with the newline): the same
// document encoding/json makes of r, written directly. encoding/json
// re-validates and compacts the embedded input document of every record,
// which is most of the cost of --format json.
func (r *Record) AppendJSON(b []byte) []byte {
	b = append(b, `{"type":`...)
	b = appendString(b, r.Type)
	if r.Seq != 0 {
		b = strconv.AppendUint(append(b, `,"seq":`...), r.Seq, 10)
	}
	b = append(b, `,"time":"`...)
	b = r.Time.AppendFormat(b, time.RFC3339Nano)
	b = appendString(append(b, `","file":`...), r.File)
	b = strconv.AppendUint(append(b, `,"flow":`...), r.Flow, 10)
	b = appendString(append(b, `,"client":`...), r.Client)
	b = appendString(append(b, `,"server":`...), r.Server)
	if r.Direction != "" {
		b = appendString(append(b, `,"direction":`...), r.Direction)
	}
	b = strconv.AppendInt(append(b, `,"offset":`...), r.Offset, 10)
	if len(r.Input) > 0 {
		b = append(append(b, `,"input":`...), r.Input...)
	}
	if d := r.Decision; d != nil {
		b = strconv.AppendBool(append(b, `,"decision":{"allow":`...), d.Allow)
		b = appendString(append(b, `,"reason":`...), d.Reason)
		b = appendOptString(b, "rule", d.Rule)
		b = appendOptString(b, "id", d.ID)
		b = appendOptString(b, "revision", d.Revision)
		b = appendOptString(b, "action", d.Action)
		if d.ExceptionCode != 0 {
			b = strconv.AppendUint(append(b, `,"exception_code":`...), uint64(d.ExceptionCode), 10)
		}
		b = strconv.AppendBool(append(b, `,"policy":`...), d.Policy)
		b = append(appendOptString(b, "error", d.Error), '}')
	}
	if s := r.Response; s != nil {
		b = appendString(append(b, `,"response":{"status":`...), s.Status)
		if !s.Time.IsZero() {
			b = append(s.Time.AppendFormat(append(b, `,"time":"`...), time.RFC3339Nano), '"')
		}
		if s.ExceptionCode != 0 {
			b = strconv.AppendUint(append(b, `,"exception_code":`...), uint64(s.ExceptionCode), 10)
		}
		b = appendOptString(b, "status_code", s.StatusCode)
		b = appendOptString(b, "reason", s.Reason)
		b = append(appendOptString(b, "error", s.Error), '}')
	}
	if p := r.Problem; p != nil {
		b = appendString(append(b, `,"problem":{"kind":`...), p.Kind)
		b = appendString(append(b, `,"reason":`...), p.Reason)
		b = appendString(append(b, `,"detail":`...), p.Detail)
		if p.Length != 0 {
			b = strconv.AppendInt(append(b, `,"length":`...), int64(p.Length), 10)
		}
		b = append(appendOptString(b, "bytes", p.Bytes), '}')
	}
	return append(b, '}', '\n')
}

func appendOptString(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	b = append(append(append(b, `,"`...), key...), `":`...)
	return appendString(b, s)
}

// appendString appends s as a JSON string, escaped as encoding/json does
// (with SetEscapeHTML(false)): quotes, backslashes and control characters;
// invalid UTF-8 becomes U+FFFD.
func appendString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(append(b, s[start:i]...), `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(append(b, s[start:i]...), `\u202`...)
			b = append(b, hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	return append(append(b, s[start:]...), '"')
}
