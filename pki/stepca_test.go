package pki

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/ca"
	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/randutil"

	cconfig "github.com/conduit-ot/conduit/config"
)

// testStepCA is a real step-ca (github.com/smallstep/certificates/ca) on
// 127.0.0.1, run in-process with no database and one JWK provisioner. Its
// root and intermediate come from our own InitCA, so client certificates
// issued by p verify with the same root.
type testStepCA struct {
	p           *testPKI
	url         string
	fingerprint string
	jwk         *jose.JSONWebKey
	stop        func()
}

const testProvisioner = "conduit-test"

func startStepCA(t *testing.T, lifetime time.Duration) *testStepCA {
	t.Helper()
	p := newTestPKI(t)
	jwk, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	pub := jwk.Public()
	dur := func(d time.Duration) *provisioner.Duration { return &provisioner.Duration{Duration: d} }
	prov := &provisioner.JWK{
		Type: "JWK", Name: testProvisioner, Key: &pub,
		Claims: &provisioner.Claims{MinTLSDur: dur(5 * time.Second), MaxTLSDur: dur(time.Hour), DefaultTLSDur: dur(lifetime)},
	}
	// ca.Run listens on cfg.Address itself: pick a free port first.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := &config.Config{
		Root:             []string{filepath.Join(p.ca.Dir, FileRootCert)},
		IntermediateCert: filepath.Join(p.ca.Dir, FileIntermediateCert),
		IntermediateKey:  filepath.Join(p.ca.Dir, FileIntermediateKey),
		Address:          addr,
		DNSNames:         []string{"127.0.0.1"},
		AuthorityConfig: &config.AuthConfig{
			Provisioners: provisioner.List{prov},
			// step-ca backdates by a minute by default; with certificates
			// of a few seconds that would be most of their life.
			Backdate: dur(time.Second),
		},
		DB: nil,
	}
	srv, err := ca.New(cfg, ca.WithQuiet(true))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Run()
	var stopOnce sync.Once
	t.Cleanup(func() { stopOnce.Do(func() { srv.Stop() }) })
	sum := sha256.Sum256(p.ca.Root.Raw)
	s := &testStepCA{p: p, url: "https://" + addr, fingerprint: hex.EncodeToString(sum[:]), jwk: jwk}
	s.stop = func() { stopOnce.Do(func() { srv.Stop() }) }
	eventually(t, "step-ca health", func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	return s
}

// token makes a one-time token for the JWK provisioner, as `step ca token`
// does.
func (s *testStepCA) token(t *testing.T, subject string, sans ...string) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: s.jwk.Key},
		new(jose.SignerOptions).WithType("JWT").WithHeader("kid", s.jwk.KeyID))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := randutil.ASCII(32)
	now := time.Now()
	claims := struct {
		jose.Claims
		SANs []string `json:"sans"`
		SHA  string   `json:"sha"`
	}{
		Claims: jose.Claims{
			ID: id, Issuer: testProvisioner, Subject: subject,
			Audience:  []string{s.url + "/1.0/sign"},
			NotBefore: jose.NewNumericDate(now), IssuedAt: jose.NewNumericDate(now),
			Expiry: jose.NewNumericDate(now.Add(5 * time.Minute)),
		},
		SANs: sans,
		SHA:  s.fingerprint,
	}
	tok, err := jose.Signed(sig).Claims(claims).CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (s *testStepCA) config(t *testing.T, dir string) *cconfig.StepCA {
	tokenFile := filepath.Join(t.TempDir(), "token")
	writeFile(t, tokenFile, []byte(s.token(t, "localhost", "localhost", "127.0.0.1")+"\n"))
	return &cconfig.StepCA{URL: s.url, RootFingerprint: s.fingerprint, TokenFile: tokenFile, Dir: dir}
}

