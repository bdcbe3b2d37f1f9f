package opcua

import (
	"testing"
)

// Expected per-flow service counts, from tshark 4.0.17:
//
//	tshark -r F -Y opcua -T fields -e tcp.stream -e opcua.transport.type -e opcua.servicenodeid.numeric | sort | uniq -c
//
// tshark's tcp.stream numbers flows as this test does (order of first
// packet). Its rows count TCP segments: where one segment carries two
// messages ("MSG,MSG 826,826" in the open62541 capture) the row is counted
// once per message here. Keys are "flow/type id" for MSG/OPN/CLO bodies.
var captureCounts = []struct {
	file      string
	cfg       Config
	requests  map[string]int
	responses map[string]int
	opaque    map[int]int // flow -> opaque complete messages (OPN + MSG + CLO)
}{
	{
		file: "opc_open62541_client-server_minimal.pcap",
		requests: map[string]int{
			"0/428": 1, "0/446": 1, "0/452": 1,
			"1/428": 1, "1/446": 1, "1/452": 1, "1/461": 1, "1/467": 1, "1/473": 1, "1/488": 4, "1/527": 2,
			"1/631": 1, "1/673": 2, "1/712": 1, "1/751": 1, "1/787": 1, "1/826": 9 + 2, "1/847": 1,
		},
		responses: map[string]int{
			"0/431": 1, "0/449": 1,
			"1/431": 1, "1/449": 1, "1/464": 1, "1/470": 1, "1/476": 1, "1/491": 4, "1/530": 2, "1/634": 1,
			"1/676": 2, "1/715": 1, "1/754": 1, "1/790": 1, "1/829": 11, "1/850": 1,
		},
	},
	{
		// Despite its name this capture has no missing bytes (tshark
		// reports no lost segment; frames 26 and 30 are spurious
		// retransmissions, which readSegments trims). Flow 0 starts with
		// HEL/ACK but ends mid-session.
		file: "opc_opcua_with-gap_with-handshake.pcap",
		requests: map[string]int{
			"0/446": 1, "0/461": 1, "0/467": 1, "0/631": 31, "0/751": 1, "0/787": 1, "0/826": 50,
			"1/428": 1, "1/446": 1, "1/452": 1,
			"2/428": 1, "2/446": 1, "2/452": 1, "2/461": 1, "2/467": 1, "2/473": 1, "2/488": 4, "2/527": 2,
			"2/631": 1, "2/673": 2, "2/712": 1, "2/751": 1, "2/787": 1, "2/826": 11, "2/847": 1,
		},
		responses: map[string]int{
			"0/449": 1, "0/464": 1, "0/470": 1, "0/634": 31, "0/754": 1, "0/790": 1, "0/829": 48,
			"1/431": 1, "1/449": 1,
			"2/431": 1, "2/449": 1, "2/464": 1, "2/470": 1, "2/476": 1, "2/491": 4, "2/530": 2, "2/634": 1,
			"2/676": 2, "2/715": 1, "2/754": 1, "2/790": 1, "2/829": 11, "2/850": 1,
		},
	},
	{
		// tshark numbers the only OPC UA flow 1 (flow 0 is other traffic).
		file: "opc_python_opcua-client-server_minimal-2.pcap",
		requests: map[string]int{
			"1/446": 1, "1/452": 1, "1/461": 1, "1/467": 1, "1/473": 1, "1/527": 1, "1/554": 2, "1/631": 1,
		},
		responses: map[string]int{
			"1/449": 1, "1/464": 1, "1/470": 1, "1/476": 1, "1/530": 1, "1/557": 2, "1/634": 1,
		},
	},
	{
		// Flow 0: discovery on a None channel. Flow 1: Basic128Rsa15
		// SignAndEncrypt: 2 OPN, 8 MSG, 1 CLO that tshark cannot decode
		// either (no service id); here they are opaque, not errors.
		file: "opc_open62541_client-server_encrypted.pcap",
		cfg:  Config{SecurityMode: SecurityModeSignAndEncrypt},
		requests: map[string]int{
			"0/428": 1, "0/446": 1, "0/452": 1,
		},
		responses: map[string]int{
			"0/431": 1, "0/449": 1,
		},
		opaque: map[int]int{1: 2 + 8 + 1},
	},
	{
		file: "local_nodeopcua_none_session.pcapng",
		requests: map[string]int{
			"0/428": 1, "0/446": 1, "0/452": 1, "0/461": 1, "0/467": 1, "0/473": 1, "0/527": 1, "0/631": 4,
			"0/673": 2, "0/712": 2, "0/751": 1, "0/787": 1, "0/826": 9, "0/847": 1,
		},
		responses: map[string]int{
			"0/397": 5, "0/431": 1, "0/449": 1, "0/464": 1, "0/470": 1, "0/476": 1, "0/530": 1, "0/634": 4,
			"0/676": 2, "0/715": 2, "0/754": 1, "0/790": 1, "0/829": 4, "0/850": 1,
		},
	},
}

func TestCaptureCountsMatchTshark(t *testing.T) {
	for _, tc := range captureCounts {
		t.Run(tc.file, func(t *testing.T) {
			st := replay(t, tc.file, func(int) Config { return tc.cfg })
			if len(st.errors) != 0 {
				t.Fatalf("errors: %q", st.errors)
			}
			if len(st.gapFlows) != 0 {
				t.Errorf("unexpected gaps in flows %v", st.gapFlows)
			}
			if got, want := sortedKeys(st.requests), sortedKeys(tc.requests); got != want {
				t.Errorf("requests\n got %s\nwant %s", got, want)
			}
			if got, want := sortedKeys(st.responses), sortedKeys(tc.responses); got != want {
				t.Errorf("responses\n got %s\nwant %s", got, want)
			}
			want := tc.opaque
			if want == nil {
				want = map[int]int{}
			}
			if len(st.opaque) != len(want) {
				t.Errorf("opaque %v, want %v", st.opaque, want)
			}
			for f, n := range want {
				if st.opaque[f] != n {
					t.Errorf("opaque flow %d: %d, want %d", f, st.opaque[f], n)
				}
			}
		})
	}
}
