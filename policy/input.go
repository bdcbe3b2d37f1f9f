package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/conduit-ot/conduit/inspect"
)

// The input document (docs/policy.md, docs/policy-input.schema.json) is
// written by ONE traversal, writeInput, into a docWriter. Two writers exist:
// astWriter builds the ast.Value OPA evaluates (no map→JSON→AST round trip),
// keyWriter builds the canonical byte key of the decision cache. Because both
// are fed by the same calls, the cache key covers exactly what the policy can
// see: two inputs with the same key have the same document, or, for a policy
// that never reads some fields (readTree), documents that differ only there.

// field is one object key of the input document, with its AST term built
// once. id numbers it in cache keys.
type field struct {
	name string
	term *ast.Term
	id   byte
}

var fields []*field

func newField(name string) *field {
	f := &field{name: name, term: ast.StringTerm(name), id: byte(len(fields) + 1)}
	if len(fields) >= 250 {
		panic("policy: too many input fields for one-byte ids")
	}
	fields = append(fields, f)
	return f
}

// Field names of the input document. Changing one is a breaking change of
// the policy contract: update docs/policy.md and the schema with it.
var (
	fProtocol = newField("protocol")
	fListener = newField("listener")
	fUpstream = newField("upstream")
	fClient   = newField("client")
	fAddress  = newField("address")
	fPort     = newField("port")
	fIdentity = newField("identity")
	fOp       = newField("operation")
	fAccess   = newField("access")
	fName     = newField("name")
	fModbus   = newField("modbus")
	fOPCUA    = newField("opcua")

	// client.identity
	fCommonName = newField("common_name")
	fSubject    = newField("subject")
	fIssuer     = newField("issuer")
	fDNSNames   = newField("dns_names")
	fURIs       = newField("uris")
	fIPs        = newField("ip_addresses")
	fOUs        = newField("organizational_units")
	fRoles      = newField("roles")
	fSerial     = newField("serial")
	fSHA256     = newField("fingerprint_sha256")
	fNotBefore  = newField("not_before")
	fNotAfter   = newField("not_after")

	// modbus
	fUnit         = newField("unit")
	fFunction     = newField("function")
	fSubfunction  = newField("subfunction")
	fTable        = newField("table")
	fQuantity     = newField("quantity")
	fValues       = newField("values")
	fRead         = newField("read")
	fWrite        = newField("write")
	fAndMask      = newField("and_mask")
	fOrMask       = newField("or_mask")
	fFileRecords  = newField("file_records")
	fFile         = newField("file")
	fRecord       = newField("record")
	fLength       = newField("length")
	fDeviceIDCode = newField("device_id_code")
	fObjectID     = newField("object_id")

	// opcua
	fService        = newField("service")
	fTypeID         = newField("type_id")
	fSecurityMode   = newField("security_mode")
	fSecurityPolicy = newField("security_policy")
	fOpaque         = newField("opaque")
	fClientCert     = newField("client_certificate")
	fThumbprint     = newField("thumbprint")
	fSession        = newField("session")
	fIdentityType   = newField("identity_type")
	fUserName       = newField("user_name")
	fWrites         = newField("writes")
	fNodeID         = newField("node_id")
	fAttribute      = newField("attribute")
	fIndexRange     = newField("index_range")
	fValue          = newField("value")
	fType           = newField("type")
	fCalls          = newField("calls")
	fMethodID       = newField("method_id")
	fArguments      = newField("arguments")
	fNodes          = newField("nodes")
	fParentID       = newField("parent_id")
	fReferenceType  = newField("reference_type")
	fNodeClass      = newField("node_class")
	fBrowseName     = newField("browse_name")
)

