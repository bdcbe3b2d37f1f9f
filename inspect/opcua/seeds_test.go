package opcua

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
)

// TestWriteFuzzSeeds regenerates the committed seed corpora from the
// captures. It runs only with OPCUA_WRITE_SEEDS=1:
//
//	OPCUA_WRITE_SEEDS=1 go test ./inspect/opcua -run TestWriteFuzzSeeds
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("OPCUA_WRITE_SEEDS") == "" {
		t.Skip("set OPCUA_WRITE_SEEDS=1 to regenerate testdata/fuzz seeds")
	}
	write := func(fuzz, name string, data []byte) {
		dir := filepath.Join("testdata", "fuzz", fuzz)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(data)) + ")\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range captureCounts {
		st := replay(t, tc.file, func(int) Config { return tc.cfg })
		base := tc.file[:len(tc.file)-len(filepath.Ext(tc.file))]
		// FuzzDecodeService: one body per request type per capture.
		seen := map[string]bool{}
		for _, b := range st.bodies {
			tid, _ := ResponseTypeID(b)
			key := fmt.Sprint(tid)
			if seen[key] {
				continue
			}
			seen[key] = true
			write("FuzzDecodeService", fmt.Sprintf("%s_%d", base, tid), b)
		}
		// FuzzValidateResponse: one body per response type per capture.
		seenResp := map[uint32]bool{}
		for _, b := range st.respBodies {
			tid, _ := ResponseTypeID(b)
			if seenResp[tid] {
				continue
			}
			seenResp[tid] = true
			write("FuzzValidateResponse", fmt.Sprintf("%s_%d", base, tid), b)
		}
		// FuzzFramer: the first 16 KiB of the capture's chunks, in order.
		var stream []byte
		for _, ch := range st.chunks {
			if len(stream)+len(ch) > 16<<10 {
				break
			}
			stream = append(stream, ch...)
		}
		write("FuzzFramer", base, stream)
		// FuzzHello: HEL and ACK chunks.
		for i, ch := range st.chunks {
			if s := string(ch[:3]); s == "HEL" || s == "ACK" {
				write("FuzzHello", fmt.Sprintf("%s_%s_%d", base, s, i), ch)
			}
		}
	}
	// FuzzReassembly: the node-opcua client's MSG chunks after the
	// handshake, renumbered from 2 as a whole session, and a Write split
	// in three chunks.
	st := replay(t, "local_nodeopcua_none_session.pcapng", nil)
	var stream []byte
	seq := uint32(2)
	for _, ch := range st.chunks {
		if string(ch[:3]) == "MSG" && le32(ch[8:]) == 2 && reflect.DeepEqual(ch[12:16], []byte{1, 0, 0, 0}) {
			c := append([]byte(nil), ch...)
			SetSequenceNumber(c, seq)
			seq++
			stream = append(stream, c...)
			if len(stream) > 8<<10 {
				break
			}
		}
	}
	write("FuzzReassembly", "nodeopcua_msgs", stream)
	w := unhex(t, writeHex)[symBodyStart:]
	split := append(append(chunk('C', 2, 8, w[:10], 0), chunk('C', 3, 8, w[10:40], 0)...), chunk('F', 4, 8, w[40:], 0)...)
	write("FuzzReassembly", "write_three_chunks", split)
	// Hazards for the service decoder.
	write("FuzzDecodeService", "hazard_write_2_29", hazardWrite(t, 1<<29))
	write("FuzzDecodeService", "hazard_write_2_31", hazardWrite(t, 1<<31-1))
	write("FuzzDecodeService", "hazard_empty_matrix_huge_dimension", writeOfValue(t, "01 c6 00000000 02000000 ffffff7f 00000000"))
	write("FuzzDecodeService", "matrix_2x3", writeOfValue(t, "01 c6 06000000 01000000 02000000 03000000 04000000 05000000 06000000 02000000 02000000 03000000"))
}
