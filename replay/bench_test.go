package replay

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/replay/internal/synth"
	"github.com/conduit-ot/conduit/rules"
)

// The benchmark replays a Modbus/TCP capture it generates (never
// committed): a plant network's polling, 32 HMI and SCADA clients on
// long-lived connections to the demo listener plc-line1, each exchange a
// request and its response in one segment each, 100 µs apart: 90 % FC 3
// reads of 10 holding registers at one of four blocks, 5 % FC 1 coil
// reads, 5 % FC 16 setpoint writes of two registers with one of three
// value pairs. The embedded reference policy decides, with the listener
// from the configuration, so every operation is evaluated against the
// demo grants (allowed).
//
// Size: REPLAY_BENCH_MB (default 100). REPLAY_BENCH_FILE keeps the file
// (and reuses it if it exists), to time tshark on it by hand:
//
//	REPLAY_BENCH_FILE=/tmp/replay100.pcap go test ./replay -run '^$' -bench Replay -benchtime 3x
//	time tshark -r /tmp/replay100.pcap -Y mbtcp -T fields -e modbus.func_code > /dev/null
//	REPLAY_BENCH_FILE=/tmp/replay100.pcap REPLAY_TSHARK_RATIO=1 go test ./replay -run TestReplayTsharkRatio -v

const benchClients = 32

var (
	benchOnce sync.Once
	benchPath string
	benchErr  error
	benchOps  int
)

func benchCapture(tb testing.TB) (path string, ops int) {
	tb.Helper()
	benchOnce.Do(func() {
		mb := 100
		if s := os.Getenv("REPLAY_BENCH_MB"); s != "" {
			mb, _ = strconv.Atoi(s)
		}
		benchPath = os.Getenv("REPLAY_BENCH_FILE")
		if benchPath == "" {
			dir, err := os.MkdirTemp("", "replay-bench-")
			if err != nil {
				benchErr = err
				return
			}
			benchPath = filepath.Join(dir, "replay.pcap")
		} else if _, err := os.Stat(benchPath + ".ops"); err == nil {
			b, _ := os.ReadFile(benchPath + ".ops")
			benchOps, _ = strconv.Atoi(string(b))
			return
		}
		benchOps, benchErr = writeBenchCapture(benchPath, int64(mb)<<20)
		if benchErr == nil && os.Getenv("REPLAY_BENCH_FILE") != "" {
			benchErr = os.WriteFile(benchPath+".ops", []byte(strconv.Itoa(benchOps)), 0o644)
		}
	})
	if benchErr != nil {
		tb.Fatal(benchErr)
	}
	return benchPath, benchOps
}

// writeBenchCapture writes about size bytes of polling traffic and returns
// the number of requests.
func writeBenchCapture(path string, size int64) (int, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	w, err := synth.NewWriter(bw, time.Date(2026, 5, 4, 0, 0, 0, 0, time.UTC))
	if err != nil {
		return 0, err
	}
	rng := rand.New(rand.NewSource(1))
	conns := make([]*synth.Conn, benchClients)
	tids := make([]uint16, benchClients)
	for i := range conns {
		cli := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 1, byte(1 + i)}), uint16(40000+i))
		conns[i] = w.Conn(cli, netip.MustParseAddrPort("127.0.0.1:502"))
		if err := conns[i].Handshake(); err != nil {
			return 0, err
		}
	}
	const perExchange = 2*16 + 2*54 + 12 + 25 // pcap record and Ethernet/IPv4/TCP headers, FC 3 request and response
	ops := 0
	req := make([]byte, 0, 32)
	resp := make([]byte, 0, 64)
	for written := int64(0); written < size; written += perExchange {
		i := ops % benchClients
		c := conns[i]
		tids[i]++
		tid := tids[i]
		req, resp = req[:0], resp[:0]
		switch r := rng.Intn(100); {
		case r < 90:
			addr := uint16(rng.Intn(4) * 10)
			req = mbap(req, tid, 6, 1, 3)
			req = binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(req, addr), 10)
			resp = append(mbap(resp, tid, 23, 1, 3), 20)
			for k := uint16(0); k < 10; k++ {
				resp = binary.BigEndian.AppendUint16(resp, addr+k)
			}
		case r < 95:
			req = append(mbap(req, tid, 6, 1, 1), 0, 0, 0, 16)
			resp = append(mbap(resp, tid, 5, 1, 1), 2, 0x55, 0xaa)
		default:
			v := uint16(100 * (1 + rng.Intn(3)))
			req = append(mbap(req, tid, 11, 1, 16), 0, 10, 0, 2, 4)
			req = binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(req, v), v+1)
			resp = append(mbap(resp, tid, 6, 1, 16), 0, 10, 0, 2)
		}
		if err := c.Send(synth.ToServer, req); err != nil {
			return 0, err
		}
		if err := c.Send(synth.ToClient, resp); err != nil {
			return 0, err
		}
		ops++
	}
	for _, c := range conns {
		if err := c.Close(); err != nil {
			return 0, err
		}
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	return ops, f.Close()
}

func mbap(b []byte, tid, length uint16, unit, fc byte) []byte {
	b = binary.BigEndian.AppendUint16(b, tid)
	b = append(b, 0, 0)
	b = binary.BigEndian.AppendUint16(b, length)
	return append(b, unit, fc)
}

