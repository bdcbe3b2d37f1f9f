package policy

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Document returns the input document of in as the AST value the policy
// evaluates. It is the one definition of the document, used by Decide for
// live and replayed traffic alike.
func Document(in *Input) (ast.Value, error) {
	w := astWriterPool.Get().(*astWriter)
	defer w.release()
	writeInput(w, in)
	if w.err != nil {
		return nil, w.err
	}
	if w.root == nil {
		return nil, fmt.Errorf("%w: empty document", ErrInput)
	}
	return w.root, nil
}

// DocumentJSON returns the input document of in as JSON, e.g. for
// `conduit replay --format json` or to write example inputs.
func DocumentJSON(in *Input) ([]byte, error) {
	v, err := Document(in)
	if err != nil {
		return nil, err
	}
	x, err := ast.JSON(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInput, err)
	}
	return json.Marshal(x)
}

// astWriter builds the document as an ast.Value. Object item buffers are
// reused between documents (ast.NewObject copies them); array element
// slices are not (ast.NewArray keeps its slice).
type astWriter struct {
	frames []astFrame
	depth  int
	root   ast.Value
	err    error
}

type astFrame struct {
	key   *field
	array bool
	items [][2]*ast.Term
	elems []*ast.Term
}

var astWriterPool = sync.Pool{New: func() any { return &astWriter{frames: make([]astFrame, 0, 8)} }}

func (w *astWriter) release() {
	for i := range w.frames {
		clear(w.frames[i].items)
		clear(w.frames[i].elems)
	}
	w.depth, w.root, w.err = 0, nil, nil
	astWriterPool.Put(w)
}

func (w *astWriter) add(k *field, t *ast.Term) {
	if w.err != nil {
		return
	}
	if w.depth == 0 {
		w.root = t.Value
		return
	}
	f := &w.frames[w.depth-1]
	if f.array {
		f.elems = append(f.elems, t)
		return
	}
	if k == nil {
		w.err = fmt.Errorf("%w: object value without a key", ErrInput)
		return
	}
	f.items = append(f.items, [2]*ast.Term{k.term, t})
}

func (w *astWriter) push(k *field, array bool) {
	if w.err != nil {
		return
	}
	if w.depth == len(w.frames) {
		w.frames = append(w.frames, astFrame{})
	}
	f := &w.frames[w.depth]
	f.key, f.array = k, array
	f.items, f.elems = f.items[:0], f.elems[:0]
	w.depth++
}

func (w *astWriter) pop() *astFrame {
	w.depth--
	return &w.frames[w.depth]
}

func (w *astWriter) beginObject(k *field) { w.push(k, false) }
func (w *astWriter) beginArray(k *field)  { w.push(k, true) }

func (w *astWriter) endObject() {
	if w.err != nil {
		return
	}
	f := w.pop()
	w.add(f.key, ast.NewTerm(ast.NewObject(f.items...)))
}

func (w *astWriter) endArray() {
	if w.err != nil {
		return
	}
	f := w.pop()
	w.add(f.key, ast.NewTerm(ast.NewArray(slices.Clone(f.elems)...)))
}

func (w *astWriter) str(k *field, s string)  { w.add(k, ast.StringTerm(s)) }
func (w *astWriter) num(k *field, n int64)   { w.add(k, ast.InternedTerm(n)) }
func (w *astWriter) unum(k *field, n uint64) { w.add(k, ast.UIntNumberTerm(n)) }
func (w *astWriter) boolean(k *field, b bool) {
	w.add(k, ast.InternedTerm(b))
}
func (w *astWriter) null(k *field) { w.add(k, ast.NullTerm()) }

func (w *astWriter) float(k *field, f float64) {
	w.add(k, ast.NumberTerm(json.Number(strconv.FormatFloat(f, 'g', -1, 64))))
}

func (w *astWriter) addr(k *field, a netip.Addr) {
	if !a.IsValid() {
		w.str(k, "")
		return
	}
	w.str(k, a.String())
}

func (w *astWriter) time(k *field, t time.Time) {
	w.str(k, t.UTC().Format(time.RFC3339))
}

func (w *astWriter) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

// keyWriter builds the decision cache key: a canonical, unambiguous byte
// encoding of the same stream of values. Every value is a tag byte and a
// length-prefixed or fixed-size payload; inside objects each value is
// preceded by its field id (dynamic keys are spelled out), and an object ends
// with the id 0. Keys longer than maxKeyLen are not cached (overflow).
//
// With reads set (the version's readTree), the fields the policy never
// reads are left out, subtrees included: two documents that differ only in
// them get the same key, and the same decision.
type keyWriter struct {
	buf      []byte
	max      int
	overflow bool
	err      error

	reads *readTree   // nil: key on the whole document
	stack []*readTree // per open container: what is read of it (nil: all)
	skip  int         // > 0: inside a container that is not read, this deep
}

const (
	keyEndObject  = 0x00
	keyDynamicKey = 0xFE
)

func (w *keyWriter) reset(max int, reads *readTree) {
	w.buf, w.max, w.overflow, w.err = w.buf[:0], max, false, nil
	w.reads, w.stack, w.skip = reads, w.stack[:0], 0
}

