package replay

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/conduit-ot/conduit/inspect/capture"
)

// The differential test: for every capture, what replay decodes — requests
// and responses per Modbus function code, per OPC UA message type and
// service type id — is compared with what tshark, an independent decoder,
// reports. tshark's reading is committed (testdata/tshark/*.tsv, one line
// per TCP segment it dissects: frame, source port, destination port, then
// the function codes or the message types and service ids, comma-separated
// when one segment carries several PDUs), so the test means something
// without tshark; when tshark is installed it is run again and must print
// exactly the committed lines.
//
// Where replay and tshark legitimately differ, the difference is listed in
// the case with the frames and the reason; anything else fails.

// diffCase is one capture and the differences from tshark it explains.
type diffCase struct {
	file   string
	dir    string // where the capture is; "" for ../testdata/pcap
	port   uint16 // the server port: segments to it are requests
	decode string // extra tshark -d option
	// differ maps "request <key>" / "response <key>" to replay's count
	// minus tshark's, each with the frames and the reason.
	differ map[string]delta
	// malformed lists the frames tshark dissects (and counts) that replay
	// reports as malformed instead of decoding: key → the reasons, in
	// order, and why. They count on replay's side too, so that the rest of
	// the comparison stays exact.
	malformed map[string]malformedFrames
	// hello: OPC UA HEL/ACK messages are transport handshakes, not service
	// requests; replay makes no operation of them. Their count must equal
	// tshark's still.
	hello int
}

type delta struct {
	n   int
	why string
}

type malformedFrames struct {
	reasons []string
	why     string
}

var diffCases = []diffCase{
	{file: "zeek_modbusSmall.pcap", port: 502},
	{file: "zeek_modbus-and-non-modbus-p502.pcap", port: 502},
	{
		file: "zeek_modbus-eit.pcap", port: 502,
		malformed: map[string]malformedFrames{
			"response 43": {[]string{"length_mismatch"}, "frame 2: a FC 43/14 response with conformity 0, more follows " +
				"0x4d, next object 0xb7 and 0 objects, followed by 4 bytes that belong to no object: tshark shows it as " +
				"a response with an expert warning; the proxy would drop the device connection"},
		},
	},
	{
		file: "zeek_4SICS-GeekLounge-151022-min.pcap", port: 502,
		malformed: map[string]malformedFrames{
			"request 23": {[]string{"length_mismatch"}, "frame 1: MBAP length 254, but FC 23's byte count (191) ends " +
				"the PDU at 201 bytes: 52 more bytes would ride along unchecked (libmodbus issue 514); tshark dissects " +
				"the fields it knows and ignores the rest; the proxy closes the connection"},
		},
	},
	{file: "zeek_fuzz-72.pcap", port: 502},
	{file: "local_pymodbus_allfc.pcapng", port: 15020, decode: "tcp.port==15020,mbtcp"},
	{file: "opc_open62541_client-server_minimal.pcap", port: 4840, hello: 4},
	{
		file: "opc_opcua_with-gap_with-handshake.pcap", port: 4840, hello: 6,
		differ: map[string]delta{
			"response MSG 464": {1, "frames 12-30 carry a 13,990-byte CreateSessionResponse in 11 segments; tshark's " +
				"TCP analysis marks frames 26 and 30 as spurious retransmissions (after dup ACKs) and leaves them out of " +
				"its reassembly, so it never completes the message. The stream bytes are whole: tshark's own " +
				"follow,tcp,raw agrees byte for byte with inspect/capture (inspect/capture/testdata/tshark)"},
		},
	},
	{file: "opc_python_opcua-client-server_minimal-2.pcap", port: 4840, hello: 2},
	{file: "opc_open62541_client-server_encrypted.pcap", port: 4840, hello: 4},
	{file: "local_nodeopcua_none_session.pcapng", port: 4840, hello: 2},
	// Captures without a licence to redistribute: read from the shared
	// collection when it is there, never copied (testdata/pcap/README.md).
	{file: "kb_modbus_lo.pcap", dir: sharedPcapDir, port: 502},
	{file: "kb_live_attacks_captured.pcap", dir: sharedPcapDir, port: 502},
	{file: "s2p_modbus.pcap", dir: sharedPcapDir, port: 502},
}

const (
	pcapDir       = "../testdata/pcap"
	sharedPcapDir = "/work/shared/testdata-pcap"
)

