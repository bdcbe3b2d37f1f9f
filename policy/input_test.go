package policy_test

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/policy"
)

func wantModbus(access, name, modbus string) string {
	return fmt.Sprintf(`{
		"protocol": "modbus", "listener": "plc-line1", "upstream": "127.0.0.1:5020",
		"client": {"address": "127.0.0.1", "port": 50100, "identity": null},
		"operation": {"access": %q, "name": %q},
		"modbus": %s}`, access, name, modbus)
}

// TestDocumentModbus spells out the input document of every Modbus function
// code the decoders produce (docs/policy.md has the same table) and checks
// each against the published JSON Schema.
func TestDocumentModbus(t *testing.T) {
	hr, co := inspect.TableHoldingRegisters, inspect.TableCoils
	cases := []struct {
		fc     string
		access inspect.Access
		name   string
		m      inspect.Modbus
		want   string
	}{
		{"1", inspect.AccessRead, "read_coils",
			inspect.Modbus{Unit: 1, Function: 1, Table: co, Address: 0, Quantity: 16},
			`{"unit": 1, "function": 1, "table": "coils", "address": 0, "quantity": 16}`},
		{"2", inspect.AccessRead, "read_discrete_inputs",
			inspect.Modbus{Unit: 1, Function: 2, Table: inspect.TableDiscreteInputs, Address: 5, Quantity: 3},
			`{"unit": 1, "function": 2, "table": "discrete_inputs", "address": 5, "quantity": 3}`},
		{"3", inspect.AccessRead, "read_holding_registers",
			inspect.Modbus{Unit: 1, Function: 3, Table: hr, Address: 0, Quantity: 10},
			`{"unit": 1, "function": 3, "table": "holding_registers", "address": 0, "quantity": 10}`},
		{"4", inspect.AccessRead, "read_input_registers",
			inspect.Modbus{Unit: 247, Function: 4, Table: inspect.TableInputRegisters, Address: 65535, Quantity: 1},
			`{"unit": 247, "function": 4, "table": "input_registers", "address": 65535, "quantity": 1}`},
		{"5", inspect.AccessWrite, "write_single_coil",
			inspect.Modbus{Unit: 1, Function: 5, Table: co, Address: 3, Quantity: 1, Values: []uint16{1}},
			`{"unit": 1, "function": 5, "table": "coils", "address": 3, "quantity": 1, "values": [1]}`},
		{"6", inspect.AccessWrite, "write_single_register",
			inspect.Modbus{Unit: 1, Function: 6, Table: hr, Address: 15, Quantity: 1, Values: []uint16{5000}},
			`{"unit": 1, "function": 6, "table": "holding_registers", "address": 15, "quantity": 1, "values": [5000]}`},
		{"7", inspect.AccessDiagnostic, "read_exception_status",
			inspect.Modbus{Unit: 1, Function: 7},
			`{"unit": 1, "function": 7}`},
		{"8/0", inspect.AccessDiagnostic, "diagnostics",
			inspect.Modbus{Unit: 1, Function: 8, Subfunction: 0, HasSubfunction: true},
			`{"unit": 1, "function": 8, "subfunction": 0}`},
		{"8/4", inspect.AccessDiagnostic, "diagnostics",
			inspect.Modbus{Unit: 1, Function: 8, Subfunction: 4, HasSubfunction: true},
			`{"unit": 1, "function": 8, "subfunction": 4}`},
		{"11", inspect.AccessDiagnostic, "get_comm_event_counter",
			inspect.Modbus{Unit: 1, Function: 11},
			`{"unit": 1, "function": 11}`},
		{"12", inspect.AccessDiagnostic, "get_comm_event_log",
			inspect.Modbus{Unit: 1, Function: 12},
			`{"unit": 1, "function": 12}`},
		{"15", inspect.AccessWrite, "write_multiple_coils",
			inspect.Modbus{Unit: 1, Function: 15, Table: co, Address: 0, Quantity: 4, Values: []uint16{1, 0, 1, 1}},
			`{"unit": 1, "function": 15, "table": "coils", "address": 0, "quantity": 4, "values": [1, 0, 1, 1]}`},
		{"16", inspect.AccessWrite, "write_multiple_registers",
			inspect.Modbus{Unit: 1, Function: 16, Table: hr, Address: 10, Quantity: 2, Values: []uint16{100, 65535}},
			`{"unit": 1, "function": 16, "table": "holding_registers", "address": 10, "quantity": 2, "values": [100, 65535]}`},
		{"17", inspect.AccessDiagnostic, "report_server_id",
			inspect.Modbus{Unit: 1, Function: 17},
			`{"unit": 1, "function": 17}`},
		{"20", inspect.AccessRead, "read_file_record",
			inspect.Modbus{Unit: 1, Function: 20, Table: inspect.TableFile, FileRecords: []inspect.FileRecord{{File: 4, Record: 1, Length: 2}, {File: 3, Record: 9, Length: 2}}},
			`{"unit": 1, "function": 20, "table": "file", "file_records": [{"file": 4, "record": 1, "length": 2}, {"file": 3, "record": 9, "length": 2}]}`},
		{"21", inspect.AccessWrite, "write_file_record",
			inspect.Modbus{Unit: 1, Function: 21, Table: inspect.TableFile, FileRecords: []inspect.FileRecord{{File: 4, Record: 7, Length: 3, Values: []uint16{0x06AF, 0x04BE, 0x100D}}}},
			`{"unit": 1, "function": 21, "table": "file", "file_records": [{"file": 4, "record": 7, "length": 3, "values": [1711, 1214, 4109]}]}`},
		{"22", inspect.AccessWrite, "mask_write_register",
			inspect.Modbus{Unit: 1, Function: 22, Table: hr, Address: 4, Quantity: 1, AndMask: 0x00F2, OrMask: 0x0025},
			`{"unit": 1, "function": 22, "table": "holding_registers", "address": 4, "quantity": 1, "values": [], "and_mask": 242, "or_mask": 37}`},
		{"23", inspect.AccessWrite, "read_write_multiple_registers",
			inspect.Modbus{Unit: 1, Function: 23, Table: hr, Address: 14, Quantity: 3, Values: []uint16{255, 255, 255}, ReadAddress: 3, ReadQuantity: 6},
			`{"unit": 1, "function": 23, "table": "holding_registers", "address": 14, "quantity": 3, "values": [255, 255, 255],
			  "read": {"address": 3, "quantity": 6}, "write": {"address": 14, "quantity": 3, "values": [255, 255, 255]}}`},
		{"24", inspect.AccessRead, "read_fifo_queue",
			inspect.Modbus{Unit: 1, Function: 24, Table: inspect.TableFIFO, Address: 0x04DE},
			`{"unit": 1, "function": 24, "table": "fifo", "address": 1246}`},
		{"43/14", inspect.AccessDiagnostic, "read_device_identification",
			inspect.Modbus{Unit: 1, Function: 43, Subfunction: 14, HasSubfunction: true, DeviceIDCode: 1, ObjectID: 0},
			`{"unit": 1, "function": 43, "subfunction": 14, "device_id_code": 1, "object_id": 0}`},
		{"43/13", inspect.AccessOther, "encapsulated_interface_transport",
			inspect.Modbus{Unit: 1, Function: 43, Subfunction: 13, HasSubfunction: true},
			`{"unit": 1, "function": 43, "subfunction": 13}`},
		{"90", inspect.AccessOther, "unknown_function",
			inspect.Modbus{Unit: 1, Function: 90},
			`{"unit": 1, "function": 90}`},
		{"broadcast", inspect.AccessWrite, "write_single_register",
			inspect.Modbus{Unit: 0, Function: 6, Table: hr, Address: 1, Quantity: 1, Values: []uint16{7}},
			`{"unit": 0, "function": 6, "table": "holding_registers", "address": 1, "quantity": 1, "values": [7]}`},
	}
	for _, c := range cases {
		t.Run("FC"+c.fc, func(t *testing.T) {
			in := modbusInput("127.0.0.1:50100", c.access, c.name, c.m)
			got, err := policy.DocumentJSON(in)
			if err != nil {
				t.Fatal(err)
			}
			if want := wantModbus(c.access.String(), c.name, c.want); !jsonEqual(t, got, want) {
				t.Errorf("document\n got %s\nwant %s", got, want)
			}
			if err := policy.ValidateDocument(ctx, got); err != nil {
				t.Errorf("schema: %v", err)
			}
		})
	}
}