// keep reports whether the value of field k in the current container goes
// into the key. Array elements and keys that are not fixed fields (inside
// OPC UA values) are kept whenever their container is.
func (w *keyWriter) keep(k *field) bool {
	if w.skip > 0 {
		return false
	}
	if len(w.stack) == 0 || k == nil || k.id == 0 {
		return true
	}
	n := w.stack[len(w.stack)-1]
	return n == nil || n.kid(k.id) != nil
}

// begin opens an object or array.
func (w *keyWriter) begin(k *field, tag byte) {
	if w.reads == nil {
		w.emit(k, tag)
		return
	}
	if w.skip > 0 {
		w.skip++
		return
	}
	n := w.reads // the root
	if len(w.stack) > 0 {
		n = w.stack[len(w.stack)-1]
		if n != nil && k != nil && k.id != 0 {
			if n = n.kid(k.id); n == nil {
				w.skip = 1 // not read: leave it out, with everything in it
				return
			}
		} else {
			n = nil
		}
	}
	if n != nil && n.all {
		n = nil
	}
	w.stack = append(w.stack, n)
	w.emit(k, tag)
}

// end closes what begin opened.
func (w *keyWriter) end(tag byte) {
	if w.reads != nil {
		if w.skip > 0 {
			w.skip--
			return
		}
		w.stack = w.stack[:len(w.stack)-1]
	}
	if w.room(1) {
		w.buf = append(w.buf, tag)
	}
}

// ok reports whether the key is complete and usable.
func (w *keyWriter) ok() bool { return w.err == nil && !w.overflow }

// room reports whether n more bytes fit, and marks an overflow if not.
func (w *keyWriter) room(n int) bool {
	if w.overflow || w.err != nil {
		return false
	}
	if len(w.buf)+n > w.max {
		w.overflow = true
		return false
	}
	return true
}

// key starts a scalar value: false when it is left out of the key, or
// does not fit.
func (w *keyWriter) key(k *field, tag byte) bool {
	if w.reads != nil && !w.keep(k) {
		return false
	}
	return w.emit(k, tag)
}

// emit writes the field id (or the spelled-out key) and the tag.
func (w *keyWriter) emit(k *field, tag byte) bool {
	if k == nil {
		if !w.room(1) {
			return false
		}
		w.buf = append(w.buf, tag)
		return true
	}
	if k.id != 0 {
		if !w.room(2) {
			return false
		}
		w.buf = append(w.buf, k.id, tag)
		return true
	}
	if !w.room(1 + binary.MaxVarintLen64 + len(k.name) + 1) {
		return false
	}
	w.buf = append(w.buf, keyDynamicKey)
	w.buf = binary.AppendUvarint(w.buf, uint64(len(k.name)))
	w.buf = append(w.buf, k.name...)
	w.buf = append(w.buf, tag)
	return true
}

func (w *keyWriter) beginObject(k *field) { w.begin(k, '{') }
func (w *keyWriter) beginArray(k *field)  { w.begin(k, '[') }
func (w *keyWriter) endObject()           { w.end(keyEndObject) }
func (w *keyWriter) endArray()            { w.end(']') }

func (w *keyWriter) str(k *field, s string) {
	if w.key(k, 's') && w.room(binary.MaxVarintLen64+len(s)) {
		w.buf = binary.AppendUvarint(w.buf, uint64(len(s)))
		w.buf = append(w.buf, s...)
	}
}

func (w *keyWriter) num(k *field, n int64) {
	if w.key(k, 'i') && w.room(binary.MaxVarintLen64) {
		w.buf = binary.AppendVarint(w.buf, n)
	}
}

func (w *keyWriter) unum(k *field, n uint64) {
	if w.key(k, 'u') && w.room(binary.MaxVarintLen64) {
		w.buf = binary.AppendUvarint(w.buf, n)
	}
}

func (w *keyWriter) float(k *field, f float64) {
	if w.key(k, 'f') && w.room(8) {
		w.buf = binary.LittleEndian.AppendUint64(w.buf, math.Float64bits(f))
	}
}

func (w *keyWriter) boolean(k *field, b bool) {
	tag := byte('F')
	if b {
		tag = 't'
	}
	w.key(k, tag)
}

func (w *keyWriter) null(k *field) { w.key(k, 'n') }

func (w *keyWriter) addr(k *field, a netip.Addr) {
	// Family, address bytes and zone: the same information as the string
	// form ("" for the zero Addr).
	zone := a.Zone()
	if !w.key(k, 'a') || !w.room(1+16+binary.MaxVarintLen64+len(zone)) {
		return
	}
	switch {
	case a.Is4():
		b := a.As4()
		w.buf = append(w.buf, 4)
		w.buf = append(w.buf, b[:]...)
	case a.Is6():
		b := a.As16()
		w.buf = append(w.buf, 6)
		w.buf = append(w.buf, b[:]...)
	default:
		w.buf = append(w.buf, 0)
	}
	w.buf = binary.AppendUvarint(w.buf, uint64(len(zone)))
	w.buf = append(w.buf, zone...)
}

func (w *keyWriter) time(k *field, t time.Time) {
	// The document holds RFC 3339 at second precision in UTC: exactly the
	// information of the Unix seconds.
	if w.key(k, 'T') && w.room(binary.MaxVarintLen64) {
		w.buf = binary.AppendVarint(w.buf, t.Unix())
	}
}

func (w *keyWriter) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}
