package pki

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// custom signs a client certificate built by mutate with the test CA's
// intermediate, bypassing Issue's checks, to make certificates our CLI
// refuses to make (bad role encoding, no EKU...).
func (p *testPKI) custom(t *testing.T, name string, mutate func(*x509.Certificate)) *Issued {
	t.Helper()
	signer, err := p.ca.signer()
	if err != nil {
		t.Fatal(err)
	}
	key, err := GenerateKey(KeySpec{})
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	mutate(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca.Intermediate, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	dir := t.TempDir()
	is := &Issued{Cert: cert, Key: key, ChainFile: filepath.Join(dir, name+".crt"), KeyFile: filepath.Join(dir, name+".key")}
	writeFile(t, is.ChainFile, EncodeCerts(cert, p.ca.Intermediate))
	kp, _ := EncodeKey(key, nil)
	writeFile(t, is.KeyFile, kp)
	return is
}

// TestHandshakeMatrix runs one real TLS handshake on 127.0.0.1 per case
// against the server config, and checks the server's verdict and reason.
func TestHandshakeMatrix(t *testing.T) {
	p := newTestPKI(t)
	other := newTestPKI(t) // a second, unrelated CA

	valid := p.issue(t, IssueRequest{Name: "hmi-1"})
	withRole := p.issue(t, IssueRequest{Name: "eng-1", Role: "operator", OrganizationalUnits: []string{"Line 3"}})
	foreign := other.issue(t, IssueRequest{Name: "intruder", Role: "operator"})
	foreignExpired := other.issue(t, IssueRequest{Name: "intruder-old", NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour})
	expired := p.issue(t, IssueRequest{Name: "old", NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour})
	future := p.issue(t, IssueRequest{Name: "future", NotBefore: time.Now().Add(24 * time.Hour), Validity: 24 * time.Hour})
	revoked := p.issue(t, IssueRequest{Name: "stolen", Role: "operator"})
	if _, err := p.ca.Revoke(revoked.Entry.Serial, "key-compromise"); err != nil {
		t.Fatal(err)
	}
	serverOnly := p.issue(t, IssueRequest{Type: CertServer, Name: "not-a-client", DNSNames: []string{"x.example"}})
	badRole := p.custom(t, "bad-role", func(c *x509.Certificate) {
		v, _ := asn1.Marshal(42) // an INTEGER, not a UTF8String
		c.ExtraExtensions = []pkix.Extension{{Id: OIDModbusRole, Value: v}}
	})
	criticalRole := p.custom(t, "critical-role", func(c *x509.Certificate) {
		ext, _ := RoleExtension("viewer")
		ext.Critical = true
		c.ExtraExtensions = []pkix.Extension{ext}
	})
	noEKU := p.custom(t, "no-eku", func(c *x509.Certificate) { c.ExtKeyUsage = nil })

	var rejMu sync.Mutex
	var rejected []Reason
	opts := ServerOptions{NoWatch: true, OnReject: func(he *HandshakeError) {
		rejMu.Lock()
		rejected = append(rejected, he.Reason)
		rejMu.Unlock()
	}}
	s13 := p.serverTLS(t, p.tlsConfig("1.3"), opts)
	s12 := p.serverTLS(t, p.tlsConfig("1.2"), opts)
	srv13 := startEchoServer(t, s13.Config())
	srv12 := startEchoServer(t, s12.Config())

	cases := []struct {
		name   string
		srv    *echoServer
		client *Issued
		tweak  func(*tls.Config)
		want   Reason // "" = accepted
		roles  []string
	}{
		{name: "no client certificate", srv: srv13, want: ReasonNoClientCert},
		{name: "certificate from another CA", srv: srv13, client: foreign, want: ReasonUnknownCA},
		{name: "expired certificate from another CA", srv: srv13, client: foreignExpired, want: ReasonUnknownCA},
		{name: "expired", srv: srv13, client: expired, want: ReasonExpired},
		{name: "not yet valid", srv: srv13, client: future, want: ReasonNotYetValid},
		{name: "revoked (in CRL)", srv: srv13, client: revoked, want: ReasonRevoked},
		{name: "TLS 1.1 offered", srv: srv12, client: valid, want: ReasonProtocolVersion,
			tweak: func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS11, tls.VersionTLS11 }},
		{name: "TLS 1.2 when min is 1.3", srv: srv13, client: valid, want: ReasonProtocolVersion,
			tweak: func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }},
		{name: "TLS 1.2 when min is 1.2", srv: srv12, client: withRole, roles: []string{"operator"},
			tweak: func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }},
		{name: "valid without role", srv: srv13, client: valid, roles: nil},
		{name: "valid with role", srv: srv13, client: withRole, roles: []string{"operator"}},
		{name: "role extension marked critical", srv: srv13, client: criticalRole, roles: []string{"viewer"}},
		{name: "server-auth-only certificate as client", srv: srv13, client: serverOnly, want: ReasonBadKeyUsage},
		{name: "no ExtKeyUsage", srv: srv13, client: noEKU, want: ReasonBadKeyUsage},
		{name: "malformed role extension", srv: srv13, client: badRole, want: ReasonBadRoleExtension},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cc := p.clientConfig(t, tc.client)
			if tc.tweak != nil {
				tc.tweak(cc)
			}
			conn, clientErr := dialEcho(tc.srv.addr(), cc)
			if conn != nil {
				defer conn.Close()
			}
			r := tc.srv.next(t)
			if tc.want == "" {
				if r.err != nil || clientErr != nil {
					t.Fatalf("refused: server %v, client %v", r.err, clientErr)
				}
				if !slices.Equal(r.id.Roles, tc.roles) {
					t.Fatalf("roles %q, want %q", r.id.Roles, tc.roles)
				}
				if r.id.CommonName != tc.client.Cert.Subject.CommonName || r.id.Serial != SerialString(tc.client.Cert.SerialNumber) {
					t.Fatalf("identity %+v does not describe the client certificate", r.id)
				}
				return
			}
			if r.err == nil {
				t.Fatalf("accepted, want %s", tc.want)
			}
			if clientErr == nil {
				t.Fatalf("the client could still exchange data after the server refused it (%v)", r.err)
			}
			if got := ReasonOf(r.err); got != tc.want {
				t.Fatalf("reason %q, want %q (server error: %v)", got, tc.want, r.err)
			}
			var he *HandshakeError
			if errors.As(r.err, &he) {
				if !errors.Is(r.err, tc.want) {
					t.Fatalf("errors.Is(err, %s) is false for %v", tc.want, r.err)
				}
				if tc.client != nil && he.Serial != SerialString(tc.client.Cert.SerialNumber) {
					t.Fatalf("HandshakeError serial %s, want %s", he.Serial, SerialString(tc.client.Cert.SerialNumber))
				}
			}
		})
	}

	// The version refusals happen inside crypto/tls before any certificate
	// is seen; every other refusal went through OnReject.
	rejMu.Lock()
	defer rejMu.Unlock()
	var want []Reason
	for _, tc := range cases {
		if tc.want != "" && tc.want != ReasonProtocolVersion {
			want = append(want, tc.want)
		}
	}
	if !slices.Equal(rejected, want) {
		t.Fatalf("OnReject saw %v, want %v", rejected, want)
	}
}