// docWriter receives the input document as a stream of values. k is the key
// of the value in the enclosing object; it is nil for the root and for array
// elements. A writer records the first failure and ignores what follows.
type docWriter interface {
	beginObject(k *field)
	endObject()
	beginArray(k *field)
	endArray()
	str(k *field, s string)
	num(k *field, n int64)
	unum(k *field, n uint64) // integers above math.MaxInt64
	float(k *field, f float64)
	boolean(k *field, b bool)
	null(k *field)
	addr(k *field, a netip.Addr) // written as the address string ("" if invalid)
	time(k *field, t time.Time)  // written as RFC 3339 in UTC, seconds
	fail(err error)
}

// maxValueDepth bounds the nesting of OPC UA values (arrays of arrays ...).
const maxValueDepth = 32

// writeInput writes the input document of in to w. It is the only definition
// of the document: Decide, Document and the cache key all come through here.
func writeInput(w docWriter, in *Input) {
	if in == nil {
		w.fail(fmt.Errorf("%w: nil input", ErrInput))
		return
	}
	op := in.Op
	if op == nil {
		w.fail(fmt.Errorf("%w: no operation", ErrInput))
		return
	}
	if op.Protocol != in.Protocol {
		w.fail(fmt.Errorf("%w: input protocol %q but operation protocol %q", ErrInput, in.Protocol, op.Protocol))
		return
	}
	w.beginObject(nil)
	w.str(fProtocol, in.Protocol)
	w.str(fListener, in.Listener)
	w.str(fUpstream, in.Upstream)

	w.beginObject(fClient)
	w.addr(fAddress, in.Client.Addr().Unmap())
	w.num(fPort, int64(in.Client.Port()))
	if id := in.Identity; id == nil {
		w.null(fIdentity)
	} else {
		w.beginObject(fIdentity)
		w.str(fCommonName, id.CommonName)
		w.str(fSubject, id.Subject)
		w.str(fIssuer, id.Issuer)
		writeStrings(w, fDNSNames, id.DNSNames)
		writeStrings(w, fURIs, id.URIs)
		writeStrings(w, fIPs, id.IPAddresses)
		writeStrings(w, fOUs, id.OrganizationalUnits)
		writeStrings(w, fRoles, id.Roles)
		w.str(fSerial, id.Serial)
		w.str(fSHA256, id.FingerprintSHA256)
		w.time(fNotBefore, id.NotBefore)
		w.time(fNotAfter, id.NotAfter)
		w.endObject()
	}
	w.endObject()

	w.beginObject(fOp)
	w.str(fAccess, op.Access.String())
	w.str(fName, op.Name)
	w.endObject()

	switch in.Protocol {
	case inspect.ProtocolModbus:
		writeModbus(w, &op.Modbus)
	case inspect.ProtocolOPCUA:
		if op.OPCUA == nil {
			w.fail(fmt.Errorf("%w: opcua operation without its opcua part", ErrInput))
			return
		}
		writeOPCUA(w, op.OPCUA)
	default:
		w.fail(fmt.Errorf("%w: unknown protocol %q", ErrInput, in.Protocol))
		return
	}
	w.endObject()
}

// Modbus function codes whose request fields the document spells out.
const (
	fcReadWriteMultiple = 23
	fcMaskWrite         = 22
	fcWriteFileRecord   = 21
	fcEncapsulated      = 43
	meiReadDeviceID     = 14
)

