package audit_test

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/inspect"
)

// encodeLine encodes ev and checks the framing: exactly one line, ending in
// a newline, holding one valid JSON object.
func encodeLine(t testing.TB, enc *audit.Encoder, ev *audit.Event) []byte {
	t.Helper()
	line, err := enc.AppendEvent(nil, ev)
	if err != nil {
		t.Fatalf("AppendEvent: %v", err)
	}
	if len(line) == 0 || line[len(line)-1] != '\n' {
		t.Fatalf("line does not end in a newline: %q", line)
	}
	if n := bytes.Count(line, []byte("\n")); n != 1 {
		t.Fatalf("line has %d newlines, want 1: %q", n, line)
	}
	if !json.Valid(line) {
		t.Fatalf("line is not valid JSON: %q", line)
	}
	if !utf8.Valid(line) {
		t.Fatalf("line is not valid UTF-8: %q", line)
	}
	return line
}

func decode(t testing.TB, line []byte) map[string]any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatalf("decode %q: %v", line, err)
	}
	return m
}

// assertJSON compares the decoded event with the expected document in full:
// a field that appears or disappears fails the test.
func assertJSON(t *testing.T, line []byte, want string) {
	t.Helper()
	got := decode(t, line)
	exp := decode(t, []byte(want))
	if !reflect.DeepEqual(got, exp) {
		g, _ := json.MarshalIndent(got, "", "  ")
		w, _ := json.MarshalIndent(exp, "", "  ")
		t.Errorf("event mismatch\n got: %s\nwant: %s", g, w)
	}
}

// Common expected parts.
const (
	wantECS      = `"ecs":{"version":"8.11.0"}`
	wantObserver = `"observer":{"hostname":"gw-01","product":"conduit","vendor":"Example Plant","type":"proxy","version":"1.2.3","ingress":{"interface":{"name":"modbus-line1"}}}`
	wantTLS      = `"tls":{"version":"1.3","version_protocol":"tls","client":{
		"x509":{
			"subject":{"common_name":["hmi-07"],"distinguished_name":"CN=hmi-07,OU=Operators,O=Plant","organizational_unit":["Operators"]},
			"issuer":{"distinguished_name":"CN=Plant OT CA,O=Plant"},
			"alternative_names":["hmi-07.plant.example","urn:plant:hmi-07","10.1.2.7"],
			"serial_number":"1F2E3D",
			"not_before":"2026-01-01T00:00:00Z",
			"not_after":"2027-01-01T00:00:00Z"},
		"hash":{"sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}}`
	wantEndpoints = `"source":{"ip":"10.1.2.7","port":50123},"destination":{"ip":"192.168.10.20","port":502}`
)

func TestEncodeModbusAllowed(t *testing.T) {
	enc := audit.NewEncoder(testObserver)
	ev := modbusWrite()
	ev.Seq = 7
	assertJSON(t, encodeLine(t, enc, ev), `{
		"@timestamp":"2026-03-14T09:26:53.589793238Z",
		`+wantECS+`,`+wantObserver+`,`+wantEndpoints+`,
		"network":{"protocol":"modbus","transport":"tcp"},
		`+wantTLS+`,
		"event":{"kind":"event","category":["network"],"type":["allowed"],"action":"request",
			"outcome":"success","reason":"operator may write setpoints",
			"id":"4b3a4c5e-7d1f-4f3a-9a57-0c2e6b1d9e11","sequence":7,
			"module":"conduit","dataset":"conduit.audit"},
		"rule":{"id":"setpoints.operator","version":"rev-42"},
		"conduit":{"listener":"modbus-line1","connection_id":17,
			"operation":{"access":"write","name":"write_multiple_registers"},
			"client":{"roles":["operator"]}},
		"modbus":{"unit":1,"function":16,"table":"holding_registers","address":100,"quantity":2,"values":[1500,1600]}
	}`)
}

