package tunnel_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/pki/tunnel"
)

// fixture: a CA, an mTLS "appliance" built from pki.ServerTLS, a client
// certificate, and a tunnel in front of the appliance.
type fixture struct {
	ca       *pki.CA
	server   *pki.ServerTLS
	appl     net.Listener
	seen     chan result // what the appliance saw per connection
	client   *pki.Issued
	tun      *tunnel.Tunnel
	tunAddr  string
	tunError chan error
}

type result struct {
	err  error
	id   *pki.Identity
	data []byte
}

// newFixture starts an appliance whose handler reads everything the client
// sends until end-of-stream, then answers "got N: <data>" and closes: it
// only works if the tunnel forwards the client's half-close.
func newFixture(t *testing.T, maxConns int, handshakeTimeout time.Duration) *fixture {
	t.Helper()
	ca, err := pki.InitCA(filepath.Join(t.TempDir(), "ca"), pki.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.Issue(pki.IssueRequest{Type: pki.CertServer, Name: "appliance", DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(pki.IssueRequest{Type: pki.CertClient, Name: "legacy-hmi", Role: "operator"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := pki.NewServerTLS(t.Context(), &config.TLS{
		CertFile: srvCert.ChainFile, KeyFile: srvCert.KeyFile,
		ClientCAFile: filepath.Join(ca.Dir, pki.FileRootCert), CRLFile: filepath.Join(ca.Dir, pki.FileCRL),
	}, pki.ServerOptions{NoWatch: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	appl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { appl.Close() })
	f := &fixture{ca: ca, server: s, appl: appl, seen: make(chan result, 16), client: client, tunError: make(chan error, 1)}
	go func() {
		for {
			c, err := appl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, s.Config())
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if err := tc.Handshake(); err != nil {
					f.seen <- result{err: err}
					return
				}
				id, err := pki.IdentityFromConnectionState(tc.ConnectionState())
				data, rerr := io.ReadAll(tc) // until close_notify
				f.seen <- result{err: errors.Join(err, rerr), id: id, data: data}
				fmt.Fprintf(tc, "got %d: %s", len(data), data)
				tc.CloseWrite()
			}()
		}
	}()

	ctls, err := pki.NewClientTLS(pki.ClientOptions{
		CertFile: client.ChainFile, KeyFile: client.KeyFile,
		CAFile: filepath.Join(ca.Dir, pki.FileRootCert), ServerName: "localhost",
	})
	if err != nil {
		t.Fatal(err)
	}
	tun, err := tunnel.New(tunnel.Config{Target: appl.Addr().String(), TLS: ctls.Config, MaxConns: maxConns, HandshakeTimeout: handshakeTimeout})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { f.tunError <- tun.Serve(ln) }()
	t.Cleanup(func() { tun.Close() })
	f.tun, f.tunAddr = tun, ln.Addr().String()
	return f
}

func (f *fixture) next(t *testing.T) result {
	t.Helper()
	select {
	case r := <-f.seen:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the appliance saw nothing")
		return result{}
	}
}

// TestTunnelHalfClose: plain TCP in, mTLS out; the client's FIN becomes
// close_notify, the appliance answers after it, and the answer comes back.
func TestTunnelHalfClose(t *testing.T) {
	f := newFixture(t, 4, 0)
	c, err := net.Dial("tcp", f.tunAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// A Modbus read holding registers request (MBAP + PDU).
	req := []byte{0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x00, 0x00, 0x00, 0x0a}
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(c) // until the tunnel forwards the appliance's end
	if err != nil {
		t.Fatal(err)
	}
	r := f.next(t)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !bytes.Equal(r.data, req) {
		t.Fatalf("appliance got % x, want % x", r.data, req)
	}
	if want := fmt.Sprintf("got %d: %s", len(req), req); string(reply) != want {
		t.Fatalf("reply %q, want %q", reply, want)
	}
	if r.id.CommonName != "legacy-hmi" || len(r.id.Roles) != 1 || r.id.Roles[0] != "operator" {
		t.Fatalf("identity at the appliance: %+v", r.id)
	}
}

// TestTunnelBoundedConnections: over MaxConns a connection is closed at
// once; when a slot frees, connections are accepted again.
func TestTunnelBoundedConnections(t *testing.T) {
	f := newFixture(t, 2, 0)
	var held []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", f.tunAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	waitActive(t, f.tun, 2)

	over, err := net.Dial("tcp", f.tunAddr)
	if err != nil {
		t.Fatal(err)
	}
	over.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := over.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("connection over the limit: read %d, %v; want it closed", n, err)
	}
	over.Close()

	held[0].(*net.TCPConn).CloseWrite()
	io.ReadAll(held[0])
	held[0].Close()
	f.next(t)
	waitActive(t, f.tun, 1)

	c, err := net.Dial("tcp", f.tunAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("again"))
	c.(*net.TCPConn).CloseWrite()
	if reply, err := io.ReadAll(c); err != nil || string(reply) != "got 5: again" {
		t.Fatalf("after a slot freed: %q, %v", reply, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func waitActive(t *testing.T, tun *tunnel.Tunnel, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for tun.Active() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d active connections, want %d", tun.Active(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTunnelFailures: an unreachable target, a target that never completes
// the handshake, and a revoked client certificate all end in the legacy
// client's connection being closed, not hanging.
func TestTunnelFailures(t *testing.T) {
	t.Run("revoked client certificate", func(t *testing.T) {
		f := newFixture(t, 4, 0)
		if _, err := f.ca.Revoke(f.client.Entry.Serial, "key-compromise"); err != nil {
			t.Fatal(err)
		}
		if err := f.server.Reload(); err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", f.tunAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte{0, 1, 0, 0, 0, 6, 1, 6, 0, 1, 0, 1}) // a write
		c.(*net.TCPConn).CloseWrite()
		reply, _ := io.ReadAll(c)
		if len(reply) != 0 {
			t.Fatalf("a revoked client got %q", reply)
		}
		if r := f.next(t); pki.ReasonOf(r.err) != pki.ReasonRevoked {
			t.Fatalf("appliance: %v, want revoked", r.err)
		}
	})
	closedWithin := func(t *testing.T, addr string, d time.Duration) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(d + 5*time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("read %v; want the connection closed", err)
		}
		if el := time.Since(start); el > d+2*time.Second {
			t.Fatalf("closed after %s, want within %s", el, d)
		}
	}
	t.Run("target refuses", func(t *testing.T) {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := l.Addr().String()
		l.Close()
		tun, ln := startTunnel(t, addr, 0)
		defer tun.Close()
		closedWithin(t, ln, time.Second)
	})
	t.Run("handshake timeout", func(t *testing.T) {
		l, _ := net.Listen("tcp", "127.0.0.1:0") // accepts (backlog), never speaks TLS
		defer l.Close()
		tun, ln := startTunnel(t, l.Addr().String(), 300*time.Millisecond)
		defer tun.Close()
		closedWithin(t, ln, 300*time.Millisecond)
	})
}

func startTunnel(t *testing.T, target string, hs time.Duration) (*tunnel.Tunnel, string) {
	t.Helper()
	tun, err := tunnel.New(tunnel.Config{Target: target, HandshakeTimeout: hs, DialTimeout: time.Second,
		TLS: func(string) *tls.Config { return &tls.Config{ServerName: "localhost", MinVersion: tls.VersionTLS13} }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go tun.Serve(ln)
	return tun, ln.Addr().String()
}

func TestTunnelCloseReturnsServe(t *testing.T) {
	f := newFixture(t, 4, 0)
	c, err := net.Dial("tcp", f.tunAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitActive(t, f.tun, 1)
	st := time.Now()
	f.tun.Close()
	if el := time.Since(st); el > 2*time.Second {
		t.Fatalf("Close took %s", el)
	}
	select {
	case err := <-f.tunError:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("relayed connection still open after Close: %v", err)
	}
	if _, err := tunnel.New(tunnel.Config{Target: "no-port"}); err == nil {
		t.Fatal("New accepted a target without a port")
	}
}

// TestTunnelShutdownDrains: Shutdown stops accepting at once, lets an open
// connection finish, and Serve returns nil.
func TestTunnelShutdownDrains(t *testing.T) {
	f := newFixture(t, 4, 0)
	c, err := net.Dial("tcp", f.tunAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitActive(t, f.tun, 1)
	done := make(chan error, 1)
	go func() { done <- f.tun.Shutdown(t.Context()) }()
	select {
	case err := <-f.tunError:
		if err != nil {
			t.Fatalf("Serve after Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Shutdown")
	}
	if c2, err := net.DialTimeout("tcp", f.tunAddr, time.Second); err == nil {
		c2.Close()
		t.Fatal("still accepting after Shutdown")
	}
	// The open connection still works until its client ends it.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("drain"))
	c.(*net.TCPConn).CloseWrite()
	if reply, err := io.ReadAll(c); err != nil || string(reply) != "got 5: drain" {
		t.Fatalf("during Shutdown: %q, %v", reply, err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last connection ended")
	}
}
