package policy_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"

	"github.com/conduit-ot/conduit/policy"
)

const (
	allowAll = "package conduit\n\ndecision := {\"allow\": true, \"reason\": \"v1 allows\"}\n"
	denyAll  = "package conduit\n\ndecision := {\"allow\": false, \"reason\": \"v2 denies\"}\n"
	passing  = "package conduit_test\n\nimport data.conduit\n\ntest_allows if conduit.decision.allow\n"
	failing  = "package conduit_test\n\nimport data.conduit\n\ntest_denies if {\n\tnot conduit.decision.allow\n}\n"
)

// events records OnReload reports.
type events struct {
	mu  sync.Mutex
	evs []policy.ReloadEvent
}

func (r *events) add(ev policy.ReloadEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, ev)
}

func (r *events) all() []policy.ReloadEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]policy.ReloadEvent(nil), r.evs...)
}

func (r *events) last(t *testing.T) policy.ReloadEvent {
	t.Helper()
	all := r.all()
	if len(all) == 0 {
		t.Fatal("no reload event")
	}
	return all[len(all)-1]
}

func TestReloadSwaps(t *testing.T) {
	var evs events
	dir := policyDir(t, map[string]string{"p.rego": allowAll})
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}, OnReload: evs.add})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	start := evs.last(t)
	if !start.OK || start.Trigger != policy.TriggerStart || start.Revision != e.Revision() || start.Previous != "" ||
		start.Running != e.Revision() || len(start.Files) != 1 || !start.CacheEnabled {
		t.Errorf("start event %+v", start)
	}
	v1 := e.Revision()
	if d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); !d.Allow || d.Revision != v1 {
		t.Fatalf("v1 decision %+v", d)
	}

	writeFiles(t, dir, map[string]string{"p.rego": denyAll})
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	v2 := e.Revision()
	if v2 == v1 {
		t.Fatal("revision did not change")
	}
	if d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); d.Allow || d.Reason != "v2 denies" || d.Revision != v2 {
		t.Errorf("v2 decision %+v", d)
	}
	if ev := evs.last(t); !ev.OK || ev.Trigger != policy.TriggerReload || ev.Previous != v1 || ev.Revision != v2 || ev.Running != v2 {
		t.Errorf("reload event %+v", ev)
	}

	// Same content again: nothing to do, reported as unchanged.
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := evs.last(t); !ev.OK || !ev.Unchanged || ev.Running != v2 {
		t.Errorf("unchanged event %+v", ev)
	}
}

func TestReloadKeepsLastGoodOnSyntaxError(t *testing.T) {
	var evs events
	dir := policyDir(t, map[string]string{"p.rego": allowAll})
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}, OnReload: evs.add})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	good := e.Revision()

	writeFiles(t, dir, map[string]string{"p.rego": "package conduit\n\ndecision := {\"allow\": true,\n"})
	err = e.Reload(ctx)
	if !errors.Is(err, policy.ErrLoad) || !strings.Contains(err.Error(), filepath.Join(dir, "p.rego")+":") {
		t.Fatalf("err = %v, want ErrLoad naming p.rego:line", err)
	}
	if e.Revision() != good {
		t.Error("revision changed after a failed reload")
	}
	if d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); !d.Allow || d.Revision != good {
		t.Errorf("decision after the failed reload %+v", d)
	}
	if ev := evs.last(t); ev.OK || !errors.Is(ev.Err, policy.ErrLoad) || ev.Running != good || ev.Previous != good {
		t.Errorf("failed reload event %+v", ev)
	}

	// A compile error (type error) names file and line too.
	writeFiles(t, dir, map[string]string{"p.rego": "package conduit\n\ndecision := {\"allow\": 1 + \"one\", \"reason\": \"x\"}\n"})
	err = e.Reload(ctx)
	if !errors.Is(err, policy.ErrCompile) || !strings.Contains(err.Error(), "p.rego:3") {
		t.Fatalf("err = %v, want ErrCompile naming p.rego:3", err)
	}
	if e.Revision() != good {
		t.Error("revision changed after a failed compile")
	}
}

