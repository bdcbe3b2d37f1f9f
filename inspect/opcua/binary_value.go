package opcua

import (
	"encoding/base64"
	"math"
	"strconv"
	"time"
)

// Encoding masks (Part 6 §5.2.2.15-17, §5.2.2.12).
const (
	variantTypeMask    = 0x3F
	variantArrayDims   = 0x40
	variantArrayValues = 0x80

	dvValue             = 0x01
	dvStatus            = 0x02
	dvSourceTimestamp   = 0x04
	dvServerTimestamp   = 0x08
	dvSourcePicoseconds = 0x10
	dvServerPicoseconds = 0x20
	dvKnown             = 0x3F

	ltLocale = 0x01
	ltText   = 0x02
	ltKnown  = 0x03

	diSymbolicID     = 0x01
	diNamespaceURI   = 0x02
	diLocalizedText  = 0x04
	diLocale         = 0x08
	diAdditionalInfo = 0x10
	diInnerStatus    = 0x20
	diInnerDiag      = 0x40
	diKnown          = 0x7F

	extObjNoBody     = 0x00
	extObjByteString = 0x01
	extObjXML        = 0x02
)

// walk reads one value of schema s. With build false it only validates
// (and allocates nothing); with build true it returns a JSON-compatible
// value (see value conversion in convert.go).
func (r *reader) walk(s *schema, build bool) any {
	if r.err != nil {
		return nil
	}
	switch s.kind {
	case kStruct:
		var m map[string]any
		if build && !r.spend() {
			return nil
		}
		if build {
			m = make(map[string]any, len(s.fields))
		}
		for _, f := range s.fields {
			v := r.walk(f.s, build)
			if build {
				m[f.name] = v
			}
		}
		if build {
			return m
		}
		return nil
	case kArray:
		n := r.count(s.elem.min)
		if n < 0 || r.err != nil || (build && !r.spend()) {
			return nil
		}
		var a []any
		if build {
			a = make([]any, 0, n)
		}
		for i := 0; i < n && r.err == nil; i++ {
			v := r.walk(s.elem, build)
			if build {
				a = append(a, v)
			}
		}
		if build {
			return a
		}
		return nil
	case kEndpointURL:
		start := r.pos
		v := r.builtin(kString, build)
		if r.err == nil && r.urls != nil {
			*r.urls = append(*r.urls, span{start, r.pos})
		}
		return v
	}
	return r.builtin(s.kind, build)
}

// builtin reads one built-in value (Part 6 §5.2.2).
func (r *reader) builtin(k kind, build bool) any {
	if build && !r.spend() {
		return nil
	}
	switch k {
	case kBoolean:
		return r.boolean()
	case kSByte:
		return int64(int8(r.u8()))
	case kByte:
		return int64(r.u8())
	case kInt16:
		return int64(int16(r.u16()))
	case kUInt16:
		return int64(r.u16())
	case kInt32:
		return int64(int32(r.u32()))
	case kUInt32, kStatusCode:
		v := r.u32()
		if !build {
			return nil
		}
		return int64(v)
	case kInt64:
		v := r.u64()
		if !build {
			return nil
		}
		return int64(v)
	case kUInt64:
		v := r.u64()
		if !build {
			return nil
		}
		if v > math.MaxInt64 {
			// JSON numbers in OPA are float64; keep the exact value as text.
			return strconv.FormatUint(v, 10)
		}
		return int64(v)
	case kFloat:
		v := r.u32()
		if !build {
			return nil
		}
		return jsonFloat(f32(v))
	case kDouble:
		v := r.u64()
		if !build {
			return nil
		}
		return jsonFloat(f64(v))
	case kString, kXMLElement:
		b, null := r.stringBytes()
		if !build || null {
			return nil
		}
		return string(b)
	case kDateTime:
		v := int64(r.u64())
		if !build {
			return nil
		}
		return dateTimeString(v)
	case kGUID:
		g := r.bytes(guidSize)
		if !build || r.err != nil {
			return nil
		}
		return string(appendGUID(nil, g))
	case kByteString:
		b, null := r.byteString()
		if !build || null {
			return nil
		}
		return base64.StdEncoding.EncodeToString(b)
	case kNodeID, kExpandedNodeID:
		n := r.nodeID(k == kExpandedNodeID)
		if !build || r.err != nil {
			return nil
		}
		return n.String()
	case kQualifiedName:
		ns := r.u16()
		b, _ := r.stringBytes()
		if !build || r.err != nil {
			return nil
		}
		return qualifiedName(ns, b)
	case kLocalizedText:
		return r.localizedText(build)
	case kExtensionObject:
		return r.extensionObject(build)
	case kDataValue:
		return r.dataValue(build)
	case kVariant:
		v, _ := r.variant(build)
		return v
	case kDiagnosticInfo:
		r.diagnosticInfo()
		return nil
	}
	r.fail(CodeInvalidEncoding, "built-in type %d at offset %d", k, r.pos)
	return nil
}

