package load

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/bench/device"
)

func TestMixValidatesAgainstDevice(t *testing.T) {
	m := mix{writeFrac: 0.2}
	kinds := map[uint8]int{}
	for i := range 1000 {
		req, p := m.next(nil, uint16(i))
		kinds[p.kind]++
		if e := p.check(device.Answer(nil, req)); e != "" {
			t.Fatalf("request % x: %s", req, e)
		}
		if p.kind == kindFC6 && (p.addr < 10 || p.addr > 19 || p.qty > 1000) {
			t.Fatalf("FC 6 outside the reference grant: %d=%d", p.addr, p.qty)
		}
	}
	if kinds[kindRead] != 800 || kinds[kindFC6] != 100 || kinds[kindFC16] != 100 {
		t.Errorf("mix = %v, want 800/100/100", kinds)
	}
	// An exception is an error.
	_, p := m.next(nil, 1)
	if e := p.check([]byte{0, 1, 0, 0, 0, 3, 1, p.fc | 0x80, 2}); e != "exception" {
		t.Errorf("exception response: %q", e)
	}
}

func runAgainst(t *testing.T, addr string, cfg Config) *Result {
	t.Helper()
	cfg.Addr = addr
	p, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	res, err := p.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestClosedAndOpenLoop(t *testing.T) {
	dev, err := device.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	addr := dev.Addr().String()

	for _, depth := range []int{1, 8} {
		res := runAgainst(t, addr, Config{Conns: 4, Depth: depth, WriteFrac: 0.2,
			Warmup: 50 * time.Millisecond, Duration: 200 * time.Millisecond})
		if res.Errors != 0 || res.Requests == 0 || res.Latency.P50 <= 0 {
			t.Errorf("depth %d: %+v", depth, res)
		}
	}
	res := runAgainst(t, addr, Config{Conns: 4, Rate: 2000, WriteFrac: 0.2,
		Duration: 500 * time.Millisecond, Window: 100 * time.Millisecond})
	// The schedule is exact (1,000 sends); how many answers land inside
	// the measured period depends on how busy the machine is.
	if res.Errors != 0 || res.Sent != 1000 || res.Requests == 0 || res.Requests > 1000 {
		t.Errorf("open loop at 2000/s for 0.5 s: %d sent, %d answered in time, %d errors (%s)", res.Sent, res.Requests, res.Errors, res.FirstError)
	}
	// Both views of latency are recorded. Their percentiles are not
	// compared: they cover different sample sets (answers inside the
	// measured period vs every answer) and their order depends on how busy
	// the machine is — the harness reports them, tests do not time things.
	if res.Service == nil || res.Service.Count == 0 || res.Latency.Count == 0 {
		t.Errorf("latency from schedule %+v, service time %+v: both must be recorded", res.Latency, res.Service)
	}
	if len(res.Series) < 5 {
		t.Errorf("series: %d windows", len(res.Series))
	}
}

// A device that answers every request with an exception: every request is
// an error, none is counted as done.
func TestErrorsCounted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					var out []byte
					for b := buf[:n]; len(b) >= 8; {
						l := 6 + int(b[5])
						out = append(out, b[0], b[1], 0, 0, 0, 3, 1, b[7]|0x80, 4)
						b = b[l:]
					}
					c.Write(out)
				}
			}()
		}
	}()
	res := runAgainst(t, ln.Addr().String(), Config{Conns: 2, Duration: 100 * time.Millisecond})
	if res.Errors == 0 || res.ErrorKinds["exception"] != res.Errors || res.Requests != 0 {
		t.Errorf("errors %d %v, requests %d", res.Errors, res.ErrorKinds, res.Requests)
	}
}
