package replay

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/inspect/capture"
	"github.com/conduit-ot/conduit/policy"
)

// Options configure Replay.
type Options struct {
	// Decider decides every operation, as in the proxy (required).
	Decider policy.Decider
	// Config supplies the listeners flows are matched to by server
	// address; nil makes one synthetic listener per server address.
	Config *config.Config
	// Progress, if set, is called about every MiB read (capture.Progress).
	Progress func(capture.Progress)
	// Records, if set, receives one Record per operation, in request order
	// per flow, once its response is known (or can no longer come), and one
	// per Problem. The Record is valid during the call only.
	Records func(*Record)
	// MaxProblems bounds the problems listed in the report (default 50);
	// all are counted.
	MaxProblems int
}

// Replay reads the capture files in order as one capture, decodes every
// Modbus/TCP and OPC UA flow with the proxy's decoders, decides every
// operation with opts.Decider exactly as the proxy would, and returns the
// report. The error is set when a file cannot be read or is not a capture,
// or when ctx is canceled; the report then covers what was read.
func Replay(ctx context.Context, files []string, opts Options) (*Report, error) {
	if opts.Decider == nil {
		return nil, errors.New("replay: a Decider is required")
	}
	if opts.MaxProblems <= 0 {
		opts.MaxProblems = 50
	}
	ls := newListenerSet(opts.Config)
	r := &replayer{
		ctx:       ctx,
		opts:      opts,
		report:    newReport(files, ls),
		listeners: map[string]*ListenerStats{},
		ops:       map[opKey]*OperationStats{},
		denials:   map[[2]string]*DenialStats{},
	}
	if opts.Records != nil {
		r.queues = map[*Flow]*recordQueue{}
	}
	p := newPipeline(r, ls)
	st, err := p.read(ctx, files, opts.Progress)
	r.finish(st)
	r.report.Err = err
	return r.report, err
}

// replayer is the sink of Replay: it decides and aggregates.
type replayer struct {
	ctx    context.Context
	opts   Options
	report *Report

	listeners map[string]*ListenerStats
	ops       map[opKey]*OperationStats
	denials   map[[2]string]*DenialStats
	queues    map[*Flow]*recordQueue // with opts.Records
}

func (r *replayer) flowStart(*Flow) {}

func (r *replayer) request(rq *Request) {
	var d policy.Decision
	if rq.Refused != nil {
		// What the proxy records for a well-framed request that breaks the
		// protocol's rules: a deny that never reached the policy.
		d = policy.Decision{Reason: inspect.ViolationReason(rq.Refused), Rule: rq.Rule}
	} else {
		d = r.opts.Decider.Decide(r.ctx, rq.Input)
	}
	rep := r.report
	rep.Operations++
	ls := r.listener(rq.Flow)
	ls.Operations++
	os := r.ops[keyOf(rq.Op)]
	if os == nil {
		os = &OperationStats{OpKind: rq.Op}
		r.ops[keyOf(rq.Op)] = os
	}
	os.Total++
	if d.Allow {
		rep.Allowed++
		ls.Allowed++
		os.Allowed++
	} else {
		rep.Denied++
		ls.Denied++
		os.Denied++
		switch {
		case rq.Refused != nil:
			rep.ProtocolViolations++
		case d.Err != nil:
			rep.DecisionErrors++
		}
		r.denial(rq, &d)
	}
	if r.queues != nil {
		r.record(rq, &d)
	}
}

// maxDenialReasons bounds the distinct deny reasons kept; the rest are
// counted under their rule only.
const maxDenialReasons = 1000

func (r *replayer) denial(rq *Request, d *policy.Decision) {
	k := [2]string{d.Rule, d.Reason}
	ds := r.denials[k]
	if ds == nil {
		if len(r.denials) >= maxDenialReasons {
			k[1] = "(further reasons of this rule)"
			ds = r.denials[k]
		}
		if ds == nil {
			ds = &DenialStats{Rule: k[0], Reason: k[1], Protocol: rq.Input.Protocol, Listener: rq.Flow.Listener,
				FirstFlow: rq.Flow.ID, FirstTime: rq.Time, FirstFile: rq.Flow.File}
			r.denials[k] = ds
		}
	}
	ds.Count++
}

func (r *replayer) listener(f *Flow) *ListenerStats {
	if f.stats != nil {
		return f.stats
	}
	ls := r.listeners[f.Listener]
	if ls == nil {
		ls = &ListenerStats{Name: f.Listener, Protocol: f.Kind, Synthetic: f.Synthetic, Upstream: f.Upstream}
		r.listeners[f.Listener] = ls
	}
	f.stats = ls
	return ls
}