// jsonFloat keeps finite floats and spells NaN and the infinities as the
// OPC UA JSON encoding does (Part 6 §5.4.2.3), since JSON has no such numbers.
func jsonFloat(f float64) any {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	return f
}

// ticksPerSecond and epochOffset convert DateTime (100 ns ticks since
// 1601-01-01 UTC, Part 6 §5.2.2.5) to time.Time.
const (
	ticksPerSecond = 10_000_000
	epochOffset    = 11644473600 // seconds from 1601-01-01 to 1970-01-01
)

func dateTimeString(ticks int64) string {
	if ticks <= 0 {
		// Part 6 §5.2.2.5: values at or below the minimum mean "no date".
		return ""
	}
	sec := ticks/ticksPerSecond - epochOffset
	nsec := (ticks % ticksPerSecond) * 100
	return time.Unix(sec, nsec).UTC().Format(time.RFC3339Nano)
}

func qualifiedName(ns uint16, name []byte) string {
	if ns == 0 {
		return string(name)
	}
	return strconv.FormatUint(uint64(ns), 10) + ":" + string(name)
}

func (r *reader) localizedText(build bool) any {
	mask := r.u8()
	if r.err == nil && mask&^ltKnown != 0 {
		r.fail(CodeInvalidEncoding, "localized text mask 0x%02x at offset %d", mask, r.pos-1)
	}
	var locale, text []byte
	if mask&ltLocale != 0 {
		locale, _ = r.stringBytes()
	}
	if mask&ltText != 0 {
		text, _ = r.stringBytes()
	}
	if !build || r.err != nil {
		return nil
	}
	return map[string]any{"locale": string(locale), "text": string(text)}
}

