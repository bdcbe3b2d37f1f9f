package pki

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestRedteamResumptionAfterRevocation: a client that kept a TLS session
// (crypto/tls ClientSessionCache) from before its certificate was revoked
// must not resume past the CRL: every connection is a full handshake,
// verified against the current CRL.
func TestRedteamResumptionAfterRevocation(t *testing.T) {
	for _, ver := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(ver), func(t *testing.T) {
			p := newTestPKI(t)
			e := newEtc(t, p)
			e.cfg.MinVersion = "1.2"
			client := p.issue(t, IssueRequest{Name: "hmi"})
			s := p.serverTLS(t, e.cfg, ServerOptions{NoWatch: true})
			srv := startEchoServer(t, s.Config())

			cc := p.clientConfig(t, client)
			cc.MaxVersion = ver
			cc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
			for i := 0; i < 2; i++ {
				c, err := dialEcho(srv.addr(), cc)
				if r := srv.next(t); r.err != nil || err != nil {
					t.Fatalf("valid client refused: %v / %v", r.err, err)
				}
				// Read once more so a TLS 1.3 ticket, if any, is processed.
				echo(c, "x")
				if c.ConnectionState().DidResume {
					t.Fatal("the server resumed a session: resumption would skip the CRL check")
				}
				c.Close()
			}
			if _, err := p.ca.Revoke(client.Entry.Serial, "key-compromise"); err != nil {
				t.Fatal(err)
			}
			writeFile(t, e.cfg.CRLFile, readFile(t, filepath.Join(p.ca.Dir, FileCRL)))
			if err := s.Reload(); err != nil {
				t.Fatal(err)
			}
			c, err := dialEcho(srv.addr(), cc)
			r := srv.next(t)
			if c != nil {
				resumed := c.ConnectionState().DidResume
				c.Close()
				if resumed {
					t.Fatal("revoked client resumed its session")
				}
			}
			if err == nil || ReasonOf(r.err) != ReasonRevoked {
				t.Fatalf("revoked client: server %v, client %v; want revoked", r.err, err)
			}
		})
	}
}

// TestRedteamRoleExtensionShapes: the role extension in its malformed and
// unusual shapes. A malformed one refuses the handshake (the identity never
// shows "no role" for a certificate whose issuer meant one); several are
// all reported (RolesFromCertificate's doc).
func TestRedteamRoleExtensionShapes(t *testing.T) {
	p := newTestPKI(t)
	s := p.serverTLS(t, p.tlsConfig("1.3"), ServerOptions{NoWatch: true})
	srv := startEchoServer(t, s.Config())
	ext := func(v []byte) pkix.Extension { return pkix.Extension{Id: OIDModbusRole, Value: v} }
	utf8 := func(s string) []byte { b, _ := asn1.MarshalWithParams(s, "utf8"); return b }
	printable, _ := asn1.MarshalWithParams("operator", "printable")
	cases := []struct {
		name  string
		exts  []pkix.Extension
		want  Reason
		roles []string
	}{
		{name: "empty value", exts: []pkix.Extension{ext(nil)}, want: ReasonBadRoleExtension},
		{name: "PrintableString", exts: []pkix.Extension{ext(printable)}, want: ReasonBadRoleExtension},
		{name: "trailing bytes", exts: []pkix.Extension{ext(append(utf8("operator"), 0x05, 0x00))}, want: ReasonBadRoleExtension},
		{name: "SEQUENCE of UTF8String", exts: []pkix.Extension{ext(func() []byte {
			b, _ := asn1.Marshal([]string{"operator"})
			return b
		}())}, want: ReasonBadRoleExtension},
		{name: "IA5String", exts: []pkix.Extension{ext([]byte{0x16, 0x02, 'o', 'p'})}, want: ReasonBadRoleExtension},
		{name: "BMPString", exts: []pkix.Extension{ext([]byte{0x1e, 0x04, 0, 'o', 0, 'p'})}, want: ReasonBadRoleExtension},
		{name: "T61String with invalid UTF-8", exts: []pkix.Extension{ext([]byte{0x14, 0x02, 0xff, 'p'})}, want: ReasonBadRoleExtension},
		{name: "GeneralString with invalid UTF-8", exts: []pkix.Extension{ext([]byte{0x1b, 0x02, 0xff, 'p'})}, want: ReasonBadRoleExtension},
		{name: "context-tagged UTF8String", exts: []pkix.Extension{ext([]byte{0x80, 0x02, 'o', 'p'})}, want: ReasonBadRoleExtension},
		{name: "constructed UTF8String", exts: []pkix.Extension{ext([]byte{0x2c, 0x04, 0x0c, 0x02, 'o', 'p'})}, want: ReasonBadRoleExtension},
		{name: "empty UTF8String", exts: []pkix.Extension{ext(utf8(""))}, roles: []string{""}},
		{name: "plain UTF8String", exts: []pkix.Extension{ext(utf8("opérateur"))}, roles: []string{"opérateur"}},
		{name: "invalid UTF-8", exts: []pkix.Extension{ext([]byte{0x0c, 0x02, 0xff, 0xfe})}, want: ReasonBadRoleExtension},
		{name: "length that lies", exts: []pkix.Extension{ext([]byte{0x0c, 0x7f, 'o', 'p'})}, want: ReasonBadRoleExtension},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			is := p.custom(t, "role-"+tc.name, func(c *x509.Certificate) { c.ExtraExtensions = tc.exts })
			conn, err := dialEcho(srv.addr(), p.clientConfig(t, is))
			r := srv.next(t)
			if conn != nil {
				conn.Close()
			}
			if tc.want == "" {
				if r.err != nil || err != nil {
					t.Fatalf("refused: %v / %v", r.err, err)
				}
				if !slices.Equal(r.id.Roles, tc.roles) {
					t.Fatalf("roles %q, want %q", r.id.Roles, tc.roles)
				}
				return
			}
			if ReasonOf(r.err) != tc.want || err == nil {
				t.Fatalf("server %v, client %v; want %s", r.err, err, tc.want)
			}
		})
	}
}