func TestEncodeModbusDenied(t *testing.T) {
	enc := audit.NewEncoder(testObserver)
	ev := modbusWrite()
	ev.Seq = 8
	ev.Allowed = false
	ev.Outcome = "" // derived from the decision
	ev.Reason = "address 0 is the safety interlock"
	ev.DenyAction = "exception"
	ev.ExceptionCode = 1
	ev.Identity = nil
	ev.TLSVersion = ""
	ev.Op.Modbus = inspect.Modbus{Unit: 0, Function: 6, Table: inspect.TableHoldingRegisters, Address: 0, Quantity: 1, Values: []uint16{0}}
	ev.Op.Name = "write_single_register"
	assertJSON(t, encodeLine(t, enc, ev), `{
		"@timestamp":"2026-03-14T09:26:53.589793238Z",
		`+wantECS+`,`+wantObserver+`,`+wantEndpoints+`,
		"network":{"protocol":"modbus","transport":"tcp"},
		"event":{"kind":"event","category":["network","intrusion_detection"],"type":["denied"],"action":"request",
			"outcome":"failure","reason":"address 0 is the safety interlock",
			"id":"4b3a4c5e-7d1f-4f3a-9a57-0c2e6b1d9e11","sequence":8,
			"module":"conduit","dataset":"conduit.audit"},
		"rule":{"id":"setpoints.operator","version":"rev-42"},
		"conduit":{"listener":"modbus-line1","connection_id":17,"deny_action":"exception",
			"operation":{"access":"write","name":"write_single_register"}},
		"modbus":{"unit":0,"function":6,"table":"holding_registers","address":0,"quantity":1,"values":[0],"exception_code":1}
	}`)
}

func TestEncodeModbusDryRun(t *testing.T) {
	enc := audit.NewEncoder(testObserver)
	ev := modbusWrite()
	ev.DryRun = true // denied by policy, let through by monitor mode
	m := decode(t, encodeLine(t, enc, ev))
	assertPath(t, m, "event.type", []any{"allowed"})
	assertPath(t, m, "event.category", []any{"network", "intrusion_detection"})
	assertPath(t, m, "conduit.dry_run", true)
}

