package audit

import (
	"encoding/base64"
	"encoding/hex"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"go.uber.org/zap/zapcore"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/internal/aside"
	"github.com/conduit-ot/conduit/pki"
)

// Fixed values of every event (see FIELDS.md).
const (
	// ECSVersion is the ECS version the events conform to (ecs.version).
	ECSVersion = "8.11.0"
	// EventModule and EventDataset are event.module and event.dataset.
	EventModule  = "conduit"
	EventDataset = "conduit.audit"
	// ObserverProduct and ObserverType are observer.product and
	// observer.type.
	ObserverProduct = "conduit"
	ObserverType    = "proxy"
	// DefaultVendor is observer.vendor when Observer.Vendor is empty.
	DefaultVendor = "Conduit"

	// MaxFrameBytes bounds the prefix of Event.Bytes written as
	// conduit.frame: enough to see the MBAP or OPC UA header and the start
	// of the body, and an attacker cannot make one event arbitrarily large
	// with a huge junk frame. conduit.frame_length gives the full length.
	MaxFrameBytes = 64
)

// Observer describes the proxy instance writing the trail (ECS observer.*).
// It is fixed when the recorder is built.
type Observer struct {
	Hostname string // observer.hostname; os.Hostname() when empty
	Vendor   string // observer.vendor; DefaultVendor when empty
	Version  string // observer.version: the conduit build version
}

// Encoder turns events into JSON lines with zap's JSON encoder. It is safe
// for concurrent use. Encoding allocates nothing in the steady state: the
// event's parts are zapcore.ObjectMarshaler/ArrayMarshaler views of the
// Event itself, and the scratch space lives in a pooled state.
//
// The fields that do not change within a connection (ecs.*, observer.*
// with the listener, source.*, destination.*, network.*, tls.* with the
// client identity) are encoded once into the context of a zap encoder,
// which zap copies into every entry as bytes. These encoders are cached by
// those fields; an Identity is immutable once built (pki), so its pointer
// names it. A connection-close event drops its connection's entry. Pass the
// same *pki.Identity for all events of a connection (the proxy builds it once
// per connection), or every event pays for encoding the certificate.
//
// The Encoder uses a zapcore JSON encoder directly, with no zap.Logger or
// Core in between: no sampling, no level filtering, every event is encoded.
type Encoder struct {
	cfg    zapcore.EncoderConfig
	obs    Observer
	states sync.Pool // *encState

	bases    sync.Map // baseKey -> zapcore.Encoder
	nbases   atomic.Int64
	maxBases int64 // see SetConnections
}

// baseKey is what the static context of an event depends on.
type baseKey struct {
	listener string
	protocol string
	tls      string
	id       *pki.Identity
	src, dst netip.AddrPort
}

// maxBases bounds the context cache by default: about one entry per live
// connection. Past the bound the cache is emptied and refilled, which costs
// a re-encoding of the static fields, never a wrong event.
const maxBases = 4096

// SetConnections raises the bound of the context cache to n entries, the
// number of connections that may be open at once (limits.max_connections):
// with more live connections than entries the cache would be emptied again
// and again, and every event would re-encode its connection's certificate.
// Entries are dropped when their connection closes, so the memory follows
// the live connections. Call it before the encoder is used.
func (e *Encoder) SetConnections(n int) {
	e.maxBases = max(maxBases, int64(n))
}

// NewEncoder returns an Encoder stamping every event with obs.
func NewEncoder(obs Observer) *Encoder {
	if obs.Hostname == "" {
		obs.Hostname, _ = os.Hostname()
	}
	if obs.Vendor == "" {
		obs.Vendor = DefaultVendor
	}
	e := &Encoder{
		cfg: zapcore.EncoderConfig{
			// Only the time key: no level, message, logger name or
			// caller. What is left is the event's own fields.
			TimeKey: "@timestamp",
			// RFC 3339 with nanoseconds (trailing zeros trimmed), the
			// layout Go formats on a fast path. Times are converted to
			// UTC first, so the zone is always "Z".
			EncodeTime:     zapcore.RFC3339NanoTimeEncoder,
			EncodeDuration: zapcore.NanosDurationEncoder,
			LineEnding:     "\n",
		},
		obs: obs,
	}
	e.states.New = func() any {
		st := &encState{obs: &e.obs}
		st.fields[0] = zapcore.Field{Type: zapcore.InlineMarshalerType, Interface: st}
		return st
	}
	e.maxBases = maxBases
	return e
}

