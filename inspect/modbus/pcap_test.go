package modbus

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// refusal is a frame the decoders must refuse, and why.
type refusal struct {
	frame    int
	toServer bool
	reason   string
}

// captureCase describes what every Modbus frame of a capture is: tshark's
// per-function count (requests and responses, from testdata/pcap/README.md)
// and every frame we refuse with the reason. Everything not listed must
// decode and re-encode to the identical bytes.
var captureCases = []struct {
	file       string
	port       uint16
	perSegment bool           // frame each TCP segment on its own
	tshark     map[int]int    // function code → frames, as tshark 4.0.17 counts them
	skipped    map[int]string // frames we frame but tshark does not count, and why
	refused    []refusal      // in capture order
	paired     int            // responses decoded against their request
	note       func(t *testing.T, adus []capturedADU)
}{
	{
		file: "local_pymodbus_allfc.pcapng", port: 15020,
		tshark: map[int]int{1: 12, 2: 2, 3: 22, 4: 4, 5: 6, 6: 6, 7: 2, 8: 14, 11: 2, 12: 2, 15: 2, 16: 4,
			17: 2, 20: 2, 21: 2, 22: 2, 23: 4, 24: 2, 43: 8, 65: 2},
		refused: []refusal{
			// pymodbus 3.0 answers FC 20 with an empty response (byte
			// count 0): no sub-response for the one sub-request (spec §6.14).
			{85, false, ReasonBadByteCount},
			// The capture probes the limits on purpose: 126 registers and
			// 2001 coils. The device answered exception 3, as we would.
			{94, true, ReasonBadQuantity},
			{96, true, ReasonBadQuantity},
		},
		paired: 48, // of 51 responses: 85 is refused, 95 and 97 answer the refused requests (decoded unpaired)
	},
	{
		file: "zeek_modbusSmall.pcap", port: 502,
		tshark: map[int]int{1: 16, 15: 16},
		paired: 16,
	},
	{
		file: "zeek_modbus-and-non-modbus-p502.pcap", port: 502,
		tshark: map[int]int{1: 4, 3: 2, 5: 4, 6: 2},
		// A scanner speaking other protocols to port 502, and the server's
		// replies: none has protocol id 0, so each connection is closed at
		// its first 4 bytes.
		refused: []refusal{
			{29, true, ReasonBadProtocolID},  // DCE/RPC bind
			{31, false, ReasonBadProtocolID}, // server echoes 05 00 0b 03 ...
			{39, true, ReasonBadProtocolID},  // NFS/ONC RPC call
			{41, false, ReasonBadProtocolID},
			{49, true, ReasonBadProtocolID}, // TLS ClientHello
			{51, false, ReasonBadProtocolID},
			{65, true, ReasonBadProtocolID}, // HTTP GET
			{70, true, ReasonBadProtocolID}, // "MGLNDD_..." banner probe
			{72, false, ReasonBadProtocolID},
			{80, true, ReasonBadProtocolID}, // RDP / X.224 connection request
			{82, false, ReasonBadProtocolID},
		},
		paired: 6,
	},
	{
		// Fuzzed traffic with gaps, retransmissions and out-of-order
		// segments: no coherent stream, so each segment is framed alone
		// and responses are decoded unpaired (every transaction id is 0).
		file: "zeek_fuzz-72.pcap", port: 502, perSegment: true,
		tshark: map[int]int{29: 1, 32: 1, 33: 1, 35: 1, 36: 1, 37: 1, 43: 1, 46: 1, 47: 1, 50: 1, 52: 1, 54: 1,
			63: 1, 65: 1, 70: 1, 71: 2},
		skipped: map[int]string{
			2:  "TCP Out-Of-Order",
			7:  "tshark reassembles it onto the 2 bytes frame 6 carries past its ADU",
			19: "TCP Retransmission", 21: "TCP Retransmission", 26: "TCP Retransmission",
			27: "TCP Retransmission", 32: "TCP Retransmission",
			23: "TCP Spurious Retransmission", 25: "TCP Spurious Retransmission", 30: "TCP Spurious Retransmission",
		},
		refused: []refusal{
			{1, false, ReasonBadLength},     // 00 00 00 00 00 00: MBAP length 0
			{6, true, ReasonTruncated},      // MBAP length 4 (FC 33 + 2 bytes), then 2 more bytes: a cut header
			{8, false, ReasonBadProtocolID}, // protocol id 0x0200
			{12, false, ReasonBadProtocolID},
			{14, true, ReasonTruncated},      // MBAP length 37 in a 12-byte segment
			{16, true, ReasonUnknownMEIType}, // FC 43 with reserved MEI type 0
			{34, false, ReasonBadProtocolID}, // protocol id 0x0008
			{35, true, ReasonBadProtocolID},  // aa aa aa ...
		},
	},
	{
		file: "zeek_modbus-eit.pcap", port: 502,
		tshark: map[int]int{43: 4},
		refused: []refusal{
			// Conformity 0, more follows 0x4d, next object 0xb7, 0 objects
			// and 4 bytes that belong to none: the PDU is not what its
			// fields say.
			{2, false, ReasonLengthMismatch},
		},
		paired: 1, // frame 4 answers frame 3 with exception 04 (unit 255)
	},
	{
		file: "zeek_4SICS-GeekLounge-151022-min.pcap", port: 502,
		tshark: map[int]int{23: 2},
		refused: []refusal{
			// Full-size MBAP length 254, but FC 23's byte count (191) ends
			// the PDU at 201 bytes: 52 bytes would ride along unchecked.
			{1, true, ReasonLengthMismatch},
		},
		// Frame 2 (exception 0x0A, gateway path unavailable) answers a
		// request we refused; it decodes unpaired.
	},
}

