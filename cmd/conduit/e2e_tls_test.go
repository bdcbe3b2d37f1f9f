package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mb "github.com/simonvetter/modbus"

	"github.com/conduit-ot/conduit/audit/audittest"
	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/rules"
	"github.com/conduit-ot/conduit/sim"
)

// tlsSite is what an operator has on disk for one mTLS listener: a local CA
// (pki.InitCA, as `conduit pki init`), the proxy's server certificate, a
// policy directory (the reference policy's Rego with the reference role
// grants moved to 127.0.0.0/8) and an audit file.
type tlsSite struct {
	dir       string
	ca        *pki.CA
	server    *pki.Issued
	policyDir string
	auditFile string
}

func newTLSSite(t *testing.T, listener string) *tlsSite {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "ca"), pki.InitOptions{Name: "Plant"})
	if err != nil {
		t.Fatal(err)
	}
	s := &tlsSite{dir: dir, ca: ca, policyDir: filepath.Join(dir, "policy"), auditFile: filepath.Join(dir, "audit.jsonl")}
	s.server = s.issue(t, pki.IssueRequest{Type: pki.CertServer, Name: "appliance", DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	writeRolePolicy(t, s.policyDir, listener)
	return s
}

func (s *tlsSite) issue(t *testing.T, req pki.IssueRequest) *pki.Issued {
	t.Helper()
	if req.Type == "" {
		req.Type = pki.CertClient
	}
	is, err := s.ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	return is
}

// tlsYAML is the listener's tls section.
func (s *tlsSite) tlsYAML() string {
	return fmt.Sprintf(`    tls:
      cert_file: %s
      key_file: %s
      client_ca_file: %s
      crl_file: %s
`, s.server.ChainFile, s.server.KeyFile, filepath.Join(s.ca.Dir, pki.FileRootCert), filepath.Join(s.ca.Dir, pki.FileCRL))
}

// config is a whole configuration with one Modbus listener.
func (s *tlsSite) config(name, listen, upstream, extra string) string {
	return fmt.Sprintf(`listeners:
  - name: %s
    protocol: modbus
    listen: %s
    upstream: %s
%s
policy:
  path: %s
audit:
  file: %s
log:
  level: debug
`, name, listen, upstream, extra, s.policyDir, s.auditFile)
}

// clientTLS presents is and trusts the site's root.
func (s *tlsSite) clientTLS(t *testing.T, is *pki.Issued) *tls.Config {
	t.Helper()
	kp, err := pki.LoadKeyPair(is.ChainFile, is.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.Root)
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{*kp}}
}