// writeModbus writes input.modbus. Which fields appear depends on the table
// and the function code; docs/policy.md has the table per function code.
func writeModbus(w docWriter, m *inspect.Modbus) {
	w.beginObject(fModbus)
	w.num(fUnit, int64(m.Unit))
	w.num(fFunction, int64(m.Function))
	if m.HasSubfunction {
		w.num(fSubfunction, int64(m.Subfunction))
	}
	switch m.Table {
	case inspect.TableNone:
	case inspect.TableCoils, inspect.TableDiscreteInputs, inspect.TableInputRegisters, inspect.TableHoldingRegisters:
		w.str(fTable, m.Table.String())
		w.num(fAddress, int64(m.Address))
		w.num(fQuantity, int64(m.Quantity))
		// Coils and holding registers are the writable tables; every
		// write to them carries its values (FC 22: the decoder's values,
		// the policy reads and_mask/or_mask).
		if (m.Table == inspect.TableCoils || m.Table == inspect.TableHoldingRegisters) && isModbusWrite(m.Function) {
			writeUint16s(w, fValues, m.Values)
		}
	case inspect.TableFIFO:
		w.str(fTable, m.Table.String())
		w.num(fAddress, int64(m.Address))
	case inspect.TableFile:
		w.str(fTable, m.Table.String())
		w.beginArray(fFileRecords)
		for i := range m.FileRecords {
			r := &m.FileRecords[i]
			w.beginObject(nil)
			w.num(fFile, int64(r.File))
			w.num(fRecord, int64(r.Record))
			w.num(fLength, int64(r.Length))
			if m.Function == fcWriteFileRecord {
				writeUint16s(w, fValues, r.Values)
			}
			w.endObject()
		}
		w.endArray()
	default:
		w.fail(fmt.Errorf("%w: unknown modbus table %d", ErrInput, m.Table))
		return
	}
	switch m.Function {
	case fcReadWriteMultiple:
		w.beginObject(fRead)
		w.num(fAddress, int64(m.ReadAddress))
		w.num(fQuantity, int64(m.ReadQuantity))
		w.endObject()
		w.beginObject(fWrite)
		w.num(fAddress, int64(m.Address))
		w.num(fQuantity, int64(m.Quantity))
		writeUint16s(w, fValues, m.Values)
		w.endObject()
	case fcMaskWrite:
		w.num(fAndMask, int64(m.AndMask))
		w.num(fOrMask, int64(m.OrMask))
	case fcEncapsulated:
		if m.HasSubfunction && m.Subfunction == meiReadDeviceID {
			w.num(fDeviceIDCode, int64(m.DeviceIDCode))
			w.num(fObjectID, int64(m.ObjectID))
		}
	}
	w.endObject()
}

// isModbusWrite reports whether fc writes to coils or holding registers.
func isModbusWrite(fc uint8) bool {
	switch fc {
	case 5, 6, 15, 16, fcMaskWrite, fcReadWriteMultiple:
		return true
	}
	return false
}

func writeOPCUA(w docWriter, u *inspect.OPCUA) {
	w.beginObject(fOPCUA)
	w.str(fService, u.Service)
	w.num(fTypeID, int64(u.TypeID))
	w.str(fSecurityMode, u.SecurityMode)
	w.str(fSecurityPolicy, u.SecurityPolicy)
	w.boolean(fOpaque, u.Opaque)
	if u.ClientCertSubject == "" && u.ClientCertThumbprint == "" {
		w.null(fClientCert)
	} else {
		w.beginObject(fClientCert)
		w.str(fSubject, u.ClientCertSubject)
		w.str(fThumbprint, u.ClientCertThumbprint)
		w.endObject()
	}
	if s := u.Session; s == nil {
		w.null(fSession)
	} else {
		w.beginObject(fSession)
		w.str(fIdentityType, s.IdentityType)
		w.str(fUserName, s.UserName)
		w.endObject()
	}
	w.beginArray(fWrites)
	for i := range u.Writes {
		x := &u.Writes[i]
		w.beginObject(nil)
		w.str(fNodeID, x.NodeID)
		w.str(fAttribute, x.Attribute)
		w.str(fIndexRange, x.IndexRange)
		writeAny(w, fValue, x.Value, 0)
		w.str(fType, x.Type)
		w.endObject()
	}
	w.endArray()
	w.beginArray(fCalls)
	for i := range u.Calls {
		c := &u.Calls[i]
		w.beginObject(nil)
		w.str(fObjectID, c.ObjectID)
		w.str(fMethodID, c.MethodID)
		w.beginArray(fArguments)
		for _, a := range c.Arguments {
			writeAny(w, nil, a, 1)
		}
		w.endArray()
		w.endObject()
	}
	w.endArray()
	w.beginArray(fNodes)
	for i := range u.Nodes {
		n := &u.Nodes[i]
		w.beginObject(nil)
		w.str(fNodeID, n.NodeID)
		w.str(fParentID, n.ParentID)
		w.str(fReferenceType, n.ReferenceType)
		w.str(fNodeClass, n.NodeClass)
		w.str(fBrowseName, n.BrowseName)
		w.endObject()
	}
	w.endArray()
	w.endObject()
}

