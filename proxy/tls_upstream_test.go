package proxy

import (
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	mb "github.com/simonvetter/modbus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/sim"
)

// upstreamYAML is a listener's upstream_tls section: the proxy presents
// client and verifies the device against deviceCA.
func upstreamYAML(client *pki.Issued, deviceCA *testCA) string {
	return fmt.Sprintf("    upstream_tls:\n      cert_file: %s\n      key_file: %s\n      ca_file: %s\n", client.ChainFile, client.KeyFile, deviceCA.rootFile())
}

// startMbapsPLC starts the simulated PLC speaking Modbus/TCP Security
// (simonvetter/modbus tcp+tls: TLS 1.2+, client certificate required and
// verified against clientCAs) with a certificate of deviceCA for
// 127.0.0.1.
func startMbapsPLC(t *testing.T, deviceCA *testCA, clientCAs ...*testCA) *sim.PLC {
	t.Helper()
	kp := keyPair(t, deviceCA.serverCert(t, "plc"))
	plc, err := sim.StartPLC(sim.PLCOptions{TLSCert: &kp, TLSClientCAs: certPool(clientCAs...)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plc.Close() })
	return plc
}

// roleDevice is a Modbus/TCP Security device (simonvetter/modbus's server)
// that records the role it read from each client certificate — the
// device's own view of who connected — and serves a simulated PLC's tables.
type roleDevice struct {
	*sim.PLC
	addr  string
	mu    sync.Mutex
	roles []string
}

// startRoleDevice serves a roleDevice over tcp+tls with a certificate of
// deviceCA, trusting clients of clientCA.
func startRoleDevice(t *testing.T, deviceCA, clientCA *testCA) *roleDevice {
	t.Helper()
	tables, err := sim.StartPLC(sim.PLCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tables.Close() })
	dev := &roleDevice{PLC: tables, addr: freeLoopbackAddr(t)}
	kp := keyPair(t, deviceCA.serverCert(t, "plc-2"))
	srv, err := mb.NewServer(&mb.ServerConfiguration{URL: "tcp+tls://" + dev.addr, Timeout: time.Minute, MaxClients: 4, TLSServerCert: &kp, TLSClientCAs: certPool(clientCA)}, dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	return dev
}

func (d *roleDevice) seenRoles() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.roles...)
}

func (d *roleDevice) seen(role string) {
	d.mu.Lock()
	d.roles = append(d.roles, role)
	d.mu.Unlock()
}

func (d *roleDevice) HandleCoils(r *mb.CoilsRequest) ([]bool, error) {
	d.seen(r.ClientRole)
	return d.PLC.HandleCoils(r)
}

func (d *roleDevice) HandleDiscreteInputs(r *mb.DiscreteInputsRequest) ([]bool, error) {
	d.seen(r.ClientRole)
	return d.PLC.HandleDiscreteInputs(r)
}

func (d *roleDevice) HandleHoldingRegisters(r *mb.HoldingRegistersRequest) ([]uint16, error) {
	d.seen(r.ClientRole)
	return d.PLC.HandleHoldingRegisters(r)
}

func (d *roleDevice) HandleInputRegisters(r *mb.InputRegistersRequest) ([]uint16, error) {
	d.seen(r.ClientRole)
	return d.PLC.HandleInputRegisters(r)
}

