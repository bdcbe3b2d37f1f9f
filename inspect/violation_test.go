package inspect

import (
	"errors"
	"testing"
)

// The names are part of the audit trail and of replay reports (policies and
// dashboards match on them): they never change.
func TestViolationNames(t *testing.T) {
	if got := ViolationRule("bad_quantity"); got != "protocol.bad_quantity" {
		t.Errorf("rule %q", got)
	}
	if got := ViolationReason(errors.New("opcua: invalid_encoding: boolean 2")); got != "protocol violation: opcua: invalid_encoding: boolean 2" {
		t.Errorf("reason %q", got)
	}
}
