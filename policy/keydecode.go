package policy

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
)

// decodeKey turns a decision cache key (keyWriter) back into the input
// document it encodes: the whole document, or, for a key written with a
// readTree, the parts of it the policy reads. It builds the same values
// astWriter builds for them, so a policy that reads only those parts
// decides the same on both. A policy reload uses it to evaluate the old
// version's cached inputs against the new version before the swap.
func decodeKey(key []byte) (ast.Value, error) {
	d := keyDecoder{b: key}
	t := d.value(d.tag(), 0)
	if d.err == nil && d.off != len(d.b) {
		d.err = fmt.Errorf("%d bytes after the document", len(d.b)-d.off)
	}
	if d.err != nil {
		return nil, fmt.Errorf("policy: cache key: %w", d.err)
	}
	return t.Value, nil
}

type keyDecoder struct {
	b   []byte
	off int
	err error
}

var errKeyShort = errors.New("truncated")

func (d *keyDecoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if d.off >= len(d.b) {
		d.err = errKeyShort
		return 0
	}
	c := d.b[d.off]
	d.off++
	return c
}

func (d *keyDecoder) tag() byte { return d.byte() }

func (d *keyDecoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || d.off+n > len(d.b) {
		d.err = errKeyShort
		return nil
	}
	s := d.b[d.off : d.off+n]
	d.off += n
	return s
}

func (d *keyDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.err = errKeyShort
		return 0
	}
	d.off += n
	return v
}

func (d *keyDecoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.err = errKeyShort
		return 0
	}
	d.off += n
	return v
}

func (d *keyDecoder) str() string {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err = errKeyShort
		return ""
	}
	return string(d.bytes(int(n)))
}

// value decodes the value whose tag was just read.
func (d *keyDecoder) value(tag byte, depth int) *ast.Term {
	if depth > maxValueDepth+8 {
		d.err = errors.New("nested too deep")
	}
	if d.err != nil {
		return nil
	}
	switch tag {
	case '{':
		var items [][2]*ast.Term
		for d.err == nil {
			id := d.byte()
			var k *ast.Term
			switch {
			case id == keyEndObject:
				return ast.NewTerm(ast.NewObject(items...))
			case id == keyDynamicKey:
				k = ast.StringTerm(d.str())
			case int(id) <= len(fields):
				k = fields[id-1].term
			default:
				d.err = fmt.Errorf("unknown field id %d", id)
				return nil
			}
			items = append(items, [2]*ast.Term{k, d.value(d.tag(), depth+1)})
		}
		return nil
	case '[':
		var elems []*ast.Term
		for d.err == nil {
			t := d.tag()
			if t == ']' {
				return ast.NewTerm(ast.NewArray(elems...))
			}
			elems = append(elems, d.value(t, depth+1))
		}
		return nil
	case 's':
		return ast.StringTerm(d.str())
	case 'i':
		return ast.InternedTerm(d.varint())
	case 'u':
		return ast.UIntNumberTerm(d.uvarint())
	case 'f':
		b := d.bytes(8)
		if d.err != nil {
			return nil
		}
		f := math.Float64frombits(binary.LittleEndian.Uint64(b))
		return ast.NumberTerm(json.Number(strconv.FormatFloat(f, 'g', -1, 64)))
	case 't':
		return ast.InternedTerm(true)
	case 'F':
		return ast.InternedTerm(false)
	case 'n':
		return ast.NullTerm()
	case 'a':
		var a netip.Addr
		switch fam := d.byte(); fam {
		case 4:
			if b := d.bytes(4); d.err == nil {
				a = netip.AddrFrom4([4]byte(b))
			}
		case 6:
			if b := d.bytes(16); d.err == nil {
				a = netip.AddrFrom16([16]byte(b))
			}
		case 0:
		default:
			d.err = fmt.Errorf("address family %d", fam)
		}
		if zone := d.str(); zone != "" && a.Is6() {
			a = a.WithZone(zone)
		}
		if !a.IsValid() {
			return ast.StringTerm("")
		}
		return ast.StringTerm(a.String())
	case 'T':
		return ast.StringTerm(time.Unix(d.varint(), 0).UTC().Format(time.RFC3339))
	}
	if d.err == nil {
		d.err = fmt.Errorf("unknown tag %q", tag)
	}
	return nil
}
