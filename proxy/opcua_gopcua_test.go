package proxy

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
	"github.com/conduit-ot/conduit/sim"
)

// Interop with gopcua v0.9.0, client and server, through the proxy over
// real TCP on 127.0.0.1, under the reference policy (grant opcua-line1,
// demo-loopback: read, browse, subscribe; write Line1.Setpoint 0..1000 and
// Line1.Mode; call ResetCounters on Line1).

const chunkLimits = `      security_mode: none
      max_chunk_size: 8192
      max_message_size: 1048576
      max_chunk_count: 64`

func TestOPCUAGopcuaNoneMode(t *testing.T) {
	srv := startSimUA(t, sim.OPCUAOptions{CountEvery: 20 * time.Millisecond})
	rec := &memRecorder{}
	tp := &tap{}
	l := startUAProxy(t, uaListenerConfig(t, srv.Addr(), chunkLimits, ""), referencePolicy(t), rec, tp)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Discovery through the proxy: every endpoint points at the proxy.
	eps, err := opcua.GetEndpoints(ctx, proxyURL(l))
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) == 0 {
		t.Fatal("no endpoints")
	}
	for _, ep := range eps {
		if ep.EndpointURL != proxyURL(l) {
			t.Errorf("endpoint %s, want the proxy's %s", ep.EndpointURL, proxyURL(l))
		}
	}

	c := gopcuaClient(t, ctx, proxyURL(l))

	t.Run("browse", func(t *testing.T) {
		refs, err := c.Node(ua.MustParseNodeID(sim.OPCUALine1)).References(ctx, id.HasComponent, ua.BrowseDirectionForward, ua.NodeClassAll, true)
		if err != nil {
			t.Fatal(err)
		}
		found := map[string]bool{}
		for _, r := range refs {
			found[r.NodeID.NodeID.String()] = true
		}
		if !found[sim.OPCUASetpoint] || !found[sim.OPCUAResetCounters] {
			t.Fatalf("browse Line1: %v", found)
		}
	})

	t.Run("read", func(t *testing.T) {
		v, err := c.Node(ua.MustParseNodeID(sim.OPCUASetpoint)).Value(ctx)
		if err != nil || v.Value() != 500.0 {
			t.Fatalf("read setpoint: %v %v", v, err)
		}
	})

	// Subscriptions first: gopcua v0.9.0 also reports every non-Good
	// ServiceResult (a ServiceFault, whoever sends it) on its channel error
	// path, where its monitor stops the publish loop (with AutoReconnect
	// off) or reconnects (with it on). The requests after a deny below show
	// that the channel and session themselves stay usable.
	t.Run("subscription", func(t *testing.T) {
		notify := make(chan *opcua.PublishNotificationData, 16)
		sub, err := c.Subscribe(ctx, &opcua.SubscriptionParameters{Interval: 50 * time.Millisecond}, notify)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Cancel(ctx)
		if _, err := sub.Monitor(ctx, ua.TimestampsToReturnBoth, opcua.NewMonitoredItemCreateRequestWithDefaults(ua.MustParseNodeID(sim.OPCUACounter), ua.AttributeIDValue, 7)); err != nil {
			t.Fatal(err)
		}
		var values []uint32
		for len(values) < 3 {
			select {
			case n := <-notify:
				if n.Error != nil {
					t.Fatal(n.Error)
				}
				if dc, ok := n.Value.(*ua.DataChangeNotification); ok {
					for _, item := range dc.MonitoredItems {
						if v, ok := item.Value.Value.Value().(uint32); ok {
							values = append(values, v)
						}
					}
				}
			case <-ctx.Done():
				t.Fatalf("notifications: %v", values)
			}
		}
	})

	t.Run("write allowed and denied", func(t *testing.T) {
		resp, err := c.Write(ctx, writeReq(sim.OPCUASetpoint, 750.0))
		if err != nil || resp.Results[0] != ua.StatusOK {
			t.Fatalf("allowed write: %v %v", resp, err)
		}
		if srv.Setpoint() != 750 {
			t.Fatalf("server setpoint %v", srv.Setpoint())
		}
		before := len(srv.Writes())

		_, err = c.Write(ctx, writeReq(sim.OPCUASetpoint, 1500.0))
		if !errors.Is(err, ua.StatusBadUserAccessDenied) {
			t.Fatalf("denied write: err = %v, want StatusBadUserAccessDenied", err)
		}
		// The server never received it ...
		if w := srv.Writes(); len(w) != before || srv.Setpoint() != 750 {
			t.Fatalf("server received %+v", w[before:])
		}
		// ... and the session lives on: the next requests run on the
		// renumbered channel in both directions.
		v, err := c.Node(ua.MustParseNodeID(sim.OPCUASetpoint)).Value(ctx)
		if err != nil || v.Value() != 750.0 {
			t.Fatalf("read after deny: %v %v", v, err)
		}
		resp, err = c.Write(ctx, writeReq(sim.OPCUASetpoint, 100.0))
		if err != nil || resp.Results[0] != ua.StatusOK || srv.Setpoint() != 100 {
			t.Fatalf("write after deny: %v %v (server %v)", resp, err, srv.Setpoint())
		}

		denied := requestEvents(rec, "write")
		var ev *audit.Event
		for i := range denied {
			if !denied[i].Allowed {
				ev = &denied[i]
			}
		}
		if ev == nil {
			t.Fatal("no audit event for the denied write")
		}
		u := ev.Op.OPCUA
		if ev.StatusCode != 0x801F0000 || ev.DenyAction != "exception" || len(u.Writes) != 1 || u.Writes[0].NodeID != sim.OPCUASetpoint || u.Writes[0].Value != 1500.0 {
			t.Fatalf("denied write event: %+v %+v", ev, u)
		}
		if u.Session == nil || u.Session.IdentityType != "anonymous" {
			t.Fatalf("denied write carries session %+v", u.Session)
		}
		if !strings.Contains(ev.Reason, "exceeds max 1000") {
			t.Errorf("reason %q", ev.Reason)
		}
	})

	t.Run("multi-chunk write", func(t *testing.T) {
		// 20 000 bytes do not fit an 8 KiB chunk: gopcua splits the
		// WriteRequest, the proxy reassembles, decides on the whole and
		// forwards the validated chunks.
		big := strings.Repeat("manual-", 20000/7)
		start := len(tp.sent(tp.count() - 1))
		resp, err := c.Write(ctx, writeReq(sim.OPCUAMode, big))
		if err != nil || resp.Results[0] != ua.StatusOK {
			t.Fatalf("large write: %v %v", resp, err)
		}
		if srv.Mode() != big {
			t.Fatalf("server mode has %d bytes, want %d", len(srv.Mode()), len(big))
		}

		chunks := splitChunks(t, tp.sent(tp.count() - 1)[start:])
		if len(chunks) < 3 || chunks[0].chunkType != 'C' {
			t.Fatalf("upstream saw %d chunks for the large write", len(chunks))
		}
		// Consecutive sequence numbers on the forwarded chunks, although
		// a request was withheld earlier on this channel.
		for i := 1; i < len(chunks); i++ {
			if chunks[i].seq != chunks[i-1].seq+1 {
				t.Fatalf("upstream sequence numbers %d then %d", chunks[i-1].seq, chunks[i].seq)
			}
		}

		// A large write to a node that is not granted: refused whole.
		before := len(srv.Writes())
		_, err = c.Write(ctx, writeReq(sim.OPCUACounter, big))
		if !errors.Is(err, ua.StatusBadUserAccessDenied) {
			t.Fatalf("denied large write: %v", err)
		}
		if len(srv.Writes()) != before {
			t.Fatal("the server received the denied large write")
		}
		if _, err := c.Node(ua.MustParseNodeID(sim.OPCUACounter)).Value(ctx); err != nil {
			t.Fatalf("read after denied large write: %v", err)
		}
	})

	t.Run("call", func(t *testing.T) {
		res, err := c.Call(ctx, &ua.CallMethodRequest{ObjectID: ua.MustParseNodeID(sim.OPCUALine1), MethodID: ua.MustParseNodeID(sim.OPCUAResetCounters)})
		if err != nil || res.StatusCode != ua.StatusOK {
			t.Fatalf("allowed call: %v %v", res, err)
		}
		calls := len(srv.Calls())
		_, err = c.Call(ctx, &ua.CallMethodRequest{ObjectID: ua.MustParseNodeID(sim.OPCUASetpoint), MethodID: ua.MustParseNodeID(sim.OPCUAResetCounters)})
		if !errors.Is(err, ua.StatusBadUserAccessDenied) {
			t.Fatalf("denied call: %v", err)
		}
		if len(srv.Calls()) != calls {
			t.Fatal("the server received the denied call")
		}
	})

	// Every request was decided and audited, reads included; every one
	// after ActivateSession carries the session.
	reqs := rec.byAction(audit.ActionRequest)
	activated := false
	for _, ev := range reqs {
		if ev.DecisionID == "" || ev.Op == nil || ev.Op.OPCUA == nil {
			t.Fatalf("event %+v", ev)
		}
		if activated && ev.Op.OPCUA.Session == nil && ev.Op.Name != "close_secure_channel" {
			t.Errorf("%s after ActivateSession without session", ev.Op.Name)
		}
		if ev.Op.Name == "activate_session" && ev.Allowed {
			activated = true
		}
	}
	if len(requestEvents(rec, "read")) == 0 || len(requestEvents(rec, "browse")) == 0 || len(requestEvents(rec, "publish")) == 0 {
		t.Errorf("reads, browses or publishes were not audited")
	}
	for _, ev := range rec.byAction(audit.ActionMalformed) {
		t.Errorf("malformed-frame event: %s (%s)", ev.Reason, ev.Rule)
	}
}

