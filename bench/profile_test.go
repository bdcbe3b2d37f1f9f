package main

import (
	"os"
	"strings"
	"testing"
)

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

// A full run replaces the results section of docs/benchmarks.md, and
// only it; a document without the markers is refused, not overwritten.
func TestSpliceResults(t *testing.T) {
	doc := "# Benchmarks\n\nintro\n\n### Results\n\n" + resultsBegin + "\n\nold tables\n\n" + resultsEnd + "\n\n### Where the targets stand\n\nanalysis\n"
	got, err := spliceResults(doc, "\nnew tables\n")
	if err != nil {
		t.Fatal(err)
	}
	want := "# Benchmarks\n\nintro\n\n### Results\n\n" + resultsBegin + "\n\nnew tables\n\n" + resultsEnd + "\n\n### Where the targets stand\n\nanalysis\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	again, err := spliceResults(got, "newer")
	if err != nil || !strings.Contains(again, "\n\nnewer\n\n") || strings.Contains(again, "new tables") {
		t.Fatalf("second splice: %v\n%s", err, again)
	}
	for _, bad := range []string{"no markers", resultsEnd + resultsBegin, resultsBegin + resultsBegin + resultsEnd} {
		if _, err := spliceResults(bad, "x"); err == nil {
			t.Errorf("spliced into %q", bad)
		}
	}
}

// The committed docs/benchmarks.md has the markers a full run needs.
func TestDocsHaveResultsMarkers(t *testing.T) {
	b, err := os.ReadFile("../docs/benchmarks.md")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := spliceResults(string(b), "x"); err != nil {
		t.Fatal(err)
	}
}