func TestDocumentOPCUA(t *testing.T) {
	in := &policy.Input{
		Protocol: inspect.ProtocolOPCUA,
		Listener: "opcua-line1",
		Upstream: "10.0.0.5:4840",
		Client:   netip.MustParseAddrPort("[::ffff:10.20.3.4]:49152"),
		Op: &inspect.Operation{
			Protocol: inspect.ProtocolOPCUA, Access: inspect.AccessWrite, Name: "write",
			OPCUA: &inspect.OPCUA{
				Service: "Write", TypeID: 673, SecurityMode: "sign",
				SecurityPolicy:       "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
				ClientCertSubject:    "CN=eng-ws-01",
				ClientCertThumbprint: "5d41402abc4b2a76b9719d911017c592ae5a1f3c",
				Session:              &inspect.OPCUASession{IdentityType: "username", UserName: "engineer1"},
				Writes: []inspect.OPCUAWrite{
					{NodeID: "ns=2;s=Line1.Setpoint", Attribute: "Value", Value: 512.5, Type: "Double"},
					{NodeID: "ns=2;s=Line1.Limits", Attribute: "Value", IndexRange: "0:1", Value: []any{int64(1), int64(2)}, Type: "Int32"},
					{NodeID: "ns=2;s=Line1.Mode", Attribute: "Value", Value: map[string]any{"b": true, "a": nil}, Type: "ExtensionObject"},
				},
				Calls: []inspect.OPCUACall{{ObjectID: "ns=2;s=Line1", MethodID: "ns=2;s=Line1.Reset", Arguments: []any{"now", uint32(3)}}},
				Nodes: []inspect.OPCUANode{{NodeID: "ns=2;s=X", ParentID: "ns=2;s=Line1", ReferenceType: "HasComponent", NodeClass: "Variable", BrowseName: "2:X"}},
			},
		},
	}
	want := `{
		"protocol": "opcua", "listener": "opcua-line1", "upstream": "10.0.0.5:4840",
		"client": {"address": "10.20.3.4", "port": 49152, "identity": null},
		"operation": {"access": "write", "name": "write"},
		"opcua": {
			"service": "Write", "type_id": 673, "security_mode": "sign",
			"security_policy": "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
			"opaque": false,
			"client_certificate": {"subject": "CN=eng-ws-01", "thumbprint": "5d41402abc4b2a76b9719d911017c592ae5a1f3c"},
			"session": {"identity_type": "username", "user_name": "engineer1"},
			"writes": [
				{"node_id": "ns=2;s=Line1.Setpoint", "attribute": "Value", "index_range": "", "value": 512.5, "type": "Double"},
				{"node_id": "ns=2;s=Line1.Limits", "attribute": "Value", "index_range": "0:1", "value": [1, 2], "type": "Int32"},
				{"node_id": "ns=2;s=Line1.Mode", "attribute": "Value", "index_range": "", "value": {"a": null, "b": true}, "type": "ExtensionObject"}
			],
			"calls": [{"object_id": "ns=2;s=Line1", "method_id": "ns=2;s=Line1.Reset", "arguments": ["now", 3]}],
			"nodes": [{"node_id": "ns=2;s=X", "parent_id": "ns=2;s=Line1", "reference_type": "HasComponent", "node_class": "Variable", "browse_name": "2:X"}]
		}}`
	got, err := policy.DocumentJSON(in)
	if err != nil {
		t.Fatal(err)
	}
	if !jsonEqual(t, got, want) {
		t.Errorf("document\n got %s\nwant %s", got, want)
	}
	if err := policy.ValidateDocument(ctx, got); err != nil {
		t.Errorf("schema: %v", err)
	}

	// Opaque, no certificate, no session: nulls and empty lists.
	in.Op.OPCUA = &inspect.OPCUA{SecurityMode: "sign_and_encrypt", SecurityPolicy: "p", Opaque: true}
	got, err = policy.DocumentJSON(in)
	if err != nil {
		t.Fatal(err)
	}
	want = `{
		"protocol": "opcua", "listener": "opcua-line1", "upstream": "10.0.0.5:4840",
		"client": {"address": "10.20.3.4", "port": 49152, "identity": null},
		"operation": {"access": "write", "name": "write"},
		"opcua": {"service": "", "type_id": 0, "security_mode": "sign_and_encrypt", "security_policy": "p", "opaque": true,
			"client_certificate": null, "session": null, "writes": [], "calls": [], "nodes": []}}`
	if !jsonEqual(t, got, want) {
		t.Errorf("opaque document\n got %s\nwant %s", got, want)
	}
	if err := policy.ValidateDocument(ctx, got); err != nil {
		t.Errorf("schema: %v", err)
	}
}

