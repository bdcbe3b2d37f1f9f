package opcua

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/conduit-ot/conduit/inspect"
)

type opTest struct{ inspect.Operation }

// unhex decodes annotated hex: on each line everything after "//" is a
// comment, whitespace is ignored.
func unhex(t testing.TB, s string) []byte {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if i := strings.Index(line, "//"); i >= 0 {
			line = line[:i]
		}
		b.WriteString(strings.Join(strings.Fields(line), ""))
	}
	out, err := hex.DecodeString(b.String())
	if err != nil {
		if t == nil {
			panic(err)
		}
		t.Fatalf("bad hex: %v", err)
	}
	return out
}
