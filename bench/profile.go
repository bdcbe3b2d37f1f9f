package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Counters are perf stat's software counters for one target's process
// during scenario 1.
type Counters struct {
	Target            string  `json:"target"`
	RPS               float64 `json:"rps"`
	ProxyCPU          float64 `json:"proxy_cpu_us_per_req,omitempty"`
	SyscallsPerReq    float64 `json:"syscalls_per_req"`
	CtxSwitchesPerReq float64 `json:"context_switches_per_req"`
	Note              string  `json:"note,omitempty"`
}

// perfStat counts syscalls and context switches of pid for d; "" when perf
// cannot (no perf, no permission).
func perfStat(pid int, d time.Duration) string {
	out, err := exec.Command("perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter,context-switches",
		"-p", strconv.Itoa(pid), "--", "sleep", fmt.Sprintf("%.1f", d.Seconds()-0.5)).CombinedOutput()
	if err != nil {
		return "error: " + err.Error() + ": " + string(out)
	}
	return string(out)
}

// parsePerf reads perf stat -x, output, per request.
func parsePerf(out string, requests float64) Counters {
	var c Counters
	if strings.HasPrefix(out, "error") || requests == 0 {
		c.Note = "perf stat unavailable: " + strings.TrimSpace(out)
		return c
	}
	// The counting window is 0.5 s shorter than the measured period.
	var sys, cs float64
	for _, l := range strings.Split(out, "\n") {
		f := strings.Split(l, ",")
		if len(f) < 3 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		switch f[2] {
		case "raw_syscalls:sys_enter":
			sys = v
		case "context-switches":
			cs = v
		}
	}
	c.SyscallsPerReq = sys / requests
	c.CtxSwitchesPerReq = cs / requests
	c.Note = "counted over the measured period less its last 0.5 s, per request of that window"
	return c
}

// Breakdown is where Conduit's CPU goes, from a pprof CPU profile taken
// under scenario 1.
type Breakdown struct {
	Target   string     `json:"target"`
	Profile  string     `json:"profile"`
	RPS      float64    `json:"rps"`
	ProxyCPU float64    `json:"proxy_cpu_us_per_req"` // from /proc, same kind of run
	Seconds  float64    `json:"profile_cpu_s"`        // CPU seconds sampled
	Requests float64    `json:"requests"`             // during the profile (estimated from req/s)
	Rows     []Category `json:"rows"`
}

// Category is one row of the breakdown.
type Category struct {
	Name   string  `json:"name"`
	Share  float64 `json:"share"`         // of the sampled CPU
	PerReq float64 `json:"us_per_req"`    // µs of CPU per request
	Top    string  `json:"top,omitempty"` // the hottest leaf function in it
}

// A rule assigns a sample to a category when its stack matches. Rules are
// tried in order; the first match wins.
type rule struct {
	name string
	// match reports whether the stack (leaf first) belongs to the category.
	match func(st []string) bool
}

func has(st []string, subs ...string) bool {
	for _, f := range st {
		for _, s := range subs {
			if strings.Contains(f, s) {
				return true
			}
		}
	}
	return false
}

// inIO reports whether the sample is inside a read or write system call
// (kernel time included: the profiler samples CPU time, not wall time).
func inIO(st []string) bool {
	n := min(len(st), 8)
	return has(st[:n], "syscall.Syscall", "syscall.RawSyscall", "internal/runtime/syscall", "syscall.syscall") &&
		has(st, "internal/poll.(*FD).Read", "internal/poll.(*FD).Write", "internal/poll.ignoringEINTRIO")
}

