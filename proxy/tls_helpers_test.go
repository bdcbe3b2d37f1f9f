package proxy

import (
	"cmp"
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
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	mb "github.com/simonvetter/modbus"
	"go.uber.org/zap"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
)

// testCA is a local CA made with the pki package (pki.InitCA, the same code
// as `conduit pki init`) in a temporary directory.
type testCA struct {
	*pki.CA
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	ca, err := pki.InitCA(filepath.Join(t.TempDir(), "ca"), pki.InitOptions{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{ca}
}

// issue signs a leaf; Type defaults to client.
func (ca *testCA) issue(t testing.TB, req pki.IssueRequest) *pki.Issued {
	t.Helper()
	if req.Type == "" {
		req.Type = pki.CertClient
	}
	is, err := ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	return is
}

// serverCert issues a server certificate for 127.0.0.1 and localhost.
func (ca *testCA) serverCert(t testing.TB, name string) *pki.Issued {
	t.Helper()
	return ca.issue(t, pki.IssueRequest{Type: pki.CertServer, Name: name, Force: true,
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
}

func (ca *testCA) rootFile() string { return filepath.Join(ca.Dir, pki.FileRootCert) }
func (ca *testCA) crlFile() string  { return filepath.Join(ca.Dir, pki.FileCRL) }

// keyPair loads an issued certificate chain and key as a client presents it.
func keyPair(t testing.TB, is *pki.Issued) tls.Certificate {
	t.Helper()
	kp, err := pki.LoadKeyPair(is.ChainFile, is.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return *kp
}

func certPool(cas ...*testCA) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca.Root)
	}
	return pool
}

// listenerTLS is the material of one mTLS listener, laid out as an operator
// would: the server certificate and key issued by the CA (replaced in place
// by a re-issue with --force), the client CA bundle in a file of its own
// (replaced to add or remove a CA), and the CA's crl.pem (rewritten by
// every revocation).
type listenerTLS struct {
	ca           *testCA
	server       *pki.Issued
	clientCAFile string
	crlFile      string // "": the CA's crl.pem
}

func newListenerTLS(t testing.TB, ca *testCA) *listenerTLS {
	t.Helper()
	lt := &listenerTLS{ca: ca, server: ca.serverCert(t, "proxy"), clientCAFile: filepath.Join(t.TempDir(), "client_ca.crt")}
	lt.setClientCAs(t, ca)
	return lt
}

// setCRLs makes crl_file a file of its own holding the current CRL of each
// of cas (one PEM block per issuing CA), as an operator trusting several
// CAs publishes it. Call it again after a revocation.
func (lt *listenerTLS) setCRLs(t testing.TB, cas ...*testCA) {
	t.Helper()
	if lt.crlFile == "" {
		lt.crlFile = filepath.Join(t.TempDir(), "crl.pem")
	}
	var all []byte
	for _, ca := range cas {
		b, err := os.ReadFile(ca.crlFile())
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	if err := pki.WriteFileAtomic(lt.crlFile, all, 0o644); err != nil {
		t.Fatal(err)
	}
}

// setClientCAs replaces the client CA bundle with the roots of cas.
func (lt *listenerTLS) setClientCAs(t testing.TB, cas ...*testCA) {
	t.Helper()
	var certs []*x509.Certificate
	for _, ca := range cas {
		certs = append(certs, ca.Root)
	}
	if err := pki.WriteFileAtomic(lt.clientCAFile, pki.EncodeCerts(certs...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// yaml is the listener's tls section, indented for tlsListenerConfig.
func (lt *listenerTLS) yaml(minVersion string) string {
	y := fmt.Sprintf(`    tls:
      cert_file: %s
      key_file: %s
      client_ca_file: %s
      crl_file: %s
`, lt.server.ChainFile, lt.server.KeyFile, lt.clientCAFile, cmp.Or(lt.crlFile, lt.ca.crlFile()))
	if minVersion != "" {
		y += fmt.Sprintf("      min_version: %q\n", minVersion)
	}
	return y
}

// tlsListenerConfig parses one listener named name through the real config
// loader; extra holds more listener keys (tls:, upstream_tls: ...).
func tlsListenerConfig(t testing.TB, name, upstream, extra string) config.Listener {
	t.Helper()
	y := fmt.Sprintf(`listeners:
  - name: %s
    protocol: modbus
    listen: 127.0.0.1:0
    upstream: %s
%s
policy:
  path: unused
audit:
  file: unused
`, name, upstream, extra)
	cfg, err := config.Parse(filepath.Join(os.TempDir(), "test.yaml"), []byte(y))
	if err != nil {
		t.Fatalf("%v\n%s", err, y)
	}
	return cfg.Listeners[0]
}

// tlsProxy is a proxy listener wired to pki as `conduit run` wires it
// (cmd/conduit/app.go): pki.NewServerTLS over the listener's tls section,
// and pki.NewUpstreamTLS over its upstream_tls section.
type tlsProxy struct {
	*Listener
	st *pki.ServerTLS
	ct *pki.ClientTLS

	mu      sync.Mutex
	reloads []pki.ReloadResult
}

type tlsProxyOptions struct {
	log      *zap.Logger
	noWatch  bool
	now      func() time.Time
	onReject func(*pki.HandshakeError)
	identity func(tls.ConnectionState) (*pki.Identity, error)
}

func startTLSProxy(t testing.TB, lc config.Listener, d policy.Decider, r audit.Recorder, o tlsProxyOptions) *tlsProxy {
	t.Helper()
	p := &tlsProxy{}
	po := Options{Listener: lc, Decider: d, Recorder: r, Log: o.log, Identity: o.identity}
	if lc.TLS != nil {
		st, err := pki.NewServerTLS(context.Background(), lc.TLS, pki.ServerOptions{
			NoWatch:  o.noWatch,
			Debounce: 50 * time.Millisecond,
			Now:      o.now,
			OnReject: o.onReject,
			OnReload: func(rr pki.ReloadResult) {
				p.mu.Lock()
				p.reloads = append(p.reloads, rr)
				p.mu.Unlock()
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		p.st = st
		po.ServerTLS = st
	}
	if lc.UpstreamTLS != nil {
		ct, err := pki.NewUpstreamTLS(lc.UpstreamTLS)
		if err != nil {
			t.Fatal(err)
		}
		p.ct = ct
		po.UpstreamClientTLS = ct
	}
	l, err := New(po)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Listen(); err != nil {
		t.Fatal(err)
	}
	go l.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l.Shutdown(ctx)
	})
	p.Listener = l
	return p
}

func (p *tlsProxy) addr() string { return p.Addr().String() }

// countingDevice is the device side of a test: a TCP front to a real
// device (the simulated PLC) that counts every TCP connection it accepts,
// so a test can prove that a refused client never made the proxy dial.
type countingDevice struct {
	ln       net.Listener
	accepted atomic.Int64
}

func startCountingDevice(t testing.TB, target string) *countingDevice {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &countingDevice{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d.accepted.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(up, c); done <- struct{}{} }()
				go func() { io.Copy(c, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return d
}

func (d *countingDevice) addr() string { return d.ln.Addr().String() }

// tlsClientConfig presents is (nil: no certificate) and trusts the roots of
// cas (the proxy's server CA). It presents its certificate whatever CAs the
// server names as acceptable: a Go client left to choose sends none when
// its chain's issuer is not among them, and an attacker's client would not
// be so polite.
func tlsClientConfig(t testing.TB, is *pki.Issued, cas ...*testCA) *tls.Config {
	t.Helper()
	c := &tls.Config{RootCAs: certPool(cas...), ServerName: "127.0.0.1"}
	if is != nil {
		kp := keyPair(t, is)
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &kp, nil }
	}
	return c
}

// readHolding dials addr with cfg, sends one Read Holding Registers request
// (unit 1, register 10) and returns the response ADU. In TLS 1.3 the client
// finishes its handshake before the server has checked the client
// certificate, so a refusal shows up here, on the first read.
func readHolding(addr string, cfg *tls.Config) ([]byte, error) {
	d := &net.Dialer{Timeout: 3 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return roundTrip(c, []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 10, 0, 1})
}

// roundTrip writes one request ADU and reads one response ADU.
func roundTrip(c net.Conn, req []byte) ([]byte, error) {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(req); err != nil {
		return nil, err
	}
	hdr := make([]byte, 6)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return nil, err
	}
	body := make([]byte, int(hdr[4])<<8|int(hdr[5]))
	if _, err := io.ReadFull(c, body); err != nil {
		return nil, err
	}
	return append(hdr, body...), nil
}

// mbapsClient is a simonvetter/modbus Modbus/TCP Security client (URL
// tcp+tls://): an independent mbaps implementation presenting is.
func mbapsClient(t testing.TB, addr string, is *pki.Issued, serverCA *testCA) *mb.ModbusClient {
	t.Helper()
	kp := keyPair(t, is)
	c, err := mb.NewClient(&mb.ClientConfiguration{
		URL:           "tcp+tls://" + addr,
		Timeout:       3 * time.Second,
		TLSClientCert: &kp,
		TLSRootCAs:    certPool(serverCA),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// identityRecorder is a policy.Decider that allows everything and keeps a
// copy of every identity the policy was handed.
type identityRecorder struct {
	mu  sync.Mutex
	ids []*pki.Identity // nil entries: no identity
}

func (d *identityRecorder) Decide(_ context.Context, in *policy.Input) policy.Decision {
	d.mu.Lock()
	defer d.mu.Unlock()
	var cp *pki.Identity
	if in.Identity != nil {
		c := *in.Identity
		cp = &c
	}
	d.ids = append(d.ids, cp)
	return policy.Decision{ID: fmt.Sprintf("rec-%d", len(d.ids)), Allow: true, Reason: "recorded"}
}

func (d *identityRecorder) all() []*pki.Identity {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*pki.Identity(nil), d.ids...)
}

// rolePolicy is the reference policy (rules/, without its Rego tests, which
// are written against the reference data) with data whose only grants on
// listener are the reference "operators" and "engineers" grants of
// plc-line1, their network moved from 10.20.0.0/16 to 127.0.0.0/8: on
// loopback, the certificate's role decides.
func rolePolicy(t testing.TB, listener string) *policy.Engine {
	t.Helper()
	fsys := fstest.MapFS{}
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
		fsys[m] = &fstest.MapFile{Data: b}
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
	data, err := json.Marshal(map[string]any{"grants": map[string]any{listener: grants}})
	if err != nil {
		t.Fatal(err)
	}
	fsys["data.json"] = &fstest.MapFile{Data: data}
	e, err := policy.New(context.Background(), policy.Options{Source: policy.Source{Path: "rules with role grants on loopback", FS: fsys}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}