// opKey keys the per-operation statistics without hashing a name where
// the code says it all (Modbus).
type opKey struct {
	modbus bool
	hasSub bool
	sub    uint16
	code   uint32
	name   string // OPC UA only
}

func keyOf(k OpKind) opKey {
	if k.Protocol == KindModbus {
		return opKey{modbus: true, hasSub: k.HasSub, sub: k.Sub, code: k.Code}
	}
	return opKey{code: k.Code, name: k.Name}
}

func (r *replayer) response(rs *Response) {
	s := &r.report.Responses
	s.Total++
	switch {
	case rs.Opaque:
		s.Opaque++
	case rs.RequestSeq == 0:
		s.Unsolicited++
	default:
		s.Paired++
	}
	var os *OperationStats
	if rs.RequestSeq != 0 {
		os = r.ops[keyOf(rs.Req)]
	}
	switch {
	case rs.Err != nil:
		s.Invalid++
		if os != nil {
			os.InvalidResponses++
		}
		r.addProblem(&Problem{
			Kind: ProblemInvalidResponse, Flow: rs.Flow, Dir: capture.ServerToClient, Offset: rs.Offset, Time: rs.Time,
			Reason: rs.Reason, Detail: rs.Err.Error(),
		})
	case rs.Exception != 0:
		s.Exceptions++
		if os != nil {
			os.Exceptions++
		}
		if s.ExceptionCodes == nil {
			s.ExceptionCodes = map[uint8]int{}
		}
		s.ExceptionCodes[rs.Exception]++
	case rs.Fault:
		s.Faults++
		if os != nil {
			os.Exceptions++
		}
		if s.FaultCodes == nil {
			s.FaultCodes = map[uint32]int{}
		}
		s.FaultCodes[rs.Status]++
	}
	if r.queues != nil {
		r.recordResponse(rs)
	}
}

func (r *replayer) unanswered(f *Flow, seq uint64) {
	r.report.Responses.Unanswered++
	if r.queues != nil {
		r.recordUnanswered(f, seq)
	}
}

func (r *replayer) problem(p *Problem) { r.addProblem(p) }

func (r *replayer) addProblem(p *Problem) {
	rep := r.report
	switch p.Kind {
	case ProblemMalformed:
		rep.Malformed++
	case ProblemSkipped:
		rep.Skipped++
		rep.SkippedBytes += int64(p.Length)
	}
	if len(rep.Problems) < r.opts.MaxProblems {
		cp := *p
		rep.Problems = append(rep.Problems, &cp)
	}
	if r.opts.Records != nil {
		r.opts.Records(problemRecord(p))
	}
}

func (r *replayer) flowEnd(f *Flow) {
	fc := &r.report.Flows
	fc.Total++
	switch f.Kind {
	case KindModbus:
		fc.Modbus++
	case KindOPCUA:
		fc.OPCUA++
	case KindTLS:
		fc.TLS++
	case KindEmpty:
		fc.Empty++
	default:
		fc.Other++
	}
	if f.NotProtocol {
		fc.NotProtocol++
	}
	if f.MidStream {
		fc.MidStream++
	}
	if f.Kind == KindModbus || f.Kind == KindOPCUA {
		r.listener(f).Flows++
	}
	if r.queues != nil {
		r.flushFlow(f)
	}
}

