package opcua

import (
	"encoding/binary"
	"math"
	"unicode/utf8"
)

// reader is the bounded cursor every decoder in this package uses: reads
// past the end set a sticky error and return zero values, so a decoder
// checks the error once at the end (STYLE.md habit 1). Declared counts and
// lengths are compared with the bytes that remain before anything is sliced
// or allocated.
type reader struct {
	b        []byte
	pos      int
	err      error
	depth    int
	maxArray int
	maxDepth int
	// values is what is left of the budget of values built for the
	// Operation (MaxValues): it bounds the memory a small encoding can
	// expand to (a 7-byte ExtensionObject becomes a map).
	values int
	// urls, when non-nil, collects the byte spans of strings marked as
	// endpoint URLs in the schemas (see RewriteEndpointURLs).
	urls *[]span
	// opaqueExt passes ExtensionObjects of unknown types (and XML-encoded
	// ones) by their length instead of failing (ValidateResponse).
	opaqueExt bool
}

type span struct{ start, end int }

func newReader(b []byte, l *Limits) *reader {
	r := &reader{}
	r.init(b, l)
	return r
}

func (r *reader) init(b []byte, l *Limits) {
	*r = reader{b: b, maxArray: DefaultMaxArrayLength, maxDepth: DefaultMaxDepth, values: DefaultMaxValues}
	if l != nil {
		if l.MaxValues > 0 {
			r.values = l.MaxValues
		}
		if l.MaxArrayLength > 0 {
			r.maxArray = l.MaxArrayLength
		}
		if l.MaxDepth > 0 {
			r.maxDepth = l.MaxDepth
		}
	}
}

// sub returns a reader over b that shares r's limits, depth and url
// collection (offsets shifted by base).
func (r *reader) sub(b []byte) reader {
	return reader{b: b, depth: r.depth, maxArray: r.maxArray, maxDepth: r.maxDepth, values: r.values, opaqueExt: r.opaqueExt}
}

// join takes over the state a sub-reader shares with its parent.
func (r *reader) join(s *reader) {
	r.values = s.values
	if s.err != nil && r.err == nil {
		r.err = s.err
	}
}

// spend takes one value from the budget.
func (r *reader) spend() bool {
	r.values--
	if r.values < 0 {
		r.fail(CodeTooManyValues, "more than the allowed number of decoded values")
		return false
	}
	return r.err == nil
}

func (r *reader) fail(code Code, format string, args ...any) {
	if r.err == nil {
		r.err = errorf(code, format, args...)
	}
}

func (r *reader) remaining() int { return len(r.b) - r.pos }

// need reports whether n more bytes are available and fails otherwise.
func (r *reader) need(n int) bool {
	if r.err != nil {
		return false
	}
	if n < 0 || n > len(r.b)-r.pos {
		r.fail(CodeTruncated, "need %d bytes at offset %d, have %d", n, r.pos, len(r.b)-r.pos)
		return false
	}
	return true
}

// finish returns the sticky error, or a trailing-bytes error when the
// structure did not consume the whole input: decoding is exact.
func (r *reader) finish() error {
	if r.err != nil {
		return r.err
	}
	if r.pos != len(r.b) {
		return errorf(CodeTrailingBytes, "%d bytes left after offset %d", len(r.b)-r.pos, r.pos)
	}
	return nil
}

func (r *reader) u8() byte {
	if !r.need(1) {
		return 0
	}
	v := r.b[r.pos]
	r.pos++
	return v
}

func (r *reader) u16() uint16 {
	if !r.need(2) {
		return 0
	}
	v := binary.LittleEndian.Uint16(r.b[r.pos:])
	r.pos += 2
	return v
}

func (r *reader) u32() uint32 {
	if !r.need(4) {
		return 0
	}
	v := binary.LittleEndian.Uint32(r.b[r.pos:])
	r.pos += 4
	return v
}

func (r *reader) u64() uint64 {
	if !r.need(8) {
		return 0
	}
	v := binary.LittleEndian.Uint64(r.b[r.pos:])
	r.pos += 8
	return v
}

