package capture

import (
	"bufio"
	"context"
	"encoding/binary"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// Benchmarks read a synthetic Modbus/TCP capture of about 200 MB written
// to a temporary directory (never committed). To keep the file, and to
// time tshark on the same bytes:
//
//	CAPTURE_BENCH_FILE=/tmp/modbus200.pcap go test ./inspect/capture -run '^$' -bench . -benchmem
//	time tshark -r /tmp/modbus200.pcap -q
//	CAPTURE_BENCH_FILE=/tmp/modbus200.pcap CAPTURE_TSHARK_RATIO=1 go test ./inspect/capture -run TestTsharkRatio -v

// benchSpec describes a generated capture.
type benchSpec struct {
	name       string
	flows      int     // concurrent connections, round-robin
	targetMB   int     // approximate file size
	reorder    float64 // fraction of segments swapped with the next one of their flow
	retransmit float64 // fraction of segments sent twice
}

var (
	benchModbus = benchSpec{name: "modbus", flows: 2000, targetMB: 200}
	benchMessy  = benchSpec{name: "modbus-messy", flows: 2000, targetMB: 200, reorder: 0.01, retransmit: 0.01}
)

var (
	benchFilesMu sync.Mutex
	benchFiles   = map[string]string{}
	benchTmp     string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if benchTmp != "" {
		os.RemoveAll(benchTmp)
	}
	os.Exit(code)
}

// benchFile returns the path of the generated capture for spec, writing it
// once per process (or once at all with CAPTURE_BENCH_FILE, for the plain
// Modbus capture).
func benchFile(tb testing.TB, spec benchSpec) string {
	benchFilesMu.Lock()
	defer benchFilesMu.Unlock()
	if p, ok := benchFiles[spec.name]; ok {
		return p
	}
	var path string
	if env := os.Getenv("CAPTURE_BENCH_FILE"); env != "" && spec == benchModbus {
		path = env
		if _, err := os.Stat(path); err == nil {
			benchFiles[spec.name] = path
			return path
		}
	} else {
		if benchTmp == "" {
			d, err := os.MkdirTemp("", "capture-bench-")
			if err != nil {
				tb.Fatal(err)
			}
			benchTmp = d
		}
		path = filepath.Join(benchTmp, spec.name+".pcap")
	}
	if err := writeBenchCapture(path, spec); err != nil {
		tb.Fatal(err)
	}
	benchFiles[spec.name] = path
	return path
}

// benchFlow is the state of one generated connection.
type benchFlow struct {
	cliIP, srvIP [4]byte
	cliPort      uint16
	cs, ss       uint32 // next sequence numbers
	txn          uint16
	started      bool
}

// writeBenchCapture writes spec's capture: every connection opens with a
// handshake, then carries FC3 read requests (12 bytes) and responses (29
// bytes: 10 registers), one segment each, 100 µs apart; all connections
// close with FIN at the end. Frames are patched templates with correct IP
// and TCP checksums.
func writeBenchCapture(path string, spec benchSpec) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	w := pcapgo.NewWriter(bw)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		return err
	}
	rng := rand.New(rand.NewSource(1))
	flows := make([]benchFlow, spec.flows)
	for i := range flows {
		flows[i] = benchFlow{
			cliIP:   [4]byte{10, 1, byte(i >> 8), byte(i)},
			srvIP:   [4]byte{10, 2, 0, byte(1 + i%50)},
			cliPort: uint16(30000 + i%30000),
			cs:      rng.Uint32(),
			ss:      rng.Uint32(),
		}
	}
	ts := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var written int64
	frame := make([]byte, 0, 128)
	var held []byte // a segment held back to be sent after the next (reordering)
	var heldTS time.Time
	emit := func(b []byte) error {
		ts = ts.Add(100 * time.Microsecond)
		written += int64(16 + len(b))
		return w.WritePacket(gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(b), Length: len(b)}, b)
	}
	send := func(fl *benchFlow, fromClient bool, flags byte, payload []byte) error {
		frame = benchFrame(frame[:0], fl, fromClient, flags, payload)
		if held != nil {
			// the held segment goes out after this one
			if err := emit(frame); err != nil {
				return err
			}
			err := emit(held)
			held = nil
			_ = heldTS
			return err
		}
		if len(payload) > 0 && rng.Float64() < spec.reorder {
			held = append([]byte(nil), frame...)
			heldTS = ts
			return nil
		}
		if err := emit(frame); err != nil {
			return err
		}
		if len(payload) > 0 && rng.Float64() < spec.retransmit {
			return emit(frame)
		}
		return nil
	}
	req := make([]byte, 12)
	resp := make([]byte, 29)
	target := int64(spec.targetMB) << 20
	for written < target {
		for i := range flows {
			fl := &flows[i]
			if !fl.started {
				fl.started = true
				if err := send(fl, true, tcpSYN, nil); err != nil {
					return err
				}
				if err := send(fl, false, tcpSYN|tcpACK, nil); err != nil {
					return err
				}
				if err := send(fl, true, tcpACK, nil); err != nil {
					return err
				}
				continue
			}
			fl.txn++
			binary.BigEndian.PutUint16(req[0:], fl.txn)
			copy(req[2:], []byte{0, 0, 0, 6, 1, 3, 0, byte(fl.txn), 0, 10})
			binary.BigEndian.PutUint16(resp[0:], fl.txn)
			copy(resp[2:], []byte{0, 0, 0, 23, 1, 3, 20})
			for j := 9; j < 29; j++ {
				resp[j] = byte(fl.txn) + byte(j)
			}
			if err := send(fl, true, tcpPSH|tcpACK, req); err != nil {
				return err
			}
			if err := send(fl, false, tcpPSH|tcpACK, resp); err != nil {
				return err
			}
		}
	}
	for i := range flows {
		fl := &flows[i]
		if err := send(fl, true, tcpFIN|tcpACK, nil); err != nil {
			return err
		}
		if err := send(fl, false, tcpFIN|tcpACK, nil); err != nil {
			return err
		}
		if err := send(fl, true, tcpACK, nil); err != nil {
			return err
		}
	}
	if held != nil {
		if err := emit(held); err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return f.Close()
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpPSH = 0x08
	tcpACK = 0x10
)