func TestDocumentIdentity(t *testing.T) {
	in := readHR("10.20.1.5:50100", 0, 10)
	in.Identity = engineerIdentity()
	got, err := policy.DocumentJSON(in)
	if err != nil {
		t.Fatal(err)
	}
	want := wantModbus("read", "read_holding_registers",
		`{"unit": 1, "function": 3, "table": "holding_registers", "address": 0, "quantity": 10}`)
	want = strings.Replace(want, `{"address": "127.0.0.1", "port": 50100, "identity": null}`, `{
		"address": "10.20.1.5", "port": 50100,
		"identity": {
			"common_name": "eng-01",
			"subject": "CN=eng-01,OU=Maintenance,O=Plant",
			"issuer": "CN=Plant CA,O=Plant",
			"dns_names": ["eng-01.plant.example"],
			"uris": ["spiffe://plant.example/eng-01"],
			"ip_addresses": ["10.20.1.5"],
			"organizational_units": ["Maintenance"],
			"roles": ["engineer"],
			"serial": "1A2B3C",
			"fingerprint_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
			"not_before": "2026-01-01T00:00:00Z",
			"not_after": "2027-01-01T11:30:00Z"}}`, 1)
	if !jsonEqual(t, got, want) {
		t.Errorf("document\n got %s\nwant %s", got, want)
	}
	if err := policy.ValidateDocument(ctx, got); err != nil {
		t.Errorf("schema: %v", err)
	}
	// An identity without lists still has the lists, empty.
	in.Identity = &pki.Identity{CommonName: "x"}
	got, _ = policy.DocumentJSON(in)
	if !strings.Contains(string(got), `"roles":[]`) || !strings.Contains(string(got), `"uris":[]`) {
		t.Errorf("empty lists must be [] not null: %s", got)
	}
}

