package replay

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/inspect/capture"
)

// LearnOptions configure Learn.
type LearnOptions struct {
	// Config supplies the listeners, as for Replay; nil makes synthetic
	// ones, named as Replay names them.
	Config *config.Config
	// MinCount is how often something must be seen to be learned
	// (default 1). It applies per run, over all the files given.
	MinCount int
	Progress func(capture.Progress)
}

// Learned is what Learn found: the grants, and what it saw but left out.
type Learned struct {
	Data *Data
	// Grants lists the grants by listener and id, with the operations
	// each was learned from.
	Grants []LearnedGrant
	// Operations decoded; Refused the protocol violations among them,
	// which the proxy refuses whatever the policy says and so are never
	// learned.
	Operations, Refused int
	// BelowMinCount counts the observations (a unit, a range, a function,
	// a service, a node ...) seen fewer than MinCount times, left out.
	BelowMinCount int
	// Inexpressible lists what was seen at least MinCount times but cannot
	// be granted in the reference policy's format, with counts: e.g. an
	// OPC UA service no grant key allows, or an encrypted channel whose
	// client certificate was not captured.
	Inexpressible map[string]int
	Capture       capture.Stats
}

// LearnedGrant summarises one learned grant.
type LearnedGrant struct {
	Listener, ID string
	Operations   int
}

// Learn reads the captures as Replay does (same decoders, same listeners,
// same operations) and builds a baseline per client and listener in the
// reference policy's data format: with it, the reference policy allows
// everything that was seen at least MinCount times, and nothing else
// (rules/README.md, "Generated grants").
func Learn(ctx context.Context, files []string, opts LearnOptions) (*Learned, error) {
	if opts.MinCount <= 0 {
		opts.MinCount = 1
	}
	l := &learner{obs: map[obsKey]*observation{}}
	p := newPipeline(l, newListenerSet(opts.Config))
	st, err := p.read(ctx, files, opts.Progress)
	out := l.result(opts.MinCount)
	out.Capture = st
	return out, err
}

type obsKey struct {
	listener string
	client   netip.Addr
}

// learner is the sink of Learn.
type learner struct {
	obs        map[obsKey]*observation
	operations int
	refused    int
}

// observation is everything one client did on one listener, with counts.
type observation struct {
	protocol    string
	first, last time.Time
	ops         int

	units     map[int]int
	broadcast int // writes to unit 0
	reads     map[span]int
	writes    map[span]*valueRange
	functions map[[2]int]int // function, sub-function (-1: none)

	services map[string]int // OPC UA service groups and services
	uaWrites map[string]*uaWriteObs
	calls    map[OPCUACall]int
	nodeMgmt map[string]int
	history  map[string]int
	users    map[string]int
	// anonymous counts requests in a session without a user name, which a
	// user_names list would refuse.
	anonymous int
	opaque    map[[2]string]int // security policy, client thumbprint

	inexpressible map[string]int
}

// span is a read or write range of one table (and file).
type span struct {
	table      string
	file       int // -1 unless table "file"
	start, end int
}

type valueRange struct {
	n        int
	min, max int
}

type uaWriteObs struct {
	n        int
	attrs    map[string]bool
	numeric  bool // every value so far is a number or an array of numbers
	min, max float64
	values   int // numbers seen (min/max are valid when > 0)
}

func newObservation(proto string) *observation {
	return &observation{
		protocol:      proto,
		units:         map[int]int{},
		reads:         map[span]int{},
		writes:        map[span]*valueRange{},
		functions:     map[[2]int]int{},
		services:      map[string]int{},
		uaWrites:      map[string]*uaWriteObs{},
		calls:         map[OPCUACall]int{},
		nodeMgmt:      map[string]int{},
		history:       map[string]int{},
		users:         map[string]int{},
		opaque:        map[[2]string]int{},
		inexpressible: map[string]int{},
	}
}

func (l *learner) flowStart(*Flow)               {}
func (l *learner) flowEnd(*Flow)                 {}
func (l *learner) response(*Response)            {}
func (l *learner) unanswered(*Flow, uint64)      {}
func (l *learner) problem(*Problem)              {}
func (o *observation) seen(ts time.Time)         { o.first, o.last = minTime(o.first, ts), maxTime(o.last, ts) }
func (o *observation) write(s span, vals ...int) { o.writeRange(s, slices.Min(vals), slices.Max(vals)) }