func TestReloadKeepsLastGoodOnFailingTest(t *testing.T) {
	dir := policyDir(t, map[string]string{"p.rego": allowAll, "p_test.rego": passing})
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}, RunTests: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	good := e.Revision()

	// v2 denies: the policy's own test test_allows fails, so v2 is refused.
	writeFiles(t, dir, map[string]string{"p.rego": denyAll})
	err = e.Reload(ctx)
	if !errors.Is(err, policy.ErrTests) {
		t.Fatalf("err = %v, want ErrTests", err)
	}
	for _, want := range []string{filepath.Join(dir, "p_test.rego") + ":5", "FAIL data.conduit_test.test_allows", "1 failed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if e.Revision() != good {
		t.Error("revision changed after failing tests")
	}
	if d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); !d.Allow {
		t.Errorf("decision after the refused reload %+v", d)
	}

	// An erroring test refuses a version too.
	writeFiles(t, dir, map[string]string{"p.rego": allowAll, "p_test.rego": passing + "\ntest_errors if {\n\tx := numbers.range(1, 100000000)\n\tcount(x) > 0\n}\n"})
	e2, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}, RunTests: true, TestTimeout: 10 * time.Millisecond})
	if !errors.Is(err, policy.ErrTests) || !strings.Contains(err.Error(), "ERROR data.conduit_test.test_errors") {
		t.Errorf("New with an erroring test: %v", err)
	}
	if e2 != nil {
		e2.Close()
	}
}

func TestNewFails(t *testing.T) {
	cases := map[string]struct {
		opts policy.Options
		want error
		msg  string
	}{
		"no path":      {policy.Options{}, policy.ErrLoad, "no policy path"},
		"missing path": {policy.Options{Source: policy.Source{Path: "/nonexistent/policy"}}, policy.ErrLoad, "/nonexistent/policy"},
		"empty dir":    {policy.Options{Source: policy.Source{Path: t.TempDir()}}, policy.ErrLoad, "no .rego"},
		"no decision": {policy.Options{Source: policy.Source{Path: policyDir(t, map[string]string{"p.rego": "package conduit\nallow := true\n"})}},
			policy.ErrCompile, "no rule defines data.conduit.decision"},
		"only tests": {policy.Options{Source: policy.Source{Path: policyDir(t, map[string]string{"p_test.rego": passing})}},
			policy.ErrCompile, "no policy modules"},
		"bad data": {policy.Options{Source: policy.Source{Path: policyDir(t, map[string]string{"p.rego": allowAll, "data.json": "{"})}},
			policy.ErrLoad, "data.json"},
		"failing test at start": {policy.Options{Source: policy.Source{Path: policyDir(t, map[string]string{"p.rego": denyAll, "p_test.rego": passing})}, RunTests: true},
			policy.ErrTests, "test_allows"},
		"not a directory": {policy.Options{Source: policy.Source{Path: filepath.Join(policyDir(t, map[string]string{"p.rego": allowAll}), "p.rego")}},
			policy.ErrLoad, "neither a directory nor a bundle"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			e, err := policy.New(ctx, c.opts)
			if e != nil || !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("New = %v, %v; want %v containing %q", e, err, c.want, c.msg)
			}
		})
	}
	if _, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: "x"}, DecisionTimeout: -1}); err == nil {
		t.Error("negative timeout accepted")
	}
}

func TestDataFilesAndSubdirectories(t *testing.T) {
	e := engineFor(t, map[string]string{
		"p.rego": `package conduit
decision := {"allow": input.listener in data.listeners, "reason": data.site.name}
`,
		"data.json":            `{"listeners": ["plc-line1"]}`,
		"site/data.yaml":       "name: plant-7\n",
		".git/ignored.json":    `{`,
		"README.md":            "not policy",
		"tests/more_test.rego": "package conduit_test\n\nimport data.conduit\n\ntest_line1 if conduit.decision.allow with input as {\"listener\": \"plc-line1\"}\n",
	}, policy.Options{RunTests: true})
	if d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); !d.Allow || d.Reason != "plant-7" {
		t.Errorf("decision %+v", d)
	}
}