func TestDocumentErrors(t *testing.T) {
	nan := &policy.Input{Protocol: inspect.ProtocolOPCUA, Listener: "l", Op: &inspect.Operation{
		Protocol: inspect.ProtocolOPCUA, OPCUA: &inspect.OPCUA{Writes: []inspect.OPCUAWrite{{Value: math.NaN()}}},
	}}
	deep := any("x")
	for range 40 {
		deep = []any{deep}
	}
	tooDeep := &policy.Input{Protocol: inspect.ProtocolOPCUA, Listener: "l", Op: &inspect.Operation{
		Protocol: inspect.ProtocolOPCUA, OPCUA: &inspect.OPCUA{Writes: []inspect.OPCUAWrite{{Value: deep}}},
	}}
	cases := map[string]*policy.Input{
		"nil input":          nil,
		"nil operation":      {Protocol: inspect.ProtocolModbus},
		"protocol mismatch":  {Protocol: inspect.ProtocolModbus, Op: &inspect.Operation{Protocol: inspect.ProtocolOPCUA}},
		"unknown protocol":   {Protocol: "dnp3", Op: &inspect.Operation{Protocol: "dnp3"}},
		"opcua without part": {Protocol: inspect.ProtocolOPCUA, Op: &inspect.Operation{Protocol: inspect.ProtocolOPCUA}},
		"unknown table": {Protocol: inspect.ProtocolModbus, Op: &inspect.Operation{Protocol: inspect.ProtocolModbus,
			Modbus: inspect.Modbus{Table: inspect.Table(99)}}},
		"NaN value":       nan,
		"nested too deep": tooDeep,
		"unmarshalable value": {Protocol: inspect.ProtocolOPCUA, Op: &inspect.Operation{Protocol: inspect.ProtocolOPCUA,
			OPCUA: &inspect.OPCUA{Calls: []inspect.OPCUACall{{Arguments: []any{make(chan int)}}}}}},
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := policy.Document(in); !errors.Is(err, policy.ErrInput) {
				t.Errorf("Document: err = %v, want ErrInput", err)
			}
		})
	}
}

// A value type outside the contract is written as the JSON it marshals to.
type celsius struct{ Degrees float64 }

func TestDocumentForeignValue(t *testing.T) {
	in := &policy.Input{Protocol: inspect.ProtocolOPCUA, Listener: "l", Op: &inspect.Operation{
		Protocol: inspect.ProtocolOPCUA, OPCUA: &inspect.OPCUA{Writes: []inspect.OPCUAWrite{{Value: celsius{21.5}}, {Value: uint64(math.MaxUint64)}}},
	}}
	got, err := policy.DocumentJSON(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(got), `"value":{"Degrees":21.5}`) || !strings.Contains(string(got), `"value":18446744073709551615`) {
		t.Errorf("document %s", got)
	}
}

// TestSchemaPublished keeps docs/policy-input.schema.json identical to the
// schema the package embeds and validates with.
func TestSchemaPublished(t *testing.T) {
	docs, err := os.ReadFile(filepath.Join("..", "docs", "policy-input.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	if string(docs) != string(policy.InputSchema) {
		t.Error("docs/policy-input.schema.json differs from policy/input.schema.json: copy one over the other")
	}
}

func TestSchemaRejects(t *testing.T) {
	bad := map[string]string{
		"unknown field":     wantModbus("read", "x", `{"unit": 1, "function": 3, "adress": 1}`),
		"modbus on opcua":   strings.Replace(wantModbus("read", "x", `{"unit": 1, "function": 3}`), `"protocol": "modbus"`, `"protocol": "opcua"`, 1),
		"unit out of range": wantModbus("read", "x", `{"unit": 256, "function": 3}`),
		"bad access":        wantModbus("readwrite", "x", `{"unit": 1, "function": 3}`),
		"not JSON":          `{`,
	}
	for name, doc := range bad {
		t.Run(name, func(t *testing.T) {
			if err := policy.ValidateDocument(ctx, []byte(doc)); !errors.Is(err, policy.ErrInput) {
				t.Errorf("err = %v, want a schema error", err)
			}
		})
	}
}
