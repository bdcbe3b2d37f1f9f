package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/config"
)

// testPKI is a local CA in a temporary directory with a server certificate
// for 127.0.0.1/localhost.
type testPKI struct {
	t      *testing.T
	ca     *CA
	server *Issued
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := InitCA(dir, InitOptions{Name: "Test"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue(IssueRequest{Type: CertServer, Name: "proxy", DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{ca: ca, server: srv}
}

func (p *testPKI) issue(t testing.TB, req IssueRequest) *Issued {
	t.Helper()
	if req.Type == "" {
		req.Type = CertClient
	}
	is, err := p.ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	return is
}

// tlsConfig is a config.TLS over the CA's files.
func (p *testPKI) tlsConfig(minVersion string) *config.TLS {
	return &config.TLS{
		CertFile:     p.server.ChainFile,
		KeyFile:      p.server.KeyFile,
		ClientCAFile: filepath.Join(p.ca.Dir, FileRootCert),
		CRLFile:      filepath.Join(p.ca.Dir, FileCRL),
		MinVersion:   minVersion,
	}
}

func (p *testPKI) serverTLS(t testing.TB, cfg *config.TLS, opts ServerOptions) *ServerTLS {
	t.Helper()
	s, err := NewServerTLS(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// clientConfig presents is (nil: no certificate) and trusts the CA root.
func (p *testPKI) clientConfig(t testing.TB, is *Issued) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Root)
	c := &tls.Config{RootCAs: pool, ServerName: "localhost"}
	if is != nil {
		kp, err := LoadKeyPair(is.ChainFile, is.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		c.Certificates = []tls.Certificate{*kp}
	}
	return c
}

// handshakeResult is what the server saw of one connection.
type handshakeResult struct {
	err   error
	id    *Identity
	state tls.ConnectionState
}

// echoServer accepts TLS connections with cfg, reports each handshake and
// echoes what verified clients send.
type echoServer struct {
	ln      net.Listener
	results chan handshakeResult
}

func startEchoServer(t testing.TB, cfg *tls.Config) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln, results: make(chan handshakeResult, 64)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				tc.SetDeadline(time.Now().Add(5 * time.Second))
				err := tc.Handshake()
				r := handshakeResult{err: err}
				if err == nil {
					r.state = tc.ConnectionState()
					r.id, r.err = IdentityFromConnectionState(r.state)
				}
				s.results <- r
				if r.err != nil {
					return
				}
				tc.SetDeadline(time.Time{})
				io.Copy(tc, tc)
			}()
		}
	}()
	return s
}

func (s *echoServer) addr() string { return s.ln.Addr().String() }

// next waits for the server's view of the next handshake.
func (s *echoServer) next(t testing.TB) handshakeResult {
	t.Helper()
	select {
	case r := <-s.results:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no handshake result from the server")
		return handshakeResult{}
	}
}

// dialEcho connects with cfg and does one echo round trip. In TLS 1.3 the
// client's Handshake returns before the server has checked the client
// certificate, so a refusal shows on the first read.
func dialEcho(addr string, cfg *tls.Config) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	if err := echo(c, "ping"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func echo(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo mismatch: " + string(buf))
	}
	return nil
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := WriteFileAtomic(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
