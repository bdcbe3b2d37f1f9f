package policy_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/policy"
)

// corpus is a mix of inputs covering allows and denies of both protocols,
// with and without identities.
func corpus() []*policy.Input {
	var ins []*policy.Input
	for _, client := range []string{"127.0.0.1:50100", "127.0.0.2:50101", "10.9.9.9:1", "[::1]:2"} {
		ins = append(ins,
			readHR(client, 0, 10), readHR(client, 95, 10), readHR(client, 0, 100),
			writeHR(client, 15, 750), writeHR(client, 15, 5000), writeHR(client, 10, 1, 2, 3), writeHR(client, 18, 1, 2, 3),
			diagnostics(client, 0), diagnostics(client, 4),
		)
	}
	eng := writeHR("10.20.1.5:50100", 15, 500)
	eng.Identity = engineerIdentity()
	op := writeHR("10.20.1.6:50100", 15, 500)
	op.Identity = engineerIdentity()
	op.Identity.Roles = []string{"operator"}
	ins = append(ins, eng, op)
	for _, v := range []any{500.0, 5000.0, "x", []any{1.0, 2.0}} {
		ins = append(ins, &policy.Input{Protocol: inspect.ProtocolOPCUA, Listener: "opcua-line1", Client: netipMust("127.0.0.1:3"),
			Op: &inspect.Operation{Protocol: inspect.ProtocolOPCUA, Access: inspect.AccessWrite, Name: "write",
				OPCUA: &inspect.OPCUA{Service: "Write", Writes: []inspect.OPCUAWrite{{NodeID: "ns=2;s=Line1.Setpoint", Attribute: "Value", Value: v}}}}})
	}
	return ins
}

func TestCacheHitEqualsFreshEval(t *testing.T) {
	cached := reference(t, policy.Options{})
	fresh := reference(t, policy.Options{CacheSize: -1})
	if !cached.CacheEnabled() || fresh.CacheEnabled() {
		t.Fatalf("cache enabled: %v and %v", cached.CacheEnabled(), fresh.CacheEnabled())
	}
	ins := corpus()
	for i, in := range ins {
		miss := cached.Decide(ctx, in)
		hit := cached.Decide(ctx, in)
		want := fresh.Decide(ctx, in)
		if !sameDecision(miss, want) || !sameDecision(hit, want) || miss.ID == hit.ID {
			t.Errorf("input %d:\n miss %+v\n  hit %+v\nfresh %+v", i, miss, hit, want)
		}
	}
	s := cached.Stats()
	if s.CacheHits != uint64(len(ins)) || s.CacheMisses != uint64(len(ins)) || s.CacheLen != len(ins) {
		t.Errorf("stats %+v for %d inputs", s, len(ins))
	}
	if s := fresh.Stats(); s.CacheHits != 0 || s.Uncached != uint64(len(ins)) {
		t.Errorf("uncached engine stats %+v", s)
	}
}

func TestCacheReloadInvalidates(t *testing.T) {
	dir := policyDir(t, map[string]string{"p.rego": allowAll})
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	in := readHR("127.0.0.1:1", 0, 1)
	e.Decide(ctx, in)
	if d := e.Decide(ctx, in); !d.Allow || e.Stats().CacheHits != 1 {
		t.Fatalf("no hit before the reload: %+v %+v", d, e.Stats())
	}
	writeFiles(t, dir, map[string]string{"p.rego": denyAll})
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	// The new version starts with its own decision on the input the old
	// one had cached (the warm-up), never with the old one's.
	if n := e.Stats().CacheLen; n != 1 {
		t.Errorf("new version starts with %d cached decisions, want the warmed one", n)
	}
	if d := e.Decide(ctx, in); d.Allow || d.Reason != "v2 denies" || e.Stats().CacheHits != 2 {
		t.Errorf("decision after the reload %+v (stats %+v)", d, e.Stats())
	}
}

