package pki

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// Handshake benchmarks for the performance baseline: full TLS 1.3
// handshakes on loopback TCP with client-certificate verification against
// the CA bundle and a CRL, both sides in this process. Run with
//
//	go test ./pki -run '^$' -bench Handshake -benchmem
//
// Each iteration is one connection: dial, both handshakes, the server's
// verification (the client returns before it in TLS 1.3, so the benchmark
// waits for the server's verdict), close.

// benchCRL replaces the CA's CRL with one listing n revoked serials (none
// of them the benchmark client), as a large plant's might.
func benchCRL(b *testing.B, p *testPKI, n int) {
	b.Helper()
	signer, err := p.ca.signer()
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.RevocationList{Number: big.NewInt(1000), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(24 * time.Hour)}
	for i := 0; i < n; i++ {
		s, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, p.ca.Intermediate, signer)
	if err != nil {
		b.Fatal(err)
	}
	writeFile(b, filepath.Join(p.ca.Dir, FileCRL), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))
}

func benchmarkHandshake(b *testing.B, revoked int, withCRL bool, parallel bool) {
	p := newTestPKI(b)
	if withCRL {
		benchCRL(b, p, revoked)
	}
	cfg := p.tlsConfig("1.3")
	if !withCRL {
		cfg.CRLFile = ""
	}
	s := p.serverTLS(b, cfg, ServerOptions{NoWatch: true})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, s.Config())
				err := tc.Handshake()
				if err == nil {
					_, err = IdentityFromConnectionState(tc.ConnectionState())
				}
				// One byte tells the client the server accepted it.
				if err == nil {
					tc.Write([]byte{1})
				}
				tc.Close()
			}()
		}
	}()
	client := p.issue(b, IssueRequest{Name: "bench", Role: "operator"})
	cc := p.clientConfig(b, client)
	cc.ClientSessionCache = nil
	addr := ln.Addr().String()
	one := func() error {
		c, err := tls.Dial("tcp", addr, cc)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 1)
		_, err = c.Read(buf)
		return err
	}
	if err := one(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	if parallel {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := one(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	} else {
		for i := 0; i < b.N; i++ {
			if err := one(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

func BenchmarkHandshakeTLS13Mutual(b *testing.B) { benchmarkHandshake(b, 0, false, false) }
func BenchmarkHandshakeTLS13MutualCRL1k(b *testing.B) {
	benchmarkHandshake(b, 1000, true, false)
}
func BenchmarkHandshakeTLS13MutualCRL1kParallel(b *testing.B) {
	benchmarkHandshake(b, 1000, true, true)
}

// BenchmarkVerifyClientChain isolates our part of the handshake: chain
// verification, EKU and role checks, and the CRL lookup (signature cached).
func BenchmarkVerifyClientChain(b *testing.B) {
	p := newTestPKI(b)
	benchCRL(b, p, 1000)
	s := p.serverTLS(b, p.tlsConfig("1.3"), ServerOptions{NoWatch: true})
	client := p.issue(b, IssueRequest{Name: "bench", Role: "operator"})
	chain := []*x509.Certificate{client.Cert, p.ca.Intermediate}
	v := s.cur.Load().verifier
	if he := v.verify(chain); he != nil {
		b.Fatal(he)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if he := v.verify(chain); he != nil {
			b.Fatal(he)
		}
	}
}