// Observer returns the observer fields the encoder stamps on events.
func (e *Encoder) Observer() Observer { return e.obs }

func keyOf(ev *Event) baseKey {
	return baseKey{
		listener: ev.Listener, protocol: ev.protocol(), tls: ev.TLSVersion,
		id: ev.Identity, src: ev.Source, dst: ev.Dest,
	}
}

// base returns the encoder whose context holds the static fields of k. Only
// the events of a live connection (its opening and its requests) add to the
// cache: a flood of refused handshakes or stray events, each with a new
// source port, must not push the live connections out.
func (e *Encoder) base(key baseKey, store bool) zapcore.Encoder {
	if b, ok := e.bases.Load(key); ok {
		return b.(zapcore.Encoder)
	}
	// A copy for the miss alone: newBaseAside's goroutine keeps its
	// address, which would put key on the heap at every call, hits
	// included.
	k := new(baseKey)
	*k = key
	b := e.newBaseAside(k)
	if !store {
		return b
	}
	if e.nbases.Load() >= e.maxBases {
		e.bases.Clear()
		e.nbases.Store(0)
	}
	if prev, loaded := e.bases.LoadOrStore(*k, b); loaded {
		return prev.(zapcore.Encoder)
	}
	e.nbases.Add(1)
	return b
}

// newBaseAside runs newBase on a goroutine of its own. The static fields
// nest objects five deep (tls.client.x509.subject...), and the proxy
// records events on the goroutine reading a connection, whose stack would
// keep the size that nesting needs, 8 KiB, for the life of the connection
// (a cache miss happens on every connection's first request once the
// cache was emptied, past maxBases). A goroutine costs about a microsecond
// on a path that encodes a certificate. A panic is passed back.
func (e *Encoder) newBaseAside(k *baseKey) zapcore.Encoder {
	return aside.Run(func() zapcore.Encoder { return e.newBase(k) })
}

// newBase encodes the static fields of k.
func (e *Encoder) newBase(k *baseKey) zapcore.Encoder {
	b := zapcore.NewJSONEncoder(e.cfg)
	st := &encState{obs: &e.obs, ev: &Event{
		Listener: k.listener, Protocol: k.protocol, TLSVersion: k.tls,
		Identity: k.id, Source: k.src, Dest: k.dst,
	}}
	_ = b.AddObject("ecs", ecsObject{})
	_ = b.AddObject("observer", (*observerObject)(st))
	if k.src.IsValid() {
		_ = b.AddObject("source", (*sourceObject)(st))
	}
	if k.dst.IsValid() {
		_ = b.AddObject("destination", (*destinationObject)(st))
	}
	if k.protocol != "" {
		_ = b.AddObject("network", (*networkObject)(st))
	}
	if k.tls != "" || k.id != nil {
		_ = b.AddObject("tls", (*tlsObject)(st))
	}
	return b
}

// AppendEvent appends ev as one JSON line, newline included, to dst. A zero
// ev.Time omits @timestamp; recorders set it before encoding.
//
// The output is valid JSON for any content of ev: strings are escaped by
// zap, invalid UTF-8 is replaced by U+FFFD.
func (e *Encoder) AppendEvent(dst []byte, ev *Event) ([]byte, error) {
	st := e.states.Get().(*encState)
	st.ev = ev
	base := e.baseOf(st, ev)
	ent := zapcore.Entry{}
	if !ev.Time.IsZero() {
		ent.Time = ev.Time.UTC()
	}
	buf, err := base.EncodeEntry(ent, st.fields[:])
	st.ev = nil
	e.states.Put(st)
	if ev.Action == ActionConnectionClose {
		e.forget(ev)
	}
	if err != nil {
		if buf != nil {
			buf.Free()
		}
		return dst, err
	}
	dst = append(dst, buf.Bytes()...)
	buf.Free()
	return dst, nil
}