func TestEncodeModbusFunctionDetails(t *testing.T) {
	enc := audit.NewEncoder(testObserver)
	for _, tc := range []struct {
		name string
		mb   inspect.Modbus
		want string
	}{
		{"fc23 read/write", inspect.Modbus{Unit: 3, Function: 23, Table: inspect.TableHoldingRegisters,
			Address: 10, Quantity: 1, Values: []uint16{0xBEEF}, ReadAddress: 200, ReadQuantity: 4},
			`{"unit":3,"function":23,"table":"holding_registers","address":10,"quantity":1,"values":[48879],"read_address":200,"read_quantity":4}`},
		{"fc22 mask write", inspect.Modbus{Unit: 1, Function: 22, Table: inspect.TableHoldingRegisters,
			Address: 4, Quantity: 1, Values: []uint16{0x0012}, AndMask: 0x00F2, OrMask: 0x0025},
			`{"unit":1,"function":22,"table":"holding_registers","address":4,"quantity":1,"values":[18],"and_mask":242,"or_mask":37}`},
		{"fc21 file records", inspect.Modbus{Unit: 1, Function: 21, Table: inspect.TableFile,
			FileRecords: []inspect.FileRecord{{File: 4, Record: 7, Length: 2, Values: []uint16{1, 2}}, {File: 5, Record: 0, Length: 1, Values: []uint16{9}}}},
			`{"unit":1,"function":21,"table":"file","file_records":[{"file":4,"record":7,"length":2,"values":[1,2]},{"file":5,"record":0,"length":1,"values":[9]}]}`},
		{"fc8 diagnostics", inspect.Modbus{Unit: 1, Function: 8, Subfunction: 1, HasSubfunction: true},
			`{"unit":1,"function":8,"subfunction":1}`},
		{"fc43/14 device id", inspect.Modbus{Unit: 1, Function: 43, Subfunction: 14, HasSubfunction: true, DeviceIDCode: 1, ObjectID: 0},
			`{"unit":1,"function":43,"subfunction":14,"device_id_code":1,"object_id":0}`},
		{"fc24 fifo", inspect.Modbus{Unit: 1, Function: 24, Table: inspect.TableFIFO, Address: 0x04DE},
			`{"unit":1,"function":24,"table":"fifo","address":1246}`},
		{"unknown function", inspect.Modbus{Unit: 9, Function: 0x5A},
			`{"unit":9,"function":90}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := modbusWrite()
			ev.Op.Modbus = tc.mb
			m := decode(t, encodeLine(t, enc, ev))
			assertPath(t, m, "modbus", decode(t, []byte(tc.want)))
		})
	}
}

func opcuaWrite() *audit.Event {
	return &audit.Event{
		Time:       testTime,
		Action:     audit.ActionRequest,
		Outcome:    audit.OutcomeFailure,
		Reason:     "engineers only",
		DecisionID: "d-2",
		Allowed:    false,
		DenyAction: "exception",
		Rule:       "opcua.write",
		Listener:   "opcua-main",
		ConnID:     3,
		Source:     netip.MustParseAddrPort("[::ffff:10.1.2.8]:40000"),
		Dest:       netip.MustParseAddrPort("[fd00::20]:4840"),
		Protocol:   inspect.ProtocolOPCUA,
		StatusCode: 0x801F0000,
		Op: &inspect.Operation{
			Protocol: inspect.ProtocolOPCUA,
			Access:   inspect.AccessWrite,
			Name:     "write",
			OPCUA: &inspect.OPCUA{
				Service:              "Write",
				TypeID:               673,
				SecurityMode:         "sign",
				SecurityPolicy:       "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
				ClientCertSubject:    "CN=scada,O=Plant",
				ClientCertThumbprint: "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
				Session:              &inspect.OPCUASession{IdentityType: "username", UserName: "alice"},
				Writes: []inspect.OPCUAWrite{
					{NodeID: "ns=2;s=Line1.Setpoint", Attribute: "Value", Value: 72.5, Type: "Double"},
					{NodeID: "ns=2;i=1001", Attribute: "Value", IndexRange: "0:1", Value: []any{int64(1), int64(-2)}, Type: "Int32"},
					{NodeID: "ns=2;s=Enable", Attribute: "Value", Value: true, Type: "Boolean"},
					{NodeID: "ns=2;s=Label", Attribute: "DisplayName", Value: "Pump 1", Type: "LocalizedText"},
					{NodeID: "ns=2;s=Empty", Attribute: "Value", Value: nil, Type: "Null"},
				},
			},
		},
	}
}

func TestEncodeOPCUAWrite(t *testing.T) {
	enc := audit.NewEncoder(testObserver)
	ev := opcuaWrite()
	ev.Seq = 11
	assertJSON(t, encodeLine(t, enc, ev), `{
		"@timestamp":"2026-03-14T09:26:53.589793238Z",
		`+wantECS+`,
		"observer":{"hostname":"gw-01","product":"conduit","vendor":"Example Plant","type":"proxy","version":"1.2.3","ingress":{"interface":{"name":"opcua-main"}}},
		"source":{"ip":"10.1.2.8","port":40000},"destination":{"ip":"fd00::20","port":4840},
		"network":{"protocol":"opcua","transport":"tcp"},
		"event":{"kind":"event","category":["network","intrusion_detection"],"type":["denied"],"action":"request",
			"outcome":"failure","reason":"engineers only","id":"d-2","sequence":11,
			"module":"conduit","dataset":"conduit.audit"},
		"rule":{"id":"opcua.write"},
		"conduit":{"listener":"opcua-main","connection_id":3,"deny_action":"exception",
			"operation":{"access":"write","name":"write"}},
		"opcua":{"service":"Write","type_id":673,"security_mode":"sign",
			"security_policy":"http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
			"client_certificate":{"subject":"CN=scada,O=Plant","thumbprint":"a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"},
			"session":{"identity_type":"username","user_name":"alice"},
			"writes":[
				{"node_id":"ns=2;s=Line1.Setpoint","attribute":"Value","type":"Double","value":72.5},
				{"node_id":"ns=2;i=1001","attribute":"Value","index_range":"0:1","type":"Int32","value":[1,-2]},
				{"node_id":"ns=2;s=Enable","attribute":"Value","type":"Boolean","value":true},
				{"node_id":"ns=2;s=Label","attribute":"DisplayName","type":"LocalizedText","value":"Pump 1"},
				{"node_id":"ns=2;s=Empty","attribute":"Value","type":"Null","value":null}],
			"status_code":"0x801F0000","status_name":"BadUserAccessDenied"}
	}`)
}

func TestEncodeOPCUACallsNodesOpaque(t *testing.T) {
	enc := audit.NewEncoder(testObserver)
	ev := opcuaWrite()
	ev.StatusCode = 0x8FFF0001 // unknown code with an info bit: hex only
	ev.Op.OPCUA = &inspect.OPCUA{
		Service: "Call", TypeID: 712,
		Calls: []inspect.OPCUACall{{ObjectID: "ns=2;s=Pump", MethodID: "ns=2;s=Pump.Start",
			Arguments: []any{"fast", float64(3), nil, []byte{1, 2}, map[string]any{"b": int64(2), "a": "x"}}}},
		Nodes: []inspect.OPCUANode{{NodeID: "ns=2;s=New", ParentID: "i=85", ReferenceType: "i=35", NodeClass: "Variable", BrowseName: "2:New"}},
	}
	m := decode(t, encodeLine(t, enc, ev))
	assertPath(t, m, "opcua", decode(t, []byte(`{"service":"Call","type_id":712,
		"calls":[{"object_id":"ns=2;s=Pump","method_id":"ns=2;s=Pump.Start","arguments":["fast",3,null,"AQI=",{"a":"x","b":2}]}],
		"nodes":[{"node_id":"ns=2;s=New","parent_id":"i=85","reference_type":"i=35","node_class":"Variable","browse_name":"2:New"}],
		"status_code":"0x8FFF0001"}`)))

	ev.StatusCode = 0
	ev.Op.OPCUA = &inspect.OPCUA{Service: "", SecurityMode: "sign_and_encrypt", Opaque: true}
	m = decode(t, encodeLine(t, enc, ev))
	assertPath(t, m, "opcua", decode(t, []byte(`{"security_mode":"sign_and_encrypt","opaque":true}`)))
}

func TestEncodeConnectionOpenClose(t *testing.T) {
	enc := audit.NewEncoder(testObserver)
	for _, tc := range []struct {
		action  string
		outcome string
		types   string
	}{
		{audit.ActionConnectionOpen, audit.OutcomeSuccess, `["connection","start"]`},
		{audit.ActionConnectionClose, audit.OutcomeSuccess, `["connection","end"]`},
		{audit.ActionConnectionClose, audit.OutcomeFailure, `["connection","end","error"]`},
	} {
		ev := &audit.Event{
			Seq: 1, Time: testTime, Action: tc.action, Outcome: tc.outcome,
			Listener: "modbus-line1", ConnID: 17, Protocol: inspect.ProtocolModbus,
			Source:   netip.MustParseAddrPort("10.1.2.7:50123"),
			Dest:     netip.MustParseAddrPort("192.168.10.20:502"),
			Identity: testIdentity(), TLSVersion: "1.3",
		}
		assertJSON(t, encodeLine(t, enc, ev), `{
			"@timestamp":"2026-03-14T09:26:53.589793238Z",
			`+wantECS+`,`+wantObserver+`,`+wantEndpoints+`,
			"network":{"protocol":"modbus","transport":"tcp"},
			`+wantTLS+`,
			"event":{"kind":"event","category":["network"],"type":`+tc.types+`,"action":"`+tc.action+`",
				"outcome":"`+tc.outcome+`","sequence":1,"module":"conduit","dataset":"conduit.audit"},
			"conduit":{"listener":"modbus-line1","connection_id":17,"client":{"roles":["operator"]}}
		}`)
	}
}

func TestEncodeHandshakeRefused(t *testing.T) {
	enc := audit.NewEncoder(testObserver)
	ev := &audit.Event{Time: testTime, Action: audit.ActionHandshake, Outcome: audit.OutcomeFailure,
		Reason: "tls: certificate signed by unknown authority", Listener: "modbus-line1",
		Source: netip.MustParseAddrPort("10.9.9.9:1234"), Protocol: inspect.ProtocolModbus}
	m := decode(t, encodeLine(t, enc, ev))
	assertPath(t, m, "event.category", []any{"network", "intrusion_detection"})
	assertPath(t, m, "event.type", []any{"connection", "denied"})
	assertPath(t, m, "event.reason", "tls: certificate signed by unknown authority")
	assertAbsent(t, m, "tls")
	assertAbsent(t, m, "destination")
}

func TestEncodeMalformed(t *testing.T) {
	enc := audit.NewEncoder(testObserver)
	frame := make([]byte, 300)
	for i := range frame {
		frame[i] = byte(i)
	}
	ev := &audit.Event{
		Seq: 5, Time: testTime, Action: audit.ActionMalformed, Outcome: audit.OutcomeFailure,
		Reason: "mbap length 2 does not match function 3", Listener: "modbus-line1", ConnID: 17,
		Source: netip.MustParseAddrPort("10.1.2.7:50123"), Dest: netip.MustParseAddrPort("192.168.10.20:502"),
		Protocol: inspect.ProtocolModbus, DenyAction: "reset", Bytes: frame,
	}
	var wantHex strings.Builder
	for i := 0; i < audit.MaxFrameBytes; i++ {
		const digits = "0123456789abcdef"
		wantHex.WriteByte(digits[i>>4])
		wantHex.WriteByte(digits[i&15])
	}
	assertJSON(t, encodeLine(t, enc, ev), `{
		"@timestamp":"2026-03-14T09:26:53.589793238Z",
		`+wantECS+`,`+wantObserver+`,`+wantEndpoints+`,
		"network":{"protocol":"modbus","transport":"tcp"},
		"event":{"kind":"event","category":["network","intrusion_detection"],"type":["denied","error"],
			"action":"malformed-frame","outcome":"failure","reason":"mbap length 2 does not match function 3",
			"sequence":5,"module":"conduit","dataset":"conduit.audit"},
		"conduit":{"listener":"modbus-line1","connection_id":17,"deny_action":"reset",
			"frame":"`+wantHex.String()+`","frame_length":300}
	}`)
}

func TestEncodePolicyReload(t *testing.T) {
	enc := audit.NewEncoder(audit.Observer{Hostname: "gw-01", Version: "1.2.3"})
	ev := &audit.Event{Seq: 2, Time: testTime, Action: audit.ActionPolicyReload, Outcome: audit.OutcomeSuccess,
		Reason: "bundle /etc/conduit/policy", Revision: "rev-43"}
	assertJSON(t, encodeLine(t, enc, ev), `{
		"@timestamp":"2026-03-14T09:26:53.589793238Z",
		`+wantECS+`,
		"observer":{"hostname":"gw-01","product":"conduit","vendor":"Conduit","type":"proxy","version":"1.2.3"},
		"event":{"kind":"event","category":["configuration"],"type":["change"],"action":"policy-reload",
			"outcome":"success","reason":"bundle /etc/conduit/policy","sequence":2,
			"module":"conduit","dataset":"conduit.audit"},
		"rule":{"version":"rev-43"}
	}`)

	ev.Outcome = audit.OutcomeFailure
	ev.Reason = "rego_parse_error: unexpected eof"
	m := decode(t, encodeLine(t, enc, ev))
	assertPath(t, m, "event.type", []any{"change", "error"})
}

func TestEncodeOmitsEmpty(t *testing.T) {
	enc := audit.NewEncoder(testObserver)
	m := decode(t, encodeLine(t, enc, &audit.Event{Action: audit.ActionStart}))
	for _, k := range []string{"@timestamp", "source", "destination", "network", "tls", "rule", "conduit", "modbus", "opcua"} {
		assertAbsent(t, m, k)
	}
	for _, k := range []string{"outcome", "reason", "id", "sequence"} {
		assertAbsent(t, m, "event."+k)
	}
	assertPath(t, m, "event.category", []any{"process"})
	assertPath(t, m, "event.type", []any{"start"})
}

// TestEncodeHostileStrings feeds strings from the wire (user names, node
// ids, frames) with quotes, control characters, line separators and invalid
// UTF-8 through every string field: each event stays one valid JSON line
// and valid strings survive the round trip unchanged.
func TestEncodeHostileStrings(t *testing.T) {
	enc := audit.NewEncoder(audit.Observer{Hostname: "h\"ost\n", Vendor: "v\\", Version: "\x00"})
	hostile := []string{
		`quote " and backslash \`,
		"newline \n carriage \r tab \t nul \x00 bell \x07",
		"line separator \u2028 paragraph \u2029",
		"invalid utf-8 \xff\xfe and truncated \xe2\x82",
		`{"injected":"field"}` + "\n" + `{"@timestamp":"x"}`,
		"</script><script>alert(1)</script>",
	}
	for i, s := range hostile {
		ev := opcuaWrite()
		ev.Seq = uint64(i + 1)
		ev.Reason, ev.DecisionID, ev.Rule, ev.Listener = s, s, s, s
		ev.Op.Name = s
		ev.Op.OPCUA.Session.UserName = s
		ev.Op.OPCUA.Writes[0].NodeID = s
		ev.Op.OPCUA.Writes[0].Value = s
		id := testIdentity()
		id.CommonName, id.Subject, id.DNSNames, id.Roles = s, s, []string{s}, []string{s}
		ev.Identity = id
		ev.Bytes = []byte(s)
		m := decode(t, encodeLine(t, enc, ev))
		want := s
		if !utf8.ValidString(s) {
			// zap replaces each invalid byte with U+FFFD.
			want = strings.ReplaceAll(s, "\xff", "\uFFFD")
			want = strings.ReplaceAll(want, "\xfe", "\uFFFD")
			want = strings.ReplaceAll(want, "\xe2\x82", "\uFFFD\uFFFD")
		}
		assertPath(t, m, "event.reason", want)
		assertPath(t, m, "opcua.session.user_name", want)
		assertPath(t, m, "tls.client.x509.subject.common_name", []any{want})
		assertPath(t, m, "conduit.client.roles", []any{want})
		assertPath(t, m, "observer.hostname", "h\"ost\n")
	}
}

func TestEncodeCacheFollowsConnection(t *testing.T) {
	// The static fields are cached per connection; a different identity or
	// source on the same listener must never reuse another's.
	enc := audit.NewEncoder(testObserver)
	a := modbusWrite()
	b := modbusWrite()
	b.Identity.CommonName = "eng-01"
	b.Source = netip.MustParseAddrPort("10.1.2.9:1")
	for i := 0; i < 3; i++ {
		ma := decode(t, encodeLine(t, enc, a))
		mb := decode(t, encodeLine(t, enc, b))
		assertPath(t, ma, "tls.client.x509.subject.common_name", []any{"hmi-07"})
		assertPath(t, mb, "tls.client.x509.subject.common_name", []any{"eng-01"})
		assertPath(t, ma, "source.ip", "10.1.2.7")
		assertPath(t, mb, "source.ip", "10.1.2.9")
	}
	// After close, a new connection with the same fields encodes the same.
	c := *a
	c.Action, c.Op = audit.ActionConnectionClose, nil
	encodeLine(t, enc, &c)
	assertPath(t, decode(t, encodeLine(t, enc, a)), "tls.client.x509.subject.common_name", []any{"hmi-07"})
}

func TestStatusName(t *testing.T) {
	for code, want := range map[uint32]string{
		0x00000000: "Good",
		0x801F0000: "BadUserAccessDenied",
		0x80340000: "BadNodeIdUnknown",
		0x803B0400: "BadNotWritable", // info bits do not change the name
	} {
		if got, ok := audit.StatusName(code); !ok || got != want {
			t.Errorf("StatusName(%#08x) = %q, %v; want %q", code, got, ok, want)
		}
	}
	if got, ok := audit.StatusName(0x8FFF0000); ok {
		t.Errorf("StatusName(unknown) = %q, true", got)
	}
}

func FuzzEncode(f *testing.F) {
	f.Add("alice", "ns=2;s=X", []byte{0, 1, 2, 3, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1}, 1.5)
	f.Add("\xff\"\n", "\u2028", []byte("\x00\xff"), -0.0)
	enc := audit.NewEncoder(testObserver)
	f.Fuzz(func(t *testing.T, user, node string, frame []byte, value float64) {
		ev := opcuaWrite()
		ev.Reason = user
		ev.Listener = node
		ev.Op.OPCUA.Session.UserName = user
		ev.Op.OPCUA.Writes[0].NodeID = node
		ev.Op.OPCUA.Writes[0].Value = value
		ev.Op.OPCUA.Writes[1].Value = []any{user, value, node}
		ev.Bytes = frame
		encodeLine(t, enc, ev)
	})
}

// assertPath checks the value at a dotted path of a decoded event. Numbers
// are compared by their JSON text.
func assertPath(t *testing.T, m map[string]any, path string, want any) {
	t.Helper()
	got, ok := lookup(m, path)
	if !ok {
		t.Errorf("%s: missing", path)
		return
	}
	if !reflect.DeepEqual(normalize(got), normalize(want)) {
		t.Errorf("%s = %#v, want %#v", path, got, want)
	}
}

func assertAbsent(t *testing.T, m map[string]any, path string) {
	t.Helper()
	if v, ok := lookup(m, path); ok {
		t.Errorf("%s = %#v, want absent", path, v)
	}
}

func lookup(m map[string]any, path string) (any, bool) {
	var cur any = m
	for _, part := range strings.Split(path, ".") {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = obj[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// normalize turns json.Number and Go numbers into the same form.
func normalize(v any) any {
	b, _ := json.Marshal(v)
	var out any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	_ = d.Decode(&out)
	return out
}

func TestEncodeValueTypes(t *testing.T) {
	enc := audit.NewEncoder(testObserver)
	if enc.Observer() != testObserver {
		t.Errorf("Observer() = %+v", enc.Observer())
	}
	type opaque struct{ x int }
	values := []any{
		nil, true, "s", float64(1.5), float32(0.25), int64(-1), int(-2), int32(-3), int16(-4), int8(-5),
		uint64(1 << 63), uint(6), uint32(7), uint16(8), uint8(9), []byte{0xff, 0}, []any{int64(1), nil, []any{"x"}},
		map[string]any{"z": false, "a": []any{}}, opaque{1},
	}
	want := []string{
		`null`, `true`, `"s"`, `1.5`, `0.25`, `-1`, `-2`, `-3`, `-4`, `-5`,
		`9223372036854775808`, `6`, `7`, `8`, `9`, `"/wA="`, `[1,null,["x"]]`,
		`{"a":[],"z":false}`,
	}
	ev := opcuaWrite()
	ev.Op.OPCUA.Writes = nil
	for _, v := range values {
		ev.Op.OPCUA.Writes = append(ev.Op.OPCUA.Writes, inspect.OPCUAWrite{NodeID: "n", Value: v})
	}
	ev.Op.OPCUA.Calls = []inspect.OPCUACall{{ObjectID: "o", MethodID: "m", Arguments: values}}
	m := decode(t, encodeLine(t, enc, ev))
	writes, _ := lookup(m, "opcua.writes")
	args, _ := lookup(m, "opcua.calls")
	argList := args.([]any)[0].(map[string]any)["arguments"].([]any)
	for i, w := range writes.([]any) {
		obj := w.(map[string]any)
		if i == len(values)-1 {
			// A type the decoders do not produce is flagged, not guessed.
			if obj["value_unsupported"] != true || obj["value"] != nil {
				t.Errorf("unsupported value: %v", obj)
			}
			if got := normalize(argList[i]); !reflect.DeepEqual(got, normalize(map[string]any{"unsupported": true})) {
				t.Errorf("unsupported argument: %v", got)
			}
			continue
		}
		exp := normalize(decode(t, []byte(`{"v":`+want[i]+`}`))["v"])
		if got := normalize(obj["value"]); !reflect.DeepEqual(got, exp) {
			t.Errorf("value %T: %v, want %v", values[i], got, exp)
		}
		if got := normalize(argList[i]); !reflect.DeepEqual(got, exp) {
			t.Errorf("argument %T: %v, want %v", values[i], got, exp)
		}
	}
}

// The steady state of a connection's events allocates nothing (issue #6:
// ≤ 1 allocation per event). It once allocated the cache key on every
// event, hit or miss, because the miss path took its address.
func TestEncodeSteadyStateAllocatesNothing(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("instrumented builds allocate")
	}
	enc := audit.NewEncoder(testObserver)
	ev := modbusWrite()
	ev.Seq = 1
	// Another connection: its events alternate with ev's, so each one
	// misses the encoder state's last-base shortcut and hits the cache.
	other := modbusWrite()
	other.Seq = 2
	other.Source = netip.MustParseAddrPort("10.1.2.8:50124")
	buf := make([]byte, 0, 4096)
	for _, e := range []*audit.Event{ev, other} { // fills the cache
		if _, err := enc.AppendEvent(buf, e); err != nil {
			t.Fatal(err)
		}
	}
	for _, evs := range [][]*audit.Event{{ev}, {ev, other}} {
		allocs := testing.AllocsPerRun(200, func() {
			for _, e := range evs {
				var err error
				if buf, err = enc.AppendEvent(buf[:0], e); err != nil {
					t.Fatal(err)
				}
			}
		})
		if allocs != 0 {
			t.Errorf("%d connection(s): %.1f allocations per run", len(evs), allocs)
		}
	}
}
