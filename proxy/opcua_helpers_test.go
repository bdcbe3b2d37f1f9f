package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/ua"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
	"github.com/conduit-ot/conduit/sim"
)

// uaListenerConfig parses a one-listener opcua configuration through the
// real config loader. The listener is named opcua-line1, the listener the
// reference policy grants. opcuaSection holds the keys of the opcua block,
// indented six spaces ("" for security_mode none); extra holds further
// listener keys, indented four.
func uaListenerConfig(t testing.TB, upstream, opcuaSection, extra string) config.Listener {
	t.Helper()
	if opcuaSection == "" {
		opcuaSection = "      security_mode: none"
	}
	y := fmt.Sprintf(`listeners:
  - name: opcua-line1
    protocol: opcua
    listen: 127.0.0.1:0
    upstream: %s
    opcua:
%s
%s
policy:
  path: unused
audit:
  file: unused
`, upstream, opcuaSection, extra)
	cfg, err := config.Parse("test.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Listeners[0]
}

// startUAProxy serves an opcua listener until the test ends; tap, when not
// nil, sees every byte the proxy sends upstream.
func startUAProxy(t testing.TB, lc config.Listener, d policy.Decider, r audit.Recorder, tp *tap) *Listener {
	t.Helper()
	opts := Options{Listener: lc, Decider: d, Recorder: r}
	if tp != nil {
		opts.Dial = tp.dial(lc.Upstream)
	}
	l, err := New(opts)
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

func proxyURL(l *Listener) string { return "opc.tcp://" + l.Addr().String() }

// referencePolicy is the embedded reference policy (rules/), with a
// decision timeout generous enough for a loaded test machine.
func referencePolicy(t testing.TB) policy.Decider {
	t.Helper()
	e, err := policy.New(context.Background(), policy.Options{
		Source:          policy.Source{Path: "rules", FS: rules.FS},
		DecisionTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func startSimUA(t testing.TB, opts sim.OPCUAOptions) *sim.OPCUAServer {
	t.Helper()
	s, err := sim.StartOPCUA(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// gopcuaClient connects a gopcua client (session included) to endpoint.
func gopcuaClient(t testing.TB, ctx context.Context, endpoint string, opts ...opcua.Option) *opcua.Client {
	t.Helper()
	opts = append([]opcua.Option{
		opcua.SecurityMode(ua.MessageSecurityModeNone),
		opcua.AutoReconnect(false),
		opcua.RequestTimeout(5 * time.Second),
	}, opts...)
	c, err := opcua.NewClient(endpoint, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("connect to %s: %v", endpoint, err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c.Close(cctx)
	})
	return c
}

func writeReq(node string, v any) *ua.WriteRequest {
	return &ua.WriteRequest{NodesToWrite: []*ua.WriteValue{{
		NodeID:      ua.MustParseNodeID(node),
		AttributeID: ua.AttributeIDValue,
		Value:       &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(v)},
	}}}
}

// tap records what the proxy writes to the server, per upstream
// connection, so tests can show what reached the server at the byte level.
type tap struct {
	mu    sync.Mutex
	conns []*tapConn
}

type tapConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *tapConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.buf.Write(b)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (tp *tap) dial(addr string) func(ctx context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		tc := &tapConn{Conn: c}
		tp.mu.Lock()
		tp.conns = append(tp.conns, tc)
		tp.mu.Unlock()
		return tc, nil
	}
}

// sent returns the bytes written upstream on connection i.
func (tp *tap) sent(i int) []byte {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if i >= len(tp.conns) {
		return nil
	}
	c := tp.conns[i]
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.buf.Bytes()...)
}

func (tp *tap) count() int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return len(tp.conns)
}

// wireChunk is one chunk as seen on the wire (parsed by the test itself,
// not by inspect/opcua).
type wireChunk struct {
	typ       string // "HEL", "OPN", "MSG", ...
	chunkType byte
	seq, req  uint32 // MSG/CLO only
	raw       []byte
}

// splitChunks cuts a byte stream into chunks by the 8-byte header.
func splitChunks(t testing.TB, b []byte) []wireChunk {
	t.Helper()
	var out []wireChunk
	for len(b) > 0 {
		if len(b) < 8 {
			t.Fatalf("trailing %d bytes", len(b))
		}
		n := int(binary.LittleEndian.Uint32(b[4:8]))
		if n < 8 || n > len(b) {
			t.Fatalf("chunk of %d bytes with %d left", n, len(b))
		}
		c := wireChunk{typ: string(b[:3]), chunkType: b[3], raw: b[:n]}
		if (c.typ == "MSG" || c.typ == "CLO") && n >= 24 {
			c.seq = binary.LittleEndian.Uint32(b[16:20])
			c.req = binary.LittleEndian.Uint32(b[20:24])
		}
		out = append(out, c)
		b = b[n:]
	}
	return out
}

// selfSigned returns an application instance certificate (DER) and key.
func selfSigned(t testing.TB, cn, appURI string) ([]byte, *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	uri, err := url.Parse(appURI)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature | x509.KeyUsageDataEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		URIs:                  []*url.URL{uri},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

// requestEvents returns the request events whose operation is name.
func requestEvents(r *memRecorder, name string) []audit.Event {
	var out []audit.Event
	for _, ev := range r.byAction(audit.ActionRequest) {
		if ev.Op != nil && ev.Op.Name == name {
			out = append(out, ev)
		}
	}
	return out
}

func TestOPCUAEndpointURL(t *testing.T) {
	local := &net.TCPAddr{IP: net.IPv4(10, 20, 0, 5), Port: 4841}
	for _, tc := range []struct{ endpoint, want string }{
		{"opc.tcp://conduit.plant.example:4841", "opc.tcp://conduit.plant.example:4841"},
		{"opc.tcp://0.0.0.0:4841", "opc.tcp://10.20.0.5:4841"},
		{"opc.tcp://[::]:4841/UA/Line1", "opc.tcp://10.20.0.5:4841/UA/Line1"},
		{"opc.tcp://:4841", "opc.tcp://10.20.0.5:4841"},
		{"opc.tcp://127.0.0.1:0", "opc.tcp://127.0.0.1:4841"},
	} {
		if got := endpointURL(tc.endpoint, local); got != tc.want {
			t.Errorf("endpointURL(%q) = %q, want %q", tc.endpoint, got, tc.want)
		}
	}
	for _, tc := range []struct{ old, target, want string }{
		{"opc.tcp://plc:4840", "opc.tcp://proxy:4841", "opc.tcp://proxy:4841"},
		{"opc.tcp://plc:4840/UA/Server", "opc.tcp://proxy:4841", "opc.tcp://proxy:4841/UA/Server"},
		{"opc.tcp://plc:4840/UA/Server", "opc.tcp://proxy:4841/Line1", "opc.tcp://proxy:4841/Line1"},
		{"http://plc/discovery", "opc.tcp://proxy:4841", "opc.tcp://proxy:4841"},
	} {
		if got := rewriteURL(tc.old, tc.target); got != tc.want {
			t.Errorf("rewriteURL(%q, %q) = %q, want %q", tc.old, tc.target, got, tc.want)
		}
	}
}
