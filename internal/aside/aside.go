// Package aside runs a function on a goroutine of its own and waits for
// it. A goroutine keeps the largest stack it ever needed (the runtime
// halves it at a GC only if less than a quarter is in use), so deep, rare
// work — a TLS handshake, a dial, encoding a certificate into an audit
// event — done on the goroutine serving a connection for hours would pin
// its stack at 8 KiB or more; done aside, that stack goes back to the
// runtime when the work ends.
package aside

// Run calls f on a new goroutine and returns its result. A panic in f is
// raised again in the caller, where its recover (a connection's handler)
// can turn it into a closed connection instead of a crashed process.
func Run[T any](f func() T) T {
	type result struct {
		v T
		p any
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			r.p = recover()
			ch <- r
		}()
		r.v = f()
	}()
	r := <-ch
	if r.p != nil {
		panic(r.p)
	}
	return r.v
}