func (c *diffCase) path() string {
	d := c.dir
	if d == "" {
		d = pcapDir
	}
	return filepath.Join(d, c.file)
}

func (c *diffCase) opcua() bool { return c.port == 4840 }

// tsharkArgs is the command that produced the committed lines.
func (c *diffCase) tsharkArgs() []string {
	var args []string
	if c.decode != "" {
		args = append(args, "-d", c.decode)
	}
	if c.opcua() {
		return append(args, "-Y", "opcua", "-T", "fields", "-e", "frame.number", "-e", "tcp.srcport", "-e", "tcp.dstport",
			"-e", "opcua.transport.type", "-e", "opcua.servicenodeid.numeric")
	}
	return append(args, "-Y", "mbtcp", "-T", "fields", "-e", "frame.number", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "modbus.func_code")
}

// tsharkCounts parses tshark's lines into counts by "request <key>" and
// "response <key>", with the frames of each for the messages.
func tsharkCounts(t *testing.T, c *diffCase, lines []string) (map[string]int, map[string][]int) {
	t.Helper()
	counts, frames := map[string]int{}, map[string][]int{}
	for _, line := range lines {
		f := strings.Split(line, "\t")
		frame, _ := strconv.Atoi(f[0])
		dst, _ := strconv.Atoi(f[2])
		dir := "response"
		if dst == int(c.port) {
			dir = "request"
		}
		var keys []string
		if c.opcua() {
			types := strings.Split(f[3], ",")
			var ids []string
			if len(f) > 4 && f[4] != "" {
				ids = strings.Split(f[4], ",")
			}
			for i, typ := range types {
				k := typ
				// tshark lists a service id only for the messages it could
				// read: with several messages in one segment, the ids
				// belong to them in order.
				if i < len(ids) {
					k += " " + ids[i]
				}
				keys = append(keys, k)
			}
		} else {
			keys = strings.Split(f[3], ",")
		}
		for _, k := range keys {
			counts[dir+" "+k]++
			frames[dir+" "+k] = append(frames[dir+" "+k], frame)
		}
	}
	return counts, frames
}

func committedLines(t *testing.T, c *diffCase) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "tshark", c.file+".tsv"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	return lines
}

// countSink counts what the decoders produce, keyed like tsharkCounts.
type countSink struct {
	opcua  bool
	counts map[string]int
	ops    int
	// malformed lists, per key, the reasons of the malformed frames
	// counted in counts.
	malformed map[string][]string
}

func (s *countSink) flowStart(*Flow) {}
func (s *countSink) flowEnd(*Flow)   {}

func (s *countSink) request(rq *Request) {
	s.ops++
	op := rq.Input.Op
	if !s.opcua {
		s.counts["request "+strconv.Itoa(int(op.Modbus.Function))]++
		return
	}
	u := op.OPCUA
	var k string
	switch {
	case op.Name == "open_secure_channel":
		k = "OPN"
	case op.Name == "close_secure_channel":
		k = "CLO"
	default:
		k = "MSG"
	}
	if !u.Opaque {
		k += " " + strconv.Itoa(int(u.TypeID))
	}
	s.counts["request "+k]++
}

func (s *countSink) response(rs *Response) {
	if !s.opcua {
		s.counts["response "+strconv.Itoa(int(rs.Function))]++
		return
	}
	k := rs.Message
	if !rs.Opaque && rs.Message != "ERR" {
		k += " " + strconv.Itoa(int(rs.TypeID))
	}
	s.counts["response "+k]++
}

func (s *countSink) unanswered(*Flow, uint64) {}

// problem counts a malformed frame whose header was valid (tshark dissects
// it under its function code).
func (s *countSink) problem(p *Problem) {
	if p.Kind != ProblemMalformed || !p.Framed || s.opcua {
		return
	}
	dir := "request"
	if p.Dir == capture.ServerToClient {
		dir = "response"
	}
	k := dir + " " + strconv.Itoa(int(p.Bytes[7]&0x7f))
	s.counts[k]++
	s.malformed[k] = append(s.malformed[k], p.Reason)
}

