package pki

import (
	"crypto/tls"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/config"
)

// eventually retries f until it returns nil or 10 s pass.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// etc copies the proxy's TLS files into a directory of their own, as an
// operator's /etc/conduit would be, so the test replaces them explicitly.
type etc struct {
	dir string
	cfg *config.TLS
}

func newEtc(t *testing.T, p *testPKI) *etc {
	e := &etc{dir: t.TempDir()}
	e.cfg = &config.TLS{
		CertFile:     filepath.Join(e.dir, "proxy.crt"),
		KeyFile:      filepath.Join(e.dir, "proxy.key"),
		ClientCAFile: filepath.Join(e.dir, "client_ca.crt"),
		CRLFile:      filepath.Join(e.dir, "crl.pem"),
	}
	writeFile(t, e.cfg.CertFile, readFile(t, p.server.ChainFile))
	writeFile(t, e.cfg.KeyFile, readFile(t, p.server.KeyFile))
	writeFile(t, e.cfg.ClientCAFile, EncodeCerts(p.ca.Root))
	writeFile(t, e.cfg.CRLFile, readFile(t, filepath.Join(p.ca.Dir, FileCRL)))
	return e
}

// handshakeWith makes a new connection and returns the server's verdict
// and the server certificate the client saw.
func handshakeWith(t *testing.T, srv *echoServer, cc *tls.Config) (error, string) {
	t.Helper()
	c, _ := dialEcho(srv.addr(), cc)
	r := srv.next(t)
	serial := ""
	if c != nil {
		serial = SerialString(c.ConnectionState().PeerCertificates[0].SerialNumber)
		c.Close()
	}
	return r.err, serial
}