// baseOf returns the base encoder of ev's static fields.
//
// It and forget are not inlined into AppendEvent: their keys (over 100
// bytes each) would take room in AppendEvent's stack frame, and the proxy
// encodes events on the goroutine reading a connection, whose stack stays
// as large as the deepest call it ever made.
//
//go:noinline
func (e *Encoder) baseOf(st *encState, ev *Event) zapcore.Encoder {
	k := keyOf(ev)
	// Pooled states stay with a P, and a P tends to serve the same
	// connection again: remembering the last base skips hashing the key.
	// A remembered base is right even after the cache dropped it, since
	// the key determines its content.
	base := st.lastBase
	if base == nil || k != st.lastKey {
		base = e.base(k, ev.Action == ActionRequest || ev.Action == ActionConnectionOpen)
		st.lastKey, st.lastBase = k, base
	}
	return base
}

// forget drops the base encoder of a closed connection's static fields.
//
//go:noinline
func (e *Encoder) forget(ev *Event) {
	if _, ok := e.bases.LoadAndDelete(keyOf(ev)); ok {
		e.nbases.Add(-1)
	}
}

// encState is the per-call state of one encoding, pooled. The marshaler
// types below are conversions of *encState (or of parts of the Event), so
// passing them as interfaces allocates nothing.
type encState struct {
	ev       *Event
	obs      *Observer
	fields   [1]zapcore.Field // the event, inlined at the top level
	lastKey  baseKey
	lastBase zapcore.Encoder
	cats     strList4
	types    strList4
	// scratch holds IP addresses, hex strings and the like while they are
	// handed to the encoder as byte strings. 2*MaxFrameBytes is the
	// largest user.
	scratch [2 * MaxFrameBytes]byte
}

// MarshalLogObject writes the top-level fields.
func (st *encState) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	ev := st.ev
	// ecs, observer, source, destination, network and tls are in the
	// base encoder's context (Encoder.base).
	_ = enc.AddObject("event", (*eventObject)(st))
	if ev.Rule != "" || ev.Revision != "" {
		_ = enc.AddObject("rule", (*ruleObject)(ev))
	}
	if hasConduit(ev) {
		_ = enc.AddObject("conduit", (*conduitObject)(st))
	}
	if ev.protocol() == inspect.ProtocolModbus && (ev.Op != nil || ev.ExceptionCode != 0) {
		_ = enc.AddObject("modbus", (*modbusObject)(ev))
	}
	if ev.protocol() == inspect.ProtocolOPCUA && ((ev.Op != nil && ev.Op.OPCUA != nil) || ev.StatusCode != 0) {
		_ = enc.AddObject("opcua", (*opcuaObject)(st))
	}
	return nil
}

// protocol is network.protocol: the event's, else its operation's.
func (ev *Event) protocol() string {
	if ev.Protocol != "" {
		return ev.Protocol
	}
	if ev.Op != nil {
		return ev.Op.Protocol
	}
	return ""
}

type ecsObject struct{}

func (ecsObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("version", ECSVersion)
	return nil
}

// ---- event.* ----

type eventObject encState

func (o *eventObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	st := (*encState)(o)
	ev := st.ev
	enc.AddString("kind", "event")
	classify(ev, &st.cats, &st.types)
	if st.cats.n > 0 {
		_ = enc.AddArray("category", &st.cats)
	}
	_ = enc.AddArray("type", &st.types)
	if ev.Action != "" {
		enc.AddString("action", ev.Action)
	}
	if outcome := ev.outcome(); outcome != "" {
		enc.AddString("outcome", outcome)
	}
	if ev.Reason != "" {
		enc.AddString("reason", ev.Reason)
	}
	if ev.DecisionID != "" {
		enc.AddString("id", ev.DecisionID)
	}
	if ev.Seq != 0 {
		enc.AddUint64("sequence", ev.Seq)
	}
	enc.AddString("module", EventModule)
	enc.AddString("dataset", EventDataset)
	return nil
}

// outcome is event.outcome: as given, and for a decision without one,
// success for an allow and failure for a deny.
func (ev *Event) outcome() string {
	if ev.Outcome != "" || ev.Action != ActionRequest {
		return ev.Outcome
	}
	if ev.Allowed {
		return OutcomeSuccess
	}
	return OutcomeFailure
}