func (l *learner) request(rq *Request) {
	l.operations++
	if rq.Refused != nil {
		l.refused++
		return
	}
	k := obsKey{rq.Flow.Listener, rq.Flow.Client.Addr().Unmap()}
	o := l.obs[k]
	if o == nil {
		o = newObservation(rq.Input.Protocol)
		l.obs[k] = o
	}
	o.ops++
	o.seen(rq.Time)
	op := rq.Input.Op
	switch op.Protocol {
	case inspect.ProtocolModbus:
		o.modbus(op)
	case inspect.ProtocolOPCUA:
		o.opcua(op)
	}
}

// modbus records what a Modbus operation needs granted, in the terms the
// reference policy checks (rules/modbus.rego).
func (o *observation) modbus(op *inspect.Operation) {
	m := &op.Modbus
	o.units[int(m.Unit)]++
	switch op.Access {
	case inspect.AccessRead:
		switch m.Table {
		case inspect.TableFIFO:
			o.reads[span{"fifo", -1, int(m.Address), int(m.Address)}]++
		case inspect.TableFile:
			for _, r := range m.FileRecords {
				o.reads[span{"file", int(r.File), int(r.Record), int(r.Record) + int(r.Length) - 1}]++
			}
		default:
			o.reads[span{m.Table.String(), -1, int(m.Address), int(m.Address) + int(m.Quantity) - 1}]++
		}
	case inspect.AccessWrite:
		if m.Unit == 0 {
			o.broadcast++
		}
		switch {
		case m.Function == 22: // mask write: every result it can leave (rules/modbus.rego mask_results)
			lo := int(m.OrMask &^ m.AndMask)
			hi := lo | int(m.AndMask)
			o.writeRange(span{"holding_registers", -1, int(m.Address), int(m.Address)}, lo, hi)
		case m.Table == inspect.TableFile:
			for _, r := range m.FileRecords {
				if len(r.Values) == 0 {
					continue
				}
				o.write(span{"file", int(r.File), int(r.Record), int(r.Record) + int(r.Length) - 1}, ints(r.Values)...)
			}
		default:
			if m.Function == 23 {
				o.reads[span{"holding_registers", -1, int(m.ReadAddress), int(m.ReadAddress) + int(m.ReadQuantity) - 1}]++
			}
			if len(m.Values) > 0 {
				o.write(span{m.Table.String(), -1, int(m.Address), int(m.Address) + len(m.Values) - 1}, ints(m.Values)...)
			}
		}
	default:
		sub := -1
		if m.HasSubfunction {
			sub = int(m.Subfunction)
		}
		o.functions[[2]int{int(m.Function), sub}]++
	}
}

func (o *observation) writeRange(s span, lo, hi int) {
	v := o.writes[s]
	if v == nil {
		o.writes[s] = &valueRange{n: 1, min: lo, max: hi}
		return
	}
	v.n++
	v.min, v.max = min(v.min, lo), max(v.max, hi)
}

func ints(vs []uint16) []int {
	out := make([]int, len(vs))
	for i, v := range vs {
		out[i] = int(v)
	}
	return out
}

// OPC UA service groups as the reference policy grants them
// (rules/opcua.rego): session services need no grant key.
var (
	uaSessionServices = set("FindServers", "FindServersOnNetwork", "GetEndpoints", "OpenSecureChannel",
		"CloseSecureChannel", "CreateSession", "ActivateSession", "CloseSession", "Cancel")
	uaPreSession = set("FindServers", "FindServersOnNetwork", "GetEndpoints", "OpenSecureChannel",
		"CloseSecureChannel", "CreateSession")
	uaReadServices   = set("Read", "HistoryRead")
	uaBrowseServices = set("Browse", "BrowseNext", "TranslateBrowsePathsToNodeIds", "RegisterNodes",
		"UnregisterNodes", "QueryFirst", "QueryNext")
	uaSubscribeServices = set("CreateSubscription", "ModifySubscription", "SetPublishingMode", "Publish",
		"Republish", "TransferSubscriptions", "DeleteSubscriptions", "CreateMonitoredItems",
		"ModifyMonitoredItems", "SetMonitoringMode", "SetTriggering", "DeleteMonitoredItems")
	uaNodeManagement = set("AddNodes", "AddReferences", "DeleteNodes", "DeleteReferences")
)