// mbapsClient is a simonvetter/modbus tcp+tls (Modbus/TCP Security) client.
func (s *tlsSite) mbapsClient(t *testing.T, addr string, is *pki.Issued) *mb.ModbusClient {
	t.Helper()
	cfg := s.clientTLS(t, is)
	c, err := mb.NewClient(&mb.ClientConfiguration{URL: "tcp+tls://" + addr, Timeout: 3 * time.Second, TLSClientCert: &cfg.Certificates[0], TLSRootCAs: cfg.RootCAs})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatalf("mbaps client %s: %v", is.Cert.Subject.CommonName, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// writeRolePolicy writes a policy directory: the reference policy's modules
// (no tests: they are written against the reference data) and a data.json
// whose only grants on listener are the reference "operators" and
// "engineers" grants of plc-line1, with their network moved from
// 10.20.0.0/16 to 127.0.0.0/8. The certificate role, not the address, then
// decides.
func writeRolePolicy(t *testing.T, dir, listener string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mods, err := fs.Glob(rules.FS, "*.rego")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		if strings.HasSuffix(m, "_test.rego") {
			continue
		}
		b, err := fs.ReadFile(rules.FS, m)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, m), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := fs.ReadFile(rules.FS, "data.json")
	if err != nil {
		t.Fatal(err)
	}
	var ref struct {
		Grants map[string]map[string]map[string]any `json:"grants"`
	}
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	grants := map[string]any{}
	for _, id := range []string{"operators", "engineers"} {
		g := ref.Grants["plc-line1"][id]
		if g == nil {
			t.Fatalf("the reference data has no grant %s on plc-line1", id)
		}
		g["clients"].(map[string]any)["cidrs"] = []string{"127.0.0.0/8"}
		grants[id] = g
	}
	out, err := json.MarshalIndent(map[string]any{"grants": map[string]any{listener: grants}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data.json"), out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func startTestPLC(t *testing.T, opts sim.PLCOptions) *sim.PLC {
	t.Helper()
	plc, err := sim.StartPLC(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plc.Close() })
	return plc
}

func readAudit(t *testing.T, path string) []audittest.Record {
	t.Helper()
	recs, err := audittest.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestAppServesTLSListener: `conduit run`'s wiring (startApp) of a listener
// with tls: serves mTLS clients, and the reference role grants decide by the
// certificate's role: an operator reads, an engineer writes a setpoint.
func TestAppServesTLSListener(t *testing.T) {
	s := newTLSSite(t, "plc-tls")
	plc := startTestPLC(t, sim.PLCOptions{})
	cfg, err := config.Parse(filepath.Join(s.dir, "conduit.yaml"), []byte(s.config("plc-tls", "127.0.0.1:0", plc.Addr(), s.tlsYAML())))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := startApp(ctx, cfg, appOptions{})
	if err != nil {
		t.Fatalf("startApp with a tls listener: %v", err)
	}
	a.serve()
	defer a.shutdown(context.Background())
	addr := a.listeners[0].Addr().String()

	op := s.mbapsClient(t, addr, s.issue(t, pki.IssueRequest{Name: "op-1", Role: "operator"}))
	if _, err := op.ReadRegisters(10, 2, mb.HOLDING_REGISTER); err != nil {
		t.Fatalf("operator read: %v", err)
	}
	if err := op.WriteRegister(12, 500); err == nil {
		t.Fatal("operator write allowed")
	}
	eng := s.mbapsClient(t, addr, s.issue(t, pki.IssueRequest{Name: "eng-1", Role: "engineer"}))
	if err := eng.WriteRegister(12, 500); err != nil {
		t.Fatalf("engineer write: %v", err)
	}
	if w := plc.Writes(); len(w) != 1 || plc.Holding(12) != 500 {
		t.Fatalf("device writes %+v", w)
	}
}

// silence unused imports until the black-box tests use them.
var _ = io.Discard

// TestStartAppErrorClosesWhatItBuilt: a listener whose TLS material does
// not load stops startApp with an error that names the field, and what was
// already built (the audit file, the policy engine) is closed, not leaked
// or dereferenced through a nil app.
func TestStartAppErrorClosesWhatItBuilt(t *testing.T) {
	s := newTLSSite(t, "plc-tls")
	bad := strings.Replace(s.tlsYAML(), s.server.KeyFile, filepath.Join(s.dir, "missing.key"), 1)
	cfg, err := config.Parse(filepath.Join(s.dir, "conduit.yaml"), []byte(s.config("plc-tls", "127.0.0.1:0", "127.0.0.1:1", bad)))
	if err != nil {
		t.Fatal(err)
	}
	a, err := startApp(context.Background(), cfg, appOptions{})
	if err == nil {
		a.shutdown(context.Background())
		t.Fatal("startApp accepted a missing key file")
	}
	if !strings.Contains(err.Error(), "listeners[0] (plc-tls).tls") || !strings.Contains(err.Error(), "missing.key") {
		t.Fatalf("error %q does not name the field and the file", err)
	}
	// The audit trail recorded the start before the failure.
	recs := readAudit(t, s.auditFile)
	if len(recs) == 0 || recs[0].Action() != "start" {
		t.Fatalf("audit file %v", recs)
	}
}