// A non-deterministic built-in called as the value of a with modifier
// (the compiler does not list it among the built-ins the policy requires)
// disables the cache too: before, g("x", 100) with g as rand.intn kept the
// cache on and every request got the first random number.
func TestNondeterministicWithValueDisablesCache(t *testing.T) {
	for name, c := range map[string]struct{ helper, call string }{
		"rand.intn":    {`g(a, b) := 0`, `x := g("x", 100) with g as rand.intn`},
		"uuid.rfc4122": {`g(a) := ""`, `x := g("x") with g as uuid.rfc4122`},
	} {
		t.Run(name, func(t *testing.T) {
			var evs events
			e := engineFor(t, map[string]string{"p.rego": fmt.Sprintf(`package conduit
%s
decision := {"allow": true, "reason": sprintf("%%v", [x])} if {
	%s
}
`, c.helper, c.call)}, policy.Options{OnReload: evs.add})
			if e.CacheEnabled() {
				t.Fatal("cache enabled")
			}
			if ev := evs.last(t); ev.CacheEnabled || !slices.Contains(ev.Nondeterministic, name) {
				t.Errorf("event %+v, want %s listed", ev, name)
			}
		})
	}
}

func TestNondeterministicDisablesCache(t *testing.T) {
	for name, call := range map[string]string{
		"time.now_ns":          `time.now_ns() > 0`,
		"rand.intn":            `rand.intn("x", 10) >= 0`,
		"uuid.rfc4122":         `uuid.rfc4122("x") != ""`,
		"opa.runtime":          `opa.runtime() != {}`,
		"io.jwt.decode_verify": `io.jwt.decode_verify("x", {"secret": "s"})[0]`,
	} {
		t.Run(name, func(t *testing.T) {
			var evs events
			e := engineFor(t, map[string]string{"p.rego": fmt.Sprintf(`package conduit
decision := {"allow": true, "reason": "deterministic"} if input.listener == "plc-line1"
decision := {"allow": true, "reason": "clock"} if {
	input.listener == "other"
	%s
}
`, call)}, policy.Options{OnReload: evs.add})
			if e.CacheEnabled() {
				t.Fatal("cache enabled")
			}
			if ev := evs.last(t); ev.CacheEnabled || !slices.Contains(ev.Nondeterministic, name) {
				t.Errorf("event %+v, want %s listed", ev, name)
			}
			in := readHR("127.0.0.1:1", 0, 1)
			e.Decide(ctx, in)
			e.Decide(ctx, in)
			if s := e.Stats(); s.CacheHits != 0 || s.CacheMisses != 0 || s.Uncached != 2 {
				t.Errorf("stats %+v", s)
			}
		})
	}

	// And it matters: a time-dependent decision changes between calls.
	e := engineFor(t, map[string]string{"p.rego": `package conduit
decision := {"allow": true, "reason": sprintf("%d", [time.now_ns()])}
`}, policy.Options{})
	in := readHR("127.0.0.1:1", 0, 1)
	if a, b := e.Decide(ctx, in), e.Decide(ctx, in); a.Reason == b.Reason {
		t.Errorf("two decisions at different times gave %q", a.Reason)
	}

	// Tests may use the clock: they are not part of the deciding version.
	e = engineFor(t, map[string]string{"p.rego": allowAll, "p_test.rego": "package conduit_test\ntest_clock if time.now_ns() > 0\n"}, policy.Options{RunTests: true})
	if !e.CacheEnabled() {
		t.Error("a clock in a test disabled the cache")
	}
}

func TestCacheBounded(t *testing.T) {
	e := reference(t, policy.Options{CacheSize: 32})
	for i := range 500 {
		e.Decide(ctx, readHR(fmt.Sprintf("127.0.0.1:%d", 1000+i), 0, 10))
	}
	if n := e.Stats().CacheLen; n == 0 || n > 32 {
		t.Errorf("%d cached decisions, want 1..32", n)
	}
}

func TestCacheSkipsLongKeys(t *testing.T) {
	e := reference(t, policy.Options{})
	// 1968 coils (the FC 15 maximum): far longer than a cache key may be.
	values := make([]uint16, 1968)
	in := modbusInput("127.0.0.1:1", inspect.AccessWrite, "write_multiple_coils", inspect.Modbus{
		Unit: 1, Function: 15, Table: inspect.TableCoils, Address: 0, Quantity: uint16(len(values)), Values: values,
	})
	e.Decide(ctx, in)
	e.Decide(ctx, in)
	if s := e.Stats(); s.Uncached != 2 || s.CacheLen != 0 {
		t.Errorf("stats %+v, want a long write evaluated every time (%v)", s, e.Decide(ctx, in))
	}
}

func TestCacheHitAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	e := reference(t, policy.Options{})
	in := readHR("127.0.0.1:50100", 0, 10)
	e.Decide(ctx, in)
	allocs := testing.AllocsPerRun(200, func() { e.Decide(ctx, in) })
	if allocs > 1 {
		t.Errorf("a cache hit allocates %.1f times, want only the decision id", allocs)
	}
}