func TestRevisionIgnoresLocation(t *testing.T) {
	files := map[string]string{"p.rego": allowAll, "data.json": `{"a": 1}`}
	a, b := engineFor(t, files, policy.Options{}), engineFor(t, files, policy.Options{})
	if a.Revision() != b.Revision() {
		t.Errorf("same content, revisions %s and %s", a.Revision(), b.Revision())
	}
	c := engineFor(t, map[string]string{"p.rego": allowAll, "data.json": `{"a": 2}`}, policy.Options{})
	if c.Revision() == a.Revision() {
		t.Error("different data, same revision")
	}
}

func writeBundle(t *testing.T, path, revision, rego string) {
	t.Helper()
	var buf bytes.Buffer
	b := bundle.Bundle{
		Manifest: bundle.Manifest{Revision: revision},
		Data:     map[string]any{"greeting": "hello"},
		Modules:  []bundle.ModuleFile{{URL: "/conduit/p.rego", Path: "/conduit/p.rego", Raw: []byte(rego)}},
	}
	if err := bundle.NewWriter(&buf).Write(b); err != nil {
		t.Fatal(err)
	}
	// Write next to, then rename over: what deployment tools do.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestBundle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.tar.gz")
	writeBundle(t, path, "v42", "package conduit\n\ndecision := {\"allow\": true, \"reason\": data.greeting}\n")
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: path}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Revision() != "v42" {
		t.Errorf("revision %q, want the manifest revision", e.Revision())
	}
	if d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); !d.Allow || d.Reason != "hello" || d.Revision != "v42" {
		t.Errorf("decision %+v", d)
	}

	// Without a manifest revision, the content hash names the version; a
	// syntax error in a new bundle keeps the old one.
	writeBundle(t, path, "", "package conduit\n\ndecision := {\"allow\": false, \"reason\": data.greeting}\n")
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.Revision(), "sha256:") {
		t.Errorf("revision %q, want a content hash", e.Revision())
	}
	rev := e.Revision()
	writeBundle(t, path, "v43", "package conduit\n\ndecision := \n")
	if err := e.Reload(ctx); !errors.Is(err, policy.ErrLoad) || !strings.Contains(err.Error(), "p.rego") {
		t.Errorf("reload of a broken bundle: %v", err)
	}
	if e.Revision() != rev {
		t.Error("broken bundle replaced the running version")
	}
}

// tarEntry is one file of a hand-made bundle: body, then spaces
// (compressible) up to size bytes if size is larger, then tail.
type tarEntry struct {
	name, body, tail string
	size             int64
}

// writeRawBundle writes a .tar.gz of entries as given (bundle.Writer would
// refuse the malformed ones) and returns its path.
func writeRawBundle(t *testing.T, entries []tarEntry) string {
	t.Helper()
	var buf bytes.Buffer
	gz, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(gz)
	pad := bytes.Repeat([]byte(" "), 1<<20)
	for _, e := range entries {
		size := max(e.size, int64(len(e.body)+len(e.tail)))
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: size}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
		for left := size - int64(len(e.body)+len(e.tail)); left > 0; {
			n := min(left, int64(len(pad)))
			if _, err := tw.Write(pad[:n]); err != nil {
				t.Fatal(err)
			}
			left -= n
		}
		tw.Write([]byte(e.tail))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "policy.tar.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// A bundle of a few hundred KiB that expands to more than 64 MiB (a gzip
// bomb) is refused before it is expanded into memory, and the running
// version keeps deciding.
func TestBundleGzipBombRefused(t *testing.T) {
	good := writeRawBundle(t, []tarEntry{{name: "p.rego", body: allowAll}})
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: good}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	rev := e.Revision()

	bomb := writeRawBundle(t, []tarEntry{
		{name: "p.rego", body: denyAll},
		{name: "data.json", body: `{"pad": "`, size: 64<<20 + 1, tail: `"}`}, // valid, only too big
	})
	fi, _ := os.Stat(bomb)
	if fi.Size() > 1<<20 {
		t.Fatalf("the bomb is %d bytes on disk; want it small", fi.Size())
	}
	if err := os.Rename(bomb, good); err != nil {
		t.Fatal(err)
	}
	err = e.Reload(ctx)
	if !errors.Is(err, policy.ErrLoad) || !strings.Contains(err.Error(), "uncompressed") {
		t.Fatalf("reload of a gzip bomb: %v", err)
	}
	if e.Revision() != rev {
		t.Error("the bomb replaced the running version")
	}
	if d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); !d.Allow || d.Revision != rev {
		t.Errorf("decision after the refused bundle %+v", d)
	}
}

