package audit_test

import (
	"testing"

	"github.com/conduit-ot/conduit/audit"
)

// BenchmarkEncode measures encoding one request event (Modbus FC16 with two
// values and a TLS identity) into a reused buffer.
func BenchmarkEncode(b *testing.B) {
	enc := audit.NewEncoder(testObserver)
	ev := modbusWrite()
	ev.Seq = 1
	buf := make([]byte, 0, 4096)
	var err error
	b.ReportAllocs()
	for b.Loop() {
		buf, err = enc.AppendEvent(buf[:0], ev)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}
