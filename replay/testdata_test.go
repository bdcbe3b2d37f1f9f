package replay

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/inspect/capture"
	"github.com/conduit-ot/conduit/replay/internal/synth"
)

// The captures in testdata/ are made by the generators below (the CLI tests
// and docs/replay.md use them). TestCommittedCaptures regenerates each and
// requires the committed bytes; `go test ./replay -run Committed -update`
// rewrites them.
var update = flag.Bool("update", false, "rewrite the generated captures in testdata/")

var generated = []struct {
	name string
	gen  func(t *testing.T, w *synth.Writer)
}{
	{"plc_line1.pcap", genPLCLine1},
	{"plc_line1_denied.pcap", genPLCLine1Denied},
	{"messy_modbus.pcap", genMessy},
	{"opcua_midstream.pcap", genOPCUAMidStream},
}

var epoch = time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC)

func TestCommittedCaptures(t *testing.T) {
	for _, g := range generated {
		t.Run(g.name, func(t *testing.T) {
			var buf bytes.Buffer
			w, err := synth.NewWriter(&buf, epoch)
			if err != nil {
				t.Fatal(err)
			}
			g.gen(t, w)
			path := filepath.Join("testdata", g.name)
			if *update {
				if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			old, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(old, buf.Bytes()) {
				t.Errorf("%s differs from its generator: run go test ./replay -run Committed -update", path)
			}
		})
	}
}

// mb appends an ADU from hex.
func mb(s string) []byte { return hexb(s) }

// exchange writes a request and its response as one segment each.
func exchange(t *testing.T, c *synth.Conn, req, resp string) {
	t.Helper()
	must(t, c.Send(synth.ToServer, mb(req)))
	if resp != "" {
		must(t, c.Send(synth.ToClient, mb(resp)))
	}
}

// genPLCLine1: an HMI on this host polls and sets the demo PLC through the
// proxy's listen address (127.0.0.1:5020, listener plc-line1 in
// testdata/conduit.yaml): everything the reference grant demo-loopback
// allows.
func genPLCLine1(t *testing.T, w *synth.Writer) {
	c := w.Conn(ap("127.0.0.1:41000"), ap("127.0.0.1:5020"))
	must(t, c.Handshake())
	exchange(t, c, "0001 0000 0006 01 03 0000 000a", "0001 0000 0017 01 03 14 0000 0001 0002 0003 0004 0005 0006 0007 0008 0009")
	exchange(t, c, "0002 0000 0006 01 06 000a 01f4", "0002 0000 0006 01 06 000a 01f4")              // setpoint 10 := 500
	exchange(t, c, "0003 0000 000b 01 10 000b 0002 04 0064 00c8", "0003 0000 0006 01 10 000b 0002") // 11, 12 := 100, 200
	exchange(t, c, "0004 0000 0006 01 01 0000 0010", "0004 0000 0005 01 01 02 ff00")
	exchange(t, c, "0005 0000 0006 01 05 0003 ff00", "0005 0000 0006 01 05 0003 ff00") // coil 3 on
	exchange(t, c, "0006 0000 0006 01 08 0000 a5a5", "0006 0000 0006 01 08 0000 a5a5") // echo
	exchange(t, c, "0007 0000 0006 01 04 0000 0004", "0007 0000 000b 01 04 08 03e8 03e9 03ea 03eb")
	must(t, c.Close())
}

// genPLCLine1Denied: the same client also writes a setpoint above the
// grant's limit, addresses unit 2 and restarts the device (FC 8/1).
func genPLCLine1Denied(t *testing.T, w *synth.Writer) {
	c := w.Conn(ap("127.0.0.1:41001"), ap("127.0.0.1:5020"))
	must(t, c.Handshake())
	exchange(t, c, "0001 0000 0006 01 03 0000 000a", "0001 0000 0017 01 03 14 0000 0001 0002 0003 0004 0005 0006 0007 0008 0009")
	exchange(t, c, "0002 0000 0006 01 06 000f 1388", "0002 0000 0006 01 06 000f 1388") // setpoint 15 := 5000
	exchange(t, c, "0003 0000 0006 02 03 0000 0001", "0003 0000 0003 02 83 0b")        // unit 2
	exchange(t, c, "0004 0000 0006 01 08 0001 0000", "0004 0000 0006 01 08 0001 0000") // restart
	must(t, c.Close())
}

// genMessy: what real captures contain, on port 502: pipelined requests,
// a request split over three segments, a reordered and a retransmitted
// segment, a lost segment, a connection picked up mid-stream, an HTTP
// probe, an unsolicited response, a protocol violation and an exception.
func genMessy(t *testing.T, w *synth.Writer) {
	c := w.Conn(ap("10.10.1.5:50100"), ap("10.10.2.20:502"))
	must(t, c.Handshake())
	must(t, c.Send(synth.ToServer, slices.Concat(mb("0001 0000 0006 01 03 0000 0002"), mb("0002 0000 0006 01 03 0010 0002"))))
	must(t, c.Send(synth.ToClient, slices.Concat(mb("0001 0000 0007 01 03 04 0001 0002"), mb("0002 0000 0007 01 03 04 0003 0004"))))
	split := mb("0003 0000 0006 01 06 0005 0064")
	must(t, c.Send(synth.ToServer, split[:4]))
	must(t, c.Send(synth.ToServer, split[4:9]))
	must(t, c.Send(synth.ToServer, split[9:]))
	must(t, c.Send(synth.ToClient, split))
	// Reordered, then retransmitted.
	a, b := mb("0004 0000 0006 01 01 0000 0008"), mb("0005 0000 0006 01 02 0000 0008")
	off := c.Next[synth.ToServer]
	must(t, c.SendAt(synth.ToServer, off+12, b))
	must(t, c.SendAt(synth.ToServer, off, a))
	must(t, c.SendAt(synth.ToServer, off, a))
	c.Next[synth.ToServer] = off + 24
	must(t, c.Send(synth.ToClient, slices.Concat(mb("0004 0000 0004 01 01 01 ff"), mb("0005 0000 0004 01 02 01 00"))))
	// A request lost by the capture (never retransmitted), then its
	// response, then one more exchange after the gap timeout.
	c.Next[synth.ToServer] += 12
	must(t, c.Send(synth.ToClient, mb("0006 0000 0006 01 06 0007 0001")))
	w.Now = w.Now.Add(6 * time.Second)
	exchange(t, c, "0007 0000 0006 01 03 0000 0000", "0007 0000 0003 01 83 03") // quantity 0: violation
	exchange(t, c, "0008 0000 0006 01 03 0400 0002", "0008 0000 0003 01 83 02") // exception 2
	must(t, c.Send(synth.ToClient, mb("0063 0000 0006 01 06 0007 0001")))       // unsolicited
	must(t, c.Close())

	// Picked up mid-stream: the first segment is the tail of a request.
	d := w.Conn(ap("10.10.1.6:50200"), ap("10.10.2.20:502"))
	must(t, d.Send(synth.ToServer, mb("0006 0001")))
	exchange(t, d, "0010 0000 0006 01 03 0000 0001", "0010 0000 0005 01 03 02 0001")

	// A scanner's HTTP probe to port 502.
	e := w.Conn(ap("10.10.9.9:50300"), ap("10.10.2.20:502"))
	must(t, e.Handshake())
	must(t, e.Send(synth.ToServer, []byte("GET / HTTP/1.0\r\n\r\n")))
	must(t, e.Close())
}

// genOPCUAMidStream: the node-opcua session of the committed capture, as
// a capture started after the session was created would show it: no HEL,
// ACK, OPN, CreateSession or ActivateSession. Replay must find it is an
// unencrypted channel and decode it.
func genOPCUAMidStream(t *testing.T, w *synth.Writer) {
	segs := streamSegments(t, filepath.Join(pcapDir, "local_nodeopcua_none_session.pcapng"))
	c := w.Conn(ap("127.0.0.1:51000"), ap("127.0.0.1:4840"))
	for _, s := range segs[10:] {
		d := synth.ToServer
		if s.dir == capture.ServerToClient {
			d = synth.ToClient
		}
		must(t, c.Send(d, s.b))
	}
	must(t, c.Close())
}

type dataSeg struct {
	dir capture.Dir
	b   []byte
}

// streamSegments returns the reassembled Data calls of a one-flow capture,
// in order.
func streamSegments(t *testing.T, path string) []dataSeg {
	t.Helper()
	var segs []dataSeg
	var flows int
	fac := capture.StreamFactoryFunc(func(capture.Flow) capture.Stream {
		flows++
		return segRecorder{&segs}
	})
	if _, err := capture.ReadFiles(context.Background(), fac, capture.Options{}, path); err != nil || flows != 1 {
		t.Fatalf("%s: %v, %d flows", path, err, flows)
	}
	return segs
}

type segRecorder struct{ segs *[]dataSeg }

func (r segRecorder) Data(dir capture.Dir, b []byte, _ time.Time) {
	*r.segs = append(*r.segs, dataSeg{dir, append([]byte(nil), b...)})
}
func (r segRecorder) Gap(capture.Dir, int)  {}
func (r segRecorder) End(capture.EndReason) {}