// A bundle holding the same module path twice is refused: which of the two
// decides would depend on the reader (tar extraction keeps the last one,
// a reviewer may read the first).
func TestBundleDuplicateModuleRefused(t *testing.T) {
	path := writeRawBundle(t, []tarEntry{{name: "p.rego", body: allowAll}, {name: "p.rego", body: denyAll}})
	_, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: path}})
	if !errors.Is(err, policy.ErrLoad) || !strings.Contains(err.Error(), "more than once") {
		t.Fatalf("bundle with p.rego twice: %v", err)
	}
}

// A policy directory entry that is a device (a symlink to /dev/zero would
// be read until memory runs out) or a named pipe (the load would block
// forever, and every later reload behind it) is refused, naming it.
func TestPolicyDirRefusesSpecialFiles(t *testing.T) {
	for name, mk := range map[string]func(string) error{
		"device":     func(path string) error { return os.Symlink(os.DevNull, path) },
		"named pipe": func(path string) error { return syscall.Mkfifo(path, 0o644) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := policyDir(t, map[string]string{"p.rego": allowAll})
			if err := mk(filepath.Join(dir, "data.json")); err != nil {
				t.Skip(err)
			}
			done := make(chan error, 1)
			go func() {
				e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}})
				if e != nil {
					e.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, policy.ErrLoad) || !strings.Contains(err.Error(), "data.json: a "+name) {
					t.Errorf("load: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the load did not end")
			}
		})
	}
}

// The same for a bundle: a policy path naming a FIFO used to block the
// load (os.ReadFile waits for a writer), a device to be read without end.
func TestPolicyBundleRefusesSpecialFiles(t *testing.T) {
	for name, mk := range map[string]func(string) error{
		"device":     func(path string) error { return os.Symlink("/dev/zero", path) },
		"named pipe": func(path string) error { return syscall.Mkfifo(path, 0o644) },
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "policy.tar.gz")
			if err := mk(path); err != nil {
				t.Skip(err)
			}
			done := make(chan error, 1)
			go func() {
				e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: path}})
				if e != nil {
					e.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, policy.ErrLoad) || !strings.Contains(err.Error(), "policy.tar.gz: a "+name) {
					t.Errorf("load: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the load did not end")
			}
		})
	}
}

// The files of a policy directory are bounded together like a bundle; a
// reload past the bound keeps the running version.
func TestPolicyDirSizeBounded(t *testing.T) {
	dir := policyDir(t, map[string]string{"p.rego": allowAll})
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	rev := e.Revision()

	data := append(append([]byte(`{"pad": "`), bytes.Repeat([]byte(" "), 64<<20)...), `"}`...)
	if err := os.WriteFile(filepath.Join(dir, "data.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.Reload(ctx); !errors.Is(err, policy.ErrLoad) || !strings.Contains(err.Error(), "exceed") {
		t.Fatalf("reload of a 64 MiB data file: %v", err)
	}
	if e.Revision() != rev {
		t.Error("the oversized policy replaced the running version")
	}
	if d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); !d.Allow || d.Revision != rev {
		t.Errorf("decision %+v", d)
	}
}