// TestRedteamHugeChain: a client that sends a long chain of junk
// intermediates is refused promptly and the server stays up.
func TestRedteamHugeChain(t *testing.T) {
	p := newTestPKI(t)
	s := p.serverTLS(t, p.tlsConfig("1.3"), ServerOptions{NoWatch: true})
	srv := startEchoServer(t, s.Config())
	key, _ := GenerateKey(KeySpec{})
	// A chain of 150 CAs, each signing the next, none from our bundle,
	// every one named like our intermediate.
	parent := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: p.ca.Intermediate.Subject,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	var chain [][]byte
	for i := 0; i < 150; i++ {
		serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
		tmpl := *parent
		tmpl.SerialNumber = serial
		der, err := x509.CreateCertificate(rand.Reader, &tmpl, parent, key.Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, der)
	}
	leafT := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "huge"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	leaf, _ := x509.CreateCertificate(rand.Reader, leafT, parent, key.Public(), key)
	cc := p.clientConfig(t, nil)
	cert := &tls.Certificate{Certificate: append([][]byte{leaf}, chain...), PrivateKey: key}
	cc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	start := time.Now()
	_, err := dialEcho(srv.addr(), cc)
	r := srv.next(t)
	if r.err == nil || err == nil {
		t.Fatalf("accepted a junk chain: %v / %v", r.err, err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("refusal took %s", el)
	}
	t.Logf("refused with %s: %v", ReasonOf(r.err), r.err)
	valid := p.issue(t, IssueRequest{Name: "ok"})
	c, err := dialEcho(srv.addr(), p.clientConfig(t, valid))
	if r := srv.next(t); r.err != nil || err != nil {
		t.Fatalf("valid client refused after the attack: %v / %v", r.err, err)
	}
	c.Close()
}

// TestRedteamCRLReloadAttacks: at reload, a CRL signed by another CA under
// our issuer's name, a malformed file and an empty file are refused and the
// last good CRL stays (Reload's doc); an expired CRL is taken and refuses
// every client (fail closed).
func TestRedteamCRLReloadAttacks(t *testing.T) {
	p := newTestPKI(t)
	e := newEtc(t, p)
	revoked := p.issue(t, IssueRequest{Name: "stolen"})
	good := p.issue(t, IssueRequest{Name: "good"})
	if _, err := p.ca.Revoke(revoked.Entry.Serial, ""); err != nil {
		t.Fatal(err)
	}
	writeFile(t, e.cfg.CRLFile, readFile(t, filepath.Join(p.ca.Dir, FileCRL)))
	s := p.serverTLS(t, e.cfg, ServerOptions{NoWatch: true})
	srv := startEchoServer(t, s.Config())

	// A forged empty CRL with the intermediate's name, signed by another key.
	key, _ := GenerateKey(KeySpec{})
	fakeIssuer := &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: p.ca.Intermediate.Subject,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId: []byte{1, 2, 3},
	}
	fder, _ := x509.CreateCertificate(rand.Reader, fakeIssuer, fakeIssuer, key.Public(), key)
	fake, _ := x509.ParseCertificate(fder)
	crlDER, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1 << 40), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour),
	}, fake, key)
	if err != nil {
		t.Fatal(err)
	}
	forged := append(readFile(t, filepath.Join(p.ca.Dir, FileCRL)), pemCRL(crlDER)...)
	cases := []struct {
		name     string
		data     []byte
		revoked  Reason // what the revoked client gets
		goodFail Reason // "" when the good client must get through
	}{
		// The intermediate is not in the bundle, so the forged CRL loads
		// and is checked at handshake: its signature fails, and no CRL of
		// the issuer means every client of it is refused (fail closed).
		{name: "forged CRL alone", data: pemCRL(crlDER), revoked: ReasonCRLMissing, goodFail: ReasonCRLMissing},
		// Beside the real one, the forged (newer) CRL is ignored.
		{name: "forged CRL beside the real one", data: forged, revoked: ReasonRevoked},
		{name: "malformed", data: []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"), revoked: ReasonRevoked},
		{name: "empty", data: nil, revoked: ReasonRevoked},
		{name: "garbage DER", data: []byte{0x30, 0x82, 0xff, 0xff, 0x00}, revoked: ReasonRevoked},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Back to the good CRL first.
			writeFile(t, e.cfg.CRLFile, readFile(t, filepath.Join(p.ca.Dir, FileCRL)))
			s.Reload()
			writeFile(t, e.cfg.CRLFile, tc.data)
			s.Reload()
			if err, _ := handshakeWith(t, srv, p.clientConfig(t, revoked)); ReasonOf(err) != tc.revoked {
				t.Fatalf("revoked client got %v, want %s", err, tc.revoked)
			}
			err, _ := handshakeWith(t, srv, p.clientConfig(t, good))
			if tc.goodFail == "" && err != nil || tc.goodFail != "" && ReasonOf(err) != tc.goodFail {
				t.Fatalf("good client got %v, want %q", err, tc.goodFail)
			}
		})
	}
}

