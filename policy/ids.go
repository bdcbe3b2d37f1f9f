package policy

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync/atomic"
)

// Decision ids are a random per-process prefix and a counter: unique within
// the process by construction, across processes with overwhelming
// probability, and cheap (one atomic add, one string allocation).
var (
	idPrefix  = newIDPrefix()
	idCounter atomic.Uint64
)

const idPrefixLen = 13 // 12 hex digits and '-'

func newIDPrefix() [idPrefixLen]byte {
	var raw [6]byte
	var p [idPrefixLen]byte
	if _, err := rand.Read(raw[:]); err != nil {
		// crypto/rand does not fail on supported platforms (Go 1.24+
		// crashes the program instead); keep a fixed prefix to be safe.
		copy(p[:], "000000000000-")
		return p
	}
	hex.Encode(p[:12], raw[:])
	p[12] = '-'
	return p
}

// nextID returns a new decision id, e.g. "3f9a1c2b7d04-42".
func nextID() string {
	var b [idPrefixLen + 20]byte
	copy(b[:], idPrefix[:])
	return string(strconv.AppendUint(b[:idPrefixLen], idCounter.Add(1), 10))
}