// benchOptions are the replay options of the benchmark: the embedded
// reference policy, the demo listener plc-line1, here at 127.0.0.1:502 (the Modbus port, so
// that tshark dissects it without a decode-as rule).
func benchOptions(tb testing.TB) Options {
	tb.Helper()
	e, err := policy.New(context.Background(), policy.Options{
		Source:    policy.Source{Path: "rules", FS: rules.FS},
		CacheSize: 1 << 16,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.Close() })
	return Options{
		Decider: e,
		Config:  &config.Config{Listeners: []config.Listener{{Name: "plc-line1", Protocol: "modbus", Listen: "127.0.0.1:502", Upstream: "192.168.1.10:502"}}},
	}
}

func BenchmarkReplay(b *testing.B) {
	path, ops := benchCapture(b)
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	opts := benchOptions(b)
	b.SetBytes(fi.Size())
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rep, err := Replay(context.Background(), []string{path}, opts)
		if err != nil {
			b.Fatal(err)
		}
		if rep.Operations != ops || rep.Allowed != ops || rep.Responses.Paired != ops {
			b.Fatalf("%d operations (%d allowed, %d paired), want %d", rep.Operations, rep.Allowed, rep.Responses.Paired, ops)
		}
	}
	b.ReportMetric(float64(ops)*float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkReplayJSON adds what --format json costs: every operation's
// input document, decision and response encoded as a JSON line.
func BenchmarkReplayJSON(b *testing.B) {
	path, ops := benchCapture(b)
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	opts := benchOptions(b)
	var n int
	var line []byte
	opts.Records = func(r *Record) {
		n++
		line = r.AppendJSON(line[:0])
		if _, err := io.Discard.Write(line); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(fi.Size())
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n = 0
		if _, err := Replay(context.Background(), []string{path}, opts); err != nil {
			b.Fatal(err)
		}
		if n != ops {
			b.Fatalf("%d records, want %d", n, ops)
		}
	}
	b.ReportMetric(float64(ops)*float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// TestReplayTsharkRatio times replay and tshark on the same generated
// capture, interleaved, best of three each, and requires replay to be at
// least 20 times as fast. Opt-in (REPLAY_TSHARK_RATIO=1): tshark takes
// tens of seconds.
//
// The baseline dissects what replay decodes: `tshark -r FILE -Y mbtcp -T
// fields -e modbus.func_code` reassembles TCP, dissects every Modbus PDU
// and prints its function code. (`tshark -r FILE -q` alone reads the
// records and dissects nothing; see inspect/capture's TestTsharkRatio.)
func TestReplayTsharkRatio(t *testing.T) {
	if os.Getenv("REPLAY_TSHARK_RATIO") == "" {
		t.Skip("set REPLAY_TSHARK_RATIO=1 to run")
	}
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		t.Skip("tshark not installed")
	}
	path, ops := benchCapture(t)
	fi, _ := os.Stat(path)
	mb := float64(fi.Size()) / 1e6
	opts := benchOptions(t)
	jsonOpts := opts
	var line []byte
	jsonOpts.Records = func(r *Record) {
		line = r.AppendJSON(line[:0])
		io.Discard.Write(line)
	}
	timeReplay := func(o Options) time.Duration {
		start := time.Now()
		rep, err := Replay(context.Background(), []string{path}, o)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Operations != ops || rep.Responses.Paired != ops {
			t.Fatalf("replay: %d operations, %d paired, want %d", rep.Operations, rep.Responses.Paired, ops)
		}
		return time.Since(start)
	}
	timeTshark := func(args ...string) (time.Duration, int) {
		start := time.Now()
		out, err := exec.Command(tshark, append([]string{"-r", path}, args...)...).Output()
		if err != nil {
			t.Fatal(err)
		}
		return time.Since(start), countLines(out)
	}
	keep := func(best *time.Duration, d time.Duration) {
		if *best == 0 || d < *best {
			*best = d
		}
	}
	var best, bestJSON, bestTshark, bestReadOnly time.Duration
	var lines int
	for round := 0; round < 3; round++ { // interleaved, best of three each
		d, n := timeTshark("-Y", "mbtcp", "-T", "fields", "-e", "modbus.func_code")
		keep(&bestTshark, d)
		lines = n
		d, _ = timeTshark("-q")
		keep(&bestReadOnly, d)
		keep(&best, timeReplay(opts))
		keep(&bestJSON, timeReplay(jsonOpts))
	}
	if lines != 2*ops {
		t.Errorf("tshark printed %d function codes, want %d (every request and response)", lines, 2*ops)
	}
	ratio := bestTshark.Seconds() / best.Seconds()
	rate := func(d time.Duration) string {
		return fmt.Sprintf("%v = %.1f MB/s, %.0f ops/s", d.Round(time.Millisecond), mb/d.Seconds(), float64(ops)/d.Seconds())
	}
	t.Logf("capture %s: %.0f MB, %d packets, %d operations (%d Modbus PDUs)", path, mb, 2*ops+6*benchClients, ops, 2*ops)
	t.Logf("replay, text report (decode, pair, decide, aggregate): %s", rate(best))
	t.Logf("replay, JSON record per operation:                     %s (%.1f× tshark)", rate(bestJSON), bestTshark.Seconds()/bestJSON.Seconds())
	t.Logf("tshark -r FILE -Y mbtcp -T fields -e modbus.func_code:  %s", rate(bestTshark))
	t.Logf("tshark -r FILE -q (reads records, dissects nothing):   %v = %.1f MB/s", bestReadOnly.Round(time.Millisecond), mb/bestReadOnly.Seconds())
	t.Logf("replay is %.1f× tshark", ratio)
	if ratio < 20 {
		t.Errorf("replay is %.1f× tshark, the target is 20×", ratio)
	}
}

func countLines(b []byte) int {
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}
