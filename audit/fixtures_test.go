package audit_test

import (
	"net/netip"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/pki"
)

var (
	testTime     = time.Date(2026, 3, 14, 9, 26, 53, 589793238, time.UTC)
	testObserver = audit.Observer{Hostname: "gw-01", Vendor: "Example Plant", Version: "1.2.3"}
)

func testIdentity() *pki.Identity {
	return &pki.Identity{
		CommonName:          "hmi-07",
		Subject:             "CN=hmi-07,OU=Operators,O=Plant",
		Issuer:              "CN=Plant OT CA,O=Plant",
		DNSNames:            []string{"hmi-07.plant.example"},
		URIs:                []string{"urn:plant:hmi-07"},
		IPAddresses:         []string{"10.1.2.7"},
		OrganizationalUnits: []string{"Operators"},
		Roles:               []string{"operator"},
		Serial:              "1F2E3D",
		FingerprintSHA256:   "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		NotBefore:           time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:            time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
	}
}

// modbusWrite is the benchmark event: an allowed FC16 write of two
// registers by an identified client.
func modbusWrite() *audit.Event {
	return &audit.Event{
		Time:       testTime,
		Action:     audit.ActionRequest,
		Outcome:    audit.OutcomeSuccess,
		Reason:     "operator may write setpoints",
		DecisionID: "4b3a4c5e-7d1f-4f3a-9a57-0c2e6b1d9e11",
		Allowed:    true,
		Rule:       "setpoints.operator",
		Revision:   "rev-42",
		Listener:   "modbus-line1",
		ConnID:     17,
		Source:     netip.MustParseAddrPort("10.1.2.7:50123"),
		Dest:       netip.MustParseAddrPort("192.168.10.20:502"),
		Protocol:   inspect.ProtocolModbus,
		Identity:   testIdentity(),
		TLSVersion: "1.3",
		Op: &inspect.Operation{
			Protocol: inspect.ProtocolModbus,
			Access:   inspect.AccessWrite,
			Name:     "write_multiple_registers",
			Modbus: inspect.Modbus{
				Unit: 1, Function: 16,
				Table: inspect.TableHoldingRegisters, Address: 100, Quantity: 2,
				Values: []uint16{1500, 1600},
			},
		},
	}
}
