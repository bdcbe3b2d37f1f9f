package main

import "testing"

func classify(st []string) string {
	for _, r := range rules {
		if r.match(st) {
			return r.name
		}
	}
	return ""
}

// The write to the device happens inside the request reader, the write to
// the client inside the response reader: the specific rule must win.
func TestBreakdownRules(t *testing.T) {
	sys := []string{"internal/runtime/syscall/linux.Syscall6", "syscall.RawSyscall6", "syscall.Syscall", "syscall.write",
		"internal/poll.ignoringEINTRIO", "internal/poll.(*FD).Write", "net.(*conn).Write"}
	for _, tc := range []struct {
		stack []string
		want  string
	}{
		{append(append([]string{}, sys...), "proxy.(*mbConn).forward", "proxy.(*mbConn).handleRequest", "proxy.(*mbConn).readRequests"), "write(2) to the device"},
		{append(append([]string{}, sys...), "proxy.(*Conn).writeClient", "proxy.(*mbConn).readResponses"), "write(2) to the client"},
		{append(append([]string{}, sys...), "os.(*File).Write", "audit.(*fileTarget).Write", "audit.(*Sink).commit", "audit.(*Sink).run"), "audit write(2) (+ fdatasync)"},
		{[]string{"runtime.findRunnable", "runtime.schedule", "runtime.park_m", "runtime.mcall"}, "goroutine scheduling, netpoll, wake-ups"},
		{[]string{"runtime.mapaccess2_faststr", "policy.(*decisionCache).get", "policy.(*Engine).Decide", "proxy.(*mbConn).handleRequest"}, "policy: decision (cache key, lookup, id)"},
		{[]string{"runtime.scanobject", "runtime.gcDrain", "runtime.gcBgMarkWorker"}, "GC: background mark, sweep, scavenge"},
	} {
		if got := classify(tc.stack); got != tc.want {
			t.Errorf("%s...: %q, want %q", tc.stack[len(tc.stack)-1], got, tc.want)
		}
	}
}

func TestThousands(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567"} {
		if got := thousands(v); got != want {
			t.Errorf("thousands(%v) = %q, want %q", v, got, want)
		}
	}
}
