package capture

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
)

// recordEnds returns the offsets at which each record of a capture ends
// (pcap: 24-byte header, 16-byte record headers).
func pcapRecordEnds(b []byte) []int {
	var ends []int
	for off := pcapHeaderLen; off+16 <= len(b); {
		off += 16 + int(binary.LittleEndian.Uint32(b[off+8:]))
		ends = append(ends, off)
	}
	return ends
}

// ngBlockEnds returns the offsets at which each pcapng block ends.
func ngBlockEnds(b []byte) []int {
	var ends []int
	for off := 0; off+8 <= len(b); {
		off += int(binary.LittleEndian.Uint32(b[off+4:]))
		ends = append(ends, off)
	}
	return ends
}

// TestTruncatedFile cuts a capture at every byte after its header: reading
// never fails, delivers a prefix of each stream, and warns exactly when the
// cut falls inside a record.
func TestTruncatedFile(t *testing.T) {
	c := conn4(45000)
	var reqs, resps [][]byte
	for i := 0; i < 6; i++ {
		reqs, resps = append(reqs, mbReq(i)), append(resps, mbResp(i))
	}
	segs := exchange(c, reqs, resps)
	for _, format := range []string{"pcap", "pcapng"} {
		var full []byte
		var ends []int
		first := 0
		if format == "pcap" {
			full = pcapFile(t, linkEth, segs...)
			ends, first = pcapRecordEnds(full), pcapHeaderLen
		} else {
			full = pcapngFile(t, []link{linkEth}, nil, segs...)
			ends = ngBlockEnds(full)
			first = ends[1] // section header and interface block
		}
		boundary := map[int]bool{first: true}
		for _, e := range ends {
			boundary[e] = true
		}
		whole, _ := run(t, full, Options{})
		wf := onlyFlow(t, whole)
		step := 1
		if testing.Short() {
			step = 7
		}
		for cut := first; cut < len(full); cut++ {
			if (cut-first)%step != 0 && !boundary[cut] && !boundary[cut-1] && !boundary[cut+1] {
				continue
			}
			rec := &recorder{t: t}
			r := NewReader(rec, Options{})
			err := r.ReadCapture(context.Background(), "cut", bytes.NewReader(full[:cut]), int64(cut))
			st := r.Close()
			if err != nil {
				t.Fatalf("%s cut at %d: %v", format, cut, err)
			}
			rec.checkEnded()
			wantWarn := !boundary[cut]
			if gotWarn := st.FilesTruncated == 1; gotWarn != wantWarn || (wantWarn && (len(st.Warnings) != 1 || !errors.Is(st.Warnings[0].Err, ErrTruncated))) {
				t.Fatalf("%s cut at %d (boundary %v): truncated %d warnings %v", format, cut, boundary[cut], st.FilesTruncated, st.Warnings)
			}
			if len(rec.flows) > 1 {
				t.Fatalf("%s cut at %d: %d flows", format, cut, len(rec.flows))
			}
			for _, f := range rec.flows {
				for d := 0; d < 2; d++ {
					if !bytes.HasPrefix(wf.data[d], f.data[d]) {
						t.Fatalf("%s cut at %d: dir %d delivered %x, not a prefix of %x", format, cut, d, f.data[d], wf.data[d])
					}
				}
			}
		}
	}
}