// TestHandshakeCRLStates: a CRL past NextUpdate refuses every client
// (fail closed); a crl_file without a CRL from the leaf's issuer refuses it;
// without crl_file, revocation is not checked.
func TestHandshakeCRLStates(t *testing.T) {
	p := newTestPKI(t)
	other := newTestPKI(t)
	client := p.issue(t, IssueRequest{Name: "hmi"})

	t.Run("stale CRL", func(t *testing.T) {
		later := func() time.Time { return time.Now().Add(p.ca.CRLNextUpdate() + time.Hour) }
		// A client valid at that later time, so that only the CRL is stale.
		long := p.issue(t, IssueRequest{Name: "long", Validity: 3 * p.ca.CRLNextUpdate()})
		s := p.serverTLS(t, p.tlsConfig("1.3"), ServerOptions{NoWatch: true, Now: later})
		srv := startEchoServer(t, s.Config())
		dialEcho(srv.addr(), p.clientConfig(t, long))
		if r := srv.next(t); ReasonOf(r.err) != ReasonCRLExpired {
			t.Fatalf("got %v, want %s", r.err, ReasonCRLExpired)
		}
	})
	t.Run("CRL of another issuer only", func(t *testing.T) {
		cfg := p.tlsConfig("1.3")
		cfg.CRLFile = filepath.Join(other.ca.Dir, FileCRL)
		s := p.serverTLS(t, cfg, ServerOptions{NoWatch: true})
		srv := startEchoServer(t, s.Config())
		dialEcho(srv.addr(), p.clientConfig(t, client))
		if r := srv.next(t); ReasonOf(r.err) != ReasonCRLMissing {
			t.Fatalf("got %v, want %s", r.err, ReasonCRLMissing)
		}
	})
	t.Run("no crl_file", func(t *testing.T) {
		if _, err := p.ca.Revoke(client.Entry.Serial, ""); err != nil {
			t.Fatal(err)
		}
		cfg := p.tlsConfig("1.3")
		cfg.CRLFile = ""
		s := p.serverTLS(t, cfg, ServerOptions{NoWatch: true})
		srv := startEchoServer(t, s.Config())
		c, err := dialEcho(srv.addr(), p.clientConfig(t, client))
		if r := srv.next(t); r.err != nil || err != nil {
			t.Fatalf("refused without a CRL: %v / %v", r.err, err)
		}
		c.Close()
	})
}