// ECS categorization values (https://www.elastic.co/guide/en/ecs/current/ecs-allowed-values-event-category.html).
const (
	catNetwork       = "network"
	catIntrusion     = "intrusion_detection"
	catConfiguration = "configuration"
	catProcess       = "process"

	typeAllowed    = "allowed"
	typeDenied     = "denied"
	typeConnection = "connection"
	typeStart      = "start"
	typeEnd        = "end"
	typeChange     = "change"
	typeError      = "error"
	typeInfo       = "info"
)

// classify fills event.category and event.type from the action, the
// decision and the outcome. The table is in FIELDS.md.
func classify(ev *Event, cats, types *strList4) {
	cats.n, types.n = 0, 0
	failure := ev.Outcome == OutcomeFailure
	switch ev.Action {
	case ActionRequest:
		switch {
		case ev.Allowed && !ev.DryRun:
			cats.add(catNetwork)
			types.add(typeAllowed)
		case ev.Allowed: // dry run: policy denied, monitor mode let it pass
			cats.add(catNetwork, catIntrusion)
			types.add(typeAllowed)
		default:
			cats.add(catNetwork, catIntrusion)
			types.add(typeDenied)
		}
		return
	case ActionConnectionOpen:
		cats.add(catNetwork)
		types.add(typeConnection, typeStart)
	case ActionConnectionClose:
		cats.add(catNetwork)
		types.add(typeConnection, typeEnd)
	case ActionHandshake:
		cats.add(catNetwork, catIntrusion)
		types.add(typeConnection, typeDenied)
		return
	case ActionMalformed, ActionUnsolicited:
		// Never forwarded: the proxy drops the frame or the connection.
		cats.add(catNetwork, catIntrusion)
		types.add(typeDenied, typeError)
		return
	case ActionPolicyReload, ActionCertReload:
		cats.add(catConfiguration)
		types.add(typeChange)
	case ActionStart:
		cats.add(catProcess)
		types.add(typeStart)
	case ActionStop:
		cats.add(catProcess)
		types.add(typeEnd)
	case ActionAuditFailure:
		cats.add(catProcess)
		types.add(typeError)
		return
	default:
		types.add(typeInfo)
	}
	if failure {
		types.add(typeError)
	}
}

// strList4 is a short list of constant strings built per event without
// allocating.
type strList4 struct {
	v [4]string
	n int
}

func (l *strList4) add(s ...string) {
	for _, x := range s {
		if l.n < len(l.v) {
			l.v[l.n] = x
			l.n++
		}
	}
}

func (l *strList4) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, s := range l.v[:l.n] {
		enc.AppendString(s)
	}
	return nil
}

// ---- observer.* ----

type observerObject encState

func (o *observerObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	st := (*encState)(o)
	if st.obs.Hostname != "" {
		enc.AddString("hostname", st.obs.Hostname)
	}
	enc.AddString("product", ObserverProduct)
	enc.AddString("vendor", st.obs.Vendor)
	enc.AddString("type", ObserverType)
	if st.obs.Version != "" {
		enc.AddString("version", st.obs.Version)
	}
	if st.ev.Listener != "" {
		_ = enc.AddObject("ingress", (*ingressObject)(st.ev))
	}
	return nil
}

type ingressObject Event

func (o *ingressObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	_ = enc.AddObject("interface", (*interfaceObject)(o))
	return nil
}

type interfaceObject Event

func (o *interfaceObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("name", o.Listener)
	return nil
}

// ---- source.*, destination.*, network.* ----

type sourceObject encState

func (o *sourceObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	addEndpoint(enc, o.ev.Source, o.scratch[:0])
	return nil
}

type destinationObject encState

func (o *destinationObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	addEndpoint(enc, o.ev.Dest, o.scratch[:0])
	return nil
}

// addEndpoint writes ip and port, formatting the address into scratch.
func addEndpoint(enc zapcore.ObjectEncoder, ap netip.AddrPort, scratch []byte) {
	// An IPv4 client on a dual-stack listener appears as ::ffff:a.b.c.d;
	// the SIEM matches and geolocates the plain IPv4 form.
	enc.AddByteString("ip", ap.Addr().Unmap().AppendTo(scratch))
	enc.AddUint16("port", ap.Port())
}

