package policy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/inspect"
)

// Options configure an Engine. Build them with FromConfig, or by hand in
// tests and tools.
type Options struct {
	Source

	// DryRun (monitor mode) turns a policy deny of a read into an allow
	// with Decision.DryRun set and the policy's reason kept. Denied writes,
	// diagnostics and other operations stay denied (no write reaches a
	// device that the policy did not allow), and evaluation errors still
	// deny: dry-run relaxes the policy for reads, never fail-closed.
	DryRun bool
	// DecisionTimeout bounds one evaluation (default
	// config.DefaultDecisionTimeout).
	DecisionTimeout time.Duration

	// Watch reloads when the policy files change (fsnotify, debounced).
	// Ignored for an FS source, which cannot change.
	Watch bool
	// WatchDebounce is how long the files must stay quiet before a watch
	// reload (default 250ms): editors and `git checkout` write in bursts.
	WatchDebounce time.Duration

	// RunTests runs the policy's Rego tests before accepting a version; a
	// failing or erroring test refuses it.
	RunTests bool
	// TestTimeout bounds one Rego test (default DefaultTestTimeout).
	TestTimeout time.Duration

	// CacheSize is the number of decisions cached per policy version: 0
	// means DefaultCacheSize, a negative value disables the cache.
	CacheSize int

	// OnReload, if set, is called after every load attempt (the initial
	// one too) with its outcome, and when the file watch fails, so that
	// the caller can audit it. It runs on the reloading goroutine (the
	// caller of Reload, or the watch goroutine), must be safe for
	// concurrent use and must not call Reload. Watch-triggered attempts
	// that find the content unchanged are not reported.
	OnReload func(ReloadEvent)
}

// FromConfig returns the options of the validated policy configuration.
func FromConfig(c config.Policy) Options {
	return Options{
		Source:          Source{Path: c.Path},
		DryRun:          c.DryRun,
		DecisionTimeout: c.DecisionTimeout.D(),
		Watch:           c.WatchEnabled(),
		RunTests:        c.TestsEnabled(),
	}
}

// Reload triggers (ReloadEvent.Trigger).
const (
	TriggerStart  = "start"  // the load in New
	TriggerReload = "reload" // Engine.Reload (SIGHUP)
	TriggerWatch  = "watch"  // a file change
)

// ReloadEvent reports one load attempt.
type ReloadEvent struct {
	Time    time.Time
	Trigger string // TriggerStart, TriggerReload or TriggerWatch
	Source  string // path of the policy

	// OK is true when Revision now decides, or when nothing changed.
	OK        bool
	Unchanged bool  // the content equals the running version's: nothing was done
	Err       error // why the attempt failed (wraps ErrLoad, ErrCompile or ErrTests)

	Revision string   // revision of the attempted version ("" if it could not be read)
	Hash     string   // its content hash
	Running  string   // revision deciding after the event
	Previous string   // revision that decided before ("" at start)
	Files    []string // files of the attempted version

	Tests        int  // Rego tests passed (0 with RunTests off)
	CacheEnabled bool // decisions of this version are cached
	// Warmed is how many of the previous version's most recently used
	// cached inputs this version decided before it took over (see
	// Engine.Reload), so that their first requests after the swap hit.
	Warmed           int
	Nondeterministic []string // built-ins that disabled the cache
	Duration         time.Duration
}

// Stats are counters of an Engine since New.
type Stats struct {
	CacheHits   uint64 // decisions answered from the cache
	CacheMisses uint64 // decisions evaluated with the cache enabled
	Uncached    uint64 // decisions evaluated with the cache disabled or not applicable
	Errors      uint64 // decisions that failed closed (Err set)
	CacheLen    int    // decisions cached for the running version
}

// Engine is the embedded OPA policy decision point. It implements Decider.
// All methods are safe for concurrent use.
type Engine struct {
	opts    Options
	timeout time.Duration

	cur atomic.Pointer[version]

	reloadMu sync.Mutex // serialises loads; never held by Decide

	hits, misses, uncached, errs atomic.Uint64

	ctx       context.Context // lives until Close; bounds watch reloads
	cancel    context.CancelFunc
	watchDone chan struct{}
	closeOnce sync.Once
}

var _ Decider = (*Engine)(nil)

