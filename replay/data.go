package replay

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Data is a policy data document in the reference policy's grant format
// (rules/README.md): data.grants[listener][grant id] = grant. Learn writes
// one; MergeData combines one with an existing file.
type Data struct {
	Grants map[string]map[string]*Grant `json:"grants"`
}

// Grant is one grant as rules/README.md defines it: who (clients) may do
// what (modbus or opcua). Fields are in the order the README shows them.
type Grant struct {
	Description string       `json:"description,omitempty"`
	Clients     GrantClients `json:"clients"`
	Modbus      *ModbusGrant `json:"modbus,omitempty"`
	OPCUA       *OPCUAGrant  `json:"opcua,omitempty"`
}

// GrantClients matches clients by address or certificate identity.
type GrantClients struct {
	CIDRs       []string `json:"cidrs,omitempty"`
	CommonNames []string `json:"common_names,omitempty"`
	Roles       []string `json:"roles,omitempty"`
	URIs        []string `json:"uris,omitempty"`
}

// ModbusGrant is a grant's modbus section.
type ModbusGrant struct {
	Units          []int              `json:"units"`
	AllowBroadcast bool               `json:"allow_broadcast,omitempty"`
	Read           map[string][]Range `json:"read,omitempty"`
	Write          map[string][]Range `json:"write,omitempty"`
	Functions      []Function         `json:"functions,omitempty"`
}

// Range is a read or write range: start..end inclusive, with optional
// value limits (writes) and file number (table "file").
type Range struct {
	File  *int `json:"file,omitempty"`
	Start int  `json:"start"`
	End   int  `json:"end"`
	Min   *int `json:"min,omitempty"`
	Max   *int `json:"max,omitempty"`
}

// Function allows a diagnostic or other function code, with the listed
// sub-functions (FC 8) or MEI types (FC 43).
type Function struct {
	Function     int   `json:"function"`
	Subfunctions []int `json:"subfunctions,omitempty"`
}

// OPCUAGrant is a grant's opcua section.
type OPCUAGrant struct {
	Read           bool         `json:"read,omitempty"`
	Browse         bool         `json:"browse,omitempty"`
	Subscribe      bool         `json:"subscribe,omitempty"`
	Writes         []OPCUAWrite `json:"writes,omitempty"`
	Calls          []OPCUACall  `json:"calls,omitempty"`
	NodeManagement []string     `json:"node_management,omitempty"`
	HistoryUpdate  []string     `json:"history_update,omitempty"`
	UserNames      []string     `json:"user_names,omitempty"`
	Opaque         *OPCUAOpaque `json:"opaque,omitempty"`
}

// OPCUAWrite allows writes to one node: its attributes (default Value),
// values within min..max when set.
type OPCUAWrite struct {
	NodeID     string   `json:"node_id"`
	Attributes []string `json:"attributes,omitempty"`
	Min        *float64 `json:"min,omitempty"`
	Max        *float64 `json:"max,omitempty"`
}

// OPCUACall allows one method on one object.
type OPCUACall struct {
	ObjectID string `json:"object_id"`
	MethodID string `json:"method_id"`
}

// OPCUAOpaque pins encrypted channels: security policies and client
// certificate thumbprints.
type OPCUAOpaque struct {
	SecurityPolicies []string `json:"security_policies"`
	Thumbprints      []string `json:"thumbprints"`
}

// ParseData reads a data document. Unknown keys are errors: a learned file
// that has been edited into something else must not be merged blindly.
func ParseData(b []byte) (*Data, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var d Data
	if err := dec.Decode(&d); err != nil {
		return nil, err
	}
	if d.Grants == nil {
		d.Grants = map[string]map[string]*Grant{}
	}
	for l, gs := range d.Grants {
		for id, g := range gs {
			if g == nil {
				return nil, fmt.Errorf("grants.%s.%s is null", l, id)
			}
			g.normalize()
		}
	}
	return &d, nil
}

