package policy_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/policy"
)

// waitFor polls cond until it holds or the deadline passes. The deadline is
// generous: fsnotify and a loaded CI machine are not instant.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatchPicksUpChanges(t *testing.T) {
	var evs events
	dir := policyDir(t, map[string]string{"p.rego": allowAll, "sub/data.json": `{"x": 1}`})
	e, err := policy.New(ctx, policy.Options{
		Source: policy.Source{Path: dir}, Watch: true, WatchDebounce: 10 * time.Millisecond, OnReload: evs.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	v1 := e.Revision()

	writeFiles(t, dir, map[string]string{"p.rego": denyAll})
	waitFor(t, "the watch reload", func() bool { return e.Revision() != v1 })
	if d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); d.Allow || d.Reason != "v2 denies" {
		t.Errorf("decision after the watch reload %+v", d)
	}
	if ev := evs.last(t); !ev.OK || ev.Trigger != policy.TriggerWatch || ev.Previous != v1 {
		t.Errorf("watch event %+v", ev)
	}

	// A data file in a sub-directory counts too.
	v2 := e.Revision()
	writeFiles(t, dir, map[string]string{"sub/data.json": `{"x": 2}`})
	waitFor(t, "the sub-directory reload", func() bool { return e.Revision() != v2 })

	// A broken file is reported and the last good version keeps running.
	v3 := e.Revision()
	n := len(evs.all())
	writeFiles(t, dir, map[string]string{"p.rego": "package conduit\ndecision := \n"})
	waitFor(t, "the failed watch reload", func() bool { return len(evs.all()) > n })
	if ev := evs.last(t); ev.OK || !errors.Is(ev.Err, policy.ErrLoad) || ev.Running != v3 {
		t.Errorf("failed watch event %+v", ev)
	}
	if e.Revision() != v3 {
		t.Error("a broken file replaced the running version")
	}

	// Rename over the file (how editors and deployment tools save).
	tmp := filepath.Join(dir, ".p.rego.swp")
	if err := os.WriteFile(tmp, []byte(allowAll), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "p.rego")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reload after a rename", func() bool { return e.Revision() != v3 })

	// After Close, changes are no longer picked up. Close waits for the
	// watch loop to end, so no reload can start afterwards; the pause only
	// gives a loop that failed to stop the chance to show it (an absence
	// cannot be polled for).
	e.Close()
	v4 := e.Revision()
	writeFiles(t, dir, map[string]string{"p.rego": denyAll})
	time.Sleep(100 * time.Millisecond)
	if e.Revision() != v4 {
		t.Error("reloaded after Close")
	}
}

func TestWatchBundle(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.tar.gz")
	writeBundle(t, path, "r1", allowAll)
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: path}, Watch: true, WatchDebounce: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	writeBundle(t, path, "r2", denyAll)
	waitFor(t, "the bundle reload", func() bool { return e.Revision() == "r2" })
}

// Files that keep changing in the watched directory (an audit or log file
// placed there, a tool rewriting its state every few milliseconds) reset
// the debounce timer on every event: a real policy change behind them was
// never reloaded. A reload now happens at most watchMaxDelay (20 debounce
// periods) after the first change, however busy the directory.
func TestWatchNotStarvedByBusyDirectory(t *testing.T) {
	dir := policyDir(t, map[string]string{"p.rego": allowAll})
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}, Watch: true, WatchDebounce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	v1 := e.Revision()

	stop, stopped := make(chan struct{}), make(chan struct{})
	defer func() { close(stop); <-stopped }()
	go func() {
		defer close(stopped)
		noise := filepath.Join(dir, "noise.log")
		tick := time.NewTicker(2 * time.Millisecond) // ten times within one debounce period
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				f, err := os.OpenFile(noise, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
				if err == nil {
					f.WriteString("x\n")
					f.Close()
				}
			}
		}
	}()
	writeFiles(t, dir, map[string]string{"p.rego": denyAll})
	waitFor(t, "the reload behind the noise", func() bool { return e.Revision() != v1 })
}

// policy.path given as a symlink to a directory (current -> releases/v1,
// the usual atomic deployment): filepath.WalkDir does not follow a
// symlinked root, so the watch used to watch nothing at all and no change
// was ever picked up. An edit in the target and a swap of the link are
// both reloaded now.
func TestWatchSymlinkedDirectory(t *testing.T) {
	base := t.TempDir()
	writeFiles(t, base, map[string]string{"releases/v1/p.rego": allowAll, "releases/v2/p.rego": denyAll})
	cur := filepath.Join(base, "current")
	if err := os.Symlink(filepath.Join(base, "releases", "v1"), cur); err != nil {
		t.Fatal(err)
	}
	e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: cur}, Watch: true, WatchDebounce: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	r1 := e.Revision()

	// An edit inside the target.
	writeFiles(t, base, map[string]string{"releases/v1/data.json": `{"x": 1}`})
	waitFor(t, "the reload after an edit in the link's target", func() bool { return e.Revision() != r1 })
	r2 := e.Revision()

	// The link swapped to another release, as deployments do it.
	tmp := filepath.Join(base, ".current.tmp")
	if err := os.Symlink(filepath.Join(base, "releases", "v2"), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, cur); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reload after the link was swapped", func() bool { return e.Revision() != r2 })
	if d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); d.Allow || d.Reason != "v2 denies" {
		t.Errorf("decision after the swap %+v", d)
	}

	// An edit in the new target is picked up too.
	r3 := e.Revision()
	writeFiles(t, base, map[string]string{"releases/v2/data.json": `{"x": 2}`})
	waitFor(t, "the reload after an edit in the new target", func() bool { return e.Revision() != r3 })
}
