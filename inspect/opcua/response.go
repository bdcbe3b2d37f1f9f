package opcua

import (
	"reflect"
	"strings"
)

// ValidateResponse checks a complete server→client service message body
// (after the sequence header, signature stripped) before the proxy forwards
// it: its type id must name a standard service response (or ServiceFault),
// and the body must decode exactly as that structure — no trailing bytes,
// no count beyond the bytes that remain, no nesting beyond the limit, valid
// UTF-8, booleans 0/1 — so that the client can never read a message the
// proxy did not understand, or read it another way.
//
// Unlike a request, a response may carry structures the proxy does not
// know: a Read of a vendor-defined DataType returns an ExtensionObject of
// the server's own namespace. Such an ExtensionObject (binary or XML) is
// checked only for its length and passed on; standard structures inside
// are decoded exactly. Arrays are bounded by the bytes that remain rather
// than by MaxArrayLength (a Read of a large array is legitimate); nothing
// is allocated per element.
func ValidateResponse(body []byte, l Limits) error {
	if err := schemas(); err != nil {
		return errorf(CodeInvalidEncoding, "schemas: %v", err)
	}
	l = l.Normalize()
	var r reader
	r.init(body, &l)
	r.maxArray = len(body)
	r.opaqueExt = true
	tid := r.nodeID(true)
	if r.err != nil {
		return r.err
	}
	var s *schema
	if tid.Namespace == 0 && tid.Type == IDNumeric && !tid.HasURI && !tid.HasServer && responseEncIDs[tid.Numeric] {
		s = schemaByEncID[tid.Numeric]
	}
	if s == nil {
		return errorf(CodeUnknownService, "response type %s is not a standard service response", tid)
	}
	r.walk(s, false)
	return r.finish()
}

// responseEncIDs are the binary encoding ids of the service responses and
// of ServiceFault.
var responseEncIDs = func() map[uint32]bool {
	m := make(map[uint32]bool)
	for id, t := range extObjectTypes {
		if n := t.Name(); n == "ServiceFault" || (strings.HasSuffix(n, "Response") && t.Kind() == reflect.Struct) {
			m[id] = true
		}
	}
	return m
}()