func writeTemp(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestNotACapture: anything without a capture header is an error naming
// the file, and reading stops there.
func TestNotACapture(t *testing.T) {
	for name, content := range map[string][]byte{
		"text.pcap":         []byte("this is not a capture file\n"),
		"empty.pcap":        nil,
		"short.pcap":        {0xd4, 0xc3},
		"header-cut.pcap":   pcapFile(t, linkEth)[:20],
		"ng-bad-bom.pcapng": {0x0a, 0x0d, 0x0d, 0x0a, 28, 0, 0, 0, 1, 2, 3, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 28, 0, 0, 0},
		"gzip-text.pcap.gz": gzipBytes(t, []byte("still not a capture")),
	} {
		t.Run(name, func(t *testing.T) {
			p := writeTemp(t, name, content)
			good := writeTemp(t, "good.pcap", pcapFile(t, linkEth, exchange(conn4(45100), [][]byte{mbReq(1)}, nil)...))
			rec := &recorder{t: t}
			st, err := ReadFiles(context.Background(), rec, Options{}, good, p, good)
			if err == nil || !strings.Contains(err.Error(), p) {
				t.Fatalf("err = %v, want an error naming %s", err, p)
			}
			if name != "header-cut.pcap" && name != "ng-bad-bom.pcapng" && !errors.Is(err, ErrNotCapture) {
				t.Errorf("err = %v, want ErrNotCapture", err)
			}
			// The first file was read and its flow ended; the third was not read.
			if st.Files != 1 || len(rec.flows) != 1 || rec.flows[0].end != EndFIN {
				t.Errorf("files %d flows %d", st.Files, len(rec.flows))
			}
		})
	}
	if _, err := ReadFiles(context.Background(), &recorder{t: t}, Options{}, filepath.Join(t.TempDir(), "missing.pcap")); err == nil || !strings.Contains(err.Error(), "missing.pcap") {
		t.Errorf("missing file: %v", err)
	}
}

func gzipBytes(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestPcapngTwoInterfaces: one flow on an Ethernet interface, another on a
// Linux cooked v2 interface (link type 276, beyond gopacket's uint8).
func TestPcapngTwoInterfaces(t *testing.T) {
	a := exchange(conn4(46000), [][]byte{mbReq(1)}, [][]byte{mbResp(1)})
	b := exchange(conn6(46001), [][]byte{mbReq(2)}, [][]byte{mbResp(2)})
	var segs []seg
	var iface []int
	for i := range a {
		segs = append(segs, a[i], b[i])
		iface = append(iface, 0, 1)
	}
	rec, st := run(t, pcapngFile(t, []link{linkEth, linkSLLv2}, iface, segs...), Options{})
	if len(rec.flows) != 2 || st.Undecodable+st.UnknownLinkType != 0 {
		t.Fatalf("%d flows, stats %+v", len(rec.flows), st)
	}
	for i, want := range [][2][]byte{{mbReq(1), mbResp(1)}, {mbReq(2), mbResp(2)}} {
		f := rec.flows[i]
		if !bytes.Equal(f.data[0], want[0]) || !bytes.Equal(f.data[1], want[1]) || f.end != EndFIN {
			t.Errorf("flow %v: %x / %x %v", f.flow, f.data[0], f.data[1], f.end)
		}
	}
	if rec.flows[1].flow.Client.Addr().Is4() {
		t.Errorf("second flow should be IPv6: %v", rec.flows[1].flow)
	}
}

// TestGzipAndMultiFile: a connection split over two files (the second
// gzip-compressed) is one flow.
func TestGzipAndMultiFile(t *testing.T) {
	reqs, resps := [][]byte{mbReq(1), mbReq(2), mbReq(3)}, [][]byte{mbResp(1), mbResp(2), mbResp(3)}
	segs := exchange(conn4(46100), reqs, resps)
	p1 := writeTemp(t, "a.pcap", pcapFile(t, linkEth, segs[:6]...))
	p2 := writeTemp(t, "b.pcapng.gz", gzipBytes(t, pcapngFile(t, []link{linkEth}, nil, segs[6:]...)))
	rec := &recorder{t: t}
	st, err := ReadFiles(context.Background(), rec, Options{}, p1, p2)
	if err != nil {
		t.Fatal(err)
	}
	rec.checkEnded()
	f := onlyFlow(t, rec)
	if !bytes.Equal(f.data[0], cat(reqs...)) || !bytes.Equal(f.data[1], cat(resps...)) || f.end != EndFIN {
		t.Errorf("%x / %x %v", f.data[0], f.data[1], f.end)
	}
	if st.Files != 2 || st.Packets != uint64(len(segs)) {
		t.Errorf("files %d packets %d", st.Files, st.Packets)
	}
}

// bigCapture is one long-lived Modbus connection of n request/response
// pairs, never closed.
func bigCapture(t *testing.T, n int) []byte {
	c := conn4(47000)
	segs := handshake(c)
	cs, ss := isnCli+1, isnSrv+1
	for i := 0; i < n; i++ {
		at := time.Duration(i+3) * time.Millisecond
		segs = append(segs, data(c, true, cs, ss, mbReq(i), at), data(c, false, ss, cs+12, mbResp(i), at))
		cs, ss = cs+12, ss+13
	}
	return pcapFile(t, linkEth, segs...)
}

// TestProgressAndCancel: progress reports rise to the file size; a
// canceled context stops reading with its error and ends open flows with
// EndCanceled.
func TestProgressAndCancel(t *testing.T) {
	capture := bigCapture(t, 20000) // about 3.5 MB
	p := writeTemp(t, "big.pcap", capture)

	var reports []Progress
	rec := &recorder{t: t}
	st, err := ReadFiles(context.Background(), rec, Options{Progress: func(pr Progress) { reports = append(reports, pr) }}, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(reports) < 3 {
		t.Fatalf("%d progress reports", len(reports))
	}
	for i, pr := range reports {
		if pr.File != p || pr.Size != int64(len(capture)) || (i > 0 && pr.Read < reports[i-1].Read) {
			t.Fatalf("report %d: %+v", i, pr)
		}
	}
	if last := reports[len(reports)-1]; last.Read != last.Size || last.Packets != st.Packets {
		t.Errorf("last report %+v, packets %d", last, st.Packets)
	}

	ctx, cancel := context.WithCancel(context.Background())
	rec = &recorder{t: t}
	r := NewReader(StreamFactoryFunc(func(f Flow) Stream {
		cancel() // cancel as soon as the flow starts
		return rec.NewStream(f)
	}), Options{})
	err = r.ReadFile(ctx, p)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if err := r.ReadFile(context.Background(), p); !errors.Is(err, context.Canceled) {
		t.Errorf("read after cancel: %v", err)
	}
	st = r.Close()
	rec.checkEnded()
	if f := onlyFlow(t, rec); f.end != EndCanceled || st.Packets > batchRecords {
		t.Errorf("end %v after %d packets", f.end, st.Packets)
	}
}

// panicSource yields a few records, then panics like a record reader on
// malformed input would.
type panicSource struct {
	frames [][]byte
	n      int
}

func (p *panicSource) next() ([]byte, gopacket.CaptureInfo, linkType, error) {
	if p.n == len(p.frames) {
		panic("malformed input")
	}
	b := p.frames[p.n]
	p.n++
	return b, gopacket.CaptureInfo{Timestamp: t0, CaptureLength: len(b), Length: len(b)}, linkEthernet, nil
}

// TestReaderPanicBackstop: a panic in a record reader ends that file with
// an ErrCorrupt warning after delivering what came before it.
func TestReaderPanicBackstop(t *testing.T) {
	c := conn4(49000)
	src := &panicSource{}
	for _, s := range exchange(c, [][]byte{mbReq(1)}, [][]byte{mbResp(1)})[:5] {
		src.frames = append(src.frames, frame(t, linkEth, s))
	}
	rec := &recorder{t: t}
	r := NewReader(rec, Options{})
	if err := r.readRecords(context.Background(), "panicky", src, &countingReader{}, -1); err != nil {
		t.Fatal(err)
	}
	st := r.Close()
	f := onlyFlow(t, rec)
	if !bytes.Equal(f.data[0], mbReq(1)) || !bytes.Equal(f.data[1], mbResp(1)) || f.end != EndEOF {
		t.Errorf("flow %x / %x %v", f.data[0], f.data[1], f.end)
	}
	if st.FilesCorrupt != 1 || len(st.Warnings) != 1 || !errors.Is(st.Warnings[0].Err, errReaderPanic) ||
		!errors.Is(st.Warnings[0].Err, ErrCorrupt) || st.Warnings[0].Packet != 5 {
		t.Errorf("corrupt %d warnings %v", st.FilesCorrupt, st.Warnings)
	}
}
