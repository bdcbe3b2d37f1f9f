package pki

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestInitCAFilesAndModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := InitCA(dir, InitOptions{Name: "Plant 7"})
	if err != nil {
		t.Fatal(err)
	}
	if m := mode(t, dir); m != 0o700 {
		t.Errorf("CA dir mode %o, want 700", m)
	}
	for _, f := range []string{FileRootKey, FileIntermediateKey} {
		if m := mode(t, filepath.Join(dir, f)); m != 0o600 {
			t.Errorf("%s mode %o, want 600", f, m)
		}
	}
	if ca.Root.Subject.CommonName != "Plant 7 Root CA" || !ca.Root.IsCA || ca.Root.MaxPathLen != 1 {
		t.Errorf("root: %s isCA=%v maxPathLen=%d", ca.Root.Subject, ca.Root.IsCA, ca.Root.MaxPathLen)
	}
	if ca.Intermediate.Subject.CommonName != "Plant 7 Intermediate CA" || !ca.Intermediate.IsCA || ca.Intermediate.MaxPathLen != 0 || !ca.Intermediate.MaxPathLenZero {
		t.Errorf("intermediate: %s isCA=%v maxPathLen=%d", ca.Intermediate.Subject, ca.Intermediate.IsCA, ca.Intermediate.MaxPathLen)
	}
	if err := ca.Intermediate.CheckSignatureFrom(ca.Root); err != nil {
		t.Errorf("intermediate not signed by root: %v", err)
	}
	if k, ok := ca.Root.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("default key is %T, want ECDSA P-256", ca.Root.PublicKey)
	}
	// The empty CRL exists from the start, signed by the intermediate.
	crls, err := ParseCRLs(readFile(t, filepath.Join(dir, FileCRL)))
	if err != nil || len(crls) != 1 {
		t.Fatalf("CRL: %v", err)
	}
	if err := crls[0].CheckSignatureFrom(ca.Intermediate); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	if len(crls[0].RevokedCertificateEntries) != 0 || crls[0].Number.Int64() != 1 {
		t.Errorf("new CRL: %d entries, number %v", len(crls[0].RevokedCertificateEntries), crls[0].Number)
	}

	before := readFile(t, filepath.Join(dir, FileRootKey))
	if _, err := InitCA(dir, InitOptions{}); !errors.Is(err, ErrCAExists) {
		t.Fatalf("second init: %v, want ErrCAExists", err)
	}
	if string(readFile(t, filepath.Join(dir, FileRootKey))) != string(before) {
		t.Fatal("second init touched the root key")
	}
}

