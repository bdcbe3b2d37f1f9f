package policy_test

import (
	"fmt"
	"testing"

	"github.com/conduit-ot/conduit/policy"
)

// The cache key leaves out what the policy never reads (policy/reads.go).
// These tests check both directions: the reference policy, which never
// reads the client's port, shares decisions across connections; a policy
// that reads the port, in any of the ways Rego allows, still keys on it,
// and every cached decision equals a fresh evaluation.

func TestReferenceKeyOmitsPort(t *testing.T) {
	cached := reference(t, policy.Options{})
	fresh := reference(t, policy.Options{CacheSize: -1})
	const conns = 200
	for i := range conns {
		client := fmt.Sprintf("127.0.0.1:%d", 40000+i)
		for _, in := range []*policy.Input{readHR(client, 0, 10), writeHR(client, 15, 750), writeHR(client, 15, 5000)} {
			got, want := cached.Decide(ctx, in), fresh.Decide(ctx, in)
			if !sameDecision(got, want) {
				t.Fatalf("%s: cached %+v, fresh %+v", client, got, want)
			}
		}
	}
	// Three shapes: three evaluations, whatever the number of connections.
	if s := cached.Stats(); s.CacheMisses != 3 || s.CacheHits != 3*conns-3 {
		t.Errorf("stats %+v, want 3 misses", s)
	}
	// Another address is another key: the policy reads the address.
	cached.Decide(ctx, readHR("127.0.0.2:40000", 0, 10))
	if s := cached.Stats(); s.CacheMisses != 4 {
		t.Errorf("a new client address hit the cache: %+v", s)
	}
}

// portReaders are policies whose decision depends on input.client.port,
// each reading it another way. Their reason names what they saw.
var portReaders = map[string]string{
	"direct":                `decision := {"allow": true, "reason": sprintf("%v", [input.client.port])}`,
	"client object":         `decision := {"allow": true, "reason": sprintf("%v", [input.client])}`,
	"whole input":           `decision := {"allow": true, "reason": json.marshal(input)}`,
	"input in a variable":   `decision := {"allow": true, "reason": sprintf("%v", [x.client.port])} if x := input`,
	"client in a variable":  `decision := {"allow": true, "reason": sprintf("%v", [c.port])} if c := input.client`,
	"dynamic key on input":  `decision := {"allow": true, "reason": sprintf("%v", [input[k].port])} if some k in ["client"]`,
	"dynamic key on client": `decision := {"allow": true, "reason": sprintf("%v", [input.client[k]])} if some k in ["port"]`,
	"computed key":          `decision := {"allow": true, "reason": sprintf("%v", [input.client[concat("", ["po", "rt"])]])}`,
	"iteration":             `decision := {"allow": true, "reason": sprintf("%v", [[v | some k, v in input.client; k == "port"]])}`,
	"walk":                  `decision := {"allow": true, "reason": sprintf("%v", [[v | walk(input, [p, v]); p == ["client", "port"]]])}`,
	"object.get on input":   `decision := {"allow": true, "reason": sprintf("%v", [object.get(input, ["client", "port"], 0)])}`,
	"object.get on client":  `decision := {"allow": true, "reason": sprintf("%v", [object.get(input.client, "port", 0)])}`,
	"function argument": `decision := {"allow": true, "reason": sprintf("%v", [port_of(input.client)])}
port_of(c) := c.port`,
	"rule head key": `ports contains input.client.port
decision := {"allow": true, "reason": sprintf("%v", [ports])}`,
	"rule head reference": `seen.by[input.client.port].x := true
decision := {"allow": true, "reason": sprintf("%v", [seen])}`,
	"import": `import input.client as cl
decision := {"allow": true, "reason": sprintf("%v", [cl.port])}`,
	"with value": `decision := {"allow": true, "reason": sprintf("%v", [p])} if p := echo with data.x as input
echo := data.x.client.port`,
	"comparison only": `decision := {"allow": input.client.port > 1500, "reason": "port above 1500"}`,
}

func TestCacheKeyKeepsWhatThePolicyReads(t *testing.T) {
	for name, rule := range portReaders {
		t.Run(name, func(t *testing.T) {
			files := map[string]string{"p.rego": "package conduit\n" + rule + "\n"}
			cached := engineFor(t, files, policy.Options{})
			fresh := engineFor(t, files, policy.Options{CacheSize: -1})
			if !cached.CacheEnabled() {
				t.Fatal("cache disabled")
			}
			a, b := readHR("127.0.0.1:1000", 0, 10), readHR("127.0.0.1:2000", 0, 10)
			da, db := cached.Decide(ctx, a), cached.Decide(ctx, b)
			if da.Err != nil || db.Err != nil {
				t.Fatalf("errors: %v, %v", da.Err, db.Err)
			}
			if s := cached.Stats(); s.CacheHits != 0 || s.CacheMisses != 2 {
				t.Errorf("two ports share a key: stats %+v (decisions %q, %q)", s, da.Reason, db.Reason)
			}
			// Hits, then fresh evaluations: all the same decisions.
			for _, c := range []struct {
				in   *policy.Input
				miss policy.Decision
			}{{a, da}, {b, db}} {
				hit, want := cached.Decide(ctx, c.in), fresh.Decide(ctx, c.in)
				if !sameDecision(hit, want) || !sameDecision(c.miss, want) {
					t.Errorf("port %d: miss %+v, hit %+v, fresh %+v", c.in.Client.Port(), c.miss, hit, want)
				}
			}
			if sameDecision(da, db) {
				t.Errorf("the policy does not see the port: both %+v", da)
			}
		})
	}
}

func TestCacheKeyOmitsUnreadFields(t *testing.T) {
	for name, c := range map[string]struct {
		rule string
		hit  bool // a request from another port hits
	}{
		"no input at all":   {`decision := {"allow": true, "reason": "constant"}`, true},
		"address only":      {`decision := {"allow": input.client.address == "127.0.0.1", "reason": "address"}`, true},
		"undefined key":     {`decision := {"allow": true, "reason": sprintf("%v", [object.get(input.modbus, "port", 0)])}`, true},
		"port, undefined":   {`decision := {"allow": true, "reason": sprintf("%v", [[x | x := input.client.port.low]])}`, false},
		"listener and port": {`decision := {"allow": input.listener != "", "reason": sprintf("%d", [input.client.port])}`, false},
	} {
		t.Run(name, func(t *testing.T) {
			files := map[string]string{"p.rego": "package conduit\n" + c.rule + "\n"}
			cached := engineFor(t, files, policy.Options{})
			fresh := engineFor(t, files, policy.Options{CacheSize: -1})
			for _, client := range []string{"127.0.0.1:1000", "127.0.0.1:2000", "127.0.0.3:3000"} {
				in := readHR(client, 0, 10)
				if got, want := cached.Decide(ctx, in), fresh.Decide(ctx, in); !sameDecision(got, want) {
					t.Errorf("%s: cached %+v, fresh %+v", client, got, want)
				}
			}
			s := cached.Stats()
			if hit := s.CacheHits > 0; hit != c.hit {
				t.Errorf("stats %+v: hit %v, want %v", s, hit, c.hit)
			}
		})
	}
}