type networkObject encState

func (o *networkObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("protocol", o.ev.protocol())
	enc.AddString("transport", "tcp")
	return nil
}

// ---- rule.* ----

type ruleObject Event

func (o *ruleObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	if o.Rule != "" {
		enc.AddString("id", o.Rule)
	}
	if o.Revision != "" {
		enc.AddString("version", o.Revision)
	}
	return nil
}

// ---- tls.* ----

type tlsObject encState

func (o *tlsObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	ev := o.ev
	if ev.TLSVersion != "" {
		enc.AddString("version", ev.TLSVersion)
		enc.AddString("version_protocol", "tls")
	}
	if ev.Identity != nil {
		_ = enc.AddObject("client", (*tlsClientObject)(ev.Identity))
	}
	return nil
}

type tlsClientObject pki.Identity

func (o *tlsClientObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	_ = enc.AddObject("x509", (*x509Object)(o))
	if o.FingerprintSHA256 != "" {
		_ = enc.AddObject("hash", (*hashObject)(o))
	}
	return nil
}

type hashObject pki.Identity

func (o *hashObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("sha256", o.FingerprintSHA256)
	return nil
}

type x509Object pki.Identity

func (o *x509Object) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	id := (*pki.Identity)(o)
	if id.CommonName != "" || id.Subject != "" || len(id.OrganizationalUnits) > 0 {
		_ = enc.AddObject("subject", (*subjectObject)(o))
	}
	if id.Issuer != "" {
		_ = enc.AddObject("issuer", (*issuerObject)(o))
	}
	if len(id.DNSNames)+len(id.URIs)+len(id.IPAddresses) > 0 {
		_ = enc.AddArray("alternative_names", (*altNames)(o))
	}
	if id.Serial != "" {
		enc.AddString("serial_number", id.Serial)
	}
	if !id.NotBefore.IsZero() {
		enc.AddTime("not_before", id.NotBefore.UTC())
	}
	if !id.NotAfter.IsZero() {
		enc.AddTime("not_after", id.NotAfter.UTC())
	}
	return nil
}

type subjectObject pki.Identity

func (o *subjectObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	// ECS declares x509.subject.common_name and .organizational_unit as
	// arrays (a subject may repeat them); pki.Identity keeps the first CN.
	if o.CommonName != "" {
		_ = enc.AddArray("common_name", (*oneString)(&o.CommonName))
	}
	if o.Subject != "" {
		enc.AddString("distinguished_name", o.Subject)
	}
	if len(o.OrganizationalUnits) > 0 {
		_ = enc.AddArray("organizational_unit", (*stringList)(&o.OrganizationalUnits))
	}
	return nil
}

type issuerObject pki.Identity

func (o *issuerObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("distinguished_name", o.Issuer)
	return nil
}

// altNames is x509.alternative_names: every subject alternative name, DNS
// names first, then URIs, then IP addresses.
type altNames pki.Identity

func (o *altNames) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, s := range o.DNSNames {
		enc.AppendString(s)
	}
	for _, s := range o.URIs {
		enc.AppendString(s)
	}
	for _, s := range o.IPAddresses {
		enc.AppendString(s)
	}
	return nil
}

type oneString string

func (s *oneString) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	enc.AppendString(string(*s))
	return nil
}

type stringList []string

func (l *stringList) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, s := range *l {
		enc.AppendString(s)
	}
	return nil
}

// ---- conduit.* ----

func hasConduit(ev *Event) bool {
	return ev.Listener != "" || ev.ConnID != 0 || ev.DryRun || ev.DenyAction != "" ||
		len(ev.Bytes) > 0 || ev.Op != nil || ev.lost != nil ||
		(ev.Identity != nil && len(ev.Identity.Roles) > 0)
}

type conduitObject encState

