//go:build unix

package tunnel_test

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/pki/tunnel"
)

// failingListener fails its first n Accepts with errno, as a listener does
// when the system's file table is full (ENFILE) or the kernel is out of
// buffers (ENOBUFS, ENOMEM).
type failingListener struct {
	net.Listener
	n     atomic.Int32
	errno syscall.Errno
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", l.errno)}
	}
	return l.Listener.Accept()
}

// TestTunnelRedteamTransientAcceptErrors: resource exhaustion at accept
// (ENFILE, ENOBUFS, ENOMEM, like EMFILE) must not end `conduit connect`:
// the tunnel backs off and serves the next connection.
func TestTunnelRedteamTransientAcceptErrors(t *testing.T) {
	f := newFixture(t, 4, 0)
	ctls, err := pki.NewClientTLS(pki.ClientOptions{
		CertFile: f.client.ChainFile, KeyFile: f.client.KeyFile,
		CAFile: filepath.Join(f.ca.Dir, pki.FileRootCert), ServerName: "localhost",
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, errno := range []syscall.Errno{syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		t.Run(errno.Error(), func(t *testing.T) {
			tun, err := tunnel.New(tunnel.Config{Target: f.appl.Addr().String(), TLS: ctls.Config})
			if err != nil {
				t.Fatal(err)
			}
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ln := &failingListener{Listener: inner, errno: errno}
			ln.n.Store(3)
			served := make(chan error, 1)
			go func() { served <- tun.Serve(ln) }()
			defer tun.Close()

			c, err := net.Dial("tcp", inner.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("hello"))
			c.(*net.TCPConn).CloseWrite()
			reply, err := io.ReadAll(c)
			if string(reply) != "got 5: hello" {
				select {
				case serr := <-served:
					t.Fatalf("Serve returned on a transient accept error: %v", serr)
				default:
				}
				t.Fatalf("reply %q, %v", reply, err)
			}
			f.next(t)
		})
	}
}