func TestInitKeyTypes(t *testing.T) {
	for _, tc := range []struct {
		spec  KeySpec
		check func(any) bool
	}{
		{KeySpec{Type: "EC", Curve: "P-384"}, func(k any) bool { e, ok := k.(*ecdsa.PublicKey); return ok && e.Curve == elliptic.P384() }},
		{KeySpec{Type: "RSA", Bits: 2048}, func(k any) bool { r, ok := k.(*rsa.PublicKey); return ok && r.N.BitLen() == 2048 }},
		{KeySpec{Type: "OKP"}, func(k any) bool { _, ok := k.(ed25519.PublicKey); return ok }},
	} {
		t.Run(tc.spec.String(), func(t *testing.T) {
			ca, err := InitCA(t.TempDir(), InitOptions{Key: tc.spec})
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(ca.Intermediate.PublicKey) {
				t.Fatalf("intermediate key %T", ca.Intermediate.PublicKey)
			}
			is, err := ca.Issue(IssueRequest{Type: CertClient, Name: "c", Key: tc.spec, Role: "r"})
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(is.Cert.PublicKey) {
				t.Fatalf("leaf key %T", is.Cert.PublicKey)
			}
			if _, err := LoadKeyPair(is.ChainFile, is.KeyFile); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, bad := range []KeySpec{{Type: "RSA", Bits: 1024}, {Type: "EC", Curve: "P-224"}, {Type: "DSA"}} {
		if _, err := InitCA(t.TempDir(), InitOptions{Key: bad}); err == nil {
			t.Errorf("InitCA accepted %+v", bad)
		}
	}
}

func TestIssueVerifiesWithCryptoX509(t *testing.T) {
	p := newTestPKI(t)
	spiffe, _ := url.Parse("spiffe://plant.example/hmi/1")
	cl := p.issue(t, IssueRequest{Name: "hmi-1", Role: "operator", URIs: []*url.URL{spiffe}, OrganizationalUnits: []string{"Line 3", "OT"}, Validity: 48 * time.Hour})

	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Root)
	inter := x509.NewCertPool()
	inter.AddCert(p.ca.Intermediate)
	if _, err := cl.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("client certificate: %v", err)
	}
	if _, err := cl.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Fatal("a client certificate verified for serverAuth")
	}
	if _, err := p.server.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "localhost"}); err != nil {
		t.Fatalf("server certificate for localhost: %v", err)
	}
	if err := p.server.Cert.VerifyHostname("127.0.0.1"); err != nil {
		t.Fatalf("server certificate for 127.0.0.1: %v", err)
	}
	if slices.Contains(p.server.Cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Fatal("server certificate usable as a client certificate")
	}

	id, err := IdentityFromCertificate(cl.Cert)
	if err != nil {
		t.Fatal(err)
	}
	// Several OUs form one RDN, a DER SET: their order is the encoding's.
	ous := slices.Sorted(slices.Values(id.OrganizationalUnits))
	if !slices.Equal(id.Roles, []string{"operator"}) || !slices.Equal(id.URIs, []string{spiffe.String()}) ||
		!slices.Equal(ous, []string{"Line 3", "OT"}) || id.CommonName != "hmi-1" {
		t.Fatalf("identity %+v", id)
	}
	if got := cl.Cert.NotAfter.Sub(cl.Cert.NotBefore); got != 48*time.Hour {
		t.Fatalf("validity %s, want 48h", got)
	}
	// Files: key 0600, chain = leaf + intermediate.
	if m := mode(t, cl.KeyFile); m != 0o600 {
		t.Fatalf("key mode %o", m)
	}
	chain, err := ReadCerts(cl.ChainFile)
	if err != nil || len(chain) != 2 || !chain[0].Equal(cl.Cert) || !chain[1].Equal(p.ca.Intermediate) {
		t.Fatalf("chain file: %v (%d certs)", err, len(chain))
	}
	leaf, err := ReadCerts(cl.CertFile)
	if err != nil || len(leaf) != 1 || !leaf[0].Equal(cl.Cert) {
		t.Fatalf("cert file: %v", err)
	}

	// Same name again needs Force; bad names and role-on-server are refused.
	if _, err := p.ca.Issue(IssueRequest{Type: CertClient, Name: "hmi-1"}); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("reissue without force: %v", err)
	}
	again, err := p.ca.Issue(IssueRequest{Type: CertClient, Name: "hmi-1", Force: true})
	if err != nil || again.Cert.SerialNumber.Cmp(cl.Cert.SerialNumber) == 0 {
		t.Fatalf("reissue with force: %v", err)
	}
	for _, req := range []IssueRequest{
		{Type: CertClient, Name: "../escape"},
		{Type: CertClient, Name: ".hidden"},
		{Type: CertServer, Name: "nosans"},
		{Type: CertServer, Name: "s", DNSNames: []string{"s"}, Role: "operator"},
		{Type: "peer", Name: "p"},
		{Type: CertClient, Name: "toolong", Validity: 20 * 365 * 24 * time.Hour},
	} {
		if _, err := p.ca.Issue(req); err == nil {
			t.Errorf("Issue accepted %+v", req)
		}
	}
}