// New loads, compiles and (with RunTests) tests the policy, and starts
// watching it when asked. It fails when the first version cannot be
// loaded: there is no policy to fall back on.
func New(ctx context.Context, opts Options) (*Engine, error) {
	if opts.FS == nil && opts.Path == "" {
		return nil, fmt.Errorf("%w: no policy path", ErrLoad)
	}
	if opts.DecisionTimeout < 0 {
		return nil, errors.New("policy: negative decision timeout")
	}
	e := &Engine{
		opts:    opts,
		timeout: cmp.Or(opts.DecisionTimeout, config.DefaultDecisionTimeout),
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	if err := e.reload(ctx, TriggerStart); err != nil {
		e.cancel()
		return nil, err
	}
	if opts.Watch && opts.FS == nil {
		if err := e.startWatch(); err != nil {
			e.cancel()
			return nil, err
		}
	}
	return e, nil
}

// Close stops watching. Decide keeps working with the last version.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		e.cancel()
		if e.watchDone != nil {
			<-e.watchDone
		}
	})
	return nil
}

// Revision returns the revision of the running policy version.
func (e *Engine) Revision() string { return e.cur.Load().revision }

// CacheEnabled reports whether the running version caches decisions.
func (e *Engine) CacheEnabled() bool { return e.cur.Load().cache != nil }

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	s := Stats{
		CacheHits:   e.hits.Load(),
		CacheMisses: e.misses.Load(),
		Uncached:    e.uncached.Load(),
		Errors:      e.errs.Load(),
	}
	if c := e.cur.Load().cache; c != nil {
		s.CacheLen = c.len()
	}
	return s
}

// Reload loads the policy again and swaps it in if it compiles and (with
// RunTests) its tests pass. On failure the running version keeps deciding
// and the error says why (file:line, failing tests). The command calls it
// on SIGHUP.
//
// All of it runs on the caller's goroutine while the running version keeps
// deciding, and ends, before the swap, with a warm-up: the new version
// decides the inputs the old version's cache holds, the most recently used
// first (at most warmKeys, within warmBudget), so that the first requests
// after the swap hit its cache instead of all missing at once.
func (e *Engine) Reload(ctx context.Context) error { return e.reload(ctx, TriggerReload) }

// Bounds of the warm-up of a new version's cache.
const (
	warmKeys   = 2000
	warmBudget = 250 * time.Millisecond
)

// warm decides the most recently used inputs of old's cache with v and
// caches the outcomes in v's cache. The cache keys are decoded back into
// documents (decodeKey), which needs both versions to read the same parts
// of the input: a key holds only what its version reads.
func (e *Engine) warm(ctx context.Context, old, v *version) int {
	if old == nil || old.cache == nil || v.cache == nil || !old.reads.equal(v.reads) {
		return 0
	}
	deadline := time.Now().Add(warmBudget)
	n := 0
	for _, key := range old.cache.recent(warmKeys) {
		if ctx.Err() != nil || time.Now().After(deadline) {
			break
		}
		doc, err := decodeKey([]byte(key))
		if err != nil {
			continue
		}
		o, err := e.eval(ctx, v, doc)
		if err != nil {
			continue // errors are never cached
		}
		v.cache.put([]byte(key), o)
		n++
	}
	return n
}

func (e *Engine) reload(ctx context.Context, trigger string) (err error) {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	start := time.Now()
	prev := e.cur.Load()
	ev := ReloadEvent{Time: start, Trigger: trigger, Source: e.opts.Source.String()}
	if prev != nil {
		ev.Previous, ev.Running = prev.revision, prev.revision
	}
	report := func(err error) error {
		ev.Err, ev.OK, ev.Duration = err, err == nil, time.Since(start)
		// A watch event that changed nothing (an editor's swap file, a
		// touch) is not worth an audit record.
		if e.opts.OnReload != nil && !(ev.Unchanged && trigger == TriggerWatch) {
			e.opts.OnReload(ev)
		}
		return err
	}
	defer func() {
		// A panic in OPA while the new version is loaded, compiled,
		// tested or warmed refuses that version: the running one keeps
		// deciding, and the process goes on.
		if r := recover(); r != nil {
			err = report(fmt.Errorf("%w: reload: %v", ErrPanic, r))
		}
	}()

	snap, err := e.opts.Source.load()
	if err != nil {
		return report(err)
	}
	ev.Revision, ev.Hash, ev.Files = snap.revision, snap.hash, snap.files
	if prev != nil && snap.hash == prev.hash {
		ev.Unchanged = true
		ev.Tests, ev.CacheEnabled, ev.Nondeterministic = prev.tests, prev.cache != nil, prev.nondeterministic
		return report(nil)
	}
	v, err := compile(ctx, snap, e.opts.CacheSize)
	if err != nil {
		return report(err)
	}
	ev.CacheEnabled, ev.Nondeterministic = v.cache != nil, v.nondeterministic
	if e.opts.RunTests {
		// One test at a time: OPA would run one per CPU, and on a
		// saturated appliance that takes every CPU from the data path
		// for the length of the tests.
		rep, err := runTests(ctx, snap, TestOptions{Timeout: e.opts.TestTimeout, Parallel: 1})
		if err != nil {
			return report(err)
		}
		pass, fail, errored, _ := rep.Counts()
		if fail > 0 || errored > 0 {
			return report(fmt.Errorf("%w: revision %s: %d failed, %d errored, %d passed:%s",
				ErrTests, snap.revision, fail, errored, pass, rep.failures()))
		}
		v.tests, ev.Tests = pass, pass
	}
	ev.Warmed = e.warm(ctx, prev, v)
	e.cur.Store(v)
	ev.Running = v.revision
	return report(nil)
}