func (o *conduitObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	st := (*encState)(o)
	ev := st.ev
	if ev.Listener != "" {
		enc.AddString("listener", ev.Listener)
	}
	if ev.ConnID != 0 {
		enc.AddUint64("connection_id", ev.ConnID)
	}
	if ev.DryRun {
		enc.AddBool("dry_run", true)
	}
	if ev.DenyAction != "" {
		enc.AddString("deny_action", ev.DenyAction)
	}
	if len(ev.Bytes) > 0 {
		frame := ev.Bytes
		if len(frame) > MaxFrameBytes {
			frame = frame[:MaxFrameBytes]
		}
		n := hex.Encode(st.scratch[:], frame)
		enc.AddByteString("frame", st.scratch[:n])
		enc.AddInt("frame_length", len(ev.Bytes))
	}
	if ev.Op != nil {
		_ = enc.AddObject("operation", (*operationObject)(ev.Op))
	}
	if ev.Identity != nil && len(ev.Identity.Roles) > 0 {
		_ = enc.AddObject("client", (*rolesObject)(ev.Identity))
	}
	if ev.lost != nil {
		_ = enc.AddObject("audit", (*lostObject)(ev.lost))
	}
	return nil
}

type operationObject inspect.Operation

func (o *operationObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("access", o.Access.String())
	if o.Name != "" {
		enc.AddString("name", o.Name)
	}
	return nil
}

type rolesObject pki.Identity

func (o *rolesObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	_ = enc.AddArray("roles", (*stringList)(&o.Roles))
	return nil
}

// lostRange describes events a recorder failed to write: sequence numbers
// First..Last (a span: events inside it that did reach the file were
// written), Count events in all, and the last error.
type lostRange struct {
	First, Last uint64
	Count       uint64
	Reason      string
}

type lostObject lostRange

func (o *lostObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddUint64("lost_events", o.Count)
	enc.AddUint64("lost_first_sequence", o.First)
	enc.AddUint64("lost_last_sequence", o.Last)
	return nil
}

// ---- modbus.* ----

// modbusObject writes the Modbus operation. Which fields appear follows the
// function code (inspect.Modbus): address 0 is a real address, so presence
// is decided by the table and the function, not by zero values.
type modbusObject Event

func (o *modbusObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	ev := (*Event)(o)
	if op := ev.Op; op != nil && op.Protocol == inspect.ProtocolModbus {
		m := &op.Modbus
		enc.AddUint8("unit", m.Unit)
		enc.AddUint8("function", m.Function)
		if m.HasSubfunction {
			enc.AddUint16("subfunction", m.Subfunction)
		}
		if m.Table != inspect.TableNone {
			enc.AddString("table", m.Table.String())
		}
		switch m.Table {
		case inspect.TableNone, inspect.TableFile:
			// file_records below carry the addresses
		case inspect.TableFIFO:
			enc.AddUint16("address", m.Address) // FIFO pointer address
		default:
			enc.AddUint16("address", m.Address)
			enc.AddUint16("quantity", m.Quantity)
		}
		if len(m.Values) > 0 {
			_ = enc.AddArray("values", (*uint16List)(&m.Values))
		}
		switch m.Function {
		case 22: // mask write register
			enc.AddUint16("and_mask", m.AndMask)
			enc.AddUint16("or_mask", m.OrMask)
		case 23: // read/write multiple registers: the read half
			enc.AddUint16("read_address", m.ReadAddress)
			enc.AddUint16("read_quantity", m.ReadQuantity)
		case 43: // encapsulated interface: read device identification
			if m.HasSubfunction && m.Subfunction == 14 {
				enc.AddUint8("device_id_code", m.DeviceIDCode)
				enc.AddUint8("object_id", m.ObjectID)
			}
		}
		if len(m.FileRecords) > 0 {
			_ = enc.AddArray("file_records", (*fileRecordList)(&m.FileRecords))
		}
	}
	if ev.ExceptionCode != 0 {
		enc.AddUint8("exception_code", ev.ExceptionCode)
	}
	return nil
}

type uint16List []uint16

func (l *uint16List) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, v := range *l {
		enc.AppendUint16(v)
	}
	return nil
}

type fileRecordList []inspect.FileRecord

func (l *fileRecordList) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for i := range *l {
		_ = enc.AppendObject((*fileRecordObject)(&(*l)[i]))
	}
	return nil
}

type fileRecordObject inspect.FileRecord

func (o *fileRecordObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddUint16("file", o.File)
	enc.AddUint16("record", o.Record)
	enc.AddUint16("length", o.Length)
	if len(o.Values) > 0 {
		_ = enc.AddArray("values", (*uint16List)(&o.Values))
	}
	return nil
}