// benchFrame appends an Ethernet/IPv4/TCP frame and advances the flow's
// sequence numbers.
func benchFrame(b []byte, fl *benchFlow, fromClient bool, flags byte, payload []byte) []byte {
	src, dst, sp, dp := fl.cliIP, fl.srvIP, fl.cliPort, uint16(502)
	seq, ack := &fl.cs, fl.ss
	if !fromClient {
		src, dst, sp, dp = dst, src, dp, sp
		seq, ack = &fl.ss, fl.cs
	}
	ipLen := 20 + 20 + len(payload)
	b = append(b, 2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00) // Ethernet
	ip := len(b)
	b = append(b, 0x45, 0, byte(ipLen>>8), byte(ipLen), 0, 0, 0x40, 0, 64, 6, 0, 0)
	b = append(b, src[:]...)
	b = append(b, dst[:]...)
	binary.BigEndian.PutUint16(b[ip+10:], checksum(b[ip:ip+20], 0))
	tcp := len(b)
	b = binary.BigEndian.AppendUint16(b, sp)
	b = binary.BigEndian.AppendUint16(b, dp)
	b = binary.BigEndian.AppendUint32(b, *seq)
	if flags&tcpACK != 0 {
		b = binary.BigEndian.AppendUint32(b, ack)
	} else {
		b = binary.BigEndian.AppendUint32(b, 0)
	}
	b = append(b, 5<<4, flags, 0xff, 0xff, 0, 0, 0, 0)
	b = append(b, payload...)
	pseudo := uint32(0)
	for i := 0; i < 4; i += 2 {
		pseudo += uint32(src[i])<<8 | uint32(src[i+1])
		pseudo += uint32(dst[i])<<8 | uint32(dst[i+1])
	}
	pseudo += 6 + uint32(20+len(payload))
	binary.BigEndian.PutUint16(b[tcp+16:], checksum(b[tcp:], pseudo))
	*seq += uint32(len(payload))
	if flags&(tcpSYN|tcpFIN) != 0 {
		*seq++
	}
	return b
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// countingFactory is the cheapest possible consumer: it counts.
type countingFactory struct{ bytes, gaps, ends int64 }

func (c *countingFactory) NewStream(Flow) Stream { return (*countingStream)(c) }

type countingStream countingFactory

func (c *countingStream) Data(_ Dir, b []byte, _ time.Time) { c.bytes += int64(len(b)) }
func (c *countingStream) Gap(Dir, int)                      { c.gaps++ }
func (c *countingStream) End(EndReason)                     { c.ends++ }

func benchRead(b *testing.B, spec benchSpec) {
	path := benchFile(b, spec)
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(fi.Size())
	var packets uint64
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cf := &countingFactory{}
		st, err := ReadFiles(context.Background(), cf, Options{}, path)
		if err != nil {
			b.Fatal(err)
		}
		if st.Gaps != 0 || st.Undecodable != 0 || cf.ends != int64(spec.flows) || st.Flows != uint64(spec.flows) {
			b.Fatalf("stats %+v, consumer %+v", st, cf)
		}
		packets += st.Packets
	}
	b.StopTimer()
	runtime.ReadMemStats(&ms1)
	b.ReportMetric(float64(packets)/b.Elapsed().Seconds(), "pkts/s")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(packets), "allocs/pkt")
}

