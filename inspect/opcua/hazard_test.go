package opcua

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"reflect"
	"runtime"
	"testing"

	"github.com/conduit-ot/conduit/inspect"
)

// requestHeader29 is a minimal RequestHeader (29 bytes): null token,
// timestamp 0, RequestHandle 1, no diagnostics, null audit id, timeout 0,
// null AdditionalHeader.
const requestHeader29 = `
0000 0000000000000000 01000000 00000000 ffffffff 00000000 000000
`

// hazardWrite is gopcua v0.9.0's known hazard: a WriteRequest of 33 bytes
// (after the type id) whose NodesToWrite count is n. gopcua allocates
// n * 8 bytes (a slice of pointers) before it reads an element: 4 GiB for
// 2^29, and 2^31-1 kills the process.
func hazardWrite(t testing.TB, n uint32) []byte {
	b := unhex(t, "0100a102"+requestHeader29) // type id i=673 + RequestHeader
	return binary.LittleEndian.AppendUint32(b, n)
}

// writeOfValue wraps one WriteValue (i=1, Value, no range) whose DataValue
// bytes are dv.
func writeOfValue(t testing.TB, dv string) []byte {
	return unhex(t, "0100a102"+requestHeader29+`
01000000 0001 0d000000 ffffffff // 1 WriteValue: NodeId i=1, AttributeId Value, IndexRange null
`+dv)
}

// allocBytes returns the bytes allocated per call of f.
func allocBytes(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const runs = 20
	for i := 0; i < runs; i++ {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / runs
}

func TestHazardDeclaredCounts(t *testing.T) {
	deep := "01" // DataValue with value
	for i := 0; i < DefaultMaxDepth+2; i++ {
		deep += " 98 01000000" // Variant: array of Variant, 1 element
	}
	deep += " 06 01000000" // innermost: Int32 1

	diag := "01 19" // DataValue: Variant, scalar DiagnosticInfo
	for i := 0; i < 200; i++ {
		diag += " 40" // only InnerDiagnosticInfo
	}
	diag += " 00"

	cases := []struct {
		name string
		body []byte
		want error
	}{
		{"write count 2^29 (33-byte request)", hazardWrite(t, 1<<29), ErrArrayTooLong},
		{"write count 2^31-1", hazardWrite(t, 1<<31-1), ErrArrayTooLong},
		{"write count -2", hazardWrite(t, 0xFFFFFFFE), ErrInvalidEncoding},
		{"variant Int32 array 2^31-1", writeOfValue(t, "01 86 ffffff7f"), ErrArrayTooLong},
		{"variant Variant array 2^29", writeOfValue(t, "01 98 00000020"), ErrArrayTooLong},
		{"variant Byte array 65536 > MaxArrayLength", writeOfValue(t, "01 83 00000100"), ErrArrayTooLong},
		{"variant string length 2^31-1", writeOfValue(t, "01 0c ffffff7f 41"), ErrTruncated},
		{"variant bytestring length 2^30", writeOfValue(t, "01 0f 00000040"), ErrTruncated},
		{"matrix dimension count 2^31-1", writeOfValue(t, "01 c6 01000000 07000000 ffffff7f"), ErrArrayTooLong},
		{"matrix dims overflow past length", writeOfValue(t, "01 c6 01000000 07000000 02000000 00000100 00000100"), ErrInvalidEncoding},
		{"empty matrix with a huge dimension decodes small", writeOfValue(t, "01 c6 00000000 02000000 ffffff7f 00000000"), nil},
		{"matrix negative dimension", writeOfValue(t, "01 c6 01000000 07000000 01000000 ffffffff"), ErrInvalidEncoding},
		{"extension object length 2^31-1", writeOfValue(t, "01 16 0100 5801 01 ffffff7f"), ErrTruncated},
		{"nested variants deeper than MaxDepth", writeOfValue(t, deep), ErrDepthExceeded},
		{"nested diagnostic infos", writeOfValue(t, diag), ErrDepthExceeded},
		{"index range length 2^31-1", unhex(t, "0100a102"+requestHeader29+"01000000 0001 0d000000 ffffff7f 00000000000000000000"), ErrTruncated},
		{"node id opaque length 2^31-1", unhex(t, "0100a102"+requestHeader29+"01000000 05 0000 ffffff7f 00000000000000000000"), ErrTruncated},
	}
	d := NewDecoder(Limits{})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var op opTest
			_, err := d.DecodeRequest(tc.body, ChannelSecurity{}, &op.Operation)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			// The declared sizes are refused before anything is
			// allocated for them: a few hundred bytes per decode at most
			// (the error value and the Operation's strings).
			if n := allocBytes(func() { d.DecodeRequest(tc.body, ChannelSecurity{}, &op.Operation) }); n > 8<<10 {
				t.Errorf("decode allocated %d bytes", n)
			}
		})
	}
	if got := len(hazardWrite(t, 0)) - 4; got != 33 {
		t.Fatalf("hazard request is %d bytes after the type id, want 33", got)
	}
}

