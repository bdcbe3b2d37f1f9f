package proxy

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/policy"
)

// funcDecider is a policy.Decider from a function; the default allows all.
type funcDecider struct {
	fn func(in *policy.Input) policy.Decision
	n  int
	mu sync.Mutex
}

func (d *funcDecider) Decide(_ context.Context, in *policy.Input) policy.Decision {
	d.mu.Lock()
	d.n++
	id := fmt.Sprintf("d-%d", d.n)
	d.mu.Unlock()
	if d.fn == nil {
		return policy.Decision{ID: id, Allow: true, Reason: "allow all"}
	}
	dec := d.fn(in)
	dec.ID = id
	return dec
}

func allowAll() *funcDecider { return &funcDecider{} }

// denyWrites allows everything but writes.
func denyWrites() *funcDecider {
	return &funcDecider{fn: func(in *policy.Input) policy.Decision {
		if in.Op.Access == inspect.AccessWrite {
			return policy.Decision{Allow: false, Reason: "writes are denied"}
		}
		return policy.Decision{Allow: true, Reason: "not a write"}
	}}
}

// memRecorder keeps events in memory (operations cloned), optionally
// failing.
type memRecorder struct {
	mu     sync.Mutex
	events []audit.Event
	fail   func(ev *audit.Event) bool
}

func (r *memRecorder) Record(ev *audit.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil && r.fail(ev) {
		return errors.New("disk full")
	}
	c := *ev
	if ev.Op != nil {
		c.Op = ev.Op.Clone()
	}
	c.Bytes = append([]byte(nil), ev.Bytes...)
	c.Seq = uint64(len(r.events) + 1)
	r.events = append(r.events, c)
	return nil
}

func (r *memRecorder) all() []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]audit.Event(nil), r.events...)
}

func (r *memRecorder) byAction(action string) []audit.Event {
	var out []audit.Event
	for _, ev := range r.all() {
		if ev.Action == action {
			out = append(out, ev)
		}
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// listenerConfig parses a one-listener configuration through the real
// config loader (defaults included) and returns the listener.
func listenerConfig(t testing.TB, upstream string, extra string) config.Listener {
	t.Helper()
	y := fmt.Sprintf(`listeners:
  - name: plc-test
    protocol: modbus
    listen: 127.0.0.1:0
    upstream: %s
%s
policy:
  path: unused
audit:
  file: unused
`, upstream, extra)
	cfg, err := config.Parse("test.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Listeners[0]
}

// startProxy serves a listener until the test ends.
func startProxy(t testing.TB, lc config.Listener, d policy.Decider, r audit.Recorder) *Listener {
	t.Helper()
	l, err := New(Options{Listener: lc, Decider: d, Recorder: r})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Listen(); err != nil {
		t.Fatal(err)
	}
	go l.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l.Shutdown(ctx)
	})
	return l
}

// rawConn is a hand-written Modbus client: frames are hex strings, written
// as given, so tests do not depend on Conduit's own encoder.
type rawConn struct {
	t *testing.T
	net.Conn
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, Conn: c}
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.NewReplacer(" ", "", "\n", "", "\t", "").Replace(s))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (c *rawConn) send(frame string) {
	c.t.Helper()
	if _, err := c.Write(unhex(c.t, frame)); err != nil {
		c.t.Fatal(err)
	}
}

// recv reads one response ADU framed by its MBAP length.
func (c *rawConn) recv() []byte {
	c.t.Helper()
	b, err := c.tryRecv(3 * time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

func (c *rawConn) tryRecv(d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	hdr := make([]byte, 6)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return nil, err
	}
	n := int(hdr[4])<<8 | int(hdr[5])
	body := make([]byte, n)
	if _, err := io.ReadFull(c, body); err != nil {
		return nil, err
	}
	return append(hdr, body...), nil
}

func (c *rawConn) expect(want string) {
	c.t.Helper()
	got := c.recv()
	if w := unhex(c.t, want); !bytes.Equal(got, w) {
		c.t.Fatalf("response % x, want % x", got, w)
	}
}

// expectClosed asserts the proxy closed the connection.
func (c *rawConn) expectClosed() {
	c.t.Helper()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err == nil {
		c.t.Fatalf("connection still open; read % x", buf[:n])
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatal("connection still open (read timed out)")
	}
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