// TestUpstreamTLSToModbusSecurityDevice: with upstream_tls, the proxy
// (itself an mTLS listener) talks Modbus/TCP Security to a PLC that
// requires a client certificate. Requests round-trip; the device reads the
// proxy's certificate (its role); a device whose certificate is not from
// ca_file, or a device that refuses the proxy's certificate, serves no
// request, and the client gets a gateway exception with the reason in the
// log.
func TestUpstreamTLSToModbusSecurityDevice(t *testing.T) {
	plant := newTestCA(t, "Plant")     // IT-side clients and the proxy's own certificates
	otCA := newTestCA(t, "OT Devices") // the devices' certificates
	rogue := newTestCA(t, "Rogue")
	lt := newListenerTLS(t, plant)
	gateway := plant.issue(t, pki.IssueRequest{Name: "conduit-gateway", Role: "gateway"})
	hmi := plant.issue(t, pki.IssueRequest{Name: "hmi", Role: "engineer"})

	t.Run("round trip", func(t *testing.T) {
		plc := startMbapsPLC(t, otCA, plant)
		plc.SetHolding(10, 42)
		rec := &memRecorder{}
		p := startTLSProxy(t, tlsListenerConfig(t, "plc-secure", plc.Addr(), lt.yaml("")+upstreamYAML(gateway, otCA)), allowAll(), rec, tlsProxyOptions{noWatch: true})
		c := mbapsClient(t, p.addr(), hmi, plant)
		if v, err := c.ReadRegister(10, mb.HOLDING_REGISTER); err != nil || v != 42 {
			t.Fatalf("read through upstream TLS: %v, %v", v, err)
		}
		if err := c.WriteRegister(11, 7); err != nil {
			t.Fatal(err)
		}
		if w := plc.Writes(); len(w) != 1 || plc.Holding(11) != 7 {
			t.Fatalf("device writes %+v", w)
		}
		waitFor(t, "request events", func() bool { return len(rec.byAction(audit.ActionRequest)) == 2 })
		if ev := rec.byAction(audit.ActionRequest)[1]; ev.Identity == nil || ev.Identity.CommonName != "hmi" {
			t.Fatalf("the decision names %+v, want the IT client hmi", ev.Identity)
		}
	})

	t.Run("the device sees the proxy's certificate", func(t *testing.T) {
		dev := startRoleDevice(t, otCA, plant)
		p := startTLSProxy(t, tlsListenerConfig(t, "plc-secure", dev.addr, lt.yaml("")+upstreamYAML(gateway, otCA)), allowAll(), &memRecorder{}, tlsProxyOptions{noWatch: true})
		if _, err := mbapsClient(t, p.addr(), hmi, plant).ReadRegister(0, mb.HOLDING_REGISTER); err != nil {
			t.Fatal(err)
		}
		if r := dev.seenRoles(); len(r) != 1 || r[0] != "gateway" {
			t.Fatalf("the device read roles %q from its client's certificate, want the proxy's [gateway]", r)
		}
	})

	// In TLS 1.3 a client's handshake ends before the server has checked
	// the client's certificate: the proxy learns that the device refused
	// it only when it reads the answer, so that case is 0x0B (no answer
	// from the target), not 0x0A.
	refusals := []struct {
		name      string
		device    func(t *testing.T) *sim.PLC
		exception byte
		logReason string
	}{
		{"device certificate from another CA", func(t *testing.T) *sim.PLC { return startMbapsPLC(t, rogue, plant) }, 0x0a, "certificate signed by unknown authority"},
		// The device names only the rogue CA as acceptable, so crypto/tls
		// sends it no certificate at all, and the device says so.
		{"device does not trust the proxy's CA", func(t *testing.T) *sim.PLC { return startMbapsPLC(t, otCA, rogue) }, 0x0b, "tls: certificate required"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			plc := tc.device(t)
			core, logs := observer.New(zap.InfoLevel)
			p := startTLSProxy(t, tlsListenerConfig(t, "plc-secure", plc.Addr(), lt.yaml("")+upstreamYAML(gateway, otCA)), allowAll(), &memRecorder{}, tlsProxyOptions{noWatch: true, log: zap.New(core)})
			cfg := tlsClientConfig(t, hmi, plant)
			conn, err := tls.Dial("tcp", p.addr(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			resp, err := roundTrip(conn, []byte{0, 9, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1})
			if err != nil {
				t.Fatal(err)
			}
			if want := []byte{0, 9, 0, 0, 0, 3, 1, 0x83, tc.exception}; string(resp) != string(want) {
				t.Fatalf("response % x, want % x", resp, want)
			}
			if n := plc.Requests(); n != 0 {
				t.Fatalf("the device served %d requests", n)
			}
			var why []string
			for _, e := range logs.All() {
				for _, f := range e.Context {
					if f.Key == "error" {
						why = append(why, e.Message+": "+f.Interface.(error).Error())
					}
				}
			}
			if !strings.Contains(strings.Join(why, "\n"), tc.logReason) {
				t.Fatalf("the log does not say %q:\n%s", tc.logReason, strings.Join(why, "\n"))
			}
		})
	}
}

// TestUpstreamTLSReload: after the proxy's upstream client certificate is
// replaced on disk and reloaded (SIGHUP), the next upstream connection
// presents the new certificate; the established one is not touched.
func TestUpstreamTLSReload(t *testing.T) {
	plant := newTestCA(t, "Plant")
	otCA := newTestCA(t, "OT Devices")
	lt := newListenerTLS(t, plant)
	gateway := plant.issue(t, pki.IssueRequest{Name: "conduit-gateway", Role: "gateway-2025"})
	hmi := plant.issue(t, pki.IssueRequest{Name: "hmi", Role: "engineer"})
	dev := startRoleDevice(t, otCA, plant)
	p := startTLSProxy(t, tlsListenerConfig(t, "plc-secure", dev.addr, lt.yaml("")+upstreamYAML(gateway, otCA)), allowAll(), &memRecorder{}, tlsProxyOptions{noWatch: true})

	first := mbapsClient(t, p.addr(), hmi, plant)
	if _, err := first.ReadRegister(0, mb.HOLDING_REGISTER); err != nil {
		t.Fatal(err)
	}
	plant.issue(t, pki.IssueRequest{Name: "conduit-gateway", Role: "gateway-2026", Force: true})
	if err := p.ct.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := first.ReadRegister(0, mb.HOLDING_REGISTER); err != nil {
		t.Fatalf("the established upstream connection after the reload: %v", err)
	}
	if _, err := mbapsClient(t, p.addr(), hmi, plant).ReadRegister(0, mb.HOLDING_REGISTER); err != nil {
		t.Fatal(err)
	}
	if r := dev.seenRoles(); strings.Join(r, ",") != "gateway-2025,gateway-2025,gateway-2026" {
		t.Fatalf("the device saw roles %q, want the old certificate on the old connection and the new one on the next", r)
	}
}
