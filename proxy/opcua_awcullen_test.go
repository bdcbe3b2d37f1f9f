package proxy

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	awclient "github.com/awcullen/opcua/client"
	awua "github.com/awcullen/opcua/ua"
	"github.com/gopcua/opcua/ua"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/audit/audittest"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/sim"
)

// Interop with github.com/awcullen/opcua v1.4.0, client and server,
// through the proxy over real TCP on 127.0.0.1 under the reference policy
// (grant opcua-line1, demo-loopback: read, browse, subscribe; write
// Line1.Setpoint 0..1000 and Line1.Mode; call ResetCounters on Line1), with
// the production audit file. Besides what each client sees, every test
// checks the invariant from the device's side: the server received exactly
// the allowed writes, each one only after its allowed event was in the
// audit file, and every request that went upstream was decided and audited.

// recordingRelay forwards TCP connections to target and keeps, per
// connection, what target sent back: the bytes the client received from
// the proxy, to be parsed by the test (independently of inspect/opcua).
type recordingRelay struct {
	ln     net.Listener
	mu     sync.Mutex
	toCli  []*bytes.Buffer
	closed bool
}

func startRecordingRelay(t testing.TB, target string) *recordingRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recordingRelay{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			buf := &bytes.Buffer{}
			r.mu.Lock()
			r.toCli = append(r.toCli, buf)
			r.mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(up, c); up.Close() }()
			go func() {
				defer wg.Done()
				b := make([]byte, 32*1024)
				for {
					n, err := up.Read(b)
					if n > 0 {
						r.mu.Lock()
						buf.Write(b[:n])
						r.mu.Unlock()
						if _, werr := c.Write(b[:n]); werr != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				c.Close()
			}()
		}
	}()
	return r
}

func (r *recordingRelay) url() string { return "opc.tcp://" + r.ln.Addr().String() }

// received returns what the client received on connection i.
func (r *recordingRelay) received(i int) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.toCli) {
		return nil
	}
	return append([]byte(nil), r.toCli[i].Bytes()...)
}

func (r *recordingRelay) conns() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.toCli)
}

// wireMessages reassembles the MSG chunks of a None-mode byte stream into
// message bodies (after the 24-byte header), in order of completion.
func wireMessages(t testing.TB, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	partial := map[uint32][]byte{}
	for _, c := range splitChunks(t, b) {
		if c.typ != "MSG" || len(c.raw) < 24 {
			continue
		}
		body := append(partial[c.req], c.raw[24:]...)
		switch c.chunkType {
		case 'C':
			partial[c.req] = body
		case 'F':
			delete(partial, c.req)
			out = append(out, body)
		default:
			delete(partial, c.req)
		}
	}
	return out
}

// bodyTypeID reads the numeric ns=0 type id at the start of a message
// body (two-byte, four-byte and numeric encodings; 0 otherwise).
func bodyTypeID(b []byte) uint32 {
	switch {
	case len(b) >= 2 && b[0] == 0x00:
		return uint32(b[1])
	case len(b) >= 4 && b[0] == 0x01 && b[1] == 0:
		return uint32(binary.LittleEndian.Uint16(b[2:4]))
	case len(b) >= 7 && b[0] == 0x02 && b[1] == 0 && b[2] == 0:
		return binary.LittleEndian.Uint32(b[3:7])
	}
	return 0
}

// upstreamWriteRequests counts the WriteRequests (type id 673) the proxy
// sent to the server, on every upstream connection.
func upstreamWriteRequests(t testing.TB, tp *tap) int {
	t.Helper()
	n := 0
	for i := 0; i < tp.count(); i++ {
		for _, body := range wireMessages(t, tp.sent(i)) {
			if bodyTypeID(body) == 673 {
				n++
			}
		}
	}
	return n
}

// checkWritesReachedDevice compares what the device received with the
// audit file: the same writes (node and value; order aside, the server may
// handle concurrent requests in any order) as the allowed Write events;
// and as many WriteRequests upstream as allowed Write events.
func checkWritesReachedDevice(t *testing.T, recs []audittest.Record, received []awServerWrite, tp *tap) {
	t.Helper()
	want := map[auditedWrite]int{}
	for _, w := range auditedWrites(recs) {
		if w.Allowed {
			want[w]++
		}
	}
	got := map[auditedWrite]int{}
	for _, w := range received {
		got[auditedWrite{NodeID: w.NodeID, Value: fmt.Sprint(w.Value), Allowed: true}]++
	}
	bad := false
	for w, n := range got {
		if want[w] != n {
			bad = true
			t.Errorf("the server received %s = %.40q %d times, the audit file allowed it %d times", w.NodeID, w.Value, n, want[w])
		}
	}
	for w, n := range want {
		if got[w] == 0 {
			bad = true
			t.Errorf("the audit file allowed %s = %.40q %d times, the server never received it", w.NodeID, w.Value, n)
		}
	}
	if bad {
		t.FailNow()
	}
	var allowedReqs int
	for _, r := range audittest.Filter(recs, audit.ActionRequest) {
		if r.String("opcua.service") == "Write" && r.HasType("allowed") {
			allowedReqs++
		}
	}
	if n := upstreamWriteRequests(t, tp); n != allowedReqs {
		t.Fatalf("%d WriteRequests went upstream, %d were allowed", n, allowedReqs)
	}
}