func (r *reader) i32() int32 { return int32(r.u32()) }

// boolean reads a Boolean. Part 6 §5.2.2.1 encodes true as 1 and false as 0;
// other values are refused so that no peer can read a different truth.
func (r *reader) boolean() bool {
	v := r.u8()
	if v > 1 {
		r.fail(CodeInvalidEncoding, "boolean value %d at offset %d", v, r.pos-1)
	}
	return v == 1
}

func (r *reader) bytes(n int) []byte {
	if !r.need(n) {
		return nil
	}
	v := r.b[r.pos : r.pos+n : r.pos+n]
	r.pos += n
	return v
}

// length reads an Int32 length prefix of a String or ByteString (Part 6
// §5.2.2.4/§5.2.2.7): -1 is null, any other negative value is invalid, and
// the length must fit in the bytes that remain.
func (r *reader) length() (n int, null bool) {
	v := r.i32()
	if r.err != nil {
		return 0, false
	}
	if v == -1 {
		return 0, true
	}
	if v < 0 {
		r.fail(CodeInvalidEncoding, "negative length %d at offset %d", v, r.pos-4)
		return 0, false
	}
	if int(v) > r.remaining() {
		r.fail(CodeTruncated, "length %d at offset %d exceeds the %d bytes left", v, r.pos-4, r.remaining())
		return 0, false
	}
	return int(v), false
}

// byteString returns the bytes of a ByteString (a sub-slice of the input).
func (r *reader) byteString() (b []byte, null bool) {
	n, null := r.length()
	if r.err != nil || null {
		return nil, null
	}
	return r.bytes(n), false
}

// stringBytes returns the bytes of a String after checking they are UTF-8
// (Part 6 §5.2.2.4).
func (r *reader) stringBytes() (b []byte, null bool) {
	start := r.pos
	b, null = r.byteString()
	if r.err == nil && !utf8.Valid(b) {
		r.fail(CodeInvalidEncoding, "string at offset %d is not UTF-8", start)
		return nil, false
	}
	return b, null
}

// count reads an array length (Part 6 §5.2.5: Int32, -1 = null). Before the
// caller allocates or loops, the count is checked against MaxArrayLength and
// against the bytes left: n elements of at least minElem bytes each must fit.
// This is the check gopcua v0.9.0 lacks (it allocates first). Returns -1 for
// a null array.
func (r *reader) count(minElem int) int {
	v := r.i32()
	if r.err != nil {
		return 0
	}
	if v == -1 {
		return -1
	}
	if v < 0 {
		r.fail(CodeInvalidEncoding, "negative array length %d at offset %d", v, r.pos-4)
		return 0
	}
	if int(v) > r.maxArray {
		r.fail(CodeArrayTooLong, "array of %d elements at offset %d exceeds %d", v, r.pos-4, r.maxArray)
		return 0
	}
	if minElem < 1 {
		minElem = 1
	}
	if int64(v)*int64(minElem) > int64(r.remaining()) {
		r.fail(CodeArrayTooLong, "array of %d elements at offset %d cannot fit in %d bytes", v, r.pos-4, r.remaining())
		return 0
	}
	return int(v)
}

// enter and leave bound the nesting of recursive types.
func (r *reader) enter() bool {
	r.depth++
	if r.depth > r.maxDepth {
		r.fail(CodeDepthExceeded, "nesting deeper than %d at offset %d", r.maxDepth, r.pos)
		return false
	}
	return r.err == nil
}

func (r *reader) leave() { r.depth-- }

// Writers. Encoders append to a caller's slice.

func appendU16(b []byte, v uint16) []byte { return binary.LittleEndian.AppendUint16(b, v) }
func appendU32(b []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(b, v) }
func appendU64(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }

func appendString(b []byte, s string) []byte {
	b = appendU32(b, uint32(len(s)))
	return append(b, s...)
}

// float helpers shared by value conversion.
func f32(bits uint32) float64 { return float64(math.Float32frombits(bits)) }
func f64(bits uint64) float64 { return math.Float64frombits(bits) }
