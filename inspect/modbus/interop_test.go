package modbus

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	sv "github.com/simonvetter/modbus"
)

// (a) An independent Go client (simonvetter/modbus) against memDevice,
// which is built only from this package's framer, decoder and encoder.
func TestInteropSimonvetterClient(t *testing.T) {
	dev := newMemDevice(t)
	client, err := sv.NewClient(&sv.ClientConfiguration{
		URL:     "tcp://" + dev.addr(),
		Timeout: 3 * time.Second,
		Logger:  log.New(io.Discard, "", 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Open(); err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.SetUnitId(1)

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// FC 5 and 15, read back with FC 1.
	must(client.WriteCoil(10, true))
	coils := []bool{true, true, false, true, false, true, false, false, false, true, true, true, true, true, false, false, true, true, false}
	must(client.WriteCoils(20, coils))
	got, err := client.ReadCoils(20, uint16(len(coils)))
	must(err)
	if !slices.Equal(got, coils) {
		t.Errorf("FC1 after FC15: %v, want %v", got, coils)
	}
	if c, err := client.ReadCoil(10); err != nil || !c {
		t.Errorf("FC1 after FC5: %v, %v", c, err)
	}
	must(client.WriteCoil(10, false))
	if c, err := client.ReadCoil(10); err != nil || c {
		t.Errorf("FC1 after FC5 OFF: %v, %v", c, err)
	}
	// FC 2: the device's discrete inputs are (address % 3 == 0).
	di, err := client.ReadDiscreteInputs(65530, 6)
	must(err)
	if want := []bool{false, false, true, false, false, true}; !slices.Equal(di, want) {
		t.Errorf("FC2: %v, want %v", di, want)
	}
	// FC 6 and 16, read back with FC 3; FC 4 reads input register i = i.
	must(client.WriteRegister(100, 3681))
	regs := []uint16{0xfe69, 0xeb11, 0x19c3, 0x4067, 0xc289, 0xdc1f, 0x1a38, 0x3bb8, 0xc518, 0x9746}
	must(client.WriteRegisters(110, regs))
	h, err := client.ReadRegisters(100, 20, sv.HOLDING_REGISTER)
	must(err)
	if h[0] != 3681 || !slices.Equal(h[10:20], regs) {
		t.Errorf("FC3: %v", h)
	}
	in, err := client.ReadRegisters(65411, 125, sv.INPUT_REGISTER)
	must(err)
	if len(in) != 125 || in[0] != 65411 || in[124] != 65535 {
		t.Errorf("FC4: %d registers, %d..%d", len(in), in[0], in[len(in)-1])
	}
	// The device's own view agrees with the client's.
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if dev.holding[100] != 3681 || dev.holding[119] != 0x9746 || dev.coils[10] || !dev.coils[20] {
		t.Errorf("device tables not written as requested")
	}
	for _, name := range []string{NameReadCoils, NameReadDiscreteInputs, NameReadHoldingRegisters, NameReadInputRegisters,
		NameWriteSingleCoil, NameWriteSingleRegister, NameWriteMultipleCoils, NameWriteMultipleRegisters} {
		if dev.ops[name] == 0 {
			t.Errorf("the device never decoded a %s request", name)
		}
	}
	if len(dev.refused) != 0 {
		t.Errorf("requests refused: %v", dev.refused)
	}
}

// svHandler is an in-memory simonvetter RequestHandler: discrete input i is
// (i%3 == 0), input register i is i^0x5555, addresses from 60000 up do
// not exist (exception 02).
type svHandler struct {
	mu      sync.Mutex
	coils   map[uint16]bool
	holding map[uint16]uint16
}

func (h *svHandler) HandleCoils(req *sv.CoilsRequest) ([]bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if int(req.Addr)+int(req.Quantity) > 60000 {
		return nil, sv.ErrIllegalDataAddress
	}
	out := make([]bool, req.Quantity)
	for i := range out {
		a := req.Addr + uint16(i)
		if req.IsWrite {
			h.coils[a] = req.Args[i]
		}
		out[i] = h.coils[a]
	}
	return out, nil
}

func (h *svHandler) HandleDiscreteInputs(req *sv.DiscreteInputsRequest) ([]bool, error) {
	out := make([]bool, req.Quantity)
	for i := range out {
		out[i] = (int(req.Addr)+i)%3 == 0
	}
	return out, nil
}

func (h *svHandler) HandleHoldingRegisters(req *sv.HoldingRegistersRequest) ([]uint16, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if int(req.Addr)+int(req.Quantity) > 60000 {
		return nil, sv.ErrIllegalDataAddress
	}
	out := make([]uint16, req.Quantity)
	for i := range out {
		a := req.Addr + uint16(i)
		if req.IsWrite {
			h.holding[a] = req.Args[i]
		}
		out[i] = h.holding[a]
	}
	return out, nil
}

func (h *svHandler) HandleInputRegisters(req *sv.InputRegistersRequest) ([]uint16, error) {
	out := make([]uint16, req.Quantity)
	for i := range out {
		out[i] = (req.Addr + uint16(i)) ^ 0x5555
	}
	return out, nil
}

// startSimonvetterServer starts a simonvetter server on 127.0.0.1. Its API
// cannot report the port it bound, so a free port is reserved with :0 and
// released just before; the start is retried if another process took it.
func startSimonvetterServer(t *testing.T, h sv.RequestHandler) string {
	t.Helper()
	for attempt := 0; attempt < 10; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		srv, err := sv.NewServer(&sv.ServerConfiguration{URL: "tcp://" + addr, Timeout: 10 * time.Second,
			MaxClients: 4, Logger: log.New(io.Discard, "", 0)}, h)
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(); err != nil {
			continue
		}
		t.Cleanup(func() { srv.Stop() })
		return addr
	}
	t.Fatal("could not start the simonvetter server")
	return ""
}

// (b) Requests encoded by Request.Append, answered by an independent Go
// server (simonvetter/modbus), validated by Response.Decode against the
// request and re-encoded byte for byte.
func TestInteropSimonvetterServer(t *testing.T) {
	h := &svHandler{coils: map[uint16]bool{}, holding: map[uint16]uint16{}}
	conn, err := net.DialTimeout("tcp", startSimonvetterServer(t, h), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	f := NewFramer(conn)
	buf := make([]byte, 0, MaxADULen)
	var tid uint16
	roundTrip := func(req Request) Response {
		t.Helper()
		tid++
		req.TransactionID, req.Unit = tid, 1
		out, err := req.Append(buf[:0])
		if err != nil {
			t.Fatalf("Append %+v: %v", req, err)
		}
		if _, err := conn.Write(out); err != nil {
			t.Fatal(err)
		}
		adu, err := f.Next()
		if err != nil {
			t.Fatalf("FC %d: no response: %v", req.Function, err)
		}
		var resp Response
		if _, err := resp.Decode(adu, &req); err != nil {
			t.Fatalf("FC %d: response % x refused: %v", req.Function, adu, err)
		}
		again, err := resp.Append(nil)
		if err != nil || string(again) != string(adu) {
			t.Fatalf("FC %d: response re-encodes to % x (%v), server sent % x", req.Function, again, err, adu)
		}
		resp.Data = append([]byte(nil), resp.Data...) // outlive the next Next
		return resp
	}
	regs := func(vals ...uint16) []byte { return putRegisters(nil, vals) }

	r := roundTrip(Request{Function: FuncWriteSingleRegister, Address: 100, Value: 0x1234})
	if r.Address != 100 || r.Value != 0x1234 {
		t.Errorf("FC6 echo %+v", r)
	}
	r = roundTrip(Request{Function: FuncWriteMultipleRegisters, Address: 101, Quantity: 3, Data: regs(7, 8, 9)})
	if r.Address != 101 || r.Quantity != 3 {
		t.Errorf("FC16 echo %+v", r)
	}
	r = roundTrip(Request{Function: FuncReadHoldingRegisters, Address: 100, Quantity: 4})
	if want := regs(0x1234, 7, 8, 9); string(r.Data) != string(want) {
		t.Errorf("FC3 % x, want % x", r.Data, want)
	}
	r = roundTrip(Request{Function: FuncReadInputRegisters, Address: 1000, Quantity: 125})
	if len(r.Data) != 250 || be16(r.Data) != 1000^0x5555 || be16(r.Data[248:]) != 1124^0x5555 {
		t.Errorf("FC4: %d bytes", len(r.Data))
	}
	r = roundTrip(Request{Function: FuncWriteSingleCoil, Address: 5, Value: CoilOn})
	if r.Value != CoilOn {
		t.Errorf("FC5 echo %+v", r)
	}
	r = roundTrip(Request{Function: FuncWriteMultipleCoils, Address: 6, Quantity: 10, Data: []byte{0xcd, 0x01}})
	if r.Quantity != 10 {
		t.Errorf("FC15 echo %+v", r)
	}
	r = roundTrip(Request{Function: FuncReadCoils, Address: 5, Quantity: 11})
	// coil 5 ON, then 6..15 = 1011 0011 1 0 (0xcd, 0x01 LSB first)
	if want := []byte{0x9b, 0x03}; string(r.Data) != string(want) {
		t.Errorf("FC1 % x, want % x", r.Data, want)
	}
	r = roundTrip(Request{Function: FuncReadDiscreteInputs, Address: 0, Quantity: 2000})
	if len(r.Data) != 250 || r.Data[0] != 0x49 {
		t.Errorf("FC2: %d bytes, first % x", len(r.Data), r.Data[:1])
	}
	// Exceptions from the independent server, validated as answers.
	r = roundTrip(Request{Function: FuncReadHoldingRegisters, Address: 59999, Quantity: 2})
	if r.Exception != ExIllegalDataAddress {
		t.Errorf("FC3 past the server's table: %+v", r)
	}
	r = roundTrip(Request{Function: FuncReadExceptionStatus})
	if r.Exception != ExIllegalFunction {
		t.Errorf("FC7 (unsupported by the server): %+v", r)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.holding[100] != 0x1234 || h.holding[103] != 9 || !h.coils[5] || !h.coils[6] || h.coils[7] {
		t.Errorf("server tables: %v %v", h.holding, h.coils)
	}
}

// (c) pymodbus 3.0 (an independent Python stack) exercises the function
// codes simonvetter does not speak against memDevice.
func TestInteropPymodbusClient(t *testing.T) {
	if err := exec.Command("/usr/bin/python3", "-c", "import pymodbus").Run(); err != nil {
		t.Skipf("pymodbus is not importable by /usr/bin/python3 (%v): install Debian's python3-pymodbus to run this interop test", err)
	}
	dev := newMemDevice(t)
	dev.mu.Lock()
	dev.files[[2]uint16{4, 1}], dev.files[[2]uint16{4, 2}] = 0x0dfe, 0x0020 // spec §6.14 example
	dev.files[[2]uint16{3, 9}], dev.files[[2]uint16{3, 10}] = 0x33cd, 0x0040
	dev.holding[40] = 0x12                                      // spec §6.16 example: becomes 0x17
	copy(dev.holding[3:], []uint16{0x00fe, 0x0acd, 1, 3, 0x0d}) // spec §6.17 example
	dev.fifo[0x04de] = []uint16{0x01b8, 0x1284, 3, 4, 5, 6}
	dev.holding[100], dev.holding[101], dev.holding[102] = 3681, 2, 1
	dev.mu.Unlock()

	host, port, _ := net.SplitHostPort(dev.addr())
	cmd := exec.Command("/usr/bin/python3", "testdata/pymodbus_client.py", host, port)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pymodbus client: %v\n%s", err, stderr.String())
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("pymodbus output %q: %v", out, err)
	}
	hexOf := func(s string) string { return fmt.Sprintf("%x", s) }
	want := map[string]any{
		"fc3":  []any{3681.0, 2.0, 1.0},
		"fc16": []any{200.0, 3.0},
		"fc15": []any{30.0, 4.0},
		"fc1":  []any{1.0, 0.0, 1.0, 1.0},
		"fc7":  float64(0x6d),
		// pymodbus decodes FC 8 data as 16-bit words.
		"fc8_00": []any{float64(0xa537)},
		"fc8_01": []any{float64(0xff00)},
		"fc8_02": []any{0.0},
		"fc8_10": []any{0.0},
		"fc8_11": []any{10.0}, // the device counts every message it executed
		"fc8_14": []any{11.0},
		"fc8_20": []any{0.0},
		"fc11":   []any{true, 13.0},
		"fc12":   []any{true, 14.0, 14.0, []any{32.0, 0.0}},
		"fc17":   []any{hexOf("Conduit-test") + "ff", true},
		"fc20":   []any{"0dfe0020", "33cd0040"},
		// pymodbus decodes our echo of its FC 21 request, and the read-back
		// shows the write landed.
		"fc21":            []any{[]any{4.0, 7.0, "06af04be100d"}},
		"fc20_after_fc21": []any{"06af04be100d"},
		"fc22":            []any{40.0, float64(0xf2), float64(0x25)},
		"fc22_readback":   []any{float64(0x17)},
		// Written 14-16 first, then read 3-8 (spec §6.17 example).
		"fc23": []any{float64(0xfe), float64(0x0acd), 1.0, 3.0, float64(0x0d), 0.0},
		// pymodbus 3.0 ReadFifoQueueResponse.decode loops over
		// range(fifo_count - 4): of our 6 queued values it returns the
		// first 2. The bytes on the wire are checked by memDevice's own
		// Response.Decode; this only shows pymodbus understood the frame.
		"fc24":   []any{float64(0x01b8), float64(0x1284)},
		"fc43_1": []any{1.0, float64(0x82), 0.0, 0.0, map[string]any{"0": "Conduit", "1": "CDT-MB", "2": "1.0"}},
		"fc43_2": []any{2.0, float64(0x82), 0.0, 0.0, map[string]any{"0": "Conduit", "1": "CDT-MB", "2": "1.0",
			"3": "https://example.invalid/", "4": "conduit test device", "5": "memDevice", "6": "inspect/modbus"}},
		"fc43_3": []any{3.0, float64(0x82), 0.0, 0.0, map[string]any{"0": "Conduit", "1": "CDT-MB", "2": "1.0",
			"3": "https://example.invalid/", "4": "conduit test device", "5": "memDevice", "6": "inspect/modbus"}},
		"fc43_4": []any{4.0, map[string]any{"4": "conduit test device"}},
	}
	for k, w := range want {
		if !reflect.DeepEqual(got[k], w) {
			t.Errorf("%s: pymodbus decoded %v, want %v", k, got[k], w)
		}
	}
	// Refusals came back as the exceptions a device sends; pymodbus prints
	// (function|0x80, function, exception name).
	for k, exc := range map[string]string{"fc3_126": "(131, 3, IllegalValue)", "fc3_overflow": "(131, 3, IllegalAddress)"} {
		m, _ := got[k].(map[string]any)
		if s, _ := m["error"].(string); !strings.Contains(s, exc) {
			t.Errorf("%s: %v, want an exception response %s", k, got[k], exc)
		}
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	for _, name := range []string{NameReadExceptionStatus, NameDiagnostics, NameGetCommEventCounter, NameGetCommEventLog,
		NameReportServerID, NameReadFileRecord, NameWriteFileRecord, NameMaskWriteRegister,
		NameReadWriteMultipleRegisters, NameReadFIFOQueue, NameReadDeviceIdentification} {
		if dev.ops[name] == 0 {
			t.Errorf("the device never decoded a %s request from pymodbus", name)
		}
	}
	if want := map[string]int{ReasonBadQuantity: 1, ReasonAddressOverflow: 1}; !reflect.DeepEqual(dev.refused, want) {
		t.Errorf("refused %v, want %v", dev.refused, want)
	}
	if dev.holding[200] != 11 || dev.holding[202] != 33 || !dev.coils[30] || dev.coils[31] {
		t.Errorf("pymodbus writes did not land")
	}
}