// variant reads a Variant (Part 6 §5.2.2.16) and returns its value and the
// built-in type name. Arrays must fit in the bytes left before they are
// walked; matrix dimensions must be non-negative and multiply to exactly the
// array length.
func (r *reader) variant(build bool) (any, string) {
	if !r.enter() {
		r.leave()
		return nil, ""
	}
	defer r.leave()
	mask := r.u8()
	if r.err != nil {
		return nil, ""
	}
	k := kind(mask & variantTypeMask)
	if k > kLastBuiltin {
		r.fail(CodeInvalidEncoding, "variant type %d at offset %d", k, r.pos-1)
		return nil, ""
	}
	if k == kNull {
		if mask != 0 {
			r.fail(CodeInvalidEncoding, "null variant with flags 0x%02x at offset %d", mask, r.pos-1)
		}
		return nil, builtinNames[kNull]
	}
	name := builtinNames[k]
	if mask&variantArrayValues == 0 {
		if mask&variantArrayDims != 0 {
			r.fail(CodeInvalidEncoding, "variant dimensions without array at offset %d", r.pos-1)
			return nil, ""
		}
		if k == kVariant {
			// Part 6 §5.2.2.16: a Variant cannot contain a scalar Variant.
			r.fail(CodeInvalidEncoding, "scalar variant in variant at offset %d", r.pos-1)
			return nil, ""
		}
		return r.builtin(k, build), name
	}
	n := r.count(builtinMinSize[k])
	var a []any
	if build && n > 0 {
		a = make([]any, 0, n)
	}
	for i := 0; i < n && r.err == nil; i++ {
		v := r.builtin(k, build)
		if build {
			a = append(a, v)
		}
	}
	if mask&variantArrayDims == 0 {
		if build && n >= 0 {
			if a == nil {
				a = []any{}
			}
			return a, name
		}
		return nil, name
	}
	nd := r.count(4)
	if r.err != nil {
		return nil, ""
	}
	var dims []int
	if build && nd > 0 {
		dims = make([]int, 0, nd)
	}
	// The product of the dimensions must equal the element count. Each
	// factor is checked before the next multiplication (total <= n < 2^31,
	// d < 2^31: no overflow), and a zero dimension makes the product 0.
	total, tooBig, zero := int64(1), false, false
	for i := 0; i < nd && r.err == nil; i++ {
		d := r.i32()
		if d < 0 {
			r.fail(CodeInvalidEncoding, "negative dimension %d at offset %d", d, r.pos-4)
			return nil, ""
		}
		if d == 0 {
			zero = true
		} else if !tooBig {
			total *= int64(d)
			tooBig = total > int64(max(n, 0))
		}
		if build {
			dims = append(dims, int(d))
		}
	}
	if r.err != nil {
		return nil, ""
	}
	product := !tooBig && !zero && total == int64(max(n, 0))
	if zero {
		product = n <= 0
	}
	if nd <= 0 || !product {
		r.fail(CodeInvalidEncoding, "variant dimensions (%d of them) do not multiply to %d elements", nd, n)
		return nil, ""
	}
	if !build {
		return nil, name
	}
	if n <= 0 {
		// An empty matrix: never reshape by dimensions that hold no
		// elements (one of them may be huge).
		return []any{}, name
	}
	return reshape(a, dims), name
}

// reshape turns a flat row-major array into nested arrays (Part 6 §5.2.2.16:
// the last index varies fastest).
func reshape(flat []any, dims []int) any {
	if len(dims) <= 1 {
		if flat == nil {
			return []any{}
		}
		return flat
	}
	step := 1
	for _, d := range dims[1:] {
		step *= d
	}
	out := make([]any, dims[0])
	for i := range out {
		out[i] = reshape(flat[i*step:(i+1)*step], dims[1:])
	}
	return out
}

// dataValue reads a DataValue (Part 6 §5.2.2.17).
func (r *reader) dataValue(build bool) any {
	v, typ, status, ok := r.dataValueParts(build)
	if !build || !ok {
		return nil
	}
	m := map[string]any{"value": v, "type": typ}
	if status != 0 {
		m["status"] = int64(status)
	}
	return m
}

func (r *reader) dataValueParts(build bool) (v any, typ string, status uint32, ok bool) {
	if !r.enter() {
		r.leave()
		return nil, "", 0, false
	}
	defer r.leave()
	mask := r.u8()
	if r.err == nil && mask&^dvKnown != 0 {
		r.fail(CodeInvalidEncoding, "data value mask 0x%02x at offset %d", mask, r.pos-1)
	}
	if mask&dvValue != 0 {
		v, typ = r.variant(build)
	}
	if mask&dvStatus != 0 {
		status = r.u32()
	}
	if mask&dvSourceTimestamp != 0 {
		r.u64()
	}
	if mask&dvSourcePicoseconds != 0 {
		r.u16()
	}
	if mask&dvServerTimestamp != 0 {
		r.u64()
	}
	if mask&dvServerPicoseconds != 0 {
		r.u16()
	}
	return v, typ, status, r.err == nil
}