func set(ss ...string) map[string]bool {
	m := map[string]bool{}
	for _, s := range ss {
		m[s] = true
	}
	return m
}

// opcua records what an OPC UA operation needs granted (rules/opcua.rego).
func (o *observation) opcua(op *inspect.Operation) {
	u := op.OPCUA
	if u == nil {
		return
	}
	if u.Opaque {
		if u.ClientCertThumbprint == "" || u.SecurityPolicy == "" {
			o.inexpressible["encrypted OPC UA channel without a captured client certificate"]++
			return
		}
		o.opaque[[2]string{u.SecurityPolicy, u.ClientCertThumbprint}]++
		return
	}
	s := u.Service
	if !uaPreSession[s] {
		if u.Session != nil && u.Session.UserName != "" {
			o.users[u.Session.UserName]++
		} else {
			o.anonymous++
		}
	}
	switch {
	case uaSessionServices[s]:
		o.services["session"]++
	case uaReadServices[s]:
		o.services["read"]++
	case uaBrowseServices[s]:
		o.services["browse"]++
	case uaSubscribeServices[s]:
		o.services["subscribe"]++
	case s == "Write" && len(u.Writes) > 0:
		for _, w := range u.Writes {
			o.uaWrite(w)
		}
	case s == "Call" && len(u.Calls) > 0:
		for _, c := range u.Calls {
			o.calls[OPCUACall{ObjectID: c.ObjectID, MethodID: c.MethodID}]++
		}
	case uaNodeManagement[s]:
		o.nodeMgmt[s]++
	case s == "HistoryUpdate" && len(u.Writes) > 0:
		for _, w := range u.Writes {
			o.history[w.NodeID]++
		}
	default:
		name := s
		if name == "" {
			name = op.Name
		}
		o.inexpressible["OPC UA "+name+" (no grant key allows it)"]++
	}
}

func (o *observation) uaWrite(w inspect.OPCUAWrite) {
	e := o.uaWrites[w.NodeID]
	if e == nil {
		e = &uaWriteObs{attrs: map[string]bool{}, numeric: true}
		o.uaWrites[w.NodeID] = e
	}
	e.n++
	e.attrs[w.Attribute] = true
	if !e.numeric {
		return
	}
	if !numbers(w.Value, func(f float64) {
		if e.values == 0 {
			e.min, e.max = f, f
		}
		e.min, e.max = math.Min(e.min, f), math.Max(e.max, f)
		e.values++
	}) {
		e.numeric = false
	}
}

// numbers calls fn for every number in v (a number or an array of them) and
// reports whether v is one; the reference policy's min/max admit only
// those.
func numbers(v any, fn func(float64)) bool {
	switch x := v.(type) {
	case float64:
		fn(x)
	case float32:
		fn(float64(x))
	case int64:
		fn(float64(x))
	case uint64:
		fn(float64(x))
	case int:
		fn(float64(x))
	case []any:
		for _, e := range x {
			if !numbers(e, fn) {
				return false
			}
		}
	default:
		return false
	}
	return true
}

// result turns the observations into grants, keeping what was seen at
// least k times.
func (l *learner) result(k int) *Learned {
	out := &Learned{
		Data:          &Data{Grants: map[string]map[string]*Grant{}},
		Operations:    l.operations,
		Refused:       l.refused,
		Inexpressible: map[string]int{},
	}
	keys := make([]obsKey, 0, len(l.obs))
	for key := range l.obs {
		keys = append(keys, key)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].listener != keys[j].listener {
			return keys[i].listener < keys[j].listener
		}
		return keys[i].client.Less(keys[j].client)
	})
	for _, key := range keys {
		o := l.obs[key]
		g := o.grant(k, out)
		if g == nil {
			continue
		}
		bits := 32
		if key.client.Is6() {
			bits = 128
		}
		g.Clients.CIDRs = []string{netip.PrefixFrom(key.client, bits).String()}
		g.Description = learnedDescription(o.first, o.last)
		id := "learned-" + key.client.String()
		if out.Data.Grants[key.listener] == nil {
			out.Data.Grants[key.listener] = map[string]*Grant{}
		}
		out.Data.Grants[key.listener][id] = g
		out.Grants = append(out.Grants, LearnedGrant{Listener: key.listener, ID: id, Operations: o.ops})
	}
	for _, g := range out.Data.Grants {
		for _, gr := range g {
			gr.normalize()
		}
	}
	return out
}

