package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/conduit-ot/conduit/config"
)

// device is a Modbus/TCP Security device stand-in: TLS 1.2+ with a
// mandatory client certificate, verified by crypto/tls itself (an
// independent check of what our client presents).
func startDevice(t *testing.T, p *testPKI, cert *Issued) (addr string, peers chan *x509.Certificate) {
	t.Helper()
	kp, err := LoadKeyPair(cert.ChainFile, cert.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Root)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{*kp}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	peers = make(chan *x509.Certificate, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				peers <- tc.ConnectionState().PeerCertificates[0]
				tc.Write([]byte{1})
			}
			tc.Close()
		}
	}()
	return ln.Addr().String(), peers
}

func dialUpstream(addr string, cfg *tls.Config) error {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Read(make([]byte, 1))
	return err
}

func TestUpstreamTLS(t *testing.T) {
	p := newTestPKI(t)
	devCert := p.issue(t, IssueRequest{Type: CertServer, Name: "plc-7", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"plc-7.plant.example"}})
	proxyClient := p.issue(t, IssueRequest{Name: "conduit-upstream", Role: "proxy"})
	addr, peers := startDevice(t, p, devCert)

	u := &config.UpstreamTLS{CertFile: proxyClient.ChainFile, KeyFile: proxyClient.KeyFile, CAFile: filepath.Join(p.ca.Dir, FileRootCert), MinVersion: "1.3"}
	up, err := NewUpstreamTLS(u)
	if err != nil {
		t.Fatal(err)
	}
	// No server_name: the host of the address, here an IP SAN.
	if err := dialUpstream(addr, up.Config(addr)); err != nil {
		t.Fatalf("dial by IP: %v", err)
	}
	if got := <-peers; !got.Equal(proxyClient.Cert) {
		t.Fatal("the device saw another client certificate")
	}
	if v := up.Config(addr).MinVersion; v != tls.VersionTLS13 {
		t.Fatalf("min version %x", v)
	}

	u2 := *u
	u2.ServerName = "plc-7.plant.example"
	named, err := NewUpstreamTLS(&u2)
	if err != nil {
		t.Fatal(err)
	}
	if err := dialUpstream(addr, named.Config(addr)); err != nil {
		t.Fatalf("dial with server_name: %v", err)
	}
	<-peers
	u2.ServerName = "plc-8.plant.example"
	wrong, _ := NewUpstreamTLS(&u2)
	if err := dialUpstream(addr, wrong.Config(addr)); err == nil || !strings.Contains(err.Error(), "plc-8") {
		t.Fatalf("wrong server name accepted: %v", err)
	}

	// A device certificate from another CA is refused.
	other := newTestPKI(t)
	otherAddr, _ := startDevice(t, other, other.issue(t, IssueRequest{Type: CertServer, Name: "rogue", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}))
	if err := dialUpstream(otherAddr, up.Config(otherAddr)); err == nil {
		t.Fatal("a device certificate of another CA was accepted")
	}

	// Reload swaps the client certificate for the next connection; a bad
	// file keeps the old one.
	next := p.issue(t, IssueRequest{Name: "conduit-upstream-2", Role: "proxy"})
	copyTo := func(src *Issued) {
		writeFile(t, u.KeyFile, readFile(t, src.KeyFile))
		writeFile(t, u.CertFile, readFile(t, src.ChainFile))
	}
	copyTo(next)
	if err := up.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := dialUpstream(addr, up.Config(addr)); err != nil {
		t.Fatal(err)
	}
	if got := <-peers; !got.Equal(next.Cert) {
		t.Fatal("reload did not change the client certificate")
	}
	writeFile(t, u.CertFile, []byte("garbage"))
	if err := up.Reload(); err == nil {
		t.Fatal("reload accepted garbage")
	}
	if !up.Leaf().Equal(next.Cert) {
		t.Fatal("a failed reload changed the certificate")
	}

	// Configuration errors.
	for name, bad := range map[string]ClientOptions{
		"TLS 1.0":               {CertFile: u.CertFile, KeyFile: u.KeyFile, CAFile: u.CAFile, MinVersion: "1.0"},
		"no CA":                 {CertFile: next.ChainFile, KeyFile: next.KeyFile},
		"no certificate":        {CAFile: u.CAFile},
		"server cert as client": {CertFile: devCert.ChainFile, KeyFile: devCert.KeyFile, CAFile: u.CAFile},
	} {
		if _, err := NewClientTLS(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
