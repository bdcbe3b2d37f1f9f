package policy_test

import (
	"io/fs"
	"strings"
	"testing"

	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
)

// referenceFiles returns the reference policy's files (tests included).
func referenceFiles(t *testing.T) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := fs.WalkDir(rules.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(rules.FS, p)
		files[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// A reload warms the new version's cache with its own decisions on what
// the old version had cached: the first requests after the swap hit, and
// every decision is the new version's.
func TestReloadWarmsTheNewCache(t *testing.T) {
	files := referenceFiles(t)
	dir := policyDir(t, files)
	var evs events
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}, OnReload: evs.add, RunTests: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ins := corpus()
	for _, in := range ins {
		e.Decide(ctx, in)
	}
	cached := e.Stats().CacheLen

	// The new revision lowers the setpoint maximum from 1000 to 700: the
	// write of 750 in the corpus turns from allowed to denied.
	data := strings.Replace(files["data.json"], `"min": 0, "max": 1000}],
            "coils"`, `"min": 0, "max": 700}],
            "coils"`, 1)
	if data == files["data.json"] {
		t.Fatal("the data edit matched nothing")
	}
	writeFiles(t, dir, map[string]string{"data.json": data})
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	ev := evs.last(t)
	if ev.Warmed != cached || ev.Warmed == 0 {
		t.Fatalf("warmed %d decisions, the old cache held %d", ev.Warmed, cached)
	}
	files["data.json"] = data
	fresh := engineFor(t, files, policy.Options{CacheSize: -1})
	before := e.Stats()
	changed := 0
	for i, in := range ins {
		got, want := e.Decide(ctx, in), fresh.Decide(ctx, in)
		if !sameDecision(got, want) {
			t.Errorf("input %d: after the reload %+v, the new policy says %+v", i, got, want)
		}
		if want.Reason != "" && strings.Contains(want.Reason, "750") {
			changed++
		}
	}
	after := e.Stats()
	if after.CacheMisses != before.CacheMisses || after.CacheHits-before.CacheHits != uint64(len(ins)) {
		t.Errorf("stats before %+v, after %+v: every input should hit", before, after)
	}
	if changed == 0 {
		t.Error("no decision changed with the data: the test proves nothing")
	}
}

// A new version that reads more of the input than the old one cannot be
// warmed from the old keys (they lack what it reads): it starts cold and
// still decides right.
func TestReloadDoesNotWarmAcrossDifferentReads(t *testing.T) {
	dir := policyDir(t, map[string]string{"p.rego": `package conduit
decision := {"allow": true, "reason": sprintf("address %s", [input.client.address])}
`})
	var evs events
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}, OnReload: evs.add})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	a, b := readHR("127.0.0.1:1000", 0, 10), readHR("127.0.0.1:2000", 0, 10)
	e.Decide(ctx, a)
	writeFiles(t, dir, map[string]string{"p.rego": `package conduit
decision := {"allow": true, "reason": sprintf("port %d", [input.client.port])}
`})
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := evs.last(t); ev.Warmed != 0 || e.Stats().CacheLen != 0 {
		t.Fatalf("warmed %d (cache %d) from keys without the port", ev.Warmed, e.Stats().CacheLen)
	}
	if da, db := e.Decide(ctx, a), e.Decide(ctx, b); da.Reason != "port 1000" || db.Reason != "port 2000" {
		t.Errorf("decisions %q, %q", da.Reason, db.Reason)
	}
}

// A version whose cache is disabled (a non-deterministic built-in) warms
// nothing, and nothing warms from it.
func TestReloadWarmNeedsBothCaches(t *testing.T) {
	dir := policyDir(t, map[string]string{"p.rego": allowAll})
	var evs events
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}, OnReload: evs.add})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Decide(ctx, readHR("127.0.0.1:1", 0, 1))
	writeFiles(t, dir, map[string]string{"p.rego": `package conduit
decision := {"allow": true, "reason": sprintf("%d", [time.now_ns()])}
`})
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := evs.last(t); ev.Warmed != 0 || ev.CacheEnabled {
		t.Fatalf("event %+v", ev)
	}
	writeFiles(t, dir, map[string]string{"p.rego": denyAll})
	e.Decide(ctx, readHR("127.0.0.1:1", 0, 1))
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := evs.last(t); ev.Warmed != 0 || !ev.CacheEnabled {
		t.Fatalf("event %+v", ev)
	}
}