func pemCRL(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// TestRedteamClientCertAsFakeAppliance: a holder of a client certificate
// from the plant CA, with the appliance's address in it, stands up a fake
// appliance: `conduit connect` and upstream_tls (ClientTLS) must refuse it,
// the certificate not being for serverAuth. A server certificate without
// any ExtKeyUsage is also reported.
func TestRedteamClientCertAsFakeAppliance(t *testing.T) {
	p := newTestPKI(t)
	me := p.issue(t, IssueRequest{Name: "legacy"})
	ct, err := NewClientTLS(ClientOptions{CertFile: me.ChainFile, KeyFile: me.KeyFile, CAFile: filepath.Join(p.ca.Dir, FileRootCert)})
	if err != nil {
		t.Fatal(err)
	}
	stolen := p.custom(t, "hmi-with-ip", func(c *x509.Certificate) {
		c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		c.DNSNames = []string{"localhost"}
	})
	addr, _ := startDevice(t, p, stolen)
	if err := dialUpstream(addr, ct.Config(addr)); err == nil {
		t.Fatal("a client certificate was accepted as the appliance's")
	}
	other := newTestPKI(t)
	oaddr, _ := startDevice(t, other, other.server)
	if err := dialUpstream(oaddr, ct.Config(oaddr)); err == nil {
		t.Fatal("an appliance certificate of another CA was accepted")
	}
}

// TestRedteamConcurrentIssueSameName: concurrent `pki issue` of one name
// (without --force) must not both succeed, the second silently replacing
// the first's key and certificate files while the index lists both.
// Serials of concurrent issues never collide.
func TestRedteamConcurrentIssueSameName(t *testing.T) {
	p := newTestPKI(t)
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	issued := make([]*Issued, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			issued[i], errs[i] = p.ca.Issue(IssueRequest{Type: CertClient, Name: "hmi"})
		}()
	}
	wg.Wait()
	ok := 0
	var winner *Issued
	for i, err := range errs {
		if err == nil {
			ok++
			winner = issued[i]
		}
	}
	if ok != 1 {
		t.Fatalf("%d concurrent issues of the same name succeeded, want 1 (errors %v)", ok, errs)
	}
	idx, err := p.ca.readIndex()
	if err != nil {
		t.Fatal(err)
	}
	names := 0
	for _, e := range idx.Certificates {
		if e.Name == "hmi" {
			names++
		}
	}
	if names != 1 {
		t.Fatalf("the index lists %d certificates named hmi", names)
	}
	kp, err := LoadKeyPair(winner.ChainFile, winner.KeyFile)
	if err != nil || !kp.Leaf.Equal(winner.Cert) {
		t.Fatalf("the files on disk are not the issued certificate: %v", err)
	}

	// Distinct names at once: distinct serials, all in the index.
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			issued[i], errs[i] = p.ca.Issue(IssueRequest{Type: CertClient, Name: "c" + strconv.Itoa(i)})
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		s := issued[i].Entry.Serial
		if seen[s] {
			t.Fatalf("serial %s issued twice", s)
		}
		seen[s] = true
	}
	if idx, _ = p.ca.readIndex(); len(idx.Certificates) != n+2 { // + server + hmi
		t.Fatalf("index has %d entries, want %d", len(idx.Certificates), n+2)
	}
}

