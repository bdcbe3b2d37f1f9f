package policy_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
)

var ctx = context.Background()

// reference returns an engine running the embedded reference policy.
func reference(t testing.TB, opts policy.Options) *policy.Engine {
	t.Helper()
	opts.Source = policy.Source{Path: "rules", FS: rules.FS}
	e, err := policy.New(ctx, opts)
	if err != nil {
		t.Fatalf("reference policy: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// writeFiles writes name -> content into dir.
func writeFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// policyDir returns a temporary policy directory holding files.
func policyDir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, files)
	return dir
}

// engineFor returns an engine on a directory holding files.
func engineFor(t testing.TB, files map[string]string, opts policy.Options) *policy.Engine {
	t.Helper()
	opts.Path = policyDir(t, files)
	e, err := policy.New(ctx, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// modbusInput is a Modbus request from client on listener plc-line1.
func modbusInput(client string, access inspect.Access, name string, m inspect.Modbus) *policy.Input {
	return &policy.Input{
		Protocol: inspect.ProtocolModbus,
		Listener: "plc-line1",
		Upstream: "127.0.0.1:5020",
		Client:   netip.MustParseAddrPort(client),
		Op:       &inspect.Operation{Protocol: inspect.ProtocolModbus, Access: access, Name: name, Modbus: m},
	}
}

func readHR(client string, address, quantity uint16) *policy.Input {
	return modbusInput(client, inspect.AccessRead, "read_holding_registers", inspect.Modbus{
		Unit: 1, Function: 3, Table: inspect.TableHoldingRegisters, Address: address, Quantity: quantity,
	})
}

func writeHR(client string, address uint16, values ...uint16) *policy.Input {
	fc, name := uint8(16), "write_multiple_registers"
	if len(values) == 1 {
		fc, name = 6, "write_single_register"
	}
	return modbusInput(client, inspect.AccessWrite, name, inspect.Modbus{
		Unit: 1, Function: fc, Table: inspect.TableHoldingRegisters, Address: address,
		Quantity: uint16(len(values)), Values: values,
	})
}

func diagnostics(client string, sub uint16) *policy.Input {
	return modbusInput(client, inspect.AccessDiagnostic, "diagnostics", inspect.Modbus{
		Unit: 1, Function: 8, Subfunction: sub, HasSubfunction: true,
	})
}

func engineerIdentity() *pki.Identity {
	return &pki.Identity{
		CommonName:          "eng-01",
		Subject:             "CN=eng-01,OU=Maintenance,O=Plant",
		Issuer:              "CN=Plant CA,O=Plant",
		DNSNames:            []string{"eng-01.plant.example"},
		URIs:                []string{"spiffe://plant.example/eng-01"},
		IPAddresses:         []string{"10.20.1.5"},
		OrganizationalUnits: []string{"Maintenance"},
		Roles:               []string{"engineer"},
		Serial:              "1A2B3C",
		FingerprintSHA256:   "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		NotBefore:           time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:            time.Date(2027, 1, 1, 12, 30, 0, 0, time.FixedZone("CET", 3600)),
	}
}

// jsonEqual compares two JSON documents structurally.
func jsonEqual(t testing.TB, got []byte, want string) bool {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("got is not JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want is not JSON: %v\n%s", err, want)
	}
	return reflect.DeepEqual(g, w)
}

// sameDecision compares two decisions without their ids.
func sameDecision(a, b policy.Decision) bool {
	a.ID, b.ID = "", ""
	return reflect.DeepEqual(a, b)
}

func netipMust(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// writeWithIdentity turns a read input into a setpoint write, keeping its
// client and identity.
func writeWithIdentity(in *policy.Input) *policy.Input {
	w := writeHR(in.Client.String(), 15, 500)
	w.Identity = in.Identity
	return w
}