// ---- opcua.* ----

type opcuaObject encState

func (o *opcuaObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	st := (*encState)(o)
	ev := st.ev
	if ev.Op != nil && ev.Op.OPCUA != nil {
		u := ev.Op.OPCUA
		if u.Service != "" {
			enc.AddString("service", u.Service)
		}
		if u.TypeID != 0 {
			enc.AddUint32("type_id", u.TypeID)
		}
		if u.SecurityMode != "" {
			enc.AddString("security_mode", u.SecurityMode)
		}
		if u.SecurityPolicy != "" {
			enc.AddString("security_policy", u.SecurityPolicy)
		}
		if u.Opaque {
			enc.AddBool("opaque", true)
		}
		if u.ClientCertSubject != "" || u.ClientCertThumbprint != "" {
			_ = enc.AddObject("client_certificate", (*uaCertObject)(u))
		}
		if s := u.Session; s != nil && (s.IdentityType != "" || s.UserName != "") {
			_ = enc.AddObject("session", (*uaSessionObject)(s))
		}
		if len(u.Writes) > 0 {
			_ = enc.AddArray("writes", (*uaWriteList)(&u.Writes))
		}
		if len(u.Calls) > 0 {
			_ = enc.AddArray("calls", (*uaCallList)(&u.Calls))
		}
		if len(u.Nodes) > 0 {
			_ = enc.AddArray("nodes", (*uaNodeList)(&u.Nodes))
		}
	}
	if ev.StatusCode != 0 {
		enc.AddByteString("status_code", appendStatusHex(st.scratch[:0], ev.StatusCode))
		if name, ok := statusNames[ev.StatusCode&0xFFFF0000]; ok {
			enc.AddString("status_name", name)
		}
	}
	return nil
}

// appendStatusHex appends c as "0x" and eight upper-case hex digits, the
// form the OPC UA specification and Wireshark print status codes in.
func appendStatusHex(dst []byte, c uint32) []byte {
	const digits = "0123456789ABCDEF"
	dst = append(dst, '0', 'x')
	for shift := 28; shift >= 0; shift -= 4 {
		dst = append(dst, digits[(c>>uint(shift))&0xF])
	}
	return dst
}

// StatusName returns the symbolic name of an OPC UA status code
// ("BadUserAccessDenied"), ignoring its info bits, and whether it is known.
func StatusName(code uint32) (string, bool) {
	name, ok := statusNames[code&0xFFFF0000]
	return name, ok
}

type uaCertObject inspect.OPCUA

func (o *uaCertObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	if o.ClientCertSubject != "" {
		enc.AddString("subject", o.ClientCertSubject)
	}
	if o.ClientCertThumbprint != "" {
		enc.AddString("thumbprint", o.ClientCertThumbprint)
	}
	return nil
}

type uaSessionObject inspect.OPCUASession

func (o *uaSessionObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	if o.IdentityType != "" {
		enc.AddString("identity_type", o.IdentityType)
	}
	if o.UserName != "" {
		enc.AddString("user_name", o.UserName)
	}
	return nil
}

type uaWriteList []inspect.OPCUAWrite

func (l *uaWriteList) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for i := range *l {
		_ = enc.AppendObject((*uaWriteObject)(&(*l)[i]))
	}
	return nil
}

type uaWriteObject inspect.OPCUAWrite

func (o *uaWriteObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("node_id", o.NodeID)
	if o.Attribute != "" {
		enc.AddString("attribute", o.Attribute)
	}
	if o.IndexRange != "" {
		enc.AddString("index_range", o.IndexRange)
	}
	if o.Type != "" {
		enc.AddString("type", o.Type)
	}
	addValue(enc, "value", o.Value)
	return nil
}

type uaCallList []inspect.OPCUACall

func (l *uaCallList) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for i := range *l {
		_ = enc.AppendObject((*uaCallObject)(&(*l)[i]))
	}
	return nil
}

type uaCallObject inspect.OPCUACall

func (o *uaCallObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("object_id", o.ObjectID)
	enc.AddString("method_id", o.MethodID)
	if len(o.Arguments) > 0 {
		_ = enc.AddArray("arguments", (*anyList)(&o.Arguments))
	}
	return nil
}