// Decide evaluates in against the running policy version. It never panics
// and never allows on error: every failure is a deny with Err set and a
// reason "policy error: ...". Each decision gets a unique ID and the
// revision that made it.
func (e *Engine) Decide(ctx context.Context, in *Input) (d Decision) {
	d.ID = nextID()
	defer func() {
		if r := recover(); r != nil {
			d = e.failed(d, fmt.Errorf("%w: %v", ErrPanic, r))
		}
	}()
	if e == nil {
		return e.failed(d, fmt.Errorf("%w: nil engine", ErrNoPolicy))
	}
	v := e.cur.Load()
	d.Revision = v.revision

	var key *keyWriter
	if v.cache != nil {
		key = keyWriterPool.Get().(*keyWriter)
		defer keyWriterPool.Put(key)
		key.reset(maxKeyLen, v.reads)
		writeInput(key, in)
		if key.ok() {
			if o, hit := v.cache.get(key.buf); hit {
				e.hits.Add(1)
				return e.apply(d, o, readOnly(in))
			}
		}
	}

	doc, err := Document(in)
	if err != nil {
		return e.failed(d, err)
	}
	o, err := e.eval(ctx, v, doc)
	if err != nil {
		return e.failed(d, err)
	}
	if key != nil && key.ok() {
		e.misses.Add(1)
		v.cache.put(key.buf, o)
	} else {
		e.uncached.Add(1)
	}
	return e.apply(d, o, readOnly(in))
}

// DecideJSON evaluates a raw input document (JSON), e.g. one written by
// hand for `conduit policy eval`. The decision cache is not used.
func (e *Engine) DecideJSON(ctx context.Context, doc []byte) (d Decision) {
	d.ID = nextID()
	defer func() {
		if r := recover(); r != nil {
			d = e.failed(d, fmt.Errorf("%w: %v", ErrPanic, r))
		}
	}()
	if e == nil {
		return e.failed(d, fmt.Errorf("%w: nil engine", ErrNoPolicy))
	}
	v := e.cur.Load()
	d.Revision = v.revision
	var x any
	if err := util.UnmarshalJSON(doc, &x); err != nil {
		return e.failed(d, fmt.Errorf("%w: %v", ErrInput, err))
	}
	val, err := ast.InterfaceToValue(x)
	if err != nil {
		return e.failed(d, fmt.Errorf("%w: %v", ErrInput, err))
	}
	o, err := e.eval(ctx, v, val)
	if err != nil {
		return e.failed(d, err)
	}
	e.uncached.Add(1)
	return e.apply(d, o, readOnlyDoc(x))
}

func (e *Engine) eval(ctx context.Context, v *version, doc ast.Value) (outcome, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	return v.eval(ctx, doc)
}

// apply turns the policy's outcome into the decision, applying dry-run.
// Dry-run relaxes a deny of a read only: a write, a diagnostic or any
// other operation the policy denies stays denied, so that monitor mode
// never lets a write reach a device that the policy did not allow.
func (e *Engine) apply(d Decision, o outcome, read bool) Decision {
	d.Allow, d.Reason, d.Rule, d.Action, d.Exception = o.allow, o.reason, o.rule, o.action, o.exception
	if !o.allow && e.opts.DryRun && read {
		d.Allow, d.DryRun = true, true
	}
	return d
}

// readOnly reports whether in is a read (input.operation.access "read").
func readOnly(in *Input) bool {
	return in != nil && in.Op != nil && in.Op.Access == inspect.AccessRead
}

// readOnlyDoc is readOnly for a raw input document.
func readOnlyDoc(x any) bool {
	in, _ := x.(map[string]any)
	op, _ := in["operation"].(map[string]any)
	access, _ := op["access"].(string)
	return access == inspect.AccessRead.String()
}

// failed is the fail-closed decision for err.
func (e *Engine) failed(d Decision, err error) Decision {
	if e != nil {
		e.errs.Add(1)
	}
	return Decision{
		ID:       d.ID,
		Revision: d.Revision,
		Allow:    false,
		Reason:   truncate("policy error: "+err.Error(), MaxReasonLen),
		Err:      err,
	}
}
