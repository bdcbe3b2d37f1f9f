package policy_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/policy"
)

var update = flag.Bool("update", false, "rewrite examples/policy/*.json from the inputs in examples_test.go")

// example is one file of examples/policy: the input document the proxy
// builds for in, and what the reference policy decides for it.
type example struct {
	file   string
	in     *policy.Input
	allow  bool
	reason string
}

func examples() []example {
	const loop = "127.0.0.1:50100"
	eng := writeHR("10.20.1.5:50100", 15, 750)
	eng.Identity = engineerIdentity()
	op := writeHR("10.20.1.6:50100", 15, 750)
	op.Identity = engineerIdentity()
	op.Identity.CommonName, op.Identity.Subject, op.Identity.Roles = "op-01", "CN=op-01,OU=Operations,O=Plant", []string{"operator"}
	op.Identity.URIs, op.Identity.DNSNames, op.Identity.IPAddresses, op.Identity.OrganizationalUnits = nil, nil, nil, []string{"Operations"}
	ua := func(op *inspect.OPCUA) *policy.Input {
		access, name := inspect.AccessWrite, "write"
		if op.Service == "Call" {
			name = "call"
		}
		if op.Opaque {
			access, name = inspect.AccessOther, "opaque"
		}
		return &policy.Input{Protocol: inspect.ProtocolOPCUA, Listener: "opcua-line1", Upstream: "127.0.0.1:4840",
			Client: netipMust("127.0.0.1:50200"), Op: &inspect.Operation{Protocol: inspect.ProtocolOPCUA, Access: access, Name: name, OPCUA: op}}
	}
	opaque := ua(&inspect.OPCUA{SecurityMode: "sign_and_encrypt", SecurityPolicy: "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
		Opaque: true, ClientCertSubject: "CN=eng-ws-01,O=Plant", ClientCertThumbprint: "5d41402abc4b2a76b9719d911017c592ae5a1f3c"})
	opaque.Client = netipMust("10.20.3.4:50300")
	opaque.Identity = engineerIdentity()
	opaque.Identity.CommonName, opaque.Identity.Subject, opaque.Identity.Roles = "eng-ws-01", "CN=eng-ws-01,O=Plant", nil
	opaque.Identity.URIs, opaque.Identity.DNSNames, opaque.Identity.IPAddresses, opaque.Identity.OrganizationalUnits = nil, nil, nil, nil
	return []example{
		{"modbus-read.json", readHR(loop, 0, 10), true, "allowed by grant demo-loopback on listener plc-line1"},
		{"modbus-write-setpoint.json", writeHR(loop, 15, 750), true, "allowed by grant demo-loopback on listener plc-line1"},
		{"modbus-write-too-high.json", writeHR(loop, 14, 500, 5000), false, "write of 5000 to holding_registers 15 exceeds max 1000 for listener plc-line1"},
		{"modbus-diagnostics-echo.json", diagnostics(loop, 0), true, "allowed by grant demo-loopback on listener plc-line1"},
		{"modbus-diagnostics-listen-only.json", diagnostics(loop, 4), false, "function 8 subfunction 4 (force listen only) is not allowed on listener plc-line1"},
		{"modbus-umas.json", modbusInput(loop, inspect.AccessOther, "unknown_function", inspect.Modbus{Unit: 1, Function: 90}), false,
			"function 90 (UMAS, Schneider Electric programming) is not allowed on listener plc-line1"},
		{"modbus-unknown-client.json", readHR("10.9.9.9:40000", 0, 10), false, "client 10.9.9.9 has no grant on listener plc-line1"},
		{"modbus-mtls-engineer-write.json", eng, true, "allowed by grant engineers on listener plc-line1"},
		{"modbus-mtls-operator-write.json", op, false, "write to holding_registers 15 is not granted on listener plc-line1"},
		{"opcua-write-setpoint.json", ua(&inspect.OPCUA{Service: "Write", TypeID: 673, SecurityMode: "none", SecurityPolicy: "http://opcfoundation.org/UA/SecurityPolicy#None",
			Session: &inspect.OPCUASession{IdentityType: "anonymous"},
			Writes:  []inspect.OPCUAWrite{{NodeID: "ns=2;s=Line1.Setpoint", Attribute: "Value", Value: 750.0, Type: "Double"}}}),
			true, "allowed by grant demo-loopback on listener opcua-line1"},
		{"opcua-call-not-granted.json", ua(&inspect.OPCUA{Service: "Call", TypeID: 712, SecurityMode: "none", SecurityPolicy: "http://opcfoundation.org/UA/SecurityPolicy#None",
			Session: &inspect.OPCUASession{IdentityType: "anonymous"},
			Calls:   []inspect.OPCUACall{{ObjectID: "ns=2;s=Line1", MethodID: "ns=2;s=Line1.Stop", Arguments: []any{true}}}}),
			false, "call of method ns=2;s=Line1.Stop on object ns=2;s=Line1 is not granted on listener opcua-line1"},
		{"opcua-opaque-pinned.json", opaque, true, "allowed by grant engineering-station on listener opcua-line1"},
	}
}

// TestExamples keeps examples/policy in step with the input builder, the
// schema and the reference policy: each file is exactly the document the
// proxy builds for its input, matches the schema, and gets the listed
// decision.
func TestExamples(t *testing.T) {
	dir := filepath.Join("..", "examples", "policy")
	e := reference(t, policy.Options{})
	var names []string
	for _, ex := range examples() {
		names = append(names, ex.file)
		t.Run(ex.file, func(t *testing.T) {
			doc, err := policy.DocumentJSON(ex.in)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, ex.file)
			if *update {
				var pretty bytes.Buffer
				if err := json.Indent(&pretty, doc, "", "  "); err != nil {
					t.Fatal(err)
				}
				pretty.WriteByte('\n')
				if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			file, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./policy -run TestExamples -update)", err)
			}
			if !jsonEqual(t, file, string(doc)) {
				t.Errorf("%s differs from the document of its input (run with -update)", path)
			}
			if err := policy.ValidateDocument(ctx, file); err != nil {
				t.Error(err)
			}
			d := e.DecideJSON(ctx, file)
			if d.Allow != ex.allow || d.Reason != ex.reason || d.Err != nil {
				t.Errorf("decision %+v, want allow=%v %q", d, ex.allow, ex.reason)
			}
		})
	}
	// No stray files.
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	for _, f := range files {
		if !slices.Contains(names, filepath.Base(f)) {
			t.Errorf("%s is not in examples_test.go", f)
		}
	}
}
