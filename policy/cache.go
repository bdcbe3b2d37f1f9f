package policy

import (
	"hash/maphash"
	"sync"
)

// The decision cache maps the canonical encoding of an input document
// (keyWriter) — of the parts of it the policy version can read (readTree):
// the client's port, for one, is left out by a policy that never reads it —
// to the outcome the policy gave for it. It belongs to one
// policy version: a reload starts with an empty cache, because the new
// version is a new *version with its own cache.
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
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[string]outcome
	_  [40]byte // keep shards on separate cache lines
}

func newDecisionCache(size int) *decisionCache {
	per := size / cacheShards
	if per < 1 {
		per = 1
	}
	c := &decisionCache{seed: maphash.MakeSeed(), perShard: per}
	for i := range c.shards {
		c.shards[i].m = make(map[string]outcome, per)
	}
	return c
}

func (c *decisionCache) shard(key []byte) *cacheShard {
	return &c.shards[maphash.Bytes(c.seed, key)%cacheShards]
}

func (c *decisionCache) get(key []byte) (outcome, bool) {
	s := c.shard(key)
	s.mu.RLock()
	o, ok := s.m[string(key)] // no allocation: the compiler special-cases this
	s.mu.RUnlock()
	return o, ok
}

func (c *decisionCache) put(key []byte, o outcome) {
	s := c.shard(key)
	s.mu.Lock()
	if _, ok := s.m[string(key)]; !ok && len(s.m) >= c.perShard {
		for k := range s.m {
			delete(s.m, k)
			break
		}
	}
	s.m[string(key)] = o
	s.mu.Unlock()
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
