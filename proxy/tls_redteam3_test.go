package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/pki"
)

// clientHelloBytes returns the first flight of a real crypto/tls client.
func clientHelloBytes(t *testing.T, cfg *tls.Config) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		tls.Client(b, cfg).Handshake()
		b.Close()
	}()
	a.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 4096)
	n, err := a.Read(buf)
	if err != nil || n < 100 {
		t.Fatalf("no ClientHello: %d bytes, %v", n, err)
	}
	return buf[:n]
}

// TestTLSRedteamSlowlorisHandshake: clients that trickle a ClientHello
// one byte at a time, faster than any per-read timeout but never finishing,
// are closed at the handshake timeout (a deadline on the whole handshake),
// with an audit event each. While they hold max_connections, a legitimate
// client is refused at once (not left hanging); once they are gone it gets
// through.
func TestTLSRedteamSlowlorisHandshake(t *testing.T) {
	ca := newTestCA(t, "Plant")
	plc := startPLC(t)
	dev := startCountingDevice(t, plc.Addr())
	lt := newListenerTLS(t, ca)
	rec := &memRecorder{}
	p := startTLSProxy(t, tlsListenerConfig(t, "plc-tls", dev.addr(),
		lt.yaml("")+"    max_connections: 2\n    timeouts:\n      handshake: 400ms\n"), allowAll(), rec, tlsProxyOptions{noWatch: true})
	good := tlsClientConfig(t, ca.issue(t, pki.IssueRequest{Name: "hmi"}), ca)
	hello := clientHelloBytes(t, good)

	type result struct {
		sent int
		dur  time.Duration
	}
	done := make(chan result, 2)
	started := make(chan struct{}, 2)
	for i := 0; i < 2; i++ {
		c, err := net.DialTimeout("tcp", p.addr(), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go func() {
			start := time.Now()
			sent := 0
			for _, b := range hello {
				if _, err := c.Write([]byte{b}); err != nil {
					break
				}
				sent++
				if sent == 1 {
					started <- struct{}{}
				}
				// 10ms a byte: the whole ClientHello would take seconds.
				time.Sleep(10 * time.Millisecond)
			}
			done <- result{sent, time.Since(start)}
		}()
	}
	<-started
	<-started
	// Both slots are held: the proxy must have accepted both before we
	// check the limit.
	waitFor(t, "two handshakes in progress", func() bool { return len(p.slots.ch) == 2 })
	// A legitimate client now is over the limit: refused promptly.
	start := time.Now()
	if _, err := readHolding(p.addr(), good); err == nil {
		t.Fatal("a third connection got through max_connections: 2")
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("the refusal over the limit took %s", el)
	}
	for i := 0; i < 2; i++ {
		select {
		case r := <-done:
			if r.sent == len(hello) {
				t.Fatalf("the proxy let a client trickle its whole ClientHello (%s)", r.dur)
			}
			if r.dur > 3*time.Second {
				t.Fatalf("a trickling client was closed after %s, handshake timeout 400ms", r.dur)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a trickling client was never closed")
		}
	}
	waitFor(t, "slots released", func() bool { return len(p.slots.ch) == 0 })
	if _, err := readHolding(p.addr(), good); err != nil {
		t.Fatalf("legitimate client after the attack: %v", err)
	}
	waitFor(t, "two timeouts audited", func() bool {
		n := 0
		for _, ev := range rec.byAction(audit.ActionHandshake) {
			if len(ev.Reason) >= len(pki.ReasonHandshakeTimeout) && ev.Reason[:len(pki.ReasonHandshakeTimeout)] == string(pki.ReasonHandshakeTimeout) {
				n++
			}
		}
		return n == 2
	})
}

// TestTLSRedteamShutdownDuringHandshake: Shutdown's context bounds it even
// while clients sit in the TLS handshake (they have no request in flight):
// a silent client must not hold Shutdown for the handshake timeout.
func TestTLSRedteamShutdownDuringHandshake(t *testing.T) {
	ca := newTestCA(t, "Plant")
	plc := startPLC(t)
	dev := startCountingDevice(t, plc.Addr())
	lt := newListenerTLS(t, ca)
	rec := &memRecorder{}
	p := startTLSProxy(t, tlsListenerConfig(t, "plc-tls", dev.addr(),
		lt.yaml("")+"    timeouts:\n      handshake: 30s\n"), allowAll(), rec, tlsProxyOptions{noWatch: true})
	silent, err := net.DialTimeout("tcp", p.addr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	waitFor(t, "a handshake in progress", func() bool { return len(p.slots.ch) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	p.Shutdown(ctx)
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("Shutdown with a 200ms context took %s: it waited for the handshake timeout", el)
	}
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil || isTimeoutErr(err) {
		t.Fatalf("the handshaking client was not closed: %v", err)
	}
}

func isTimeoutErr(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