// A reload storm (SIGHUPs and file events) while decisions flow: every
// decision is made by one whole version (its reason matches its revision,
// whatever the cache), no decision fails, and a broken version in the
// middle never decides.
func TestReloadStormWhileDeciding(t *testing.T) {
	dir := policyDir(t, map[string]string{"p.rego": allowAll})
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}, Watch: true, WatchDebounce: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	var mu sync.Mutex
	reasons := map[string]string{} // revision -> reason
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				d := e.Decide(ctx, readHR(fmt.Sprintf("127.0.0.1:%d", 1000+g), uint16(i%8), 1))
				if d.Err != nil || d.Allow != (d.Reason == "v1 allows") {
					errs <- fmt.Sprintf("decision %+v", d)
					return
				}
				mu.Lock()
				if r, ok := reasons[d.Revision]; ok && r != d.Reason {
					mu.Unlock()
					errs <- fmt.Sprintf("revision %s decided %q and %q", d.Revision, r, d.Reason)
					return
				}
				reasons[d.Revision] = d.Reason
				mu.Unlock()
			}
		}()
	}
	versions := []string{denyAll, "package conduit\n\ndecision := \n", allowAll}
	for i := range 60 {
		writeFiles(t, dir, map[string]string{"p.rego": versions[i%len(versions)]})
		_ = e.Reload(ctx) // the broken one fails; the others swap
	}
	close(stop)
	wg.Wait()
	select {
	case msg := <-errs:
		t.Fatal(msg)
	default:
	}
	if len(reasons) == 0 || len(reasons) > 2 {
		t.Errorf("revisions seen: %v, want the two good ones at most", reasons)
	}
}

// A bundle's manifest revision goes into every decision and audit event:
// a megabyte of it (or control characters) is refused, not copied into
// each event of the trail.
func TestBundleRevisionBounded(t *testing.T) {
	for name, rev := range map[string]string{
		"long":    strings.Repeat("r", 1<<20),
		"control": "v1\x1b[2J\r\nfake",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "policy.tar.gz")
			writeBundle(t, path, rev, allowAll)
			_, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: path}})
			if !errors.Is(err, policy.ErrLoad) || !strings.Contains(err.Error(), "revision") {
				t.Fatalf("bundle with a %s revision: %v", name, err)
			}
		})
	}
	path := filepath.Join(t.TempDir(), "policy.tar.gz")
	writeBundle(t, path, "v1.2.3+git.0123abcd (2026-11-22)", allowAll)
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: path}})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
}

// A reload whose context ends before its Rego tests have run (a watch
// reload past its 2-minute bound, SIGTERM during a SIGHUP reload) used to
// accept the new version: OPA's runner stops without a result for the
// tests it did not run, so no failure was counted. Here the new version
// fails its test, which never ran; it must not decide.
func TestReloadRefusedWhenTestsDidNotFinish(t *testing.T) {
	var evs events
	dir := policyDir(t, map[string]string{"p.rego": allowAll, "p_test.rego": passing})
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}, RunTests: true, OnReload: evs.add})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	rev := e.Revision()

	writeFiles(t, dir, map[string]string{"p.rego": denyAll})
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := e.Reload(cctx); !errors.Is(err, policy.ErrTests) {
		t.Fatalf("reload with its tests interrupted: %v", err)
	}
	if e.Revision() != rev {
		t.Fatal("a version whose tests did not run replaced the running one")
	}
	if ev := evs.last(t); ev.OK || !errors.Is(ev.Err, policy.ErrTests) {
		t.Errorf("reload event %+v", ev)
	}
	if _, err := policy.RunTests(cctx, policy.Source{Path: dir}, policy.TestOptions{}); !errors.Is(err, policy.ErrTests) {
		t.Errorf("RunTests with its context ended: %v", err)
	}
}
