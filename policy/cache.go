package policy

import (
	"cmp"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
)

// The decision cache maps the canonical encoding of an input document
// (keyWriter) — of the parts of it the policy version can read (readTree):
// the client's port, for one, is left out by a policy that never reads it —
// to the outcome the policy gave for it. It belongs to one policy version:
// a reload builds a new *version with its own cache, which it fills, before
// the swap, with its own decisions on the previous cache's most recently
// used keys (Engine.warm).
//
// It is used only when the compiled policy calls no non-deterministic
// built-in (see nondeterministicBuiltins): then the outcome is a pure
// function of the document and the version's data, and a hit returns exactly
// what an evaluation would. Keys are compared in full (Go map keys), the hash
// only picks a shard. Errors are never cached.
//
// Hits take a shard's read lock and allocate nothing. Capacity is bounded:
// a full shard evicts an arbitrary entry (Go randomises map iteration), which
// is good enough for the few distinct shapes of industrial traffic and keeps
// a scan from growing memory.

// DefaultCacheSize is the number of decisions cached per policy version
// when Options.CacheSize is 0.
const DefaultCacheSize = 8192

// maxKeyLen bounds one cache key. Inputs whose encoding is longer (long
// writes, large OPC UA values) are evaluated every time.
const maxKeyLen = 512

const cacheShards = 16

type decisionCache struct {
	seed     maphash.Seed
	perShard int
	shards   [cacheShards]cacheShard
	// clock counts insertions. A hit stamps its entry with it (only when
	// it changed: hot entries are read, not written), so recent can tell
	// which entries were used lately.
	clock atomic.Uint32
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[string]*cacheEntry
	_  [40]byte // keep shards on separate cache lines
}

type cacheEntry struct {
	o    outcome
	used atomic.Uint32 // clock at the last hit or insertion
}

func newDecisionCache(size int) *decisionCache {
	per := size / cacheShards
	if per < 1 {
		per = 1
	}
	c := &decisionCache{seed: maphash.MakeSeed(), perShard: per}
	for i := range c.shards {
		c.shards[i].m = make(map[string]*cacheEntry, per)
	}
	return c
}

func (c *decisionCache) shard(key []byte) *cacheShard {
	return &c.shards[maphash.Bytes(c.seed, key)%cacheShards]
}

func (c *decisionCache) get(key []byte) (outcome, bool) {
	s := c.shard(key)
	s.mu.RLock()
	e, ok := s.m[string(key)] // no allocation: the compiler special-cases this
	s.mu.RUnlock()
	if !ok {
		return outcome{}, false
	}
	if now := c.clock.Load(); e.used.Load() != now {
		e.used.Store(now)
	}
	return e.o, true
}

func (c *decisionCache) put(key []byte, o outcome) {
	e := &cacheEntry{o: o}
	e.used.Store(c.clock.Add(1))
	s := c.shard(key)
	s.mu.Lock()
	if _, ok := s.m[string(key)]; !ok && len(s.m) >= c.perShard {
		for k := range s.m {
			delete(s.m, k)
			break
		}
	}
	s.m[string(key)] = e
	s.mu.Unlock()
}

// recent returns up to n keys, the most recently used first.
func (c *decisionCache) recent(n int) []string {
	type kv struct {
		key  string
		used uint32
	}
	var all []kv
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		for k, e := range s.m {
			all = append(all, kv{k, e.used.Load()})
		}
		s.mu.RUnlock()
	}
	// The clock only grows (wrapping after 4 billion insertions, which
	// at worst misorders a warm-up): newest first.
	slices.SortFunc(all, func(a, b kv) int { return cmp.Compare(b.used, a.used) })
	keys := make([]string, 0, min(n, len(all)))
	for _, x := range all[:min(n, len(all))] {
		keys = append(keys, x.key)
	}
	return keys
}

// len returns the number of cached decisions.
func (c *decisionCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

var keyWriterPool = sync.Pool{New: func() any { return &keyWriter{buf: make([]byte, 0, maxKeyLen)} }}