// grant builds the grant of one observation, or nil when nothing in it
// reaches k.
func (o *observation) grant(k int, out *Learned) *Grant {
	keep := func(n int) bool {
		if n < k {
			out.BelowMinCount++
			return false
		}
		return true
	}
	for what, n := range o.inexpressible {
		if keep(n) {
			out.Inexpressible[what] += n
		}
	}
	if o.protocol == inspect.ProtocolModbus {
		m := &ModbusGrant{}
		for u, n := range o.units {
			if keep(n) {
				m.Units = append(m.Units, u)
			}
		}
		if len(m.Units) == 0 {
			return nil
		}
		m.AllowBroadcast = o.broadcast >= k && slices.Contains(m.Units, 0)
		for s, n := range o.reads {
			if keep(n) {
				m.Read = addRange(m.Read, s, nil, nil)
			}
		}
		for s, v := range o.writes {
			if keep(v.n) {
				lo, hi := v.min, v.max
				m.Write = addRange(m.Write, s, &lo, &hi)
			}
		}
		for f, n := range o.functions {
			if !keep(n) {
				continue
			}
			fn := Function{Function: f[0]}
			if f[1] >= 0 {
				fn.Subfunctions = []int{f[1]}
			}
			m.Functions = append(m.Functions, fn)
		}
		if len(m.Read)+len(m.Write)+len(m.Functions) == 0 {
			return nil // units alone allow nothing
		}
		return &Grant{Modbus: m}
	}
	u := &OPCUAGrant{}
	some := false
	kept := func(n int) bool {
		ok := n > 0 && keep(n)
		some = some || ok
		return ok
	}
	u.Read = kept(o.services["read"])
	u.Browse = kept(o.services["browse"])
	u.Subscribe = kept(o.services["subscribe"])
	kept(o.services["session"])
	for node, w := range o.uaWrites {
		if !kept(w.n) {
			continue
		}
		e := OPCUAWrite{NodeID: node, Attributes: sortedKeys(w.attrs)}
		if w.numeric && w.values > 0 {
			lo, hi := w.min, w.max
			e.Min, e.Max = &lo, &hi
		}
		u.Writes = append(u.Writes, e)
	}
	for c, n := range o.calls {
		if kept(n) {
			u.Calls = append(u.Calls, c)
		}
	}
	for s, n := range o.nodeMgmt {
		if kept(n) {
			u.NodeManagement = append(u.NodeManagement, s)
		}
	}
	for node, n := range o.history {
		if kept(n) {
			u.HistoryUpdate = append(u.HistoryUpdate, node)
		}
	}
	if o.anonymous == 0 {
		// Every session request ran as a named user: restrict to them.
		for name, n := range o.users {
			if keep(n) {
				u.UserNames = append(u.UserNames, name)
			}
		}
	}
	for p, n := range o.opaque {
		if !kept(n) {
			continue
		}
		if u.Opaque == nil {
			u.Opaque = &OPCUAOpaque{}
		}
		u.Opaque.SecurityPolicies = append(u.Opaque.SecurityPolicies, p[0])
		u.Opaque.Thumbprints = append(u.Opaque.Thumbprints, p[1])
	}
	if !some {
		return nil
	}
	return &Grant{OPCUA: u}
}

func addRange(m map[string][]Range, s span, lo, hi *int) map[string][]Range {
	if m == nil {
		m = map[string][]Range{}
	}
	r := Range{Start: s.start, End: s.end, Min: lo, Max: hi}
	if s.file >= 0 {
		f := s.file
		r.File = &f
	}
	m[s.table] = append(m[s.table], r)
	return m
}

func minTime(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// String summarises what was learned, for the command's output.
func (l *Learned) String() string {
	return fmt.Sprintf("%d grants from %d operations (%d protocol violations not learned, %d observations below the minimum count)",
		len(l.Grants), l.Operations, l.Refused, l.BelowMinCount)
}