// TestRedteamTLS12WeakSuites: with min_version 1.2, a client offering only
// RSA key exchange or 3DES suites gets no handshake.
func TestRedteamTLS12WeakSuites(t *testing.T) {
	p := newTestPKI(t)
	s := p.serverTLS(t, p.tlsConfig("1.2"), ServerOptions{NoWatch: true})
	srv := startEchoServer(t, s.Config())
	client := p.issue(t, IssueRequest{Name: "hmi"})
	for _, suites := range [][]uint16{
		{tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_128_CBC_SHA},
		{tls.TLS_ECDHE_ECDSA_WITH_RC4_128_SHA, tls.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA, tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA},
		{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256},
	} {
		cc := p.clientConfig(t, client)
		cc.MaxVersion = tls.VersionTLS12
		cc.CipherSuites = suites
		c, err := dialEcho(srv.addr(), cc)
		r := srv.next(t)
		if err == nil || r.err == nil {
			st := c.ConnectionState()
			c.Close()
			t.Fatalf("handshake with %s", tls.CipherSuiteName(st.CipherSuite))
		}
	}
}

// TestRedteamDeltaAndPartitionedCRLs: a CRL with a critical extension the
// check does not implement (a delta CRL, a partitioned CRL, an indirect
// CRL's entry) must not be taken for the issuer's complete CRL. Put next
// to the base CRL, a newer delta CRL listing nothing new made the revoked
// client pass. Such a file is refused: at start, an error; at reload, the
// last good CRL stays.
func TestRedteamDeltaAndPartitionedCRLs(t *testing.T) {
	p := newTestPKI(t)
	revoked := p.issue(t, IssueRequest{Name: "stolen"})
	good := p.issue(t, IssueRequest{Name: "good"})
	if _, err := p.ca.Revoke(revoked.Entry.Serial, "key-compromise"); err != nil {
		t.Fatal(err)
	}
	base := readFile(t, filepath.Join(p.ca.Dir, FileCRL))
	signer, err := p.ca.signer()
	if err != nil {
		t.Fatal(err)
	}
	sign := func(exts []pkix.Extension, entries []x509.RevocationListEntry) []byte {
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
			Number: big.NewInt(1 << 30), ThisUpdate: time.Now().Add(time.Minute), NextUpdate: time.Now().Add(time.Hour),
			ExtraExtensions: exts, RevokedCertificateEntries: entries,
		}, p.ca.Intermediate, signer)
		if err != nil {
			t.Fatal(err)
		}
		return pemCRL(der)
	}
	baseNumber, _ := asn1.Marshal(big.NewInt(1))
	idp, _ := asn1.Marshal(struct {
		OnlyUser bool `asn1:"optional,tag:1"`
	}{OnlyUser: true})
	cases := map[string][]byte{
		"delta CRL":       sign([]pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 27}, Critical: true, Value: baseNumber}}, nil),
		"partitioned CRL": sign([]pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 28}, Critical: true, Value: idp}}, nil),
		"indirect CRL entry": sign(nil, []x509.RevocationListEntry{{
			SerialNumber: big.NewInt(12345), RevocationTime: time.Now(),
			ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 29}, Critical: true, Value: []byte{0x30, 0x00}}},
		}}),
	}
	for name, extra := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEtc(t, p)
			writeFile(t, e.cfg.CRLFile, append(append([]byte{}, base...), extra...))
			if s, err := NewServerTLS(t.Context(), e.cfg, ServerOptions{NoWatch: true}); err == nil {
				s.Close()
				t.Fatal("the server started with a CRL file it cannot interpret")
			}
			writeFile(t, e.cfg.CRLFile, base)
			s := p.serverTLS(t, e.cfg, ServerOptions{NoWatch: true})
			srv := startEchoServer(t, s.Config())
			writeFile(t, e.cfg.CRLFile, append(append([]byte{}, base...), extra...))
			if err := s.Reload(); err == nil {
				t.Fatal("reload took a CRL file it cannot interpret")
			}
			if err, _ := handshakeWith(t, srv, p.clientConfig(t, revoked)); ReasonOf(err) != ReasonRevoked {
				t.Fatalf("revoked client: %v", err)
			}
			if err, _ := handshakeWith(t, srv, p.clientConfig(t, good)); err != nil {
				t.Fatalf("good client: %v", err)
			}
		})
	}
}