func TestEncryptedCAKeys(t *testing.T) {
	dir := t.TempDir()
	pass := []byte("correct horse battery staple")
	if _, err := InitCA(dir, InitOptions{Password: pass}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{FileRootKey, FileIntermediateKey} {
		b := readFile(t, filepath.Join(dir, f))
		if !strings.Contains(string(b), "ENCRYPTED PRIVATE KEY") {
			t.Fatalf("%s is not encrypted:\n%s", f, b)
		}
		if _, err := ReadKey(filepath.Join(dir, f), nil); !errors.Is(err, ErrKeyEncrypted) {
			t.Fatalf("%s without passphrase: %v", f, err)
		}
		if _, err := ReadKey(filepath.Join(dir, f), []byte("wrong")); err == nil {
			t.Fatalf("%s opened with a wrong passphrase", f)
		}
		if _, err := ReadKey(filepath.Join(dir, f), pass); err != nil {
			t.Fatalf("%s with the passphrase: %v", f, err)
		}
	}
	// Listing needs no passphrase; signing does.
	ro, err := OpenCA(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.List(); err != nil {
		t.Fatal(err)
	}
	if _, err := ro.Issue(IssueRequest{Type: CertClient, Name: "x"}); !errors.Is(err, ErrKeyEncrypted) {
		t.Fatalf("issue without passphrase: %v", err)
	}
	if _, err := ro.GenerateCRL(0); !errors.Is(err, ErrKeyEncrypted) {
		t.Fatalf("CRL without passphrase: %v", err)
	}
	rw, err := OpenCA(dir, pass)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rw.Issue(IssueRequest{Type: CertClient, Name: "x"}); err != nil {
		t.Fatal(err)
	}
}

func TestRevokeCRLAndList(t *testing.T) {
	p := newTestPKI(t)
	a := p.issue(t, IssueRequest{Name: "a", Role: "viewer"})
	b := p.issue(t, IssueRequest{Name: "b"})

	// Serial forms an operator might paste.
	withColons := strings.ToLower(a.Entry.Serial)
	var parts []string
	for i := len(withColons); i > 0; i -= 2 {
		parts = append([]string{withColons[max(0, i-2):i]}, parts...)
	}
	e, err := p.ca.Revoke(strings.Join(parts, ":"), "superseded")
	if err != nil {
		t.Fatal(err)
	}
	if e.Name != "a" || !e.Revoked() || e.RevocationReason != "superseded" {
		t.Fatalf("revoked entry %+v", e)
	}
	if _, err := p.ca.Revoke(a.Entry.Serial, ""); err == nil || !strings.Contains(err.Error(), "already revoked") {
		t.Fatalf("second revoke: %v", err)
	}
	if _, err := p.ca.Revoke("DEADBEEF", ""); err == nil {
		t.Fatal("revoked an unknown serial")
	}
	if _, err := p.ca.Revoke(b.Entry.Serial, "because"); err == nil {
		t.Fatal("accepted an unknown reason")
	}

	crls, err := ParseCRLs(readFile(t, filepath.Join(p.ca.Dir, FileCRL)))
	if err != nil {
		t.Fatal(err)
	}
	crl := crls[0]
	if err := crl.CheckSignatureFrom(p.ca.Intermediate); err != nil {
		t.Fatal(err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(a.Cert.SerialNumber) != 0 ||
		crl.RevokedCertificateEntries[0].ReasonCode != 4 {
		t.Fatalf("CRL entries %+v", crl.RevokedCertificateEntries)
	}
	if got := crl.NextUpdate.Sub(crl.ThisUpdate); got != DefaultCRLNextUpdate {
		t.Fatalf("next update in %s", got)
	}

	crl2, err := p.ca.GenerateCRL(2 * time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if crl2.Number.Cmp(crl.Number) <= 0 || crl2.NextUpdate.Sub(crl2.ThisUpdate) != 2*time.Hour || len(crl2.RevokedCertificateEntries) != 1 {
		t.Fatalf("regenerated CRL: number %v (was %v), next update %s", crl2.Number, crl.Number, crl2.NextUpdate.Sub(crl2.ThisUpdate))
	}

	list, err := p.ca.List()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range list {
		names = append(names, e.Name)
		switch e.Name {
		case "a":
			if !e.Revoked() || e.Role != "viewer" || e.Type != CertClient {
				t.Errorf("a: %+v", e)
			}
		case "b":
			if e.Revoked() {
				t.Errorf("b revoked")
			}
		case "proxy":
			if e.Type != CertServer || !slices.Equal(e.DNSNames, []string{"localhost"}) || !slices.Equal(e.IPAddresses, []string{"127.0.0.1"}) {
				t.Errorf("proxy: %+v", e)
			}
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"a", "b", "proxy"}) {
		t.Fatalf("list: %v", names)
	}
	// The index on disk is complete JSON (atomic writes leave no temp files).
	ents, _ := os.ReadDir(p.ca.Dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("leftover temp file %s", e.Name())
		}
	}
}

func TestParseSerial(t *testing.T) {
	for in, want := range map[string]string{"0a:ff": "AFF", "0x00AfF": "AFF", " aff\n": "AFF"} {
		n, err := ParseSerial(in)
		if err != nil || SerialString(n) != want {
			t.Errorf("ParseSerial(%q) = %v, %v; want %s", in, n, err, want)
		}
	}
	for _, bad := range []string{"", "xyz", "-1"} {
		if _, err := ParseSerial(bad); err == nil {
			t.Errorf("ParseSerial(%q) accepted", bad)
		}
	}
}

func TestIssueIPAndDNS(t *testing.T) {
	p := newTestPKI(t)
	s := p.issue(t, IssueRequest{Type: CertServer, Name: "appliance", DNSNames: []string{"appliance.plant.example"}, IPAddresses: []net.IP{net.ParseIP("10.0.0.5"), net.ParseIP("fd00::5")}})
	if len(s.Cert.IPAddresses) != 2 || len(s.Cert.DNSNames) != 1 || len(s.Cert.URIs) != 0 {
		t.Fatalf("SANs: dns %v ip %v uri %v", s.Cert.DNSNames, s.Cert.IPAddresses, s.Cert.URIs)
	}
}