func writeStrings(w docWriter, k *field, ss []string) {
	w.beginArray(k)
	for _, s := range ss {
		w.str(nil, s)
	}
	w.endArray()
}

func writeUint16s(w docWriter, k *field, vs []uint16) {
	w.beginArray(k)
	for _, v := range vs {
		w.num(nil, int64(v))
	}
	w.endArray()
}

// objectKey is the key of an object inside an OPC UA value: not one of the
// fixed fields, so it has no id and the cache key spells it out.
func objectKey(name string) *field { return &field{name: name, term: ast.StringTerm(name)} }

// writeAny writes an OPC UA value (inspect.OPCUAWrite.Value, call arguments):
// JSON-compatible Go values. Anything else goes through encoding/json once
// and is then written as the JSON it marshals to.
func writeAny(w docWriter, k *field, v any, depth int) {
	if depth > maxValueDepth {
		w.fail(fmt.Errorf("%w: value nested deeper than %d", ErrInput, maxValueDepth))
		return
	}
	switch x := v.(type) {
	case nil:
		w.null(k)
	case bool:
		w.boolean(k, x)
	case string:
		w.str(k, x)
	case int:
		w.num(k, int64(x))
	case int8:
		w.num(k, int64(x))
	case int16:
		w.num(k, int64(x))
	case int32:
		w.num(k, int64(x))
	case int64:
		w.num(k, x)
	case uint8:
		w.num(k, int64(x))
	case uint16:
		w.num(k, int64(x))
	case uint32:
		w.num(k, int64(x))
	case uint:
		writeUint(w, k, uint64(x))
	case uint64:
		writeUint(w, k, x)
	case float32:
		writeFloat(w, k, float64(x))
	case float64:
		writeFloat(w, k, x)
	case json.Number:
		if n, err := x.Int64(); err == nil {
			w.num(k, n)
		} else if f, err := x.Float64(); err == nil {
			writeFloat(w, k, f)
		} else {
			w.fail(fmt.Errorf("%w: number %q", ErrInput, string(x)))
		}
	case []any:
		w.beginArray(k)
		for _, e := range x {
			writeAny(w, nil, e, depth+1)
		}
		w.endArray()
	case map[string]any:
		keys := make([]string, 0, len(x))
		for key := range x {
			keys = append(keys, key)
		}
		slices.Sort(keys) // canonical order for the cache key
		w.beginObject(k)
		for _, key := range keys {
			writeAny(w, objectKey(key), x[key], depth+1)
		}
		w.endObject()
	default:
		// A decoder handed over a type outside the contract (e.g. a
		// struct). Write what it means as JSON, or fail closed.
		b, err := json.Marshal(x)
		if err != nil {
			w.fail(fmt.Errorf("%w: value of type %T: %v", ErrInput, v, err))
			return
		}
		var generic any
		if err := unmarshalNumber(b, &generic); err != nil {
			w.fail(fmt.Errorf("%w: value of type %T: %v", ErrInput, v, err))
			return
		}
		writeAny(w, k, generic, depth+1)
	}
}

// writeFloat refuses what JSON cannot carry.
func writeFloat(w docWriter, k *field, f float64) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		w.fail(fmt.Errorf("%w: %v is not a JSON number", ErrInput, f))
		return
	}
	w.float(k, f)
}

func writeUint(w docWriter, k *field, u uint64) {
	if u > math.MaxInt64 {
		w.unum(k, u)
		return
	}
	w.num(k, int64(u))
}

func unmarshalNumber(b []byte, v *any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(v)
}