// A valid deep-but-allowed nesting still decodes (the limit is not off by one).
func TestDepthLimitBoundary(t *testing.T) {
	dv := "01"
	for i := 0; i < DefaultMaxDepth-2; i++ { // DataValue and innermost Variant count too
		dv += " 98 01000000"
	}
	dv += " 06 01000000"
	d := NewDecoder(Limits{})
	var op opTest
	if _, err := d.DecodeRequest(writeOfValue(t, dv), ChannelSecurity{}, &op.Operation); err != nil {
		t.Fatalf("depth %d: %v", DefaultMaxDepth, err)
	}
	var v any = op.OPCUA.Writes[0].Value
	levels := 0
	for {
		a, ok := v.([]any)
		if !ok {
			break
		}
		levels++
		v = a[0]
	}
	if levels != DefaultMaxDepth-2 || v != int64(1) {
		t.Errorf("nested %d levels to %v", levels, v)
	}
}

func TestMatrixReshape(t *testing.T) {
	d := NewDecoder(Limits{})
	var op opTest
	body := writeOfValue(t, "01 c6 06000000 01000000 02000000 03000000 04000000 05000000 06000000 02000000 02000000 03000000")
	if _, err := d.DecodeRequest(body, ChannelSecurity{}, &op.Operation); err != nil {
		t.Fatal(err)
	}
	want := []any{[]any{int64(1), int64(2), int64(3)}, []any{int64(4), int64(5), int64(6)}}
	if w := op.OPCUA.Writes[0]; !reflect.DeepEqual(w.Value, want) || w.Type != "Int32" {
		t.Errorf("matrix %#v %s", w.Value, w.Type)
	}
}

// A Write whose value is 60000 small ExtensionObjects (Range, 23 bytes
// each) would expand to 60000 maps: the value budget stops it early.
func TestValueBudget(t *testing.T) {
	elem := unhex(t, "0100 7603 01 10000000 0000000000000000 000000000000f03f") // Range i=886, Low 0, High 1
	dv := "01 96 " + hex.EncodeToString(binary.LittleEndian.AppendUint32(nil, 60000))
	body := writeOfValue(t, dv)
	for i := 0; i < 60000; i++ {
		body = append(body, elem...)
	}
	d := NewDecoder(Limits{})
	var op opTest
	if _, err := d.DecodeRequest(body, ChannelSecurity{}, &op.Operation); !errors.Is(err, ErrTooManyValues) {
		t.Fatalf("error %v", err)
	}
	if n := allocBytes(func() { d.DecodeRequest(body, ChannelSecurity{}, &op.Operation) }); n > 16<<20 {
		t.Errorf("allocated %d bytes", n)
	}
	// Within the budget it decodes.
	small := writeOfValue(t, "01 96 02000000")
	small = append(append(small, elem...), elem...)
	if _, err := d.DecodeRequest(small, ChannelSecurity{}, &op.Operation); err != nil {
		t.Fatal(err)
	}
	if a, ok := op.OPCUA.Writes[0].Value.([]any); !ok || len(a) != 2 || op.OPCUA.Writes[0].Type != "ExtensionObject" {
		t.Errorf("value %#v", op.OPCUA.Writes[0].Value)
	}
}

func TestErrorLeavesNoPartialLists(t *testing.T) {
	// Two WriteValues, the second truncated.
	body := unhex(t, "0100a102"+requestHeader29+`
02000000
0001 0d000000 ffffffff 01 06 01000000
0001 0d000000 ffffffff 01 06 0100`)
	d := NewDecoder(Limits{})
	var op opTest
	_, err := d.DecodeRequest(body, ChannelSecurity{}, &op.Operation)
	if err == nil || op.OPCUA.Writes != nil || op.Name != "write" || op.Access != inspect.AccessWrite {
		t.Errorf("err %v op %+v writes %v", err, op.Operation, op.OPCUA.Writes)
	}
}