// TestHandshakeLeafOnly: a client that sends its leaf without the
// intermediate verifies only when the intermediate is in client_ca_file.
func TestHandshakeLeafOnly(t *testing.T) {
	p := newTestPKI(t)
	client := p.issue(t, IssueRequest{Name: "legacy"})
	cc := p.clientConfig(t, client)
	leafOnly := cc.Certificates[0]
	leafOnly.Certificate = leafOnly.Certificate[:1]
	// Force it: a Go client would send nothing when the server's list of
	// acceptable CAs does not name the leaf's issuer.
	cc.Certificates = nil
	cc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &leafOnly, nil }

	s := p.serverTLS(t, p.tlsConfig("1.3"), ServerOptions{NoWatch: true})
	srv := startEchoServer(t, s.Config())
	dialEcho(srv.addr(), cc)
	if r := srv.next(t); ReasonOf(r.err) != ReasonUnknownCA {
		t.Fatalf("root-only bundle: got %v, want unknown_ca", r.err)
	}

	bundle := filepath.Join(t.TempDir(), "client_ca.crt")
	writeFile(t, bundle, EncodeCerts(p.ca.Intermediate, p.ca.Root))
	cfg := p.tlsConfig("1.3")
	cfg.ClientCAFile = bundle
	s2 := p.serverTLS(t, cfg, ServerOptions{NoWatch: true})
	srv2 := startEchoServer(t, s2.Config())
	c, err := dialEcho(srv2.addr(), cc)
	if r := srv2.next(t); r.err != nil || err != nil {
		t.Fatalf("bundle with intermediate: %v / %v", r.err, err)
	}
	c.Close()
}

// TestExpiredChainSearchIsBounded: an expired leaf with many look-alike
// intermediates (same subject, each "issuing" the others) must not make the
// classification of the error explode.
func TestExpiredChainSearchIsBounded(t *testing.T) {
	p := newTestPKI(t)
	s := p.serverTLS(t, p.tlsConfig("1.3"), ServerOptions{NoWatch: true})
	v := s.cur.Load().verifier
	key, _ := GenerateKey(KeySpec{})
	var fakes []*x509.Certificate
	for i := 0; i < 30; i++ {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 1)), Subject: pkix.Name{CommonName: "Loop CA"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		c, _ := x509.ParseCertificate(der)
		fakes = append(fakes, c)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(99), Subject: pkix.Name{CommonName: "old"},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, _ := x509.CreateCertificate(rand.Reader, leafTmpl, fakes[0], key.Public(), key)
	leaf, _ := x509.ParseCertificate(der)
	start := time.Now()
	he := v.verify(append([]*x509.Certificate{leaf}, fakes...))
	if he == nil || he.Reason != ReasonUnknownCA {
		t.Fatalf("got %v, want unknown_ca", he)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("classification took %s", el)
	}
}