// BenchmarkReadModbus: 200 MB of in-order Modbus/TCP over 2000 flows.
func BenchmarkReadModbus(b *testing.B) { benchRead(b, benchModbus) }

// BenchmarkReadModbusMessy: the same with 1% of segments reordered and 1%
// retransmitted, so that the assembler buffers and trims.
func BenchmarkReadModbusMessy(b *testing.B) { benchRead(b, benchMessy) }

// TestTsharkRatio times tshark and a Reader on the same generated capture
// and logs the ratios. Opt-in (CAPTURE_TSHARK_RATIO=1): it takes minutes.
//
// Three tshark baselines, because `tshark -r FILE -q` alone does not
// dissect: with -q and no filter, tap or output it only reads the records.
// `-q -z conv,tcp` dissects every packet through TCP (sequence analysis,
// conversations), the nearest equivalent of reassembling every flow;
// without -q it also dissects Modbus and formats a line per packet.
func TestTsharkRatio(t *testing.T) {
	if os.Getenv("CAPTURE_TSHARK_RATIO") == "" {
		t.Skip("set CAPTURE_TSHARK_RATIO=1 to run")
	}
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Skip("tshark not installed")
	}
	path := benchFile(t, benchModbus)
	fi, _ := os.Stat(path)
	mb := float64(fi.Size()) / 1e6

	timeTshark := func(args ...string) time.Duration {
		cmd := exec.Command("tshark", append([]string{"-r", path}, args...)...)
		start := time.Now()
		if err := cmd.Run(); err != nil { // output discarded
			t.Fatalf("tshark %v: %v", args, err)
		}
		return time.Since(start)
	}
	timeOurs := func() (time.Duration, Stats) {
		start := time.Now()
		st, err := ReadFiles(context.Background(), &countingFactory{}, Options{}, path)
		if err != nil {
			t.Fatal(err)
		}
		return time.Since(start), st
	}
	baselines := [][]string{{"-q"}, {"-q", "-z", "conv,tcp"}, {}}
	best := make([]time.Duration, len(baselines))
	var ours time.Duration
	var st Stats
	for round := 0; round < 3; round++ { // interleaved, best of three each
		for i, args := range baselines {
			if d := timeTshark(args...); best[i] == 0 || d < best[i] {
				best[i] = d
			}
		}
		d, s := timeOurs()
		if ours == 0 || d < ours {
			ours, st = d, s
		}
	}
	t.Logf("file %s: %.0f MB, %d packets, %d flows", path, mb, st.Packets, st.Flows)
	t.Logf("capture.ReadFiles: %v (%.0f MB/s, %.2f Mpkts/s)", ours.Round(time.Millisecond), mb/ours.Seconds(), float64(st.Packets)/ours.Seconds()/1e6)
	for i, args := range baselines {
		t.Logf("tshark -r FILE %s: %v (%.0f MB/s); tshark time / capture time = %.1f",
			strings.Join(args, " "), best[i].Round(time.Millisecond), mb/best[i].Seconds(), best[i].Seconds()/ours.Seconds())
	}
}