// TestReloadOnFileChange: the server certificate, the client CA bundle and
// the CRL are replaced on disk while a connection is established. The
// connection keeps working; new handshakes see the new material.
func TestReloadOnFileChange(t *testing.T) {
	p := newTestPKI(t)
	other := newTestPKI(t)
	e := newEtc(t, p)
	reloads := make(chan ReloadResult, 16)
	s := p.serverTLS(t, e.cfg, ServerOptions{Debounce: 50 * time.Millisecond, OnReload: func(r ReloadResult) { reloads <- r }})
	srv := startEchoServer(t, s.Config())

	alice := p.issue(t, IssueRequest{Name: "alice", Role: "operator"})
	bob := p.issue(t, IssueRequest{Name: "bob", Role: "engineer"})
	carol := other.issue(t, IssueRequest{Name: "carol"})

	long, err := dialEcho(srv.addr(), p.clientConfig(t, bob))
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	if r := srv.next(t); r.err != nil {
		t.Fatal(r.err)
	}
	oldServerSerial := SerialString(long.ConnectionState().PeerCertificates[0].SerialNumber)
	waitReload := func(want string) {
		t.Helper()
		select {
		case r := <-reloads:
			if r.Err != nil || !slices.Contains(r.Changed, want) {
				t.Fatalf("reload %+v, want %s changed", r, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no reload of %s", want)
		}
	}

	t.Run("server certificate", func(t *testing.T) {
		is := p.issue(t, IssueRequest{Type: CertServer, Name: "proxy-2", DNSNames: []string{"localhost"}})
		// Key first, then certificate, as an operator's script would.
		writeFile(t, e.cfg.KeyFile, readFile(t, is.KeyFile))
		writeFile(t, e.cfg.CertFile, readFile(t, is.ChainFile))
		waitReload(MaterialCertificate)
		err, serial := handshakeWith(t, srv, p.clientConfig(t, alice))
		if err != nil || serial != SerialString(is.Cert.SerialNumber) {
			t.Fatalf("new handshake: %v, server serial %s, want %s", err, serial, SerialString(is.Cert.SerialNumber))
		}
		if err := echo(long, "still there"); err != nil {
			t.Fatalf("established connection broken by the reload: %v", err)
		}
		if SerialString(long.ConnectionState().PeerCertificates[0].SerialNumber) != oldServerSerial {
			t.Fatal("established connection changed certificate")
		}
	})

	t.Run("client CA bundle", func(t *testing.T) {
		cc := other.clientConfig(t, carol)
		cc.RootCAs.AddCert(p.ca.Root) // carol trusts the proxy's CA
		if err, _ := handshakeWith(t, srv, cc); ReasonOf(err) != ReasonUnknownCA {
			t.Fatalf("before: %v", err)
		}
		// Trust the other CA too; its CRL joins the CRL file.
		writeFile(t, e.cfg.CRLFile, append(readFile(t, filepath.Join(p.ca.Dir, FileCRL)), readFile(t, filepath.Join(other.ca.Dir, FileCRL))...))
		waitReload(MaterialCRL)
		writeFile(t, e.cfg.ClientCAFile, EncodeCerts(p.ca.Root, other.ca.Root))
		waitReload(MaterialClientCA)
		if err, _ := handshakeWith(t, srv, cc); err != nil {
			t.Fatalf("after adding the CA: %v", err)
		}
		// Then distrust the first CA: alice is refused, bob's open
		// connection (verified under the old bundle) keeps working.
		writeFile(t, e.cfg.ClientCAFile, EncodeCerts(other.ca.Root))
		waitReload(MaterialClientCA)
		if err, _ := handshakeWith(t, srv, p.clientConfig(t, alice)); ReasonOf(err) != ReasonUnknownCA {
			t.Fatalf("after removing the CA: %v", err)
		}
		if err := echo(long, "bundle changed"); err != nil {
			t.Fatal(err)
		}
		writeFile(t, e.cfg.ClientCAFile, EncodeCerts(p.ca.Root, other.ca.Root))
		waitReload(MaterialClientCA)
	})

	t.Run("newly revoked client", func(t *testing.T) {
		if err, _ := handshakeWith(t, srv, p.clientConfig(t, alice)); err != nil {
			t.Fatalf("before revocation: %v", err)
		}
		if _, err := p.ca.Revoke(alice.Entry.Serial, "key-compromise"); err != nil {
			t.Fatal(err)
		}
		writeFile(t, e.cfg.CRLFile, append(readFile(t, filepath.Join(p.ca.Dir, FileCRL)), readFile(t, filepath.Join(other.ca.Dir, FileCRL))...))
		waitReload(MaterialCRL)
		err, _ := handshakeWith(t, srv, p.clientConfig(t, alice))
		if !errors.Is(err, ReasonRevoked) {
			t.Fatalf("revoked client: %v", err)
		}
		if err, _ := handshakeWith(t, srv, p.clientConfig(t, bob)); err != nil {
			t.Fatalf("bob after alice's revocation: %v", err)
		}
		if err := echo(long, "crl changed"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("corrupt files keep the old material", func(t *testing.T) {
		drain := func() {
			for {
				select {
				case <-reloads:
				default:
					return
				}
			}
		}
		waitError := func(what string) {
			t.Helper()
			for {
				select {
				case r := <-reloads:
					if len(r.Changed) != 0 {
						t.Fatalf("%s: reload swapped in %v", what, r.Changed)
					}
					if r.Err != nil {
						t.Logf("%s: %v", what, r.Err)
						return
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("%s: no reload report", what)
				}
			}
		}
		_, before := handshakeWith(t, srv, p.clientConfig(t, bob))
		stranger := p.issue(t, IssueRequest{Name: "stranger"})
		for _, tc := range []struct {
			file string
			bad  []byte
		}{
			{e.cfg.CertFile, []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")},
			{e.cfg.KeyFile, readFile(t, stranger.KeyFile)}, // a key that does not match
			{e.cfg.ClientCAFile, []byte("garbage")},
			{e.cfg.ClientCAFile, readFile(t, stranger.CertFile)}, // not a CA
			{e.cfg.CRLFile, []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")},
			{e.cfg.CRLFile, readFile(t, filepath.Join(stranger.CertFile))}, // not a CRL
		} {
			name := filepath.Base(tc.file)
			drain()
			good := readFile(t, tc.file)
			writeFile(t, tc.file, tc.bad)
			waitError(name)
			if err := s.Reload(); err == nil {
				t.Fatalf("%s: Reload accepted a bad file", name)
			}
			err, serial := handshakeWith(t, srv, p.clientConfig(t, bob))
			if err != nil || serial != before {
				t.Fatalf("%s bad: handshake %v, server serial %s (was %s)", name, err, serial, before)
			}
			if err, _ := handshakeWith(t, srv, p.clientConfig(t, alice)); !errors.Is(err, ReasonRevoked) {
				t.Fatalf("%s bad: revoked client %v", name, err)
			}
			if err, _ := handshakeWith(t, srv, other.clientConfig(t, carol)); err == nil {
				// carol does not trust the proxy's CA: the server sees
				// the client's refusal, not an acceptance.
				t.Fatalf("%s bad: unexpected success", name)
			}
			writeFile(t, tc.file, good)
			if err := s.Reload(); err != nil {
				t.Fatalf("%s restored: %v", name, err)
			}
		}
		if err := echo(long, "end"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestReloadOnDemand is the SIGHUP path without a watcher.
func TestReloadOnDemand(t *testing.T) {
	p := newTestPKI(t)
	e := newEtc(t, p)
	s := p.serverTLS(t, e.cfg, ServerOptions{NoWatch: true})
	srv := startEchoServer(t, s.Config())
	alice := p.issue(t, IssueRequest{Name: "alice"})
	if _, err := p.ca.Revoke(alice.Entry.Serial, ""); err != nil {
		t.Fatal(err)
	}
	writeFile(t, e.cfg.CRLFile, readFile(t, filepath.Join(p.ca.Dir, FileCRL)))
	if err, _ := handshakeWith(t, srv, p.clientConfig(t, alice)); err != nil {
		t.Fatalf("without reload the old CRL applies: %v", err)
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if err, _ := handshakeWith(t, srv, p.clientConfig(t, alice)); !errors.Is(err, ReasonRevoked) {
		t.Fatalf("after Reload: %v", err)
	}
	// Nothing changed: Reload is a no-op and says so by not failing.
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
}

func TestNewServerTLSErrors(t *testing.T) {
	p := newTestPKI(t)
	for name, mutate := range map[string]func(*config.TLS){
		"TLS 1.1":      func(c *config.TLS) { c.MinVersion = "1.1" },
		"no client CA": func(c *config.TLS) { c.ClientCAFile = "" },
		"missing CRL":  func(c *config.TLS) { c.CRLFile = c.CRLFile + ".missing" },
		"no cert":      func(c *config.TLS) { c.CertFile = "" },
		"key as cert":  func(c *config.TLS) { c.CertFile = c.KeyFile },
		"leaf as CA":   func(c *config.TLS) { c.ClientCAFile = c.CertFile },
		"client cert used": func(c *config.TLS) {
			c.CertFile, c.KeyFile = p.issue(t, IssueRequest{Name: "c"}).ChainFile, filepath.Join(p.ca.Dir, DirIssued, "c.key")
		},
	} {
		cfg := p.tlsConfig("")
		mutate(cfg)
		if s, err := NewServerTLS(t.Context(), cfg, ServerOptions{NoWatch: true}); err == nil {
			s.Close()
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	// The default version is 1.3.
	s := p.serverTLS(t, p.tlsConfig(""), ServerOptions{NoWatch: true})
	if v := s.cur.Load().config.MinVersion; v != tls.VersionTLS13 {
		t.Fatalf("default min version %x", v)
	}
}
