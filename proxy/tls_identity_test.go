package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mb "github.com/simonvetter/modbus"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/audit/audittest"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/policy"
)

// documentRecorder is a policy.Decider that allows everything and keeps the
// input document of every decision, as the policy would read it.
type documentRecorder struct {
	mu   sync.Mutex
	docs []map[string]any
	err  error
}

func (d *documentRecorder) Decide(_ context.Context, in *policy.Input) policy.Decision {
	b, err := policy.DocumentJSON(in)
	d.mu.Lock()
	defer d.mu.Unlock()
	var doc map[string]any
	if err == nil {
		err = json.Unmarshal(b, &doc)
	}
	if err != nil {
		d.err = err
		return policy.Decision{Reason: "bad input", Err: err}
	}
	d.docs = append(d.docs, doc)
	return policy.Decision{Allow: true, Reason: "recorded"}
}

func (d *documentRecorder) all(t *testing.T) []map[string]any {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		t.Fatal(d.err)
	}
	return append([]map[string]any(nil), d.docs...)
}

// TestTLSIdentityReachesPolicyInput: the certificate a client presented
// through the mTLS listener is, field for field, input.client.identity of
// every decision on that connection; a plain listener gives null.
func TestTLSIdentityReachesPolicyInput(t *testing.T) {
	ca := newTestCA(t, "Plant")
	plc := startPLC(t)
	lt := newListenerTLS(t, ca)
	rec := &documentRecorder{}
	p := startTLSProxy(t, tlsListenerConfig(t, "plc-tls", plc.Addr(), lt.yaml("")), rec, &memRecorder{}, tlsProxyOptions{noWatch: true})

	u, _ := url.Parse("spiffe://plant.example/hmi/line3")
	hmi := ca.issue(t, pki.IssueRequest{
		Name: "hmi-line3", Role: "operator", OrganizationalUnits: []string{"Line 3"},
		DNSNames: []string{"hmi-line3.plant.example"}, IPAddresses: []net.IP{net.IPv4(10, 20, 3, 7)}, URIs: []*url.URL{u},
	})
	c := mbapsClient(t, p.addr(), hmi, ca)
	if _, err := c.ReadRegisters(0, 2, mb.HOLDING_REGISTER); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteRegister(12, 7); err != nil {
		t.Fatal(err)
	}

	sum := sha256.Sum256(hmi.Cert.Raw)
	want := map[string]any{
		"common_name":          "hmi-line3",
		"subject":              hmi.Cert.Subject.String(),
		"issuer":               ca.Intermediate.Subject.String(),
		"dns_names":            []any{"hmi-line3.plant.example"},
		"uris":                 []any{"spiffe://plant.example/hmi/line3"},
		"ip_addresses":         []any{"10.20.3.7"},
		"organizational_units": []any{"Line 3"},
		"roles":                []any{"operator"},
		"serial":               hmi.Entry.Serial,
		"fingerprint_sha256":   hex.EncodeToString(sum[:]),
		"not_before":           hmi.Cert.NotBefore.UTC().Format(time.RFC3339),
		"not_after":            hmi.Cert.NotAfter.UTC().Format(time.RFC3339),
	}
	docs := rec.all(t)
	if len(docs) != 2 {
		t.Fatalf("%d decisions, want 2", len(docs))
	}
	for i, doc := range docs {
		cl := doc["client"].(map[string]any)
		if cl["address"] != "127.0.0.1" {
			t.Errorf("decision %d: client.address %v", i, cl["address"])
		}
		id, _ := cl["identity"].(map[string]any)
		for k, v := range want {
			if got, _ := json.Marshal(id[k]); string(got) != mustJSON(t, v) {
				t.Errorf("decision %d: input.client.identity.%s = %s, want %s", i, k, got, mustJSON(t, v))
			}
		}
	}

	// Without tls: the same document has a null identity.
	plain := startProxy(t, listenerConfig(t, plc.Addr(), ""), rec, &memRecorder{})
	if _, err := client(t, plain.Addr().String()).ReadRegisters(0, 1, mb.HOLDING_REGISTER); err != nil {
		t.Fatal(err)
	}
	docs = rec.all(t)
	if id, ok := docs[2]["client"].(map[string]any)["identity"]; !ok || id != nil {
		t.Fatalf("plain listener: input.client.identity = %v, want null", id)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTLSRolesDecideWithReferencePolicy: the reference policy's role
// grants, on loopback, through the mTLS listener with simonvetter/modbus's
// Modbus/TCP Security client. An operator reads and is denied a write; an
// engineer writes a setpoint within 0..1000 and is denied 5000; a valid
// certificate without a role gets nothing. The audit file carries the
// client's certificate (tls.client.x509.*), tls.version and the roles on
// every decision, and the device received exactly the allowed write.
func TestTLSRolesDecideWithReferencePolicy(t *testing.T) {
	ca := newTestCA(t, "Plant")
	plc := startPLC(t)
	plc.SetHolding(12, 100)
	lt := newListenerTLS(t, ca)
	auditPath := filepath.Join(t.TempDir(), "audit.jsonl")
	sink, err := audit.OpenFile(auditPath, audit.Options{Observer: audit.Observer{Version: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	p := startTLSProxy(t, tlsListenerConfig(t, "plc-mbaps", plc.Addr(), lt.yaml("")), rolePolicy(t, "plc-mbaps"), sink, tlsProxyOptions{noWatch: true})

	opCert := ca.issue(t, pki.IssueRequest{Name: "op-1", Role: "operator"})
	engCert := ca.issue(t, pki.IssueRequest{Name: "eng-1", Role: "engineer", OrganizationalUnits: []string{"Maintenance"}})
	noRole := ca.issue(t, pki.IssueRequest{Name: "laptop"})

	op := mbapsClient(t, p.addr(), opCert, ca)
	if v, err := op.ReadRegister(12, mb.HOLDING_REGISTER); err != nil || v != 100 {
		t.Fatalf("operator read: %v, %v", v, err)
	}
	if err := op.WriteRegister(12, 500); err == nil {
		t.Fatal("operator write allowed")
	}
	eng := mbapsClient(t, p.addr(), engCert, ca)
	if err := eng.WriteRegister(12, 500); err != nil {
		t.Fatalf("engineer setpoint write: %v", err)
	}
	if err := eng.WriteRegister(12, 5000); !errors.Is(err, mb.ErrIllegalDataValue) {
		t.Fatalf("engineer write of 5000: %v, want illegal data value", err)
	}
	if _, err := mbapsClient(t, p.addr(), noRole, ca).ReadRegister(12, mb.HOLDING_REGISTER); err == nil {
		t.Fatal("a certificate without role read")
	}
	if w := plc.Writes(); len(w) != 1 || w[0].Address != 12 || w[0].Values[0] != 500 || plc.Holding(12) != 500 {
		t.Fatalf("device writes %+v", w)
	}

	recs := readAuditFile(t, auditPath)
	reqs := audittest.Filter(recs, audit.ActionRequest)
	type row struct {
		cn, access string
		allowed    bool
		rule       string
	}
	want := []row{
		{"op-1", "read", true, "grant/operators"},
		{"op-1", "write", false, "conduit.modbus.write"},
		{"eng-1", "write", true, "grant/engineers"},
		{"eng-1", "write", false, ""},
		{"laptop", "read", false, "conduit.client"},
	}
	if len(reqs) != len(want) {
		t.Fatalf("%d request events, want %d", len(reqs), len(want))
	}
	certs := map[string]*pki.Issued{"op-1": opCert, "eng-1": engCert, "laptop": noRole}
	for i, w := range want {
		r := reqs[i]
		is := certs[w.cn]
		sum := sha256.Sum256(is.Cert.Raw)
		if cn := r.Strings("tls.client.x509.subject.common_name"); !slices.Equal(cn, []string{w.cn}) {
			t.Errorf("event %d: tls.client.x509.subject.common_name %v, want %s", i, cn, w.cn)
		}
		if got := r.String("tls.client.x509.serial_number"); got != is.Entry.Serial {
			t.Errorf("event %d: serial %s, want %s", i, got, is.Entry.Serial)
		}
		if got := r.String("tls.client.hash.sha256"); got != hex.EncodeToString(sum[:]) {
			t.Errorf("event %d: tls.client.hash.sha256 %s", i, got)
		}
		if got := r.String("tls.client.x509.issuer.distinguished_name"); got != ca.Intermediate.Subject.String() {
			t.Errorf("event %d: issuer %q", i, got)
		}
		if !r.Has("tls.client.x509.not_after") {
			t.Errorf("event %d: no tls.client.x509.not_after", i)
		}
		if got := r.String("tls.version"); got != "1.3" {
			t.Errorf("event %d: tls.version %q", i, got)
		}
		if got, want := r.Strings("conduit.client.roles"), is.Entry.Role; (want == "" && got != nil) || (want != "" && !slices.Equal(got, []string{want})) {
			t.Errorf("event %d: conduit.client.roles %v, want %q", i, got, want)
		}
		if got := r.String("conduit.operation.access"); got != w.access {
			t.Errorf("event %d: access %s, want %s", i, got, w.access)
		}
		if got := r.HasType("allowed"); got != w.allowed {
			t.Errorf("event %d: allowed %v, want %v (reason %q)", i, got, w.allowed, r.String("event.reason"))
		}
		if w.rule != "" && r.String("rule.id") != w.rule {
			t.Errorf("event %d: rule.id %q, want %s (reason %q)", i, r.String("rule.id"), w.rule, r.String("event.reason"))
		}
	}
	if got := audittest.AllowedWrites(recs); len(got) != len(plc.Writes()) {
		t.Fatalf("%d allowed writes in the audit trail, %d at the device", len(got), len(plc.Writes()))
	}
}

func readAuditFile(t *testing.T, path string) []audittest.Record {
	t.Helper()
	recs, err := audittest.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestTLSPymodbusClient: pymodbus's TLS client, a second independent
// Modbus/TCP Security implementation, through the mTLS listener with the
// reference role grants. With the MBAP framer (the specification's
// framing) an engineer reads and writes a setpoint. pymodbus's default TLS
// framer sends bare PDUs: the proxy cannot frame them and closes the
// connection, audited as malformed, with nothing forwarded.
func TestTLSPymodbusClient(t *testing.T) {
	pymodbusAvailable(t)
	ca := newTestCA(t, "Plant")
	plc := startPLC(t)
	plc.SetHolding(10, 4711)
	lt := newListenerTLS(t, ca)
	rec := &memRecorder{}
	p := startTLSProxy(t, tlsListenerConfig(t, "plc-mbaps", plc.Addr(), lt.yaml("")), rolePolicy(t, "plc-mbaps"), rec, tlsProxyOptions{noWatch: true})
	eng := ca.issue(t, pki.IssueRequest{Name: "eng-py", Role: "engineer"})

	run := func(framer string) map[string]any {
		host, port, _ := strings.Cut(p.addr(), ":")
		out, err := exec.Command(debianPython, "testdata/pymodbus_tls_client.py", host, port, eng.ChainFile, eng.KeyFile, ca.rootFile(), framer).Output()
		if err != nil {
			t.Fatalf("pymodbus TLS client (%s framer): %v", framer, err)
		}
		var res map[string]any
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("pymodbus output %q: %v", out, err)
		}
		return res
	}

	res := run("socket")
	if res["connected"] != true || mustJSON(t, res["read"]) != "[4711]" || res["write"] != "ok" {
		t.Fatalf("pymodbus over TLS with the MBAP framer: %v", res)
	}
	if plc.Holding(12) != 300 {
		t.Fatal("the write did not reach the device")
	}
	reqs := rec.byAction(audit.ActionRequest)
	if len(reqs) != 2 || reqs[1].Identity == nil || reqs[1].Identity.CommonName != "eng-py" || !reqs[1].Allowed {
		t.Fatalf("request events %+v", reqs)
	}

	before := plc.Requests()
	res = run("tls")
	if _, failed := res["read"].(map[string]any); !failed {
		t.Fatalf("bare-PDU framing answered: %v", res)
	}
	waitFor(t, "a malformed-frame event", func() bool { return len(rec.byAction(audit.ActionMalformed)) >= 1 })
	for _, ev := range rec.byAction(audit.ActionMalformed) {
		if ev.Rule != "framing.bad_protocol_id" || ev.Identity == nil || ev.Identity.CommonName != "eng-py" {
			t.Errorf("malformed event rule %q identity %+v", ev.Rule, ev.Identity)
		}
	}
	if n := len(rec.byAction(audit.ActionRequest)); n != 2 || plc.Requests() != before {
		t.Fatalf("bare PDUs were decided (%d request events) or reached the device", n)
	}
}
