package inspect

// A protocol violation is a well-framed request that breaks its protocol's
// rules (a Modbus *modbus.ProtocolError, an OPC UA body that does not
// decode but does not end the connection): it is refused as the protocol
// prescribes, without asking the policy. These name it, from the decoder's
// reason code and error, wherever it is reported — the proxy's audit trail
// and capture replay's report — so that both say the same of the same
// request.

// ViolationRule names the rule that refused a protocol violation whose
// reason code is code (modbus.ReasonOf, opcua.CodeOf): "protocol.<code>".
func ViolationRule(code string) string { return "protocol." + code }

// ViolationReason is the reason given for refusing protocol violation err:
// "protocol violation: <err>".
func ViolationReason(err error) string { return "protocol violation: " + err.Error() }