// Encode renders d deterministically: keys sorted (encoding/json sorts map
// keys), every list sorted and merged (normalize), two-space indentation,
// a final newline. The same data always gives the same bytes.
func (d *Data) Encode() ([]byte, error) {
	for _, gs := range d.Grants {
		for _, g := range gs {
			g.normalize()
		}
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// MergeData adds the grants of src to dst. A grant id present in both is
// merged: the union of what each allows (units, ranges merged where they
// overlap or touch, the wider value limits, functions, services, writes,
// calls), so merging is commutative and idempotent: merging a file with
// itself, or re-learning the same captures onto it, changes nothing.
func MergeData(dst, src *Data) {
	if dst.Grants == nil {
		dst.Grants = map[string]map[string]*Grant{}
	}
	for l, gs := range src.Grants {
		if dst.Grants[l] == nil {
			dst.Grants[l] = map[string]*Grant{}
		}
		for id, g := range gs {
			if old := dst.Grants[l][id]; old != nil {
				old.merge(g)
			} else {
				cp := &Grant{}
				cp.merge(g) // a copy: merge builds every list and section anew
				dst.Grants[l][id] = cp
			}
		}
	}
}

// descriptionRE reads back the period a learned grant's description names.
var descriptionRE = regexp.MustCompile(`^learned by conduit learn from traffic seen (\S+) to (\S+)`)

// learnedDescription is the description of a learned grant.
func learnedDescription(first, last time.Time) string {
	return fmt.Sprintf("learned by conduit learn from traffic seen %s to %s: review before use",
		first.UTC().Format(time.RFC3339), last.UTC().Format(time.RFC3339))
}

// mergeDescription keeps the union of two learned periods; other
// descriptions are kept as they are (the first one wins).
func mergeDescription(a, b string) string {
	ma, mb := descriptionRE.FindStringSubmatch(a), descriptionRE.FindStringSubmatch(b)
	switch {
	case ma == nil && a != "":
		return a
	case ma == nil:
		return b
	case mb == nil:
		return a
	}
	first, last := min(ma[1], mb[1]), max(ma[2], mb[2]) // RFC 3339 in UTC sorts as text
	fa, err1 := time.Parse(time.RFC3339, first)
	la, err2 := time.Parse(time.RFC3339, last)
	if err1 != nil || err2 != nil {
		return a
	}
	return learnedDescription(fa, la)
}

func (g *Grant) merge(o *Grant) {
	g.Description = mergeDescription(g.Description, o.Description)
	g.Clients.CIDRs = union(g.Clients.CIDRs, o.Clients.CIDRs)
	g.Clients.CommonNames = union(g.Clients.CommonNames, o.Clients.CommonNames)
	g.Clients.Roles = union(g.Clients.Roles, o.Clients.Roles)
	g.Clients.URIs = union(g.Clients.URIs, o.Clients.URIs)
	switch {
	case g.Modbus == nil && o.Modbus != nil:
		g.Modbus = &ModbusGrant{}
		g.Modbus.merge(o.Modbus)
	case g.Modbus != nil:
		g.Modbus.merge(o.Modbus)
	}
	switch {
	case g.OPCUA == nil && o.OPCUA != nil:
		g.OPCUA = &OPCUAGrant{}
		g.OPCUA.merge(o.OPCUA)
	case g.OPCUA != nil:
		g.OPCUA.merge(o.OPCUA)
	}
}

func (g *Grant) normalize() { g.merge(&Grant{}) }

func (m *ModbusGrant) merge(o *ModbusGrant) {
	if o == nil {
		o = &ModbusGrant{}
	}
	m.Units = union(m.Units, o.Units)
	if m.Units == nil {
		m.Units = []int{}
	}
	m.AllowBroadcast = m.AllowBroadcast || o.AllowBroadcast
	m.Read = mergeTables(m.Read, o.Read, false)
	m.Write = mergeTables(m.Write, o.Write, true)
	fs := map[int][]int{}
	has := map[int]bool{}
	for _, f := range append(slices.Clone(m.Functions), o.Functions...) {
		has[f.Function] = true
		fs[f.Function] = union(fs[f.Function], f.Subfunctions)
	}
	m.Functions = nil
	for _, fc := range sortedKeys(has) {
		m.Functions = append(m.Functions, Function{Function: fc, Subfunctions: fs[fc]})
	}
}

func mergeTables(a, b map[string][]Range, write bool) map[string][]Range {
	if len(a) == 0 && len(b) == 0 {
		return nil
	}
	out := map[string][]Range{}
	for t, rs := range a {
		out[t] = append(out[t], rs...)
	}
	for t, rs := range b {
		out[t] = append(out[t], rs...)
	}
	for t, rs := range out {
		out[t] = mergeRanges(rs, write)
	}
	return out
}

// mergeRanges sorts ranges and merges those (of one file) that overlap or
// touch, as rules/README.md describes learned ranges: every observed request
// then fits inside one range, and write ranges never overlap. A merged write
// range keeps the smallest min and the largest max; one without a limit
// makes the merged range unlimited on that side.
func mergeRanges(rs []Range, write bool) []Range {
	fileOf := func(r Range) int {
		if r.File == nil {
			return -1
		}
		return *r.File
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b Range) int {
		return cmp.Or(cmp.Compare(fileOf(a), fileOf(b)), cmp.Compare(a.Start, b.Start), cmp.Compare(a.End, b.End))
	})
	var out []Range
	for _, r := range rs {
		r.Min, r.Max = clonePtr(r.Min), clonePtr(r.Max)
		r.File = clonePtr(r.File)
		if !write {
			r.Min, r.Max = nil, nil
		}
		if n := len(out); n > 0 && fileOf(out[n-1]) == fileOf(r) && r.Start <= out[n-1].End+1 {
			last := &out[n-1]
			last.End = max(last.End, r.End)
			last.Min = widen(last.Min, r.Min, lower[int])
			last.Max = widen(last.Max, r.Max, higher[int])
			continue
		}
		out = append(out, r)
	}
	return out
}

// widen combines two limits: none on either side means none.
func widen[T any](a, b *T, pick func(T, T) T) *T {
	if a == nil || b == nil {
		return nil
	}
	v := pick(*a, *b)
	return &v
}

func lower[T cmp.Ordered](a, b T) T  { return min(a, b) }
func higher[T cmp.Ordered](a, b T) T { return max(a, b) }

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func (u *OPCUAGrant) merge(o *OPCUAGrant) {
	if o == nil {
		o = &OPCUAGrant{}
	}
	u.Read = u.Read || o.Read
	u.Browse = u.Browse || o.Browse
	u.Subscribe = u.Subscribe || o.Subscribe
	u.NodeManagement = union(u.NodeManagement, o.NodeManagement)
	u.HistoryUpdate = union(u.HistoryUpdate, o.HistoryUpdate)
	u.UserNames = union(u.UserNames, o.UserNames)

	writes := map[string]*OPCUAWrite{}
	for _, w := range append(slices.Clone(u.Writes), o.Writes...) {
		attrs := w.Attributes
		if len(attrs) == 0 {
			attrs = []string{"Value"}
		}
		if e := writes[w.NodeID]; e != nil {
			e.Attributes = union(e.Attributes, attrs)
			e.Min = widen(e.Min, w.Min, lower[float64])
			e.Max = widen(e.Max, w.Max, higher[float64])
			continue
		}
		writes[w.NodeID] = &OPCUAWrite{NodeID: w.NodeID, Attributes: union(attrs, nil), Min: clonePtr(w.Min), Max: clonePtr(w.Max)}
	}
	u.Writes = nil
	for _, n := range sortedKeys(writes) {
		w := writes[n]
		if slices.Equal(w.Attributes, []string{"Value"}) {
			w.Attributes = nil // the default
		}
		u.Writes = append(u.Writes, *w)
	}

	calls := map[OPCUACall]bool{}
	for _, c := range append(slices.Clone(u.Calls), o.Calls...) {
		calls[c] = true
	}
	u.Calls = nil
	for c := range calls {
		u.Calls = append(u.Calls, c)
	}
	slices.SortFunc(u.Calls, func(a, b OPCUACall) int {
		return cmp.Or(strings.Compare(a.ObjectID, b.ObjectID), strings.Compare(a.MethodID, b.MethodID))
	})

	switch {
	case u.Opaque == nil && o.Opaque != nil:
		u.Opaque = &OPCUAOpaque{}
		fallthrough
	case u.Opaque != nil && o.Opaque != nil:
		u.Opaque.SecurityPolicies = union(u.Opaque.SecurityPolicies, o.Opaque.SecurityPolicies)
		u.Opaque.Thumbprints = union(u.Opaque.Thumbprints, o.Opaque.Thumbprints)
	case u.Opaque != nil:
		u.Opaque.SecurityPolicies = union(u.Opaque.SecurityPolicies, nil)
		u.Opaque.Thumbprints = union(u.Opaque.Thumbprints, nil)
	}
}

// union returns the sorted set of a and b (nil when both are empty).
func union[T cmp.Ordered](a, b []T) []T {
	if len(a)+len(b) == 0 {
		return nil
	}
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	return slices.Compact(out)
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