func TestOPCUAAwcullenNoneMode(t *testing.T) {
	trail := openAuditTrail(t)
	srv := startAwcullenServer(t, awServerOptions{onWrite: trail.auditedFirst(t)})
	tp := &tap{}
	l := startUAProxy(t, uaListenerConfig(t, strings.TrimPrefix(srv.url, "opc.tcp://"), chunkLimits, ""), referencePolicy(t), trail.sink, tp)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	denials := 0

	t.Run("discovery", func(t *testing.T) {
		// GetEndpoints through the proxy. The awcullen server answers
		// with the URL the client asked with (here the proxy's), so this
		// one has nothing to rewrite; the relay below has.
		var res *awua.GetEndpointsResponse
		err := awDiscoveryRace(t, func() (err error) {
			res, err = awclient.GetEndpoints(ctx, &awua.GetEndpointsRequest{EndpointURL: proxyURL(l)})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Endpoints) == 0 {
			t.Fatal("no endpoints")
		}
		for _, ep := range res.Endpoints {
			if ep.EndpointURL != proxyURL(l) {
				t.Errorf("endpoint %s, want the proxy's %s", ep.EndpointURL, proxyURL(l))
			}
			// The server describes itself with its own URL: the
			// proxy's must replace it.
			if len(ep.Server.DiscoveryURLs) == 0 {
				t.Error("the server lists no discovery URL: nothing proven")
			}
			for _, u := range ep.Server.DiscoveryURLs {
				if u != proxyURL(l) {
					t.Errorf("endpoint's discovery URL %s, want the proxy's %s (the server is %s)", u, proxyURL(l), srv.url)
				}
			}
		}
		// FindServers → a DiscoveryUrl → GetEndpoints, the discovery a
		// client such as UaExpert starts with, must not lead around the
		// proxy either.
		var found *awua.FindServersResponse
		err = awDiscoveryRace(t, func() (err error) {
			found, err = awclient.FindServers(ctx, &awua.FindServersRequest{EndpointURL: proxyURL(l)})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(found.Servers) == 0 || len(found.Servers[0].DiscoveryURLs) == 0 {
			t.Fatalf("FindServers: %+v", found.Servers)
		}
		for _, s := range found.Servers {
			for _, u := range s.DiscoveryURLs {
				if u != proxyURL(l) {
					t.Errorf("FindServers discovery URL %s, want the proxy's %s (the server is %s)", u, proxyURL(l), srv.url)
				}
			}
		}
		// A client behind a relay, to see what it receives. Its
		// GetEndpoints asks with the relay's URL, which the server echoes,
		// and the server's CreateSessionResponse lists its endpoints with
		// its own URL: the client must see the proxy's in both.
		relay := startRecordingRelay(t, l.Addr().String())
		c := awcullenDial(t, ctx, relay.url())
		if _, err := awRead(ctx, c, awSetpoint); err != nil {
			t.Fatal(err)
		}
		var sessionEndpoints, discoveryEndpoints []string
		for i := 0; i < relay.conns(); i++ {
			for _, body := range wireMessages(t, relay.received(i)) {
				dec := awua.NewBinaryDecoder(bytes.NewReader(body), awua.NewEncodingContext())
				var id awua.NodeID
				if err := dec.ReadNodeID(&id); err != nil {
					t.Fatal(err)
				}
				switch id {
				case awua.ObjectIDCreateSessionResponseEncodingDefaultBinary:
					var res awua.CreateSessionResponse
					if err := dec.Decode(&res); err != nil {
						t.Fatalf("decode CreateSessionResponse: %v", err)
					}
					for _, ep := range res.ServerEndpoints {
						sessionEndpoints = append(sessionEndpoints, ep.EndpointURL)
					}
				case awua.ObjectIDGetEndpointsResponseEncodingDefaultBinary:
					var res awua.GetEndpointsResponse
					if err := dec.Decode(&res); err != nil {
						t.Fatalf("decode GetEndpointsResponse: %v", err)
					}
					for _, ep := range res.Endpoints {
						discoveryEndpoints = append(discoveryEndpoints, ep.EndpointURL)
					}
				}
			}
		}
		if len(sessionEndpoints) == 0 || len(discoveryEndpoints) == 0 {
			t.Fatalf("the client received %d session and %d discovery endpoints", len(sessionEndpoints), len(discoveryEndpoints))
		}
		for _, u := range append(sessionEndpoints, discoveryEndpoints...) {
			if u != proxyURL(l) {
				t.Errorf("the client received endpoint %s, want the proxy's %s (the server is %s)", u, proxyURL(l), srv.url)
			}
		}
	})

	c := awcullenDial(t, ctx, proxyURL(l))

	t.Run("browse", func(t *testing.T) {
		res, err := c.Browse(ctx, &awua.BrowseRequest{NodesToBrowse: []awua.BrowseDescription{{
			NodeID:          awLine1,
			BrowseDirection: awua.BrowseDirectionForward,
			ReferenceTypeID: awua.ReferenceTypeIDHasComponent,
			IncludeSubtypes: true,
			ResultMask:      uint32(awua.BrowseResultMaskAll),
		}}})
		if err != nil {
			t.Fatal(err)
		}
		found := map[string]bool{}
		for _, r := range res.Results[0].References {
			found[fmt.Sprint(awua.ToNodeID(r.NodeID, nil))] = true
		}
		for _, want := range []string{sim.OPCUASetpoint, sim.OPCUAMode, sim.OPCUACounter, sim.OPCUAResetCounters} {
			if !found[want] {
				t.Errorf("browse Line1: %s missing in %v", want, found)
			}
		}
	})

	t.Run("read", func(t *testing.T) {
		if v, err := awRead(ctx, c, awSetpoint); err != nil || v != 500.0 {
			t.Fatalf("read setpoint: %v %v", v, err)
		}
	})

	t.Run("write allowed and denied", func(t *testing.T) {
		res, err := c.Write(ctx, awWriteReq(awSetpoint, 750.0))
		if err != nil || res.Results[0] != awua.Good {
			t.Fatalf("allowed write: %v %v", res, err)
		}
		if v := srv.value(t, awSetpoint); v != 750.0 {
			t.Fatalf("server setpoint %v", v)
		}
		before := len(srv.writesReceived())

		_, err = c.Write(ctx, awWriteReq(awSetpoint, 1500.0))
		denials++
		if !errors.Is(err, awua.BadUserAccessDenied) {
			t.Fatalf("denied write: err = %v, want BadUserAccessDenied", err)
		}
		if w := srv.writesReceived(); len(w) != before || srv.value(t, awSetpoint) != 750.0 {
			t.Fatalf("the server received %+v", w[before:])
		}
		// The session lives on, on the renumbered channel.
		if v, err := awRead(ctx, c, awSetpoint); err != nil || v != 750.0 {
			t.Fatalf("read after deny: %v %v", v, err)
		}
		res, err = c.Write(ctx, awWriteReq(awMode, "manual"))
		if err != nil || res.Results[0] != awua.Good || srv.value(t, awMode) != "manual" {
			t.Fatalf("write after deny: %v %v", res, err)
		}
	})

	t.Run("call allowed and denied", func(t *testing.T) {
		res, err := c.Call(ctx, &awua.CallRequest{MethodsToCall: []awua.CallMethodRequest{{ObjectID: awLine1, MethodID: awReset, InputArguments: []awua.Variant{}}}})
		if err != nil || res.Results[0].StatusCode != awua.Good || srv.callsReceived() != 1 {
			t.Fatalf("allowed call: %+v %v (server calls %d)", res, err, srv.callsReceived())
		}
		_, err = c.Call(ctx, &awua.CallRequest{MethodsToCall: []awua.CallMethodRequest{{ObjectID: awSetpoint, MethodID: awReset, InputArguments: []awua.Variant{}}}})
		denials++
		if !errors.Is(err, awua.BadUserAccessDenied) {
			t.Fatalf("denied call: err = %v, want BadUserAccessDenied", err)
		}
		if n := srv.callsReceived(); n != 1 {
			t.Fatalf("the server received %d calls", n)
		}
		if _, err := awRead(ctx, c, awCounter); err != nil {
			t.Fatalf("read after denied call: %v", err)
		}
	})

	t.Run("subscription", func(t *testing.T) {
		sub, err := c.CreateSubscription(ctx, &awua.CreateSubscriptionRequest{
			RequestedPublishingInterval: 50,
			RequestedMaxKeepAliveCount:  20,
			RequestedLifetimeCount:      60,
			PublishingEnabled:           true,
		})
		if err != nil {
			t.Fatal(err)
		}
		items, err := c.CreateMonitoredItems(ctx, &awua.CreateMonitoredItemsRequest{
			SubscriptionID:     sub.SubscriptionID,
			TimestampsToReturn: awua.TimestampsToReturnBoth,
			ItemsToCreate: []awua.MonitoredItemCreateRequest{{
				ItemToMonitor:       awua.ReadValueID{NodeID: awSetpoint, AttributeID: awua.AttributeIDValue},
				MonitoringMode:      awua.MonitoringModeReporting,
				RequestedParameters: awua.MonitoringParameters{ClientHandle: 7, SamplingInterval: 20, QueueSize: 4, DiscardOldest: true},
			}},
		})
		if err != nil || items.Results[0].StatusCode != awua.Good {
			t.Fatalf("monitored item: %+v %v", items, err)
		}
		var acks []awua.SubscriptionAcknowledgement
		// next publishes until the setpoint has the value want.
		// next publishes until the setpoint has the value want.
		next := func(want float64) error {
			for {
				res, err := c.Publish(ctx, &awua.PublishRequest{
					RequestHeader:                awua.RequestHeader{TimeoutHint: 10000},
					SubscriptionAcknowledgements: acks,
				})
				if err != nil {
					return fmt.Errorf("publish: %w", err)
				}
				acks = nil
				if len(res.NotificationMessage.NotificationData) > 0 {
					acks = []awua.SubscriptionAcknowledgement{{SubscriptionID: res.SubscriptionID, SequenceNumber: res.NotificationMessage.SequenceNumber}}
				}
				for _, d := range res.NotificationMessage.NotificationData {
					dc, ok := d.(awua.DataChangeNotification)
					if !ok {
						continue
					}
					for _, it := range dc.MonitoredItems {
						if it.ClientHandle == 7 && it.Value.Value == want {
							return nil
						}
					}
				}
			}
		}
		if err := next(750); err != nil { // the initial value
			t.Fatal(err)
		}
		publishes := func() int {
			n := 0
			for _, r := range audittest.Filter(trail.records(t), audit.ActionRequest) {
				if r.String("opcua.service") == "Publish" {
					n++
				}
			}
			return n
		}
		before := publishes()
		got := make(chan error, 1)
		go func() { got <- next(640) }()
		// While that Publish is parked at the server, a denied write: the
		// proxy's ServiceFault goes to the client between the server's
		// responses, and the Publish response that follows is renumbered.
		waitFor(t, "the Publish in flight", func() bool { return publishes() > before })
		_, err = c.Write(ctx, awWriteReq(awSetpoint, 2000.0))
		denials++
		if !errors.Is(err, awua.BadUserAccessDenied) {
			t.Fatalf("denied write with a Publish in flight: %v", err)
		}
		if res, err := c.Write(ctx, awWriteReq(awSetpoint, 640.0)); err != nil || res.Results[0] != awua.Good {
			t.Fatalf("write: %v %v", res, err)
		}
		select {
		case err := <-got: // the change, through the parked Publish
			if err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatal("no data change notification")
		}
		if _, err := c.DeleteSubscriptions(ctx, &awua.DeleteSubscriptionsRequest{SubscriptionIDs: []uint32{sub.SubscriptionID}}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("multi-chunk write", func(t *testing.T) {
		// 20 000 characters do not fit an 8 KiB chunk: the client splits
		// the WriteRequest, the proxy reassembles, decides on the whole and
		// forwards the validated chunks.
		big := strings.Repeat("manual-", 20000/7)
		conn := tp.count() - 1
		start := len(tp.sent(conn))
		res, err := c.Write(ctx, awWriteReq(awMode, big))
		if err != nil || res.Results[0] != awua.Good {
			t.Fatalf("large write: %v %v", res, err)
		}
		if v := srv.value(t, awMode); v != big {
			t.Fatalf("server mode has %d bytes, want %d", len(fmt.Sprint(v)), len(big))
		}
		chunks := splitChunks(t, tp.sent(conn)[start:])
		if len(chunks) < 3 || chunks[0].chunkType != 'C' {
			t.Fatalf("upstream saw %d chunks for the large write", len(chunks))
		}
		for i := 1; i < len(chunks); i++ {
			if chunks[i].seq != chunks[i-1].seq+1 {
				t.Fatalf("upstream sequence numbers %d then %d", chunks[i-1].seq, chunks[i].seq)
			}
		}
		// The large value read back: a multi-chunk response.
		if v, err := awRead(ctx, c, awMode); err != nil || v != big {
			t.Fatalf("large read: %d bytes, %v", len(fmt.Sprint(v)), err)
		}
		// A large write to a node that is not granted: refused whole.
		before := len(srv.writesReceived())
		_, err = c.Write(ctx, awWriteReq(awCounter, big))
		denials++
		if !errors.Is(err, awua.BadUserAccessDenied) {
			t.Fatalf("denied large write: %v", err)
		}
		if len(srv.writesReceived()) != before {
			t.Fatal("the server received the denied large write")
		}
		if _, err := awRead(ctx, c, awCounter); err != nil {
			t.Fatalf("read after denied large write: %v", err)
		}
	})

	recs := trail.checkDecisionsAudited(t, tp, denials)
	checkWritesReachedDevice(t, recs, srv.writesReceived(), tp)
	// Every denial was a ServiceFault with BadUserAccessDenied.
	for _, r := range audittest.Filter(recs, audit.ActionRequest) {
		if r.HasType("denied") && (r.String("opcua.status_code") != "0x801F0000" || r.String("conduit.deny_action") != "exception") {
			t.Errorf("denied record %v", r)
		}
	}
	for _, svc := range []string{"Browse", "Read", "Write", "Call", "CreateSubscription", "CreateMonitoredItems", "Publish", "ActivateSession"} {
		var n int
		for _, r := range audittest.Filter(recs, audit.ActionRequest) {
			if r.String("opcua.service") == svc {
				n++
			}
		}
		if n == 0 {
			t.Errorf("no %s request in the audit file", svc)
		}
	}
}

// awcullen client → proxy → the gopcua server of sim/.
func TestOPCUAAwcullenClientGopcuaServer(t *testing.T) {
	trail := openAuditTrail(t)
	srv := startSimUA(t, sim.OPCUAOptions{CountEvery: -1})
	tp := &tap{}
	l := startUAProxy(t, uaListenerConfig(t, srv.Addr(), "", ""), referencePolicy(t), trail.sink, tp)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c := awcullenDial(t, ctx, proxyURL(l))
	if v, err := awRead(ctx, c, awSetpoint); err != nil || v != 500.0 {
		t.Fatalf("read: %v %v", v, err)
	}
	if res, err := c.Write(ctx, awWriteReq(awSetpoint, 250.0)); err != nil || res.Results[0] != awua.Good || srv.Setpoint() != 250 {
		t.Fatalf("allowed write: %v %v (server %v)", res, err, srv.Setpoint())
	}
	if _, err := c.Write(ctx, awWriteReq(awSetpoint, -1.0)); !errors.Is(err, awua.BadUserAccessDenied) {
		t.Fatalf("denied write: err = %v, want BadUserAccessDenied", err)
	}
	if srv.Setpoint() != 250 {
		t.Fatalf("server setpoint %v after the denied write", srv.Setpoint())
	}
	if v, err := awRead(ctx, c, awSetpoint); err != nil || v != 250.0 {
		t.Fatalf("read after deny: %v %v", v, err)
	}
	if res, err := c.Write(ctx, awWriteReq(awMode, "manual")); err != nil || res.Results[0] != awua.Good || srv.Mode() != "manual" {
		t.Fatalf("write after deny: %v %v (server %q)", res, err, srv.Mode())
	}

	recs := trail.checkDecisionsAudited(t, tp, 1)
	var received []awServerWrite
	for _, w := range srv.Writes() {
		received = append(received, awServerWrite{NodeID: w.NodeID, Value: w.Value})
	}
	checkWritesReachedDevice(t, recs, received, tp)
}

// gopcua client → proxy → awcullen server.
func TestOPCUAGopcuaClientAwcullenServer(t *testing.T) {
	trail := openAuditTrail(t)
	srv := startAwcullenServer(t, awServerOptions{onWrite: trail.auditedFirst(t)})
	tp := &tap{}
	l := startUAProxy(t, uaListenerConfig(t, strings.TrimPrefix(srv.url, "opc.tcp://"), "", ""), referencePolicy(t), trail.sink, tp)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c := gopcuaClient(t, ctx, proxyURL(l))
	if v, err := c.Node(ua.MustParseNodeID(sim.OPCUASetpoint)).Value(ctx); err != nil || v.Value() != 500.0 {
		t.Fatalf("read: %v %v", v, err)
	}
	if resp, err := c.Write(ctx, writeReq(sim.OPCUASetpoint, 250.0)); err != nil || resp.Results[0] != ua.StatusOK || srv.value(t, awSetpoint) != 250.0 {
		t.Fatalf("allowed write: %v %v", resp, err)
	}
	if _, err := c.Write(ctx, writeReq(sim.OPCUASetpoint, 1000.5)); !errors.Is(err, ua.StatusBadUserAccessDenied) {
		t.Fatalf("denied write: err = %v, want StatusBadUserAccessDenied", err)
	}
	if v := srv.value(t, awSetpoint); v != 250.0 {
		t.Fatalf("server setpoint %v after the denied write", v)
	}
	if v, err := c.Node(ua.MustParseNodeID(sim.OPCUASetpoint)).Value(ctx); err != nil || v.Value() != 250.0 {
		t.Fatalf("read after deny: %v %v", v, err)
	}
	if resp, err := c.Write(ctx, writeReq(sim.OPCUAMode, "manual")); err != nil || resp.Results[0] != ua.StatusOK || srv.value(t, awMode) != "manual" {
		t.Fatalf("write after deny: %v %v", resp, err)
	}

	recs := trail.checkDecisionsAudited(t, tp, 1)
	checkWritesReachedDevice(t, recs, srv.writesReceived(), tp)
}

// Sign (Basic256Sha256), awcullen client and server with self-signed
// application certificates: requests are decided on the bodies as under
// None; a deny closes both connections (the proxy cannot forge a signed
// ServiceFault) and is audited, and nothing of the denied write reaches
// the server.
func TestOPCUAAwcullenSignMode(t *testing.T) {
	trail := openAuditTrail(t)
	srv := startAwcullenServer(t, awServerOptions{onWrite: trail.auditedFirst(t)})
	tp := &tap{}
	l := startUAProxy(t, uaListenerConfig(t, strings.TrimPrefix(srv.url, "opc.tcp://"), "      security_mode: sign", ""), referencePolicy(t), trail.sink, tp)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cliCert, cliKey := selfSigned(t, "conduit awcullen client", "urn:conduit:test:awcullen-client")
	// Behind a relay, to see the ERR the proxy sends: the client reports
	// only that the channel closed (see below).
	relay := startRecordingRelay(t, l.Addr().String())
	c := awcullenDial(t, ctx, relay.url(),
		awclient.WithClientCertificate(cliCert, cliKey),
		awclient.WithSecurityPolicyURI(awua.SecurityPolicyURIBasic256Sha256, awua.MessageSecurityModeSign))
	if c.SecurityMode() != awua.MessageSecurityModeSign || c.SecurityPolicyURI() != awua.SecurityPolicyURIBasic256Sha256 {
		t.Fatalf("channel %s %v", c.SecurityPolicyURI(), c.SecurityMode())
	}
	if v, err := awRead(ctx, c, awSetpoint); err != nil || v != 500.0 {
		t.Fatalf("read: %v %v", v, err)
	}
	if res, err := c.Write(ctx, awWriteReq(awSetpoint, 250.0)); err != nil || res.Results[0] != awua.Good || srv.value(t, awSetpoint) != 250.0 {
		t.Fatalf("allowed write: %v %v", res, err)
	}
	if res, err := c.Call(ctx, &awua.CallRequest{MethodsToCall: []awua.CallMethodRequest{{ObjectID: awLine1, MethodID: awReset, InputArguments: []awua.Variant{}}}}); err != nil || res.Results[0].StatusCode != awua.Good {
		t.Fatalf("allowed call: %+v %v", res, err)
	}

	signConn := tp.count() - 1
	sentBefore := len(tp.sent(signConn))
	// awcullen/opcua's client ends its channel on an ERR and fails the
	// pending request with BadSecureChannelClosed: the ERR's status code
	// is not passed to the request. The ERR itself is checked on the wire.
	if _, err := c.Write(ctx, awWriteReq(awSetpoint, 5000.0)); !errors.Is(err, awua.BadSecureChannelClosed) && !errors.Is(err, awua.BadUserAccessDenied) {
		t.Fatalf("denied write on a signed channel: err = %v", err)
	}
	waitFor(t, "the ERR to the client", func() bool {
		chunks := splitChunks(t, relay.received(relay.conns()-1))
		last := chunks[len(chunks)-1]
		return last.typ == "ERR" && len(last.raw) >= 12 && binary.LittleEndian.Uint32(last.raw[8:12]) == 0x801F0000
	})
	if v := srv.value(t, awSetpoint); v != 250.0 {
		t.Fatalf("server setpoint %v after the denied write", v)
	}
	if _, err := awRead(ctx, c, awSetpoint); err == nil {
		t.Fatal("read after a deny on a signed channel succeeded")
	}
	// Not one byte went upstream after the denied write arrived.
	if sent := tp.sent(signConn); len(sent) != sentBefore {
		t.Fatalf("%d bytes went upstream after the deny", len(sent)-sentBefore)
	}

	recs := trail.checkDecisionsAudited(t, tp, 1)
	checkWritesReachedDevice(t, recs, srv.writesReceived(), tp)
	var denied, signedWrite audittest.Record
	for _, r := range audittest.Filter(recs, audit.ActionRequest) {
		if r.String("opcua.service") != "Write" {
			continue
		}
		if r.HasType("denied") {
			denied = r
		} else {
			signedWrite = r
		}
	}
	if signedWrite == nil || signedWrite.String("opcua.security_mode") != "sign" || signedWrite.Bool("opcua.opaque") {
		t.Errorf("allowed signed write record %v", signedWrite)
	}
	if denied == nil || denied.String("conduit.deny_action") != "close" || denied.String("opcua.status_code") != "0x801F0000" || denied.String("opcua.security_mode") != "sign" {
		t.Fatalf("denied write record %v", denied)
	}
	waitFor(t, "the connection-close event of the deny", func() bool {
		for _, r := range audittest.Filter(trail.records(t), audit.ActionConnectionClose) {
			if strings.Contains(r.String("event.reason"), "request denied on a sign channel") {
				return true
			}
		}
		return false
	})
	// The signed OPN was opaque, with the client certificate.
	var opn audittest.Record
	for _, r := range audittest.Filter(recs, audit.ActionRequest) {
		if r.String("opcua.service") == "OpenSecureChannel" && r.Bool("opcua.opaque") {
			opn = r
		}
	}
	if opn == nil || opn.String("opcua.client_certificate.subject") != "CN=conduit awcullen client" {
		t.Errorf("signed OPN record %v", opn)
	}
}

// A user name session on a None channel: the awcullen server's user token
// policy has the client encrypt the password (Basic256Sha256) even on a
// None endpoint. The proxy reads the user name from the token (never the
// password) and attributes the session's requests to it; a policy that
// lets only engineer1 write refuses an anonymous session's write.
func TestOPCUAAwcullenUserNameSession(t *testing.T) {
	trail := openAuditTrail(t)
	srv := startAwcullenUserNameServer(t, awServerOptions{onWrite: trail.auditedFirst(t)})
	tp := &tap{}
	engineerWrites := &funcDecider{fn: func(in *policy.Input) policy.Decision {
		if in.Op.Access != inspect.AccessWrite {
			return policy.Decision{Allow: true, Reason: "not a write"}
		}
		if s := in.Op.OPCUA.Session; s != nil && s.IdentityType == "username" && s.UserName == "engineer1" {
			return policy.Decision{Allow: true, Reason: "engineer1 writes"}
		}
		return policy.Decision{Reason: "only engineer1 writes"}
	}}
	l := startUAProxy(t, uaListenerConfig(t, strings.TrimPrefix(srv.url, "opc.tcp://"), "", ""), engineerWrites, trail.sink, tp)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	eng := awcullenDial(t, ctx, proxyURL(l), awclient.WithUserNameIdentity("engineer1", "secret"))
	anon := awcullenDial(t, ctx, proxyURL(l))
	if res, err := eng.Write(ctx, awWriteReq(awSetpoint, 300.0)); err != nil || res.Results[0] != awua.Good || srv.value(t, awSetpoint) != 300.0 {
		t.Fatalf("engineer1's write: %v %v", res, err)
	}
	if _, err := anon.Write(ctx, awWriteReq(awSetpoint, 400.0)); !errors.Is(err, awua.BadUserAccessDenied) {
		t.Fatalf("anonymous write: err = %v, want BadUserAccessDenied", err)
	}
	if v := srv.value(t, awSetpoint); v != 300.0 {
		t.Fatalf("server setpoint %v after the denied write", v)
	}
	if v, err := awRead(ctx, eng, awSetpoint); err != nil || v != 300.0 {
		t.Fatalf("engineer1 reads %v %v", v, err)
	}

	recs := trail.checkDecisionsAudited(t, tp, 1)
	checkWritesReachedDevice(t, recs, srv.writesReceived(), tp)
	var users []string
	for _, r := range audittest.Filter(recs, audit.ActionRequest) {
		if r.String("opcua.service") == "Write" {
			users = append(users, r.String("opcua.session.identity_type")+":"+r.String("opcua.session.user_name"))
		}
	}
	if len(users) != 2 || users[0] != "username:engineer1" || users[1] != "anonymous:" {
		t.Fatalf("write sessions %v", users)
	}
	b, err := os.ReadFile(trail.path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("secret")) {
		t.Fatal("the password is in the audit file")
	}
}

// The awcullen server checks the client's MaxChunkCount only while it
// sends: a response needing more chunks than the HEL allowed goes out
// chunk by chunk until the limit, then the server drops the connection
// (no Abort chunk). The proxy holds it to the limit it negotiated (64
// chunks): the 64th chunk that is not the final one ends that connection,
// audited as malformed from upstream; other connections go on.
func TestOPCUAAwcullenServerChunkCountIsEnforced(t *testing.T) {
	trail := openAuditTrail(t)
	srv := startAwcullenServer(t, awServerOptions{})
	l := startUAProxy(t, uaListenerConfig(t, strings.TrimPrefix(srv.url, "opc.tcp://"), chunkLimits, ""), referencePolicy(t), trail.sink, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := awcullenDial(t, ctx, proxyURL(l))
	bystander := awcullenDial(t, ctx, proxyURL(l))

	// 400 000 characters: about 50 chunks of 8 KiB, within the 64 allowed.
	big := strings.Repeat("x", 400000)
	if res, err := c.Write(ctx, awWriteReq(awMode, big)); err != nil || res.Results[0] != awua.Good {
		t.Fatalf("large write: %v %v", res, err)
	}
	// Reading it twice in one request needs about 100 chunks.
	_, err := c.Read(ctx, &awua.ReadRequest{NodesToRead: []awua.ReadValueID{
		{NodeID: awMode, AttributeID: awua.AttributeIDValue},
		{NodeID: awMode, AttributeID: awua.AttributeIDValue},
	}})
	if err == nil {
		t.Fatal("a response of more than 64 chunks passed")
	}
	var ev audittest.Record
	waitFor(t, "the malformed-frame event", func() bool {
		evs := audittest.Filter(trail.records(t), audit.ActionMalformed)
		if len(evs) > 0 {
			ev = evs[0]
		}
		return ev != nil
	})
	if ev.String("rule.id") != "framing.limit_chunk_count" || !strings.HasPrefix(ev.String("event.reason"), "upstream: ") {
		t.Fatalf("malformed event %v", ev)
	}
	if v, err := awRead(ctx, bystander, awSetpoint); err != nil || v != 500.0 {
		t.Fatalf("bystander: %v %v", v, err)
	}
}

// SignAndEncrypt (Basic256Sha256): the proxy decides on the channel — the
// security policy and the client certificate of the OpenSecureChannel —
// and audits every later message as opaque. A policy pinning the awcullen
// client's certificate lets its session through.
func TestOPCUAAwcullenSignAndEncrypt(t *testing.T) {
	trail := openAuditTrail(t)
	srv := startAwcullenServer(t, awServerOptions{})
	cliCert, cliKey := selfSigned(t, "conduit awcullen client", "urn:conduit:test:awcullen-client")
	sum := sha1.Sum(cliCert)
	pinned := hex.EncodeToString(sum[:])
	pin := &funcDecider{fn: func(in *policy.Input) policy.Decision {
		u := in.Op.OPCUA
		if u.Opaque && u.SecurityPolicy == awua.SecurityPolicyURIBasic256Sha256 && u.ClientCertThumbprint == pinned {
			return policy.Decision{Allow: true, Reason: "pinned certificate"}
		}
		if !u.Opaque && u.SecurityMode == "none" && in.Op.Access != inspect.AccessWrite {
			return policy.Decision{Allow: true, Reason: "discovery"}
		}
		return policy.Decision{Reason: "encrypted channels need a pinned certificate"}
	}}
	tp := &tap{}
	l := startUAProxy(t, uaListenerConfig(t, strings.TrimPrefix(srv.url, "opc.tcp://"), "      security_mode: sign_and_encrypt", ""), pin, trail.sink, tp)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c := awcullenDial(t, ctx, proxyURL(l),
		awclient.WithClientCertificate(cliCert, cliKey),
		awclient.WithSecurityPolicyURI(awua.SecurityPolicyURIBasic256Sha256, awua.MessageSecurityModeSignAndEncrypt))
	if res, err := c.Write(ctx, awWriteReq(awSetpoint, 321.0)); err != nil || res.Results[0] != awua.Good || srv.value(t, awSetpoint) != 321.0 {
		t.Fatalf("write over an encrypted channel: %v %v", res, err)
	}
	if v, err := awRead(ctx, c, awSetpoint); err != nil || v != 321.0 {
		t.Fatalf("read: %v %v", v, err)
	}
	recs := trail.checkDecisionsAudited(t, tp, 0)
	var opaque int
	for _, r := range audittest.Filter(recs, audit.ActionRequest) {
		if !r.Bool("opcua.opaque") {
			continue
		}
		opaque++
		if !r.HasType("allowed") || r.String("opcua.security_mode") != "sign_and_encrypt" || r.Has("opcua.writes") || r.Has("opcua.session") {
			t.Fatalf("opaque record %v", r)
		}
	}
	if opaque < 5 { // OPN, CreateSession, ActivateSession, the client's Read of the namespaces, Write, Read
		t.Fatalf("%d opaque records", opaque)
	}
}

// Eight goroutines share one awcullen client: reads, allowed writes, denied
// writes and multi-chunk writes in flight together on one channel. Every
// denial is answered to its own request, the others get the server's
// answers, and the device received exactly the allowed writes.
func TestOPCUAAwcullenConcurrentRequests(t *testing.T) {
	trail := openAuditTrail(t)
	srv := startAwcullenServer(t, awServerOptions{onWrite: trail.auditedFirst(t)})
	tp := &tap{}
	l := startUAProxy(t, uaListenerConfig(t, strings.TrimPrefix(srv.url, "opc.tcp://"), chunkLimits, ""), referencePolicy(t), trail.sink, tp)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := awcullenDial(t, ctx, proxyURL(l))
	var wg sync.WaitGroup
	var mu sync.Mutex
	denials := 0
	errs := make(chan error, 1000)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				switch (g + i) % 4 {
				case 0:
					if _, err := awRead(ctx, c, awSetpoint); err != nil {
						errs <- fmt.Errorf("read: %w", err)
					}
				case 1:
					res, err := c.Write(ctx, awWriteReq(awSetpoint, float64(g*100+i)))
					if err != nil || res.Results[0] != awua.Good {
						errs <- fmt.Errorf("write: %v %v", res, err)
					}
				case 2:
					_, err := c.Write(ctx, awWriteReq(awSetpoint, 5000.0+float64(i)))
					mu.Lock()
					denials++
					mu.Unlock()
					if !errors.Is(err, awua.BadUserAccessDenied) {
						errs <- fmt.Errorf("denied write: %v", err)
					}
				case 3:
					big := strings.Repeat(fmt.Sprint(g), 12000+i)
					res, err := c.Write(ctx, awWriteReq(awMode, big))
					if err != nil || res.Results[0] != awua.Good {
						errs <- fmt.Errorf("big write: %v %v", res, err)
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	recs := trail.checkDecisionsAudited(t, tp, denials)
	checkWritesReachedDevice(t, recs, srv.writesReceived(), tp)
}