// diagnosticInfo reads (and discards) a DiagnosticInfo (Part 6 §5.2.2.12).
func (r *reader) diagnosticInfo() {
	if !r.enter() {
		r.leave()
		return
	}
	defer r.leave()
	mask := r.u8()
	if r.err == nil && mask&^diKnown != 0 {
		r.fail(CodeInvalidEncoding, "diagnostic info mask 0x%02x at offset %d", mask, r.pos-1)
	}
	for _, bit := range [...]byte{diSymbolicID, diNamespaceURI, diLocale, diLocalizedText} {
		if mask&bit != 0 {
			r.i32()
		}
	}
	if mask&diAdditionalInfo != 0 {
		r.stringBytes()
	}
	if mask&diInnerStatus != 0 {
		r.u32()
	}
	if mask&diInnerDiag != 0 {
		r.diagnosticInfo()
	}
}

// extObjHeader reads the TypeId, encoding byte and length of an
// ExtensionObject (Part 6 §5.2.2.15) and returns the body bytes. The TypeId
// is a NodeId, not an ExpandedNodeId.
func (r *reader) extObjHeader() (typeID NodeID, body []byte, hasBody bool) {
	typeID = r.nodeID(false)
	enc := r.u8()
	if r.err != nil {
		return typeID, nil, false
	}
	switch enc {
	case extObjNoBody:
		return typeID, nil, false
	case extObjByteString:
	case extObjXML:
		if r.opaqueExt {
			// An XmlElement: its length is all that is checked.
			r.stringBytes()
			return typeID, nil, false
		}
		r.fail(CodeInvalidEncoding, "XML-encoded extension object %s at offset %d", typeID, r.pos-1)
		return typeID, nil, false
	default:
		r.fail(CodeInvalidEncoding, "extension object encoding %d at offset %d", enc, r.pos-1)
		return typeID, nil, false
	}
	n, null := r.length()
	if null {
		r.fail(CodeInvalidEncoding, "extension object %s with null body", typeID)
	}
	return typeID, r.bytes(n), r.err == nil
}

// knownExt is extSchema without the failure.
func (r *reader) knownExt(typeID NodeID) *schema {
	if typeID.Namespace == 0 && typeID.Type == IDNumeric && !typeID.HasURI {
		return schemaByEncID[typeID.Numeric]
	}
	return nil
}

// extSchema returns the schema of a standard structure by the numeric ns=0
// id of its binary encoding, or fails with CodeUnknownExtObject.
func (r *reader) extSchema(typeID NodeID) *schema {
	if typeID.Namespace == 0 && typeID.Type == IDNumeric && !typeID.HasURI {
		if s := schemaByEncID[typeID.Numeric]; s != nil {
			return s
		}
	}
	r.fail(CodeUnknownExtObject, "extension object type %s", typeID)
	return nil
}

// extensionObject reads an ExtensionObject whose body must be a known
// standard structure, decoded exactly: a body longer or shorter than its
// structure is an error. An object without body decodes to nil.
func (r *reader) extensionObject(build bool) any {
	if !r.enter() {
		r.leave()
		return nil
	}
	defer r.leave()
	typeID, body, hasBody := r.extObjHeader()
	if !hasBody || r.err != nil {
		if r.err == nil && !typeID.IsNull() && !r.opaqueExt {
			// A typed object without body: nothing to inspect, but the
			// type must still be one we know.
			r.extSchema(typeID)
		}
		return nil
	}
	if r.opaqueExt && r.knownExt(typeID) == nil {
		return nil // a structure the proxy does not know: passed by its length
	}
	s := r.extSchema(typeID)
	if s == nil {
		return nil
	}
	sub := r.sub(body)
	v := sub.walk(s, build)
	if err := sub.finish(); err != nil && r.err == nil {
		r.err = err
	}
	r.join(&sub)
	if r.err != nil {
		return nil
	}
	if !build {
		return nil
	}
	return map[string]any{"type_id": typeID.String(), "type": s.name, "body": v}
}