// finish sorts the aggregates into the report.
func (r *replayer) finish(st capture.Stats) {
	rep := r.report
	rep.Capture = st
	for _, ls := range r.listeners {
		rep.Listeners = append(rep.Listeners, *ls)
	}
	sort.Slice(rep.Listeners, func(i, j int) bool { return rep.Listeners[i].Name < rep.Listeners[j].Name })
	for _, os := range r.ops {
		rep.PerOperation = append(rep.PerOperation, *os)
	}
	sort.Slice(rep.PerOperation, func(i, j int) bool { return rep.PerOperation[i].less(&rep.PerOperation[j]) })
	for _, ds := range r.denials {
		rep.Denials = append(rep.Denials, *ds)
	}
	sort.Slice(rep.Denials, func(i, j int) bool {
		a, b := &rep.Denials[i], &rep.Denials[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		if a.Rule != b.Rule {
			return a.Rule < b.Rule
		}
		return a.Reason < b.Reason
	})
}

// Report is what Replay found.
type Report struct {
	Files []string
	// Err is the error Replay returned (a capture that could not be read,
	// a cancellation): the report covers only what was read before it,
	// and the command exits with status 2.
	Err error
	// Policy describes the policy that decided and Revision is its
	// revision; ConfigFile names the configuration the listeners came from.
	// Replay leaves them to its caller.
	Policy, Revision, ConfigFile string
	// ListenerNotes are configured addresses replay cannot match (host
	// names).
	ListenerNotes []string
	Synthetic     bool // no configuration: listeners are synthetic
	Capture       capture.Stats

	Flows FlowCounts

	// Operations decided: Allowed + Denied. Denied includes the protocol
	// violations the proxy refuses without asking the policy and the
	// decisions that failed closed.
	Operations, Allowed, Denied int
	ProtocolViolations          int
	DecisionErrors              int

	Listeners    []ListenerStats  // by name
	PerOperation []OperationStats // by protocol, code, sub-function
	Denials      []DenialStats    // most frequent first

	Responses ResponseStats

	// Malformed: frames that do not frame or decode (the proxy would close
	// the connection, or drop the device's). Skipped: undecodable bytes
	// after capture gaps, and flows that end inside a frame.
	Malformed, Skipped int
	SkippedBytes       int64
	// Problems lists the first problems (Options.MaxProblems), in the order
	// met: malformed frames, skipped bytes, invalid responses.
	Problems []*Problem
}

func newReport(files []string, ls *listenerSet) *Report {
	return &Report{
		Files:         append([]string(nil), files...),
		ListenerNotes: ls.notes,
		Synthetic:     len(ls.exact)+len(ls.port) == 0,
	}
}

// FlowCounts counts flows by what replay made of them.
type FlowCounts struct {
	Total  int `json:"total"`
	Modbus int `json:"modbus"`
	OPCUA  int `json:"opcua"`
	TLS    int `json:"tls"`
	Other  int `json:"other"`
	Empty  int `json:"empty"`
	// NotProtocol counts Modbus or OPC UA flows (by configuration or port)
	// whose first client bytes are another protocol; MidStream flows whose
	// handshake was not captured.
	NotProtocol int `json:"not_protocol"`
	MidStream   int `json:"mid_stream"`
}

// ListenerStats summarises one listener (configured or synthetic).
type ListenerStats struct {
	Name       string `json:"name"`
	Protocol   string `json:"protocol"`
	Upstream   string `json:"upstream"`
	Synthetic  bool   `json:"synthetic"`
	Flows      int    `json:"flows"`
	Operations int    `json:"operations"`
	Allowed    int    `json:"allowed"`
	Denied     int    `json:"denied"`
}

// OperationStats counts one kind of operation.
type OperationStats struct {
	OpKind
	Total   int `json:"total"`
	Allowed int `json:"allowed"`
	Denied  int `json:"denied"`
	// Exceptions counts Modbus exception responses and OPC UA
	// ServiceFaults to operations of this kind; InvalidResponses the
	// responses that failed validation against them.
	Exceptions       int `json:"exceptions"`
	InvalidResponses int `json:"invalid_responses"`
}

func (a *OperationStats) less(b *OperationStats) bool {
	if a.Protocol != b.Protocol {
		return a.Protocol < b.Protocol
	}
	if a.Protocol == KindOPCUA && a.Name != b.Name {
		return a.Name < b.Name
	}
	if a.Code != b.Code {
		return a.Code < b.Code
	}
	if a.Sub != b.Sub {
		return a.Sub < b.Sub
	}
	return a.Name < b.Name
}

// DenialStats counts the denials with one rule and reason.
type DenialStats struct {
	Rule     string `json:"rule"`
	Reason   string `json:"reason"`
	Count    int    `json:"count"`
	Protocol string `json:"protocol"` // of the first denial
	Listener string `json:"listener"`
	// Where the first denial is.
	FirstFile string    `json:"first_file"`
	FirstFlow uint64    `json:"first_flow"`
	FirstTime time.Time `json:"first_time"`
}

// ResponseStats summarises the responses.
type ResponseStats struct {
	Total       int `json:"total"`
	Paired      int `json:"paired"`      // answer a request in flight (by transaction / request id)
	Unsolicited int `json:"unsolicited"` // answer nothing in flight
	Opaque      int `json:"opaque"`      // encrypted (SignAndEncrypt): cannot be paired
	Unanswered  int `json:"unanswered"`  // requests that expected a response and got none
	Invalid     int `json:"invalid"`     // failed validation against their request (or on their own)
	Exceptions  int `json:"exceptions"`  // Modbus exception responses
	Faults      int `json:"faults"`      // OPC UA ServiceFaults and ERR messages
	// ExceptionCodes counts exception responses by code; FaultCodes
	// ServiceFaults (and ERR) by status code.
	ExceptionCodes map[uint8]int  `json:"exception_codes,omitempty"`
	FaultCodes     map[uint32]int `json:"-"`
}

// ProblemInvalidResponse is a Problem for a response that failed
// validation.
const ProblemInvalidResponse = "invalid_response"

// WouldDeny reports whether any operation would be denied: the exit status
// of `conduit replay`.
func (r *Report) WouldDeny() bool { return r.Denied > 0 }
