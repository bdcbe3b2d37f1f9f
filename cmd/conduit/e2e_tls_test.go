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
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
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
//
// The listener's client_ca_file and crl_file are files of their own, as
// when an operator trusts more than one CA: setClientCAs and setCRLs
// replace them.
type tlsSite struct {
	dir          string
	ca           *pki.CA
	server       *pki.Issued
	clientCAFile string
	crlFile      string
	policyDir    string
	auditFile    string
}

func newTLSSite(t *testing.T, listener string) *tlsSite {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "ca"), pki.InitOptions{Name: "Plant"})
	if err != nil {
		t.Fatal(err)
	}
	s := &tlsSite{
		dir: dir, ca: ca, policyDir: filepath.Join(dir, "policy"), auditFile: filepath.Join(dir, "audit.jsonl"),
		clientCAFile: filepath.Join(dir, "client_ca.crt"), crlFile: filepath.Join(dir, "crl.pem"),
	}
	s.server = s.serverCert(t)
	s.setClientCAs(t, ca)
	s.setCRLs(t, ca)
	writeRolePolicy(t, s.policyDir, listener)
	return s
}

// serverCert (re-)issues the proxy's certificate for 127.0.0.1 in place.
func (s *tlsSite) serverCert(t *testing.T) *pki.Issued {
	t.Helper()
	return s.issue(t, pki.IssueRequest{Type: pki.CertServer, Name: "appliance", Force: true, DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
}

func (s *tlsSite) setClientCAs(t *testing.T, cas ...*pki.CA) {
	t.Helper()
	var roots []*x509.Certificate
	for _, ca := range cas {
		roots = append(roots, ca.Root)
	}
	if err := pki.WriteFileAtomic(s.clientCAFile, pki.EncodeCerts(roots...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// setCRLs writes the current crl.pem of each CA into the listener's
// crl_file.
func (s *tlsSite) setCRLs(t *testing.T, cas ...*pki.CA) {
	t.Helper()
	var all []byte
	for _, ca := range cas {
		b, err := os.ReadFile(filepath.Join(ca.Dir, pki.FileCRL))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	if err := pki.WriteFileAtomic(s.crlFile, all, 0o644); err != nil {
		t.Fatal(err)
	}
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
`, s.server.ChainFile, s.server.KeyFile, s.clientCAFile, s.crlFile)
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

// clientTLS presents is and trusts the site's root (the proxy's server
// certificate). It presents is even when the proxy does not name its
// issuer as acceptable (a Go client would then send nothing).
func (s *tlsSite) clientTLS(t *testing.T, is *pki.Issued) *tls.Config {
	t.Helper()
	kp, err := pki.LoadKeyPair(is.ChainFile, is.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.Root)
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{*kp},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp, nil }}
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

// ---- black-box: the built binary ----

// e2eProc is a conduit process. Its output is kept for the test's log and
// for waiting on a line.
type e2eProc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// e2eStart runs bin with args and waits until its output contains ready.
// The process is stopped with SIGTERM (then killed) when the test ends.
func e2eStart(t *testing.T, bin, ready string, args ...string) *e2eProc {
	t.Helper()
	p := &e2eProc{t: t, name: args[0], cmd: exec.Command(bin, args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("conduit %s output:\n%s", p.name, p.out.String())
		}
	})
	deadline := time.After(20 * time.Second)
	for !strings.Contains(p.out.String(), ready) {
		select {
		case <-p.done:
			t.Fatalf("conduit %s exited (%v) before %q:\n%s", p.name, p.err, ready, p.out.String())
		case <-deadline:
			t.Fatalf("conduit %s: no %q after 20s:\n%s", p.name, ready, p.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return p
}

func (p *e2eProc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// stop sends SIGTERM and waits; it returns the exit error.
func (p *e2eProc) stop() error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	return p.err
}

// waitOutput waits until the process has printed n occurrences of s.
func (p *e2eProc) waitOutput(s string, n int) {
	p.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(p.out.String(), s) < n {
		if time.Now().After(deadline) {
			p.t.Fatalf("conduit %s printed %q %d times, want %d", p.name, s, strings.Count(p.out.String(), s), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// e2ePoll reads holding register 10 every interval until stop is closed
// and returns the number of good answers and every failure.
func e2ePoll(c *mb.ModbusClient, interval time.Duration, want uint16, stop <-chan struct{}) (<-chan int, <-chan []error) {
	okc, errc := make(chan int, 1), make(chan []error, 1)
	go func() {
		ok := 0
		var errs []error
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				okc <- ok
				errc <- errs
				return
			case <-tick.C:
			}
			v, err := c.ReadRegister(10, mb.HOLDING_REGISTER)
			switch {
			case err != nil:
				errs = append(errs, err)
			case v != want:
				errs = append(errs, fmt.Errorf("register 10 = %d, want %d", v, want))
			default:
				ok++
			}
		}
	}()
	return okc, errc
}

// tlsRefused dials addr and reports whether the proxy refused cfg's
// certificate (TLS 1.3: the refusal shows at the first read).
func tlsRefused(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Logf("tlsRefused: dial: %v", err)
		return true
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 10, 0, 1}); err != nil {
		t.Logf("tlsRefused: write: %v", err)
		return true
	}
	_, err = io.ReadFull(c, make([]byte, 9))
	if err != nil {
		t.Logf("tlsRefused: read: %v", err)
	}
	return err != nil
}

// TestE2ERunReloadsTLSOnSIGHUPUnderTraffic: `conduit run` with an mTLS
// listener. A Modbus/TCP Security client (role operator) polls at 20
// requests/s over one connection while the server certificate, the client
// CA bundle and the CRL (a revocation made with `conduit pki revoke`) are
// replaced on disk, each followed by SIGHUP. No poll fails; new
// connections get the new certificate; a client of the newly trusted CA
// gets in; the revoked client's established connection is cut and its
// next connection refused; the audit file records every reload, the cut
// and the refusal with their reasons.
func TestE2ERunReloadsTLSOnSIGHUPUnderTraffic(t *testing.T) {
	bin := conduitBinary(t)
	s := newTLSSite(t, "plc-mbaps")
	ca2, err := pki.InitCA(filepath.Join(s.dir, "ca2"), pki.InitOptions{Name: "Plant 2"})
	if err != nil {
		t.Fatal(err)
	}
	plc := startTestPLC(t, sim.PLCOptions{})
	plc.SetHolding(10, 4242)
	addr := freeAddr(t)
	cfgPath := filepath.Join(s.dir, "conduit.yaml")
	if err := os.WriteFile(cfgPath, []byte(s.config("plc-mbaps", addr, plc.Addr(), s.tlsYAML())), 0o644); err != nil {
		t.Fatal(err)
	}
	proc := e2eStart(t, bin, `"msg":"conduit running"`, "run", "--config", cfgPath)

	poller := s.issue(t, pki.IssueRequest{Name: "scada", Role: "operator"})
	doomed := s.issue(t, pki.IssueRequest{Name: "laptop", Role: "operator"})
	newcomer, err := ca2.Issue(pki.IssueRequest{Type: pki.CertClient, Name: "historian", Role: "operator"})
	if err != nil {
		t.Fatal(err)
	}
	probe := s.clientTLS(t, doomed)
	if tlsRefused(t, addr, probe) {
		t.Fatal("a valid client was refused before any reload")
	}
	if !tlsRefused(t, addr, s.clientTLS(t, newcomer)) {
		t.Fatal("a client of a CA not yet trusted got in")
	}
	if !tlsRefused(t, addr, &tls.Config{RootCAs: probe.RootCAs, ServerName: "127.0.0.1"}) {
		t.Fatal("a client without a certificate got in")
	}
	serial := func() string {
		c, err := tls.Dial("tcp", addr, probe)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return pki.SerialString(c.ConnectionState().PeerCertificates[0].SerialNumber)
	}
	oldSerial := serial()

	stop := make(chan struct{})
	okc, errc := e2ePoll(s.mbapsClient(t, addr, poller), 50*time.Millisecond, 4242, stop)
	pause := func() { time.Sleep(400 * time.Millisecond) }
	hups := 0
	hup := func() {
		hups++
		proc.signal(syscall.SIGHUP)
		proc.waitOutput("reloading (SIGHUP)", hups)
		pause()
	}
	pause()

	s.serverCert(t)
	hup()
	if serial() == oldSerial {
		t.Fatal("new connections still get the old server certificate after SIGHUP")
	}

	s.setCRLs(t, s.ca, ca2)
	s.setClientCAs(t, s.ca, ca2)
	hup()
	if tlsRefused(t, addr, s.clientTLS(t, newcomer)) {
		t.Fatal("a client of the newly trusted CA was refused after SIGHUP")
	}

	// The doomed certificate also holds a connection open across its
	// revocation: the reload cuts it.
	held := s.mbapsClient(t, addr, doomed)
	if _, err := held.ReadRegister(10, mb.HOLDING_REGISTER); err != nil {
		t.Fatalf("the doomed client's connection before the revocation: %v", err)
	}
	out, err := exec.Command(bin, "pki", "revoke", doomed.Entry.Serial, "--reason", "key-compromise", "--dir", s.ca.Dir).CombinedOutput()
	if err != nil {
		t.Fatalf("conduit pki revoke: %v\n%s", err, out)
	}
	s.setCRLs(t, s.ca, ca2)
	hup()
	if !tlsRefused(t, addr, probe) {
		t.Fatal("the revoked client made a new connection after SIGHUP")
	}
	if v, err := held.ReadRegister(10, mb.HOLDING_REGISTER); err == nil {
		t.Fatalf("the revoked client's established connection still answers (%d)", v)
	}
	// The client hears the alert before Conduit has logged and audited
	// the refusal; stopping Conduit in between would cancel the
	// handshake, and crypto/tls then reports the cancellation instead of
	// the verification error.
	proc.waitOutput(`"reason":"revoked: `, 1)

	close(stop)
	if errs := <-errc; len(errs) > 0 {
		t.Fatalf("%d polls failed during the reloads: %v", len(errs), errs)
	}
	if ok := <-okc; ok < 20 {
		t.Fatalf("only %d polls", ok)
	}
	if err := proc.stop(); err != nil {
		t.Fatalf("conduit run exited with %v", err)
	}

	recs := readAudit(t, s.auditFile)
	if err := audittest.CheckSequence(recs); err != nil {
		t.Fatal(err)
	}
	var reloaded []string
	for _, r := range audittest.Filter(recs, "certificate-reload") {
		if r.String("event.outcome") != "success" {
			t.Errorf("certificate-reload %s: %s", r.String("event.outcome"), r.String("event.reason"))
		}
		reloaded = append(reloaded, r.String("event.reason"))
	}
	for _, m := range []string{pki.MaterialCertificate, pki.MaterialClientCA, pki.MaterialCRL} {
		if !strings.Contains(strings.Join(reloaded, " "), m) {
			t.Errorf("no certificate-reload event names %s: %q", m, reloaded)
		}
	}
	var reasons []string
	revokedRefusals := 0
	for _, r := range audittest.Filter(recs, "tls-handshake") {
		reason := r.String("event.reason")
		reasons = append(reasons, reason)
		if r.String("event.outcome") != "failure" {
			t.Errorf("tls-handshake event with outcome %s", r.String("event.outcome"))
		}
		if strings.HasPrefix(reason, "revoked: ") && strings.Contains(reason, doomed.Entry.Serial) {
			revokedRefusals++
		}
	}
	if revokedRefusals != 1 {
		t.Errorf("%d revoked refusals of %s in %q, want 1", revokedRefusals, doomed.Entry.Serial, reasons)
	}
	cut := 0
	for _, r := range audittest.Filter(recs, "connection-close") {
		reason := r.String("event.reason")
		if strings.HasPrefix(reason, "client certificate no longer trusted after a TLS reload: revoked: ") {
			cut++
			if !strings.Contains(reason, doomed.Entry.Serial) || !slices.Equal(r.Strings("tls.client.x509.subject.common_name"), []string{"laptop"}) {
				t.Errorf("a connection cut by the revocation that is not the doomed client's: %s", reason)
			}
		}
	}
	if cut != 1 {
		t.Errorf("%d connections cut by the revocation, want 1 (the doomed client's)", cut)
	}
	for _, want := range []string{"unknown_ca: ", "no_client_cert: "} {
		if !slices.ContainsFunc(reasons, func(r string) bool { return strings.HasPrefix(r, want) }) {
			t.Errorf("no refusal with reason %s in %q", want, reasons)
		}
	}
	conns := map[uint64]bool{}
	for _, r := range audittest.Filter(recs, "request") {
		if slices.Equal(r.Strings("tls.client.x509.subject.common_name"), []string{"scada"}) {
			conns[r.Uint("conduit.connection_id")] = true
			if !r.HasType("allowed") || !slices.Equal(r.Strings("conduit.client.roles"), []string{"operator"}) || r.String("tls.version") != "1.3" {
				t.Fatalf("poll event: allowed %v roles %v tls %q reason %q", r.HasType("allowed"), r.Strings("conduit.client.roles"), r.String("tls.version"), r.String("event.reason"))
			}
		}
	}
	if len(conns) != 1 {
		t.Fatalf("the poller's requests came over %d connections, want 1", len(conns))
	}
}

// startMbapsSite runs `conduit run` with one mTLS listener (plc-mbaps) in
// front of a simulated PLC whose holding register 10 holds 77, and returns
// the binary, the site (its CA issues client certificates), the PLC and the
// listener's address.
func startMbapsSite(t *testing.T) (bin string, s *tlsSite, plc *sim.PLC, addr string) {
	t.Helper()
	bin = conduitBinary(t)
	s = newTLSSite(t, "plc-mbaps")
	plc = startTestPLC(t, sim.PLCOptions{})
	plc.SetHolding(10, 77)
	addr = freeAddr(t)
	cfgPath := filepath.Join(s.dir, "conduit.yaml")
	if err := os.WriteFile(cfgPath, []byte(s.config("plc-mbaps", addr, plc.Addr(), s.tlsYAML())), 0o644); err != nil {
		t.Fatal(err)
	}
	e2eStart(t, bin, `"msg":"conduit running"`, "run", "--config", cfgPath)
	return bin, s, plc, addr
}

// TestE2EConnectToRun: a legacy plain-TCP Modbus client (simonvetter
// tcp://) → `conduit connect` → `conduit run`'s mTLS listener → device.
// The engineer role of connect's certificate lets the write through, and
// the audit file names connect's certificate.
func TestE2EConnectToRun(t *testing.T) {
	bin, s, plc, addr := startMbapsSite(t)

	eng := s.issue(t, pki.IssueRequest{Name: "legacy-hmi", Role: "engineer"})
	plain := freeAddr(t)
	e2eStart(t, bin, "conduit connect: "+plain, "connect", "--listen", plain, "--to", addr,
		"--cert", eng.ChainFile, "--key", eng.KeyFile, "--ca", filepath.Join(s.ca.Dir, pki.FileRootCert))

	c, err := mb.NewClient(&mb.ClientConfiguration{URL: "tcp://" + plain, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v, err := c.ReadRegister(10, mb.HOLDING_REGISTER); err != nil || v != 77 {
		t.Fatalf("read through connect: %v, %v", v, err)
	}
	if err := c.WriteRegister(12, 900); err != nil {
		t.Fatalf("setpoint write through connect: %v", err)
	}
	if err := c.WriteRegister(12, 1001); err == nil {
		t.Fatal("a write above the grant's max got through")
	}
	if plc.Holding(12) != 900 || len(plc.Writes()) != 1 {
		t.Fatalf("device writes %+v", plc.Writes())
	}
	recs := readAudit(t, s.auditFile)
	reqs := audittest.Filter(recs, "request")
	if len(reqs) != 3 {
		t.Fatalf("%d request events, want 3", len(reqs))
	}
	for _, r := range reqs {
		if !slices.Equal(r.Strings("tls.client.x509.subject.common_name"), []string{"legacy-hmi"}) ||
			r.String("tls.client.x509.serial_number") != eng.Entry.Serial ||
			!slices.Equal(r.Strings("conduit.client.roles"), []string{"engineer"}) {
			t.Fatalf("event does not name connect's certificate: cn %v serial %s roles %v",
				r.Strings("tls.client.x509.subject.common_name"), r.String("tls.client.x509.serial_number"), r.Strings("conduit.client.roles"))
		}
	}
	if len(audittest.AllowedWrites(recs)) != 1 {
		t.Fatalf("%d allowed writes in the audit file, the device applied 1", len(audittest.AllowedWrites(recs)))
	}
}

// TestE2EConnectSurvivesBrokenStderr: `conduit connect -v` logs every
// connection to standard error; when its reader goes away (a terminal
// closed, journald restarted), the next log line must not end the tunnel
// (Go's default on a broken pipe at fd 2 is to exit with SIGPIPE).
func TestE2EConnectSurvivesBrokenStderr(t *testing.T) {
	bin, s, _, addr := startMbapsSite(t)

	eng := s.issue(t, pki.IssueRequest{Name: "legacy-hmi", Role: "engineer"})
	plain := freeAddr(t)
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := &syncBuffer{}
	cmd := exec.Command(bin, "connect", "-v", "--listen", plain, "--to", addr,
		"--cert", eng.ChainFile, "--key", eng.KeyFile, "--ca", filepath.Join(s.ca.Dir, pki.FileRootCert))
	cmd.Stdout, cmd.Stderr = stdout, errW
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	errW.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	waitOutput(t, stdout, done, "conduit connect: ")
	errR.Close() // nobody reads standard error any more

	for i := range 2 { // the first connection's log line meets the broken pipe
		c, err := mb.NewClient(&mb.ClientConfiguration{URL: "tcp://" + plain, Timeout: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Open(); err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		v, err := c.ReadRegister(10, mb.HOLDING_REGISTER)
		c.Close()
		if err != nil || v != 77 {
			t.Fatalf("connection %d through connect: %v, %v", i+1, v, err)
		}
	}
	select {
	case err := <-done:
		done <- err
		t.Fatalf("conduit connect ended: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
}