// Sign: bodies are readable after the signature is stripped, so every
// request is decided as under None; but the proxy cannot forge a signed
// ServiceFault nor withhold a signed chunk, so a deny closes the connection,
// audited with the reason.
func TestOPCUAGopcuaSignMode(t *testing.T) {
	srvCert, srvKey := selfSigned(t, "conduit sim", "urn:conduit:sim")
	cliCert, cliKey := selfSigned(t, "conduit test client", "urn:conduit:test:client")
	srv := startSimUA(t, sim.OPCUAOptions{Certificate: srvCert, PrivateKey: srvKey, CountEvery: -1})
	rec := &memRecorder{}
	tp := &tap{}
	l := startUAProxy(t, uaListenerConfig(t, srv.Addr(), "      security_mode: sign", ""), referencePolicy(t), rec, tp)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Discovery runs on a None channel (allowed on a sign listener; the
	// policy sees security_mode none) and is rewritten to the proxy.
	eps, err := opcua.GetEndpoints(ctx, proxyURL(l))
	if err != nil {
		t.Fatal(err)
	}
	ep, err := opcua.SelectEndpoint(eps, ua.SecurityPolicyURIBasic256Sha256, ua.MessageSecurityModeSign)
	if err != nil {
		t.Fatal(err)
	}
	if ep.EndpointURL != proxyURL(l) {
		t.Fatalf("endpoint %s", ep.EndpointURL)
	}
	c := gopcuaClient(t, ctx, ep.EndpointURL,
		opcua.SecurityFromEndpoint(ep, ua.UserTokenTypeAnonymous),
		opcua.Certificate(cliCert), opcua.PrivateKey(cliKey))

	v, err := c.Node(ua.MustParseNodeID(sim.OPCUASetpoint)).Value(ctx)
	if err != nil || v.Value() != 500.0 {
		t.Fatalf("read: %v %v", v, err)
	}
	resp, err := c.Write(ctx, writeReq(sim.OPCUASetpoint, 250.0))
	if err != nil || resp.Results[0] != ua.StatusOK || srv.Setpoint() != 250 {
		t.Fatalf("allowed write: %v %v", resp, err)
	}
	// The signed write was inspected: its value is in the audit trail.
	var allowed *audit.Event
	for _, ev := range requestEvents(rec, "write") {
		if ev.Allowed {
			allowed = &ev
		}
	}
	if allowed == nil || allowed.Op.OPCUA.SecurityMode != "sign" || allowed.Op.OPCUA.Opaque || allowed.Op.OPCUA.Writes[0].Value != 250.0 || allowed.Op.OPCUA.Session == nil {
		t.Fatalf("allowed write event %+v", allowed)
	}

	before := len(srv.Writes())
	sentBefore := len(tp.sent(tp.count() - 1))
	_, err = c.Write(ctx, writeReq(sim.OPCUASetpoint, 5000.0))
	if err == nil {
		t.Fatal("denied write on a signed channel returned no error")
	}
	if len(srv.Writes()) != before || srv.Setpoint() != 250 {
		t.Fatalf("the server received the denied write: %+v", srv.Writes()[before:])
	}
	// The connection is gone: the next request fails too.
	if _, err := c.Node(ua.MustParseNodeID(sim.OPCUASetpoint)).Value(ctx); err == nil {
		t.Fatal("read after a deny on a signed channel succeeded")
	}
	waitFor(t, "connection-close events", func() bool { return len(rec.byAction(audit.ActionConnectionClose)) == 2 })

	var denied *audit.Event
	for _, ev := range requestEvents(rec, "write") {
		if !ev.Allowed {
			denied = &ev
		}
	}
	if denied == nil || denied.DenyAction != "close" || denied.StatusCode != 0x801F0000 || denied.Op.OPCUA.Writes[0].Value != 5000.0 {
		t.Fatalf("denied write event %+v", denied)
	}
	closes := rec.byAction(audit.ActionConnectionClose)
	last := closes[len(closes)-1]
	if !strings.Contains(last.Reason, "request denied on a sign channel") || !strings.Contains(last.Reason, "exceeds max 1000") {
		t.Fatalf("close reason %q", last.Reason)
	}
	// The OPN of the signed channel was opaque and decided on what it shows.
	var opn *audit.Event
	for _, ev := range requestEvents(rec, "open_secure_channel") {
		if ev.Op.OPCUA.Opaque {
			opn = &ev
		}
	}
	if opn == nil || !opn.Allowed || opn.Op.OPCUA.SecurityPolicy != ua.SecurityPolicyURIBasic256Sha256 || opn.Op.OPCUA.ClientCertSubject != "CN=conduit test client" || len(opn.Op.OPCUA.ClientCertThumbprint) != 40 {
		t.Fatalf("signed OPN event %+v", opn)
	}
	// Not one byte went upstream after the denied write arrived.
	if sent := tp.sent(tp.count() - 1); len(sent) != sentBefore {
		t.Fatalf("%d bytes went upstream after the deny: %v", len(sent)-sentBefore, splitChunks(t, sent[sentBefore:]))
	}
}

// SignAndEncrypt: the proxy sees only the channel's security policy and the
// client certificate. A policy that pins the certificate lets the channel
// through (every message audited as opaque); one that forbids opaque
// channels refuses the OPN, and nothing but the HEL reaches the server.
func TestOPCUAGopcuaSignAndEncrypt(t *testing.T) {
	srvCert, srvKey := selfSigned(t, "conduit sim", "urn:conduit:sim")
	cliCert, cliKey := selfSigned(t, "eng-ws-01", "urn:conduit:test:eng")
	srv := startSimUA(t, sim.OPCUAOptions{Certificate: srvCert, PrivateKey: srvKey, CountEvery: -1})
	sum := sha1.Sum(cliCert)
	pinned := hex.EncodeToString(sum[:])

	pin := &funcDecider{fn: func(in *policy.Input) policy.Decision {
		u := in.Op.OPCUA
		if u.Opaque && u.SecurityPolicy == ua.SecurityPolicyURIBasic256Sha256 && u.ClientCertThumbprint == pinned {
			return policy.Decision{Allow: true, Reason: "pinned certificate"}
		}
		if !u.Opaque && u.SecurityMode == "none" && in.Op.Access != inspect.AccessWrite {
			return policy.Decision{Allow: true, Reason: "discovery"}
		}
		return policy.Decision{Reason: "encrypted channels need a pinned certificate"}
	}}

	for _, tc := range []struct {
		name    string
		decider policy.Decider
		allowed bool
	}{
		{"pinned", pin, true},
		{"reference policy forbids opaque", referencePolicy(t), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &memRecorder{}
			tp := &tap{}
			l := startUAProxy(t, uaListenerConfig(t, srv.Addr(), "      security_mode: sign_and_encrypt", ""), tc.decider, rec, tp)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			eps, err := opcua.GetEndpoints(ctx, proxyURL(l))
			if err != nil {
				t.Fatal(err)
			}
			ep, err := opcua.SelectEndpoint(eps, ua.SecurityPolicyURIBasic256Sha256, ua.MessageSecurityModeSignAndEncrypt)
			if err != nil {
				t.Fatal(err)
			}
			c, err := opcua.NewClient(ep.EndpointURL, opcua.SecurityFromEndpoint(ep, ua.UserTokenTypeAnonymous),
				opcua.Certificate(cliCert), opcua.PrivateKey(cliKey), opcua.AutoReconnect(false), opcua.RequestTimeout(5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			err = c.Connect(ctx)
			if !tc.allowed {
				if err == nil {
					c.Close(ctx)
					t.Fatal("an encrypted channel was let through")
				}
				waitFor(t, "connection close", func() bool { return len(rec.byAction(audit.ActionConnectionClose)) == 2 })
				// The encrypted channel's upstream connection carried the
				// HEL only: the OPN never left the proxy.
				chunks := splitChunks(t, tp.sent(tp.count()-1))
				if len(chunks) != 1 || chunks[0].typ != "HEL" {
					t.Fatalf("upstream saw %d chunks (%s...)", len(chunks), chunks[len(chunks)-1].typ)
				}
				evs := requestEvents(rec, "open_secure_channel")
				ev := evs[len(evs)-1]
				if ev.Allowed || !ev.Op.OPCUA.Opaque || ev.Op.OPCUA.SecurityMode != "sign_and_encrypt" || ev.Op.OPCUA.ClientCertThumbprint != pinned || ev.DenyAction != "close" {
					t.Fatalf("OPN event %+v %+v", ev, ev.Op.OPCUA)
				}
				if !strings.Contains(ev.Reason, "cannot be inspected") {
					t.Errorf("reason %q", ev.Reason)
				}
				// Other connections on the listener are unaffected.
				other := gopcuaClient(t, ctx, proxyURL(l))
				if _, err := other.Node(ua.MustParseNodeID(sim.OPCUASetpoint)).Value(ctx); err != nil {
					t.Fatalf("a None session after the refused encrypted channel: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			resp, err := c.Write(ctx, writeReq(sim.OPCUASetpoint, 321.0))
			if err != nil || resp.Results[0] != ua.StatusOK || srv.Setpoint() != 321 {
				t.Fatalf("write over an encrypted channel: %v %v", resp, err)
			}
			// Every message on the encrypted channel was decided and
			// audited as opaque: the trail says what was not inspected.
			var opaque int
			for _, ev := range rec.byAction(audit.ActionRequest) {
				if u := ev.Op.OPCUA; u.Opaque {
					opaque++
					if !ev.Allowed || u.SecurityMode != "sign_and_encrypt" || u.Writes != nil || u.Session != nil {
						t.Fatalf("opaque event %+v %+v", ev, u)
					}
				}
			}
			if opaque < 4 { // OPN, CreateSession, ActivateSession, Write at least
				t.Fatalf("%d opaque events", opaque)
			}
		})
	}
}

// A Publish is parked on the server until a notification or keep-alive is
// due, longer than the response timeout: the proxy gives it the client's
// TimeoutHint instead, so the subscription survives quiet periods.
func TestOPCUAParkedPublishOutlivesResponseTimeout(t *testing.T) {
	srv := startSimUA(t, sim.OPCUAOptions{CountEvery: -1})
	rec := &memRecorder{}
	l := startUAProxy(t, uaListenerConfig(t, srv.Addr(), "", "    timeouts:\n      response: 200ms"), referencePolicy(t), rec, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := gopcuaClient(t, ctx, proxyURL(l))
	notify := make(chan *opcua.PublishNotificationData, 16)
	sub, err := c.Subscribe(ctx, &opcua.SubscriptionParameters{Interval: 100 * time.Millisecond, MaxKeepAliveCount: 10}, notify)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Cancel(ctx)
	if _, err := sub.Monitor(ctx, ua.TimestampsToReturnBoth, opcua.NewMonitoredItemCreateRequestWithDefaults(ua.MustParseNodeID(sim.OPCUASetpoint), ua.AttributeIDValue, 1)); err != nil {
		t.Fatal(err)
	}
	next := func() float64 {
		t.Helper()
		for {
			select {
			case n := <-notify:
				if n.Error != nil {
					t.Fatalf("notification error: %v", n.Error)
				}
				if dc, ok := n.Value.(*ua.DataChangeNotification); ok && len(dc.MonitoredItems) > 0 {
					v, _ := dc.MonitoredItems[len(dc.MonitoredItems)-1].Value.Value.Value().(float64)
					return v
				}
			case <-ctx.Done():
				t.Fatal("no notification")
			}
		}
	}
	next() // the initial value
	// Quiet for well over the response timeout: the parked Publish stays.
	time.Sleep(1500 * time.Millisecond)
	if resp, err := c.Write(ctx, writeReq(sim.OPCUASetpoint, 640.0)); err != nil || resp.Results[0] != ua.StatusOK {
		t.Fatalf("write: %v %v", resp, err)
	}
	for v := next(); v != 640; v = next() {
	}
}

// gopcua's server acknowledges a SendBufferSize of 65535 whatever the
// client's HEL allowed and then sends chunks that large (Part 6 §7.1.2.4:
// it shall not exceed the client's ReceiveBufferSize). The proxy holds the
// server to what was negotiated: with max_chunk_size 8192, a 20 KB read
// response in one chunk ends that connection, audited as malformed from
// upstream, and the client gets an ERR. Other connections go on. (A server
// that chunks as negotiated — node-opcua — passes large responses; see the
// node-opcua interop test.)
func TestOPCUAServerOversizeChunkIsCutOff(t *testing.T) {
	srv := startSimUA(t, sim.OPCUAOptions{CountEvery: -1})
	rec := &memRecorder{}
	l := startUAProxy(t, uaListenerConfig(t, srv.Addr(), chunkLimits, ""), referencePolicy(t), rec, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := gopcuaClient(t, ctx, proxyURL(l))
	bystander := gopcuaClient(t, ctx, proxyURL(l))
	big := strings.Repeat("x", 20000)
	if resp, err := c.Write(ctx, writeReq(sim.OPCUAMode, big)); err != nil || resp.Results[0] != ua.StatusOK {
		t.Fatalf("large write: %v %v", resp, err)
	}
	if _, err := c.Node(ua.MustParseNodeID(sim.OPCUAMode)).Value(ctx); err == nil {
		t.Fatal("a 20 KB chunk passed an 8 KB limit")
	}
	ev := func() audit.Event {
		var evs []audit.Event
		waitFor(t, "malformed-frame event", func() bool { evs = rec.byAction(audit.ActionMalformed); return len(evs) > 0 })
		return evs[0]
	}()
	if ev.Rule != "framing.chunk_too_large" || !strings.HasPrefix(ev.Reason, "upstream: ") {
		t.Fatalf("malformed event %+v", ev)
	}
	if v, err := bystander.Node(ua.MustParseNodeID(sim.OPCUASetpoint)).Value(ctx); err != nil || v.Value() != 500.0 {
		t.Fatalf("bystander: %v %v", v, err)
	}
}

// The session a request runs in comes from ActivateSession: the reference
// rules with a grant restricted to the user engineer1 (user_names) let
// engineer1's writes through and refuse an anonymous session at
// ActivateSession — on a Sign channel, where the user name is readable.
func TestOPCUASessionUserThroughReferenceRules(t *testing.T) {
	dir := t.TempDir()
	entries, err := fs.ReadDir(rules.FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".rego") && !strings.HasSuffix(e.Name(), "_test.rego") {
			b, _ := fs.ReadFile(rules.FS, e.Name())
			if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	data := `{"grants": {"opcua-line1": {"engineers": {
		"description": "engineer1 from this host: read and write the setpoint",
		"clients": {"cidrs": ["127.0.0.0/8"]},
		"opcua": {"read": true, "browse": true, "user_names": ["engineer1"],
			"writes": [{"node_id": "ns=2;s=Line1.Setpoint", "min": 0, "max": 1000}]}}}}}`
	if err := os.WriteFile(filepath.Join(dir, "data.json"), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	engine, err := policy.New(context.Background(), policy.Options{Source: policy.Source{Path: dir}, DecisionTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()

	srvCert, srvKey := selfSigned(t, "conduit sim", "urn:conduit:sim")
	cliCert, cliKey := selfSigned(t, "conduit test client", "urn:conduit:test:client")
	srv := startSimUA(t, sim.OPCUAOptions{Certificate: srvCert, PrivateKey: srvKey, CountEvery: -1})
	rec := &memRecorder{}
	l := startUAProxy(t, uaListenerConfig(t, srv.Addr(), "      security_mode: sign", ""), engine, rec, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eps, err := opcua.GetEndpoints(ctx, proxyURL(l))
	if err != nil {
		t.Fatal(err)
	}
	ep, err := opcua.SelectEndpoint(eps, ua.SecurityPolicyURIBasic256Sha256, ua.MessageSecurityModeSign)
	if err != nil {
		t.Fatal(err)
	}

	eng := gopcuaClient(t, ctx, ep.EndpointURL, opcua.AuthUsername("engineer1", "secret"),
		opcua.SecurityFromEndpoint(ep, ua.UserTokenTypeUserName), opcua.Certificate(cliCert), opcua.PrivateKey(cliKey))
	if resp, err := eng.Write(ctx, writeReq(sim.OPCUASetpoint, 300.0)); err != nil || resp.Results[0] != ua.StatusOK || srv.Setpoint() != 300 {
		t.Fatalf("engineer1's write: %v %v", resp, err)
	}
	var write *audit.Event
	for _, ev := range requestEvents(rec, "write") {
		write = &ev
	}
	if write == nil || !write.Allowed || write.Op.OPCUA.Session == nil || write.Op.OPCUA.Session.IdentityType != "username" || write.Op.OPCUA.Session.UserName != "engineer1" {
		t.Fatalf("write event %+v", write)
	}

	anon, err := opcua.NewClient(ep.EndpointURL, opcua.SecurityFromEndpoint(ep, ua.UserTokenTypeAnonymous),
		opcua.Certificate(cliCert), opcua.PrivateKey(cliKey), opcua.AutoReconnect(false), opcua.RequestTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := anon.Connect(ctx); err == nil {
		anon.Close(ctx)
		t.Fatal("an anonymous session was activated on a grant restricted to engineer1")
	}
	acts := requestEvents(rec, "activate_session")
	last := acts[len(acts)-1]
	if last.Allowed || last.Op.OPCUA.Session == nil || last.Op.OPCUA.Session.IdentityType != "anonymous" || !strings.Contains(last.Reason, "session user") {
		t.Fatalf("anonymous ActivateSession event %+v", last)
	}
	// engineer1's session is unaffected.
	if _, err := eng.Node(ua.MustParseNodeID(sim.OPCUASetpoint)).Value(ctx); err != nil {
		t.Fatalf("engineer1 after the refused session: %v", err)
	}
}
