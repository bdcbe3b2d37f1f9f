package capture

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

// FuzzReadCapture feeds arbitrary bytes to a Reader as a capture file. It
// must never panic, must end every flow exactly once, must not deliver more
// bytes than the input holds, and must keep memory bounded: every length
// field is checked before anything is allocated from it (MaxPacketSize,
// ngGuard). The seed corpus in testdata/fuzz/FuzzReadCapture holds small
// real captures and prefixes of larger ones from ../../testdata/pcap.
func FuzzReadCapture(f *testing.F) {
	// Seeds beyond the corpus directory: a minimal in-memory capture of
	// each format.
	f.Add(pcapFile(f, linkEth, exchange(conn4(50000), [][]byte{mbReq(1)}, [][]byte{mbResp(1)})...))
	f.Add(pcapngFile(f, []link{linkEth, linkSLLv2}, []int{0, 1}, exchange(conn6(50001), [][]byte{mbReq(1)}, nil)...))
	f.Fuzz(func(t *testing.T, in []byte) {
		fz := &fuzzFactory{t: t}
		r := NewReader(fz, Options{
			MaxFlows:               64,
			MaxBufferedBytesPerDir: 16 << 10,
			MaxBufferedBytesTotal:  256 << 10,
			GapTimeout:             time.Second,
			IdleTimeout:            time.Minute,
			IsServer:               ServerPorts(502),
		})
		err := r.ReadCapture(context.Background(), "fuzz", bytes.NewReader(in), int64(len(in)))
		st := r.Close()
		for _, w := range st.Warnings {
			if errors.Is(w.Err, errReaderPanic) {
				t.Fatalf("record reader panicked: %v", w)
			}
		}
		if err != nil && st.Packets > 0 {
			t.Fatalf("error %v after %d packets: errors are for inputs that are not captures", err, st.Packets)
		}
		var delivered uint64
		for _, s := range fz.streams {
			if s.ends != 1 {
				t.Fatalf("flow %v ended %d times", s.flow, s.ends)
			}
			delivered += s.bytes
		}
		if delivered != st.DataBytes[0]+st.DataBytes[1] || delivered > uint64(len(in)) {
			t.Fatalf("delivered %d bytes (stats %v) from %d bytes of input", delivered, st.DataBytes, len(in))
		}
		if st.Flows != uint64(len(fz.streams)) {
			t.Fatalf("stats count %d flows, factory saw %d", st.Flows, len(fz.streams))
		}
	})
}

type fuzzFactory struct {
	t       *testing.T
	streams []*fuzzStream
}

func (fz *fuzzFactory) NewStream(f Flow) Stream {
	if !f.Client.IsValid() || !f.Server.IsValid() || f.ID != uint64(len(fz.streams)+1) {
		fz.t.Fatalf("bad flow %+v after %d flows", f, len(fz.streams))
	}
	s := &fuzzStream{t: fz.t, flow: f}
	fz.streams = append(fz.streams, s)
	return s
}

type fuzzStream struct {
	t     *testing.T
	flow  Flow
	bytes uint64
	ends  int
}

func (s *fuzzStream) Data(dir Dir, b []byte, ts time.Time) {
	if s.ends > 0 || len(b) == 0 || dir > ServerToClient {
		s.t.Fatalf("flow %v: Data(%v, %d bytes) after %d ends", s.flow, dir, len(b), s.ends)
	}
	s.bytes += uint64(len(b))
}

func (s *fuzzStream) Gap(dir Dir, n int) {
	if s.ends > 0 || (n <= 0 && n != GapUnknown) || dir > ServerToClient {
		s.t.Fatalf("flow %v: Gap(%v, %d) after %d ends", s.flow, dir, n, s.ends)
	}
}

func (s *fuzzStream) End(reason EndReason) {
	s.ends++
	if reason == 0 || reason >= numEndReasons {
		s.t.Fatalf("flow %v: End(%d)", s.flow, reason)
	}
}