func TestCaptures(t *testing.T) {
	for _, cc := range captureCases {
		t.Run(cc.file, func(t *testing.T) {
			segs := readSegments(t, cc.file, cc.port)
			var adus []capturedADU
			if cc.perSegment {
				adus = splitSegments(segs)
			} else {
				adus = splitStreams(segs)
			}
			hist := map[int]int{}
			var refused []refusal
			pending := map[string][]*Request{} // per connection, in order
			paired, roundTrips := 0, 0
			for _, a := range adus {
				if a.framing != nil {
					refused = append(refused, refusal{a.frame, a.toServer, ReasonOf(a.framing)})
					continue
				}
				if _, ok := cc.skipped[a.frame]; !ok {
					hist[int(a.adu[HeaderLen]&^ExceptionBit)]++
				}
				var out []byte
				var err error
				if a.toServer {
					r := new(Request)
					if _, err = r.Decode(a.adu); err == nil {
						out, err = r.Append(nil)
						if !cc.perSegment {
							pending[a.client] = append(pending[a.client], r)
						}
					}
				} else {
					var req *Request
					q := pending[a.client]
					for i, p := range q {
						if p.TransactionID == be16(a.adu) {
							req = p
							pending[a.client] = slices.Delete(q, i, i+1)
							break
						}
					}
					var r Response
					if _, err = r.Decode(a.adu, req); err == nil {
						if req != nil {
							paired++
						}
						out, err = r.Append(nil)
					}
				}
				if err != nil {
					refused = append(refused, refusal{a.frame, a.toServer, ReasonOf(err)})
					continue
				}
				if !bytes.Equal(out, a.adu) {
					t.Errorf("frame %d: re-encoded\n % x\nfrom\n % x", a.frame, out, a.adu)
				}
				roundTrips++
			}
			if !maps.Equal(hist, cc.tshark) {
				t.Errorf("per-function counts\n got %v\nwant %v (tshark)", hist, cc.tshark)
			}
			if !slices.Equal(refused, cc.refused) {
				t.Errorf("refused frames\n got %v\nwant %v", refused, cc.refused)
			}
			if paired != cc.paired {
				t.Errorf("%d responses validated against their request, want %d", paired, cc.paired)
			}
			t.Logf("%d ADUs re-encoded byte for byte, %d responses paired, %d refused", roundTrips, paired, len(refused))
		})
	}
}

// TestCapturesAgainstTshark recomputes the per-function counts with tshark
// itself, when it is installed, so the hard-coded counts cannot drift from
// what the independent dissector says.
func TestCapturesAgainstTshark(t *testing.T) {
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Skip("tshark not installed; TestCaptures uses the counts recorded from tshark 4.0.17")
	}
	for _, cc := range captureCases {
		t.Run(cc.file, func(t *testing.T) {
			args := []string{"-r", pcapDir + "/" + cc.file, "-Y", "mbtcp", "-T", "fields", "-e", "modbus.func_code"}
			if cc.port != 502 {
				args = append(args, "-d", fmt.Sprintf("tcp.port==%d,mbtcp", cc.port))
			}
			out, err := exec.Command("tshark", args...).Output()
			if err != nil {
				t.Fatalf("tshark: %v", err)
			}
			got := map[int]int{}
			for _, line := range strings.Fields(string(out)) {
				for _, f := range strings.Split(line, ",") {
					fc, err := strconv.Atoi(f)
					if err != nil {
						t.Fatalf("tshark output %q", line)
					}
					got[fc]++
				}
			}
			if !maps.Equal(got, cc.tshark) {
				t.Errorf("tshark now says %v, the table says %v", got, cc.tshark)
			}
		})
	}
}

// A sanity check of the helpers: errors.As sees through the captured
// framing errors.
func TestCaptureFramingErrorsAreTyped(t *testing.T) {
	adus := splitStreams(readSegments(t, "zeek_modbus-and-non-modbus-p502.pcap", 502))
	n := 0
	for _, a := range adus {
		if a.framing != nil {
			var fe *FramingError
			if !errors.As(a.framing, &fe) {
				t.Errorf("frame %d: %T", a.frame, a.framing)
			}
			n++
		}
	}
	if n == 0 {
		t.Error("no framing errors found in a capture full of non-Modbus traffic")
	}
}