var rules = []rule{
	{"GC: background mark, sweep, scavenge", func(st []string) bool {
		return has(st, "runtime.gcBgMarkWorker", "runtime.bgsweep", "runtime.bgscavenge", "runtime.gcStart", "runtime.gcMarkDone", "runtime.gcMarkTermination")
	}},
	{"allocation (mallocgc, GC assist)", func(st []string) bool {
		return has(st, "runtime.mallocgc", "runtime.gcAssistAlloc", "runtime.newobject", "runtime.makeslice", "runtime.growslice")
	}},
	// Most specific first: the audit write happens inside the request
	// reader (the sink has no writer goroutine: the caller writes), the
	// write to the device too, the write to the client inside either
	// reader.
	{"audit write(2) (+ fdatasync)", func(st []string) bool { return has(st, "audit.(*Sink).commit") }},
	{"write(2) to the device", func(st []string) bool { return inIO(st) && has(st, "(*mbConn).forward") }},
	{"write(2) to the client", func(st []string) bool { return inIO(st) && has(st, "(*Conn).writeClient") }},
	{"read(2) from the device", func(st []string) bool { return inIO(st) && has(st, "(*mbConn).readResponses") }},
	{"read(2) from the client", func(st []string) bool { return inIO(st) && has(st, "(*mbConn).readRequests") }},
	{"TLS records: encrypt, decrypt", func(st []string) bool {
		return has(st, "crypto/", "tls.(*halfConn)", "tls.(*Conn).readRecord", "tls.(*Conn).writeRecord")
	}},
	{"goroutine scheduling, netpoll, wake-ups", func(st []string) bool {
		return has(st, "runtime.schedule", "runtime.findRunnable", "runtime.park_m", "runtime.gopark", "runtime.goready",
			"runtime.ready", "runtime.wakep", "runtime.netpoll", "runtime.futex", "runtime.notesleep", "runtime.notewakeup",
			"runtime.mcall", "runtime.exitsyscall", "runtime.entersyscall", "runtime.goexit0", "runtime.stopm", "runtime.startm",
			"runtime.selectgo", "runtime.chansend", "runtime.chanrecv", "runtime.closechan", "runtime.sysmon", "runtime.lock2", "runtime.unlock2")
	}},
	{"policy: decision cache miss (OPA evaluation)", func(st []string) bool {
		return has(st, "policy.(*version).eval", "open-policy-agent")
	}},
	{"policy: decision (cache key, lookup, id)", func(st []string) bool { return has(st, "policy.(*Engine).Decide") }},
	{"audit: encode, queue", func(st []string) bool {
		return has(st, "audit.(*Sink)", "audit.(*Encoder)", "audit.", "(*Conn).record")
	}},
	{"deadlines and timers", func(st []string) bool {
		return has(st, "SetReadDeadline", "SetWriteDeadline", "SetDeadline", "runtime.modtimer", "runtime.(*timer)", "time.(*Timer)",
			"runtime.(*timers)", "time.Now", "time.Until", "runtime.nanotime")
	}},
	{"Modbus decode, validate, re-encode", func(st []string) bool { return has(st, "inspect/modbus.", "inspect.(*Operation)") }},
	{"metrics (Prometheus counters)", func(st []string) bool { return has(st, "prometheus") }},
	{"other syscalls (I/O bookkeeping)", func(st []string) bool { return inIO(st) }},
	{"request path: other", func(st []string) bool { return has(st, "(*mbConn).readRequests", "(*mbConn).handleRequest") }},
	{"response path: other", func(st []string) bool { return has(st, "(*mbConn).readResponses") }},
	{"other", func([]string) bool { return true }},
}

// breakdown classifies every sample of a CPU profile (go tool pprof
// -traces) by rules, in µs of CPU per request.
func breakdown(file string, requests float64) (*Breakdown, error) {
	out, err := exec.Command("go", "tool", "pprof", "-traces", file).Output()
	if err != nil {
		return nil, fmt.Errorf("go tool pprof -traces %s: %w", file, err)
	}
	totals := map[string]time.Duration{}
	leaves := map[string]map[string]time.Duration{}
	var total time.Duration
	flush := func(val time.Duration, st []string) {
		if val == 0 || len(st) == 0 {
			return
		}
		for _, r := range rules {
			if r.match(st) {
				totals[r.name] += val
				if leaves[r.name] == nil {
					leaves[r.name] = map[string]time.Duration{}
				}
				leaves[r.name][st[0]] += val
				break
			}
		}
		total += val
	}
	var (
		val time.Duration
		st  []string
	)
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "-----------+") {
			flush(val, st)
			val, st = 0, nil
			continue
		}
		f := strings.Fields(l)
		if len(f) == 0 || strings.Contains(l, ":") && val == 0 && len(st) == 0 && !strings.HasPrefix(l, " ") {
			continue // the header (File:, Type:, ...)
		}
		if len(f) >= 2 && val == 0 && len(st) == 0 {
			if d, err := time.ParseDuration(f[0]); err == nil {
				val = d
				st = append(st, f[1])
				continue
			}
		}
		if val != 0 {
			st = append(st, f[0])
		}
	}
	flush(val, st)
	bd := &Breakdown{Seconds: total.Seconds(), Requests: requests}
	for name, d := range totals {
		c := Category{Name: name, Share: float64(d) / float64(total)}
		if requests > 0 {
			c.PerReq = float64(d.Microseconds()) / requests
		}
		var best time.Duration
		for leaf, v := range leaves[name] {
			if v > best {
				best, c.Top = v, leaf
			}
		}
		bd.Rows = append(bd.Rows, c)
	}
	sort.Slice(bd.Rows, func(i, j int) bool { return bd.Rows[i].Share > bd.Rows[j].Share })
	return bd, nil
}