type uaNodeList []inspect.OPCUANode

func (l *uaNodeList) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for i := range *l {
		_ = enc.AppendObject((*uaNodeObject)(&(*l)[i]))
	}
	return nil
}

type uaNodeObject inspect.OPCUANode

func (o *uaNodeObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("node_id", o.NodeID)
	if o.ParentID != "" {
		enc.AddString("parent_id", o.ParentID)
	}
	if o.ReferenceType != "" {
		enc.AddString("reference_type", o.ReferenceType)
	}
	if o.NodeClass != "" {
		enc.AddString("node_class", o.NodeClass)
	}
	if o.BrowseName != "" {
		enc.AddString("browse_name", o.BrowseName)
	}
	return nil
}

// addValue writes a decoded OPC UA value under key, with a type switch (no
// reflection). The decoders produce bool, float64, int64, string, []any and
// nil (inspect.OPCUAWrite); other integer and float widths, []byte (as
// base64, the OPC UA JSON form of a ByteString) and map[string]any are
// accepted too. A value of any other type is replaced by <key>_unsupported:
// true rather than guessed at.
func addValue(enc zapcore.ObjectEncoder, key string, v any) {
	switch x := v.(type) {
	case nil:
		// zap's JSON encoder has no null primitive; the reflected encoder
		// writes a literal null (only this rare case pays for it).
		_ = enc.AddReflected(key, nil)
	case bool:
		enc.AddBool(key, x)
	case string:
		enc.AddString(key, x)
	case float64:
		enc.AddFloat64(key, x)
	case float32:
		enc.AddFloat32(key, x)
	case int64:
		enc.AddInt64(key, x)
	case int:
		enc.AddInt(key, x)
	case int32:
		enc.AddInt32(key, x)
	case int16:
		enc.AddInt16(key, x)
	case int8:
		enc.AddInt8(key, x)
	case uint64:
		enc.AddUint64(key, x)
	case uint:
		enc.AddUint(key, x)
	case uint32:
		enc.AddUint32(key, x)
	case uint16:
		enc.AddUint16(key, x)
	case uint8:
		enc.AddUint8(key, x)
	case []byte:
		enc.AddBinary(key, x)
	case []any:
		_ = enc.AddArray(key, (*anyList)(&x))
	case map[string]any:
		_ = enc.AddObject(key, anyMap(x))
	default:
		enc.AddBool(key+"_unsupported", true)
	}
}

// appendValue is addValue for array elements.
func appendValue(enc zapcore.ArrayEncoder, v any) {
	switch x := v.(type) {
	case nil:
		_ = enc.AppendReflected(nil)
	case bool:
		enc.AppendBool(x)
	case string:
		enc.AppendString(x)
	case float64:
		enc.AppendFloat64(x)
	case float32:
		enc.AppendFloat32(x)
	case int64:
		enc.AppendInt64(x)
	case int:
		enc.AppendInt(x)
	case int32:
		enc.AppendInt32(x)
	case int16:
		enc.AppendInt16(x)
	case int8:
		enc.AppendInt8(x)
	case uint64:
		enc.AppendUint64(x)
	case uint:
		enc.AppendUint(x)
	case uint32:
		enc.AppendUint32(x)
	case uint16:
		enc.AppendUint16(x)
	case uint8:
		enc.AppendUint8(x)
	case []byte:
		enc.AppendString(base64.StdEncoding.EncodeToString(x))
	case []any:
		_ = enc.AppendArray((*anyList)(&x))
	case map[string]any:
		_ = enc.AppendObject(anyMap(x))
	default:
		_ = enc.AppendObject(unsupportedObject{})
	}
}

type anyList []any

func (l *anyList) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, v := range *l {
		appendValue(enc, v)
	}
	return nil
}

type anyMap map[string]any

func (m anyMap) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sortStrings(keys)
	for _, k := range keys {
		addValue(enc, k, m[k])
	}
	return nil
}

// sortStrings is an insertion sort: maps in decoded values are small, and
// it keeps this file free of the sort package's reflection-based helpers.
func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

type unsupportedObject struct{}

func (unsupportedObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddBool("unsupported", true)
	return nil
}
