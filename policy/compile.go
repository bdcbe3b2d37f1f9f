package policy

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// version is one compiled, prepared policy. It is immutable once built and
// swapped in whole (Engine.cur); its decision cache dies with it.
type version struct {
	revision string
	hash     string
	files    []string
	loaded   time.Time
	query    rego.PreparedEvalQuery
	// cache is nil when disabled: by configuration, or because the policy
	// calls a non-deterministic built-in (listed in nondeterministic).
	cache            *decisionCache
	nondeterministic []string
	// reads is what the policy can read of the input document (nil: all
	// of it); the cache key leaves the rest out.
	reads         *readTree
	decisionRules map[string]bool // locations (file:row:col) of the rules defining Query
	tests         int             // Rego tests that passed before this version was accepted
}

var (
	queryRef    = ast.MustParseRef(Query)
	queryBody   = ast.MustParseBody(Query)
	evalMetrics = metrics.NoOp()
)

// extraNondeterministic lists built-ins whose result depends on more than
// their arguments although OPA does not flag them Nondeterministic: they
// read the clock to check validity periods.
var extraNondeterministic = map[string]bool{
	"io.jwt.decode_verify":                                   true,
	"crypto.x509.parse_and_verify_certificates":              true,
	"crypto.x509.parse_and_verify_certificates_with_options": true,
}

// compile builds a version from a snapshot: compiles the production modules
// (tests excluded), prepares Query once, and decides whether decisions may
// be cached. It runs off the data path; nothing is prepared lazily later.
func compile(ctx context.Context, snap *snapshot, cacheSize int) (v *version, err error) {
	defer func() {
		// inmem.NewFromObject panics on data it cannot store.
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("%w: %v", ErrCompile, r)
		}
	}()
	mods := snap.productionModules()
	if len(mods) == 0 {
		return nil, fmt.Errorf("%w: no policy modules (only tests or data) in the source", ErrCompile)
	}
	c := ast.NewCompiler().WithEnablePrintStatements(false).WithCapabilities(capabilities())
	if c.Compile(mods); c.Failed() {
		return nil, fmt.Errorf("%w: %v", ErrCompile, c.Errors)
	}
	rules := c.GetRulesExact(queryRef)
	if len(rules) == 0 {
		return nil, fmt.Errorf("%w: no rule defines %s (package conduit, rule decision)", ErrCompile, Query)
	}
	decisionRules := make(map[string]bool, len(rules))
	for _, r := range rules {
		if r.Location != nil {
			decisionRules[r.Location.String()] = true
		}
	}
	store := inmem.NewFromObjectWithOpts(snap.data,
		inmem.OptRoundTripOnWrite(true), // a private copy: the snapshot's maps stay untouched
		inmem.OptReturnASTValuesOnRead(true))
	pq, err := rego.New(
		rego.ParsedQuery(queryBody),
		rego.Compiler(c),
		rego.Store(store),
		rego.GenerateJSON(astResult),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: prepare %s: %v", ErrCompile, Query, err)
	}
	v = &version{
		revision:         snap.revision,
		hash:             snap.hash,
		files:            snap.files,
		loaded:           time.Now(),
		query:            pq,
		nondeterministic: nondeterministicBuiltins(c),
		decisionRules:    decisionRules,
		reads:            inputReads(c),
	}
	if cacheSize >= 0 && len(v.nondeterministic) == 0 {
		if cacheSize == 0 {
			cacheSize = DefaultCacheSize
		}
		v.cache = newDecisionCache(cacheSize)
	}
	return v, nil
}

// networkBuiltins reach other hosts: an enforcement decision on the OT
// boundary must not depend on another server, wait for it, or let a policy
// send data out of the appliance. A policy that calls one does not compile
// (an undefined function), so it is refused and the last good version
// keeps running.
var networkBuiltins = map[string]bool{
	"http.send":          true,
	"net.lookup_ip_addr": true,
}

// capabilities are OPA's built-ins without networkBuiltins.
func capabilities() *ast.Capabilities {
	caps := ast.CapabilitiesForThisVersion()
	kept := caps.Builtins[:0]
	for _, b := range caps.Builtins {
		if !networkBuiltins[b.Name] {
			kept = append(kept, b)
		}
	}
	caps.Builtins = kept
	return caps
}

// nondeterministicBuiltins returns the built-ins the compiled policy calls
// whose result is not a function of their arguments (time.now_ns,
// http.send, rand.intn, uuid.rfc4122, opa.runtime, net.lookup_ip_addr, ...),
// and any function the compiler required that is not a known built-in. The
// compiler's type checker records every built-in the modules call in
// Required.Builtins.
//
// A built-in can also be called without appearing there: as the value of
// a with modifier (f(x) with f as rand.intn), which Required.Builtins does
// not list; the modules' with modifiers are checked too.
func nondeterministicBuiltins(c *ast.Compiler) []string {
	var out []string
	check := func(name string, known *ast.Builtin, ok bool) {
		switch {
		case !ok, known.Nondeterministic, extraNondeterministic[name],
			strings.HasPrefix(name, "rand."), strings.HasPrefix(name, "http."):
			out = append(out, name)
		}
	}
	for _, b := range c.Required.Builtins {
		known, ok := ast.BuiltinMap[b.Name]
		check(b.Name, known, ok)
	}
	for _, m := range c.Modules {
		ast.WalkWiths(m, func(w *ast.With) bool {
			switch w.Value.Value.(type) {
			case ast.Ref, ast.Var:
				name := w.Value.String()
				if known, ok := ast.BuiltinMap[name]; ok {
					check(name, known, true)
				}
			}
			return false
		})
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// eval evaluates doc with the version's prepared query under ctx.
func (v *version) eval(ctx context.Context, doc ast.Value) (outcome, error) {
	rs, err := v.query.Eval(ctx, rego.EvalParsedInput(doc), rego.EvalMetrics(evalMetrics))
	if err != nil {
		return outcome{}, classifyEvalError(ctx, err, v.decisionRules)
	}
	if err := ctx.Err(); err != nil {
		// The result came, but too late: the caller has given up on it.
		return outcome{}, classifyEvalError(ctx, err, v.decisionRules)
	}
	return parseResult(rs)
}