func TestStepCAObtainAndPersist(t *testing.T) {
	sc := startStepCA(t, time.Hour)
	dir := filepath.Join(t.TempDir(), "stepca")
	cfg := sc.config(t, dir)
	src, err := NewStepCASource(t.Context(), cfg, StepCAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	leaf := src.Certificate().Leaf
	src.Close()
	if leaf.Subject.CommonName != "localhost" || leaf.VerifyHostname("127.0.0.1") != nil {
		t.Fatalf("certificate for %s, SANs %v %v", leaf.Subject, leaf.DNSNames, leaf.IPAddresses)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != time.Hour+time.Second {
		t.Fatalf("lifetime %s, want the provisioner's 1h (+1s backdate)", got)
	}
	if m := mode(t, filepath.Join(dir, StepCAKeyFile)); m != 0o600 {
		t.Fatalf("key mode %o", m)
	}
	roots := x509.NewCertPool()
	roots.AddCert(sc.p.ca.Root)
	chain, err := ReadCerts(filepath.Join(dir, StepCACertFile))
	if err != nil || !chain[0].Equal(leaf) {
		t.Fatalf("persisted chain: %v", err)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "localhost"}); err != nil {
		t.Fatal(err)
	}

	// A restart needs no token: the token file is gone and the CA is not
	// even asked (a wrong URL proves it).
	os.Remove(cfg.TokenFile)
	cfg2 := *cfg
	cfg2.URL = "https://127.0.0.1:1"
	src2, err := NewStepCASource(t.Context(), &cfg2, StepCAOptions{})
	if err != nil {
		t.Fatalf("restart from the persisted certificate: %v", err)
	}
	defer src2.Close()
	if !src2.Certificate().Leaf.Equal(leaf) {
		t.Fatal("restart did not reuse the persisted certificate")
	}
	if nr := src2.NextRenewal(); nr.Before(leaf.NotBefore.Add(39*time.Minute)) || nr.After(leaf.NotBefore.Add(41*time.Minute)) {
		t.Fatalf("next renewal at %s, want 2/3 of the lifetime after %s", nr, leaf.NotBefore)
	}
}

func TestStepCAErrors(t *testing.T) {
	sc := startStepCA(t, time.Hour)
	t.Run("wrong root fingerprint", func(t *testing.T) {
		cfg := sc.config(t, t.TempDir())
		cfg.RootFingerprint = strings.Repeat("ab", 32)
		if _, err := NewStepCASource(t.Context(), cfg, StepCAOptions{}); err == nil || !strings.Contains(err.Error(), "fingerprint") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("no token and nothing persisted", func(t *testing.T) {
		cfg := sc.config(t, t.TempDir())
		cfg.TokenFile = ""
		if _, err := NewStepCASource(t.Context(), cfg, StepCAOptions{}); err == nil || !strings.Contains(err.Error(), "token") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("CA unreachable at renewal", func(t *testing.T) {
		sc := startStepCA(t, time.Hour)
		var failures []error
		src, err := NewStepCASource(t.Context(), sc.config(t, t.TempDir()), StepCAOptions{
			OnRenew: func(_ *x509.Certificate, err error) { failures = append(failures, err) },
		})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		before := src.Certificate()
		if err := src.RenewNow(t.Context()); err != nil {
			t.Fatalf("renewal with the CA up: %v", err)
		}
		renewed := src.Certificate()
		if renewed == before || renewed.Leaf.SerialNumber.Cmp(before.Leaf.SerialNumber) == 0 {
			t.Fatal("RenewNow did not renew")
		}
		sc.stop()
		if err := src.RenewNow(t.Context()); err == nil {
			t.Fatal("renewal succeeded with the CA stopped")
		}
		if src.Certificate() != renewed {
			t.Fatal("a failed renewal replaced the certificate")
		}
		if len(failures) != 2 || failures[0] != nil || failures[1] == nil {
			t.Fatalf("OnRenew saw %v", failures)
		}
	})
	t.Run("token for another CA", func(t *testing.T) {
		other := startStepCA(t, time.Hour)
		cfg := sc.config(t, t.TempDir())
		writeFile(t, cfg.TokenFile, []byte(other.token(t, "localhost", "localhost")))
		if _, err := NewStepCASource(t.Context(), cfg, StepCAOptions{}); err == nil {
			t.Fatal("a token signed by a foreign provisioner key was accepted")
		}
	})
}

// TestStepCARenewalUnderLoad proves renewal with short-lived certificates:
// 15 s certificates renewed at 2/3 of their life (about 10 s), while a TLS
// connection made with the first certificate stays up across the renewal
// and past that certificate's expiry. It takes about 16 s; -short skips it.
func TestStepCARenewalUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("takes ~16s (short-lived step-ca certificates); run without -short")
	}
	const lifetime = 15 * time.Second
	sc := startStepCA(t, lifetime)
	dir := filepath.Join(t.TempDir(), "stepca")
	renewed := make(chan *x509.Certificate, 8)
	reloads := make(chan ReloadResult, 8)
	tlsCfg := sc.p.tlsConfig("1.3")
	tlsCfg.CertFile, tlsCfg.KeyFile = "", ""
	tlsCfg.StepCA = sc.config(t, dir)
	s, err := NewServerTLS(t.Context(), tlsCfg, ServerOptions{
		NoWatch: true,
		OnReload: func(r ReloadResult) {
			select {
			case reloads <- r:
			default:
			}
		},
		StepCA: StepCAOptions{OnRenew: func(leaf *x509.Certificate, err error) {
			if err != nil {
				t.Errorf("renewal failed: %v", err)
				return
			}
			select {
			case renewed <- leaf:
			default:
			}
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first, err := s.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	srv := startEchoServer(t, s.Config())
	client := sc.p.issue(t, IssueRequest{Name: "hmi", Role: "operator"})
	conn, err := dialEcho(srv.addr(), sc.p.clientConfig(t, client))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if r := srv.next(t); r.err != nil {
		t.Fatal(r.err)
	}
	if got := conn.ConnectionState().PeerCertificates[0]; !got.Equal(first) {
		t.Fatal("the connection did not get the step-ca certificate")
	}

	var second *x509.Certificate
	select {
	case second = <-renewed:
	case <-time.After(lifetime):
		t.Fatal("no renewal within the certificate's lifetime")
	}
	at := time.Now()
	if want := renewAt(first); at.Before(want.Add(-time.Second)) || at.After(first.NotAfter) {
		t.Fatalf("renewed at %s; want about %s (2/3 of %s..%s)", at.Format(time.TimeOnly), want.Format(time.TimeOnly), first.NotBefore.Format(time.TimeOnly), first.NotAfter.Format(time.TimeOnly))
	}
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 || !second.NotAfter.After(first.NotAfter) {
		t.Fatalf("renewal returned the same certificate")
	}
	if !publicKeysEqual(second.PublicKey, first.PublicKey) {
		t.Fatal("renewal changed the key")
	}
	if r := <-reloads; r.Err != nil || len(r.Changed) != 1 || r.Changed[0] != MaterialCertificate {
		t.Fatalf("OnReload after renewal: %+v", r)
	}

	// New handshakes get the new certificate; the old connection lives on.
	c2, err := dialEcho(srv.addr(), sc.p.clientConfig(t, client))
	if err != nil {
		t.Fatal(err)
	}
	if r := srv.next(t); r.err != nil {
		t.Fatal(r.err)
	}
	if !c2.ConnectionState().PeerCertificates[0].Equal(second) {
		t.Fatal("new handshake did not get the renewed certificate")
	}
	c2.Close()
	if err := echo(conn, "across the renewal"); err != nil {
		t.Fatalf("connection dropped by the renewal: %v", err)
	}
	persisted, err := ReadCerts(filepath.Join(dir, StepCACertFile))
	if err != nil || !persisted[0].Equal(second) {
		t.Fatalf("renewed certificate not persisted: %v", err)
	}
	// Past the first certificate's NotAfter the connection still works:
	// certificates are checked at the handshake, not during the session.
	time.Sleep(time.Until(first.NotAfter) + 500*time.Millisecond)
	if err := echo(conn, "after the first certificate expired"); err != nil {
		t.Fatal(err)
	}
}