func replayCounts(t *testing.T, c *diffCase) *countSink {
	t.Helper()
	s := &countSink{opcua: c.opcua(), counts: map[string]int{}, malformed: map[string][]string{}}
	p := newPipeline(s, newListenerSet(nil))
	if _, err := p.read(context.Background(), []string{c.path()}, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

// tsharkVersion is the version that produced the committed lines; another
// version's output is logged, not required to match (dissectors change).
const tsharkVersion = "4.0.17"

func TestCountsMatchTshark(t *testing.T) {
	tshark, _ := exec.LookPath("tshark")
	sameVersion := false
	if tshark != "" {
		out, _ := exec.Command(tshark, "--version").Output()
		first, _, _ := strings.Cut(string(out), "\n")
		sameVersion = strings.Contains(first, " "+tsharkVersion+" ")
		if !sameVersion {
			t.Logf("%s: the committed lines come from tshark %s; differences are logged only", first, tsharkVersion)
		}
	}
	for i := range diffCases {
		c := &diffCases[i]
		t.Run(c.file, func(t *testing.T) {
			if _, err := os.Stat(c.path()); err != nil {
				t.Skipf("%s not present: %v", c.path(), err)
			}
			lines := committedLines(t, c)
			if tshark != "" {
				out, err := exec.Command(tshark, append([]string{"-r", c.path()}, c.tsharkArgs()...)...).Output()
				if err != nil {
					t.Fatalf("tshark: %v", err)
				}
				live := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
				switch {
				case slices.Equal(live, lines):
				case sameVersion:
					t.Fatalf("tshark now prints\n%s\ncommitted (testdata/tshark/%s.tsv):\n%s", out, c.file, strings.Join(lines, "\n"))
				default:
					t.Logf("this tshark prints\n%s\ncommitted (testdata/tshark/%s.tsv):\n%s", out, c.file, strings.Join(lines, "\n"))
				}
			} else {
				t.Log("tshark not installed: comparing with the committed output")
			}
			want, frames := tsharkCounts(t, c, lines)
			cs := replayCounts(t, c)
			got := cs.counts
			if len(cs.malformed) > 0 || len(c.malformed) > 0 {
				m := map[string][]string{}
				for k, f := range c.malformed {
					m[k] = f.reasons
				}
				if !maps.EqualFunc(cs.malformed, m, slices.Equal) {
					t.Errorf("malformed frames with a valid header: replay %v, the case explains %v", cs.malformed, m)
				}
			}
			if c.opcua() {
				hello := want["request HEL"] + want["response ACK"]
				if hello != c.hello {
					t.Errorf("tshark shows %d HEL/ACK, the case says %d", hello, c.hello)
				}
				delete(want, "request HEL")
				delete(want, "response ACK")
			}
			keys := slices.Sorted(maps.Keys(want))
			for k := range got {
				if _, ok := want[k]; !ok {
					keys = append(keys, k)
				}
			}
			explained := map[string]bool{}
			for _, k := range keys {
				d := got[k] - want[k]
				if e, ok := c.differ[k]; ok {
					explained[k] = true
					if d != e.n {
						t.Errorf("%s: replay %d, tshark %d (frames %v): the case explains a difference of %d (%s)", k, got[k], want[k], frames[k], e.n, e.why)
					}
					continue
				}
				if d != 0 {
					t.Errorf("%s: replay %d, tshark %d (frames %v)", k, got[k], want[k], frames[k])
				}
			}
			for k := range c.differ {
				if !explained[k] {
					t.Errorf("the case explains %q, which neither replay nor tshark shows", k)
				}
			}
			t.Logf("%d tshark lines, %d keys, %d operations", len(lines), len(keys), replayCounts(t, c).ops)
		})
	}
}

// TestTsharkFilesAreCurrent guards the committed files against a capture
// added without its tshark reading.
func TestTsharkFilesAreCurrent(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(pcapDir, "*.pcap*"))
	covered := map[string]bool{}
	for _, c := range diffCases {
		covered[c.file] = true
	}
	for _, f := range files {
		if !covered[filepath.Base(f)] {
			t.Errorf("%s has no case in diffCases", f)
		}
	}
	for _, c := range diffCases {
		b, err := os.ReadFile(filepath.Join("testdata", "tshark", c.file+".tsv"))
		if err != nil {
			t.Error(err)
			continue
		}
		first, _, _ := bytes.Cut(b, []byte("\n"))
		want := fmt.Sprintf("# tshark 4.0.17: tshark -r %s %s", c.file, strings.Join(c.tsharkArgs(), " "))
		if string(first) != want {
			t.Errorf("%s.tsv starts with\n%s\nwant\n%s", c.file, first, want)
		}
	}
}
