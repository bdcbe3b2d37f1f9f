package modbus

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// mustRequest decodes a request ADU that a test relies on being valid.
func mustRequest(tb testing.TB, adu []byte) *Request {
	tb.Helper()
	var r Request
	if _, err := r.Decode(adu); err != nil {
		tb.Fatalf("request % x: %v", adu, err)
	}
	return &r
}

// Response codec table. req is the request ADU the response answers (one
// line; its annotated form is in requestCases), adu the response annotated
// field by field. Frame numbers refer to local_pymodbus_allfc.pcapng.
var responseCases = []struct {
	name string
	req  []byte
	adu  []byte
	want Response
}{
	{
		name: "FC1 read coils, frame 33",
		req:  []byte{0x00, 0x0e, 0, 0, 0, 6, 1, 0x01, 0x00, 0x14, 0x00, 0x13}, // frame 32: 19 coils at 20
		adu: []byte{
			0x00, 0x0e, 0x00, 0x00, // tid 14
			0x00, 0x06, // length 6
			0x01,             // unit id
			0x01,             // function: read coils
			0x03,             // byte count 3 = ceil(19/8)
			0x2b, 0x3e, 0x03, // coils 20-27, 28-35, 36-38
		},
		want: Response{TransactionID: 14, Unit: 1, Function: FuncReadCoils, Quantity: 19, Data: []byte{0x2b, 0x3e, 0x03}},
	},
	{
		name: "FC1 read one coil, frame 21",
		req:  []byte{0x00, 0x08, 0, 0, 0, 6, 1, 0x01, 0x00, 0x0a, 0x00, 0x01}, // frame 20: coil 10
		adu: []byte{
			0x00, 0x08, 0x00, 0x00, 0x00, 0x04, 0x01, // MBAP: tid 8, length 4
			0x01, // function: read coils
			0x01, // byte count 1
			0x01, // coil 10 ON
		},
		want: Response{TransactionID: 8, Unit: 1, Function: FuncReadCoils, Quantity: 1, Data: []byte{0x01}},
	},
	{
		name: "FC2 read discrete inputs, frame 6",
		req:  []byte{0x00, 0x01, 0, 0, 0, 6, 1, 0x02, 0x00, 0x00, 0x00, 0x10}, // frame 4: 16 inputs at 0
		adu: []byte{
			0x00, 0x01, 0x00, 0x00, 0x00, 0x05, 0x01, // MBAP: tid 1, length 5
			0x02,       // function: read discrete inputs
			0x02,       // byte count 2
			0x55, 0x55, // inputs 0-15 alternate
		},
		want: Response{TransactionID: 1, Unit: 1, Function: FuncReadDiscreteInputs, Quantity: 16, Data: []byte{0x55, 0x55}},
	},
	{
		name: "FC3 read holding registers, frame 37",
		req:  []byte{0x00, 0x10, 0, 0, 0, 6, 1, 0x03, 0x00, 0x64, 0x00, 0x01}, // frame 36: register 100
		adu: []byte{
			0x00, 0x10, 0x00, 0x00, 0x00, 0x05, 0x01, // MBAP: tid 16, length 5
			0x03,       // function: read holding registers
			0x02,       // byte count 2 = 2 × quantity
			0x0e, 0x61, // register 100 = 3681
		},
		want: Response{TransactionID: 16, Unit: 1, Function: FuncReadHoldingRegisters, Quantity: 1, Data: []byte{0x0e, 0x61}},
	},
	{
		name: "FC3 read registers, mbpoll, frame 126",
		req:  []byte{0x00, 0x01, 0, 0, 0, 6, 1, 0x03, 0x00, 0x00, 0x00, 0x0a}, // frame 124: 10 registers at 0
		adu: []byte{
			0x00, 0x01, 0x00, 0x00, 0x00, 0x17, 0x01, // MBAP: tid 1, length 23
			0x03,                                                       // function: read holding registers
			0x14,                                                       // byte count 20
			0x00, 0x7b, 0x01, 0xc8, 0x00, 0x02, 0x00, 0x03, 0x00, 0x04, // 123 456 2 3 4
			0x00, 0x05, 0x00, 0x06, 0x00, 0x07, 0x00, 0x08, 0x00, 0x09, // 5 6 7 8 9
		},
		want: Response{TransactionID: 1, Unit: 1, Function: FuncReadHoldingRegisters, Quantity: 10,
			Data: []byte{0x00, 0x7b, 0x01, 0xc8, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8, 0, 9}},
	},
	{
		name: "FC4 read input registers, frame 9",
		req:  []byte{0x00, 0x02, 0, 0, 0, 6, 1, 0x04, 0x00, 0x64, 0x00, 0x0a}, // frame 8: 10 registers at 100
		adu: []byte{
			0x00, 0x02, 0x00, 0x00, 0x00, 0x17, 0x01, // MBAP: tid 2, length 23
			0x04,                                                       // function: read input registers
			0x14,                                                       // byte count 20
			0x00, 0x64, 0x00, 0x65, 0x00, 0x66, 0x00, 0x67, 0x00, 0x68, // 100..104
			0x00, 0x69, 0x00, 0x6a, 0x00, 0x6b, 0x00, 0x6c, 0x00, 0x6d, // 105..109
		},
		want: Response{TransactionID: 2, Unit: 1, Function: FuncReadInputRegisters, Quantity: 10,
			Data: []byte{0, 0x64, 0, 0x65, 0, 0x66, 0, 0x67, 0, 0x68, 0, 0x69, 0, 0x6a, 0, 0x6b, 0, 0x6c, 0, 0x6d}},
	},
	{
		name: "FC5 write single coil echo, frame 19",
		req:  []byte{0x00, 0x07, 0, 0, 0, 6, 1, 0x05, 0x00, 0x0a, 0xff, 0x00},
		adu: []byte{
			0x00, 0x07, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 7
			0x05,       // function: write single coil
			0x00, 0x0a, // output address 10
			0xff, 0x00, // ON
		},
		want: Response{TransactionID: 7, Unit: 1, Function: FuncWriteSingleCoil, Address: 10, Value: CoilOn},
	},
	{
		name: "FC6 write single register echo, frame 35",
		req:  []byte{0x00, 0x0f, 0, 0, 0, 6, 1, 0x06, 0x00, 0x64, 0x0e, 0x61},
		adu: []byte{
			0x00, 0x0f, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 15
			0x06,       // function: write single register
			0x00, 0x64, // register 100
			0x0e, 0x61, // 3681
		},
		want: Response{TransactionID: 15, Unit: 1, Function: FuncWriteSingleRegister, Address: 100, Value: 3681},
	},
	{
		name: "FC7 read exception status, frame 77",
		req:  []byte{0x00, 0x24, 0, 0, 0, 2, 1, 0x07},
		adu: []byte{
			0x00, 0x24, 0x00, 0x00, 0x00, 0x03, 0x01, // MBAP: tid 36, length 3
			0x07, // function: read exception status
			0x00, // output data
		},
		want: Response{TransactionID: 36, Unit: 1, Function: FuncReadExceptionStatus, Data: []byte{0}},
	},
	{
		name: "FC8/00 return query data echo, frame 63",
		req:  []byte{0x00, 0x1d, 0, 0, 0, 6, 1, 0x08, 0x00, 0x00, 0xb8, 0xfa},
		adu: []byte{
			0x00, 0x1d, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 29
			0x08,       // function: diagnostics
			0x00, 0x00, // sub-function 0
			0xb8, 0xfa, // the echoed data
		},
		want: Response{TransactionID: 29, Unit: 1, Function: FuncDiagnostics, Subfunction: DiagReturnQueryData, Data: []byte{0xb8, 0xfa}},
	},
	{
		name: "FC8/02 diagnostic register, frame 65",
		req:  []byte{0x00, 0x1e, 0, 0, 0, 6, 1, 0x08, 0x00, 0x02, 0x00, 0x00},
		adu: []byte{
			0x00, 0x1e, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 30
			0x08, 0x00, 0x02, // diagnostics, sub-function 2
			0x00, 0x00, // diagnostic register contents
		},
		want: Response{TransactionID: 30, Unit: 1, Function: FuncDiagnostics, Subfunction: DiagReturnDiagnosticRegister, Data: []byte{0, 0}},
	},
	{
		name: "FC8/11 bus message count, spec",
		req:  []byte{0x00, 0x20, 0, 0, 0, 6, 1, 0x08, 0x00, 0x0b, 0x00, 0x00},
		adu: []byte{
			0x00, 0x20, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 32
			0x08, 0x00, 0x0b, // diagnostics, sub-function 11
			0x01, 0x21, // 289 messages
		},
		want: Response{TransactionID: 32, Unit: 1, Function: FuncDiagnostics, Subfunction: DiagReturnBusMessageCount, Data: []byte{0x01, 0x21}},
	},
	{
		name: "FC11 get comm event counter, frame 79",
		req:  []byte{0x00, 0x25, 0, 0, 0, 2, 1, 0x0b},
		adu: []byte{
			0x00, 0x25, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 37, length 6
			0x0b,       // function: get comm event counter
			0x00, 0x00, // status: idle
			0x00, 0x00, // event count 0
		},
		want: Response{TransactionID: 37, Unit: 1, Function: FuncGetCommEventCounter},
	},
	{
		name: "FC11 busy, spec",
		req:  []byte{0x00, 0x25, 0, 0, 0, 2, 1, 0x0b},
		adu: []byte{
			0x00, 0x25, 0x00, 0x00, 0x00, 0x06, 0x01,
			0x0b,       // function: get comm event counter
			0xff, 0xff, // status: busy
			0x01, 0x08, // event count 264
		},
		want: Response{TransactionID: 37, Unit: 1, Function: FuncGetCommEventCounter, Status: 0xffff, EventCount: 264},
	},
	{
		name: "FC12 get comm event log, frame 81",
		req:  []byte{0x00, 0x26, 0, 0, 0, 2, 1, 0x0c},
		adu: []byte{
			0x00, 0x26, 0x00, 0x00, 0x00, 0x09, 0x01, // MBAP: tid 38, length 9
			0x0c,       // function: get comm event log
			0x06,       // byte count 6: no events
			0x00, 0x00, // status
			0x00, 0x00, // event count
			0x00, 0x00, // message count
		},
		want: Response{TransactionID: 38, Unit: 1, Function: FuncGetCommEventLog, Data: []byte{}},
	},
	{
		name: "FC12 with two events, spec",
		req:  []byte{0x00, 0x26, 0, 0, 0, 2, 1, 0x0c},
		adu: []byte{
			0x00, 0x26, 0x00, 0x00, 0x00, 0x0b, 0x01, // MBAP: length 11
			0x0c,       // function: get comm event log
			0x08,       // byte count 8
			0x00, 0x00, // status
			0x01, 0x08, // event count 264
			0x01, 0x21, // message count 289
			0x20, 0x00, // events: entered listen only mode, communications restart
		},
		want: Response{TransactionID: 38, Unit: 1, Function: FuncGetCommEventLog, EventCount: 264, MessageCount: 289, Data: []byte{0x20, 0x00}},
	},
	{
		name: "FC15 write multiple coils, frame 31",
		req:  []byte{0x00, 0x0d, 0, 0, 0, 0x0a, 1, 0x0f, 0x00, 0x14, 0x00, 0x13, 0x03, 0x2b, 0x3e, 0x03},
		adu: []byte{
			0x00, 0x0d, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 13
			0x0f,       // function: write multiple coils
			0x00, 0x14, // starting address 20
			0x00, 0x13, // quantity 19
		},
		want: Response{TransactionID: 13, Unit: 1, Function: FuncWriteMultipleCoils, Address: 20, Quantity: 19},
	},
	{
		name: "FC16 write multiple registers, frame 136 (mbpoll)",
		req:  []byte{0x00, 0x01, 0, 0, 0, 0x0b, 1, 0x10, 0x00, 0x00, 0x00, 0x02, 0x04, 0x00, 0x7b, 0x01, 0xc8},
		adu: []byte{
			0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 1
			0x10,       // function: write multiple registers
			0x00, 0x00, // starting address 0
			0x00, 0x02, // quantity 2
		},
		want: Response{TransactionID: 1, Unit: 1, Function: FuncWriteMultipleRegisters, Quantity: 2},
	},
	{
		name: "FC17 report server id, frame 83",
		req:  []byte{0x00, 0x27, 0, 0, 0, 2, 1, 0x11},
		adu: []byte{
			0x00, 0x27, 0x00, 0x00, 0x00, 0x1e, 0x01, // MBAP: tid 39, length 30
			0x11,                                                                                // function: report server id
			0x1b,                                                                                // byte count 27
			'P', 'e', 'e', 'r', 'T', 'e', 's', 't', '-', 'P', 'T', '-', 'M', 'B', '-', '1', '-', // server id
			'3', '.', '0', '.', '0', '.', 'r', 'c', '1',
			0xff, // run indicator status: ON
		},
		want: Response{TransactionID: 39, Unit: 1, Function: FuncReportServerID, Data: []byte("PeerTest-PT-MB-1-3.0.0.rc1\xff")},
	},
	{
		name: "FC20 read file record, two groups, spec",
		req:  []byte{0x00, 0x03, 0, 0, 0, 0x11, 1, 0x14, 0x0e, 6, 0, 4, 0, 1, 0, 2, 6, 0, 3, 0, 9, 0, 2},
		adu: []byte{
			0x00, 0x03, 0x00, 0x00, 0x00, 0x0f, 0x01, // MBAP: length 15
			0x14,       // function: read file record
			0x0c,       // response data length 12
			0x05,       // sub-response 1: file response length 5
			0x06,       // reference type 6
			0x0d, 0xfe, // register data
			0x00, 0x20,
			0x05,       // sub-response 2: length 5
			0x06,       // reference type 6
			0x33, 0xcd, // register data
			0x00, 0x40,
		},
		want: Response{TransactionID: 3, Unit: 1, Function: FuncReadFileRecord,
			Data: []byte{5, 6, 0x0d, 0xfe, 0x00, 0x20, 5, 6, 0x33, 0xcd, 0x00, 0x40}},
	},
	{
		name: "FC21 write file record echo, frame 87",
		req:  []byte{0x00, 0x29, 0, 0, 0, 0x0e, 1, 0x15, 0x0b, 6, 0, 1, 0, 0, 0, 2, 0, 1, 0, 2},
		adu: []byte{
			0x00, 0x29, 0x00, 0x00, 0x00, 0x0e, 0x01, // MBAP: tid 41
			0x15,                                     // function: write file record
			0x0b,                                     // response data length 11
			0x06, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, // ref 6, file 1, record 0, length 2
			0x00, 0x01, 0x00, 0x02, // record data
		},
		want: Response{TransactionID: 41, Unit: 1, Function: FuncWriteFileRecord, Data: []byte{6, 0, 1, 0, 0, 0, 2, 0, 1, 0, 2}},
	},
	{
		name: "FC22 mask write register echo, frame 45",
		req:  []byte{0x00, 0x14, 0, 0, 0, 8, 1, 0x16, 0x00, 0x78, 0xf0, 0xf2, 0x00, 0x25},
		adu: []byte{
			0x00, 0x14, 0x00, 0x00, 0x00, 0x08, 0x01, // MBAP: tid 20
			0x16,       // function: mask write register
			0x00, 0x78, // reference address 120
			0xf0, 0xf2, // AND mask
			0x00, 0x25, // OR mask
		},
		want: Response{TransactionID: 20, Unit: 1, Function: FuncMaskWriteRegister, Address: 120, AndMask: 0xf0f2, OrMask: 0x25},
	},
	{
		name: "FC23 read/write multiple registers, frame 53",
		req:  []byte{0x00, 0x18, 0, 0, 0, 0x0f, 1, 0x17, 0x23, 0x28, 0x00, 0x04, 0x00, 0x8c, 0x00, 0x02, 0x04, 0, 7, 0, 8},
		adu: []byte{
			0x00, 0x18, 0x00, 0x00, 0x00, 0x0b, 0x01, // MBAP: tid 24, length 11
			0x17,                                           // function: read/write multiple registers
			0x08,                                           // byte count 8 = 2 × quantity to read
			0x23, 0x28, 0x23, 0x29, 0x23, 0x2a, 0x23, 0x2b, // registers 9000-9003
		},
		want: Response{TransactionID: 24, Unit: 1, Function: FuncReadWriteMultipleRegisters, Quantity: 4,
			Data: []byte{0x23, 0x28, 0x23, 0x29, 0x23, 0x2a, 0x23, 0x2b}},
	},
	{
		name: "FC24 read FIFO queue, empty, frame 89",
		req:  []byte{0x00, 0x2a, 0, 0, 0, 4, 1, 0x18, 0x00, 0x00},
		adu: []byte{
			0x00, 0x2a, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 42, length 6
			0x18,       // function: read FIFO queue
			0x00, 0x02, // byte count 2: just the FIFO count
			0x00, 0x00, // FIFO count 0
		},
		want: Response{TransactionID: 42, Unit: 1, Function: FuncReadFIFOQueue, Data: []byte{}},
	},
	{
		name: "FC24 read FIFO queue, two values, spec",
		req:  []byte{0x00, 0x2a, 0, 0, 0, 4, 1, 0x18, 0x04, 0xde},
		adu: []byte{
			0x00, 0x2a, 0x00, 0x00, 0x00, 0x0a, 0x01, // MBAP: length 10
			0x18,       // function: read FIFO queue
			0x00, 0x06, // byte count 6
			0x00, 0x02, // FIFO count 2
			0x01, 0xb8, // 440
			0x12, 0x84, // 4740
		},
		want: Response{TransactionID: 42, Unit: 1, Function: FuncReadFIFOQueue, Quantity: 2, Data: []byte{0x01, 0xb8, 0x12, 0x84}},
	},
	{
		name: "FC43/14 basic device identification, frame 55",
		req:  []byte{0x00, 0x19, 0, 0, 0, 5, 1, 0x2b, 0x0e, 0x01, 0x00},
		adu: []byte{
			0x00, 0x19, 0x00, 0x00, 0x00, 0x26, 0x01, // MBAP: tid 25, length 38
			0x2b, 0x0e, // FC 43 / MEI 14
			0x01,                                               // read device id code 1
			0x83,                                               // conformity: extended, stream and individual access
			0x00,                                               // more follows: no
			0x00,                                               // next object id
			0x03,                                               // 3 objects
			0x00, 0x08, 'P', 'e', 'e', 'r', 'T', 'e', 's', 't', // 0 VendorName
			0x01, 0x07, 'P', 'T', '-', 'M', 'B', '-', '1', // 1 ProductCode
			0x02, 0x09, '3', '.', '0', '.', '0', '.', 'r', 'c', '1', // 2 MajorMinorRevision
		},
		want: Response{TransactionID: 25, Unit: 1, Function: FuncEncapsulatedInterface, MEIType: MEIReadDeviceIdentification,
			DeviceIDCode: 1, Conformity: 0x83, ObjectCount: 3,
			Data: []byte("\x00\x08PeerTest\x01\x07PT-MB-1\x02\x093.0.0.rc1")},
	},
	{
		name: "FC43/14 one object, frame 61",
		req:  []byte{0x00, 0x1c, 0, 0, 0, 5, 1, 0x2b, 0x0e, 0x04, 0x04},
		adu: []byte{
			0x00, 0x1c, 0x00, 0x00, 0x00, 0x1e, 0x01, // MBAP: tid 28, length 30
			0x2b, 0x0e, // FC 43 / MEI 14
			0x04,       // individual access
			0x83,       // conformity
			0x00, 0x00, // no more, next 0
			0x01,       // one object
			0x04, 0x14, // object 4 (ProductName), 20 bytes
			'p', 'y', 'm', 'o', 'd', 'b', 'u', 's', ' ', 'p', 'e', 'e', 'r', ' ', 's', 'e', 'r', 'v', 'e', 'r',
		},
		want: Response{TransactionID: 28, Unit: 1, Function: FuncEncapsulatedInterface, MEIType: MEIReadDeviceIdentification,
			DeviceIDCode: 4, Conformity: 0x83, ObjectCount: 1, Data: []byte("\x04\x14pymodbus peer server")},
	},
	{
		name: "FC43/14 more follows, spec",
		req:  []byte{0x00, 0x01, 0, 0, 0, 5, 1, 0x2b, 0x0e, 0x01, 0x00},
		adu: []byte{
			0x00, 0x01, 0x00, 0x00, 0x00, 0x0d, 0x01, // MBAP: length 13
			0x2b, 0x0e, 0x01, // FC 43 / MEI 14, basic
			0x01,                      // conformity: basic, stream only
			0xff,                      // more follows
			0x02,                      // next object id 2
			0x01,                      // one object in this part
			0x00, 0x03, 'A', 'B', 'C', // VendorName
		},
		want: Response{TransactionID: 1, Unit: 1, Function: FuncEncapsulatedInterface, MEIType: MEIReadDeviceIdentification,
			DeviceIDCode: 1, Conformity: 1, MoreFollows: 0xff, NextObjectID: 2, ObjectCount: 1, Data: []byte("\x00\x03ABC")},
	},
	{
		name: "FC43/13 CANopen (opaque)",
		req:  []byte{0x00, 0x05, 0, 0, 0, 7, 1, 0x2b, 0x0d, 0x00, 0x10, 0x18, 0x00},
		adu: []byte{
			0x00, 0x05, 0x00, 0x00, 0x00, 0x05, 0x01, // MBAP: length 5
			0x2b, 0x0d, // FC 43 / MEI 13
			0x00, 0x01, // opaque
		},
		want: Response{TransactionID: 5, Unit: 1, Function: FuncEncapsulatedInterface, MEIType: MEICANopenGeneralReference, Data: []byte{0, 1}},
	},
	{
		name: "FC65 user-defined (opaque)",
		req:  []byte{0x42, 0x42, 0, 0, 0, 4, 1, 0x41, 0x00, 0x00},
		adu: []byte{
			0x42, 0x42, 0x00, 0x00, 0x00, 0x05, 0x01, // MBAP: tid 0x4242, length 5
			0x41,             // function 65
			0xde, 0xad, 0x00, // opaque data, copied exactly
		},
		want: Response{TransactionID: 0x4242, Unit: 1, Function: 65, Data: []byte{0xde, 0xad, 0x00}},
	},
}

// Exception responses, one per public function code; the first are real.
var exceptionCases = []struct {
	name string
	req  []byte
	adu  []byte
	want Response
}{
	{
		name: "FC3 illegal data address, frame 91",
		req:  []byte{0x00, 0x2b, 0, 0, 0, 6, 1, 0x03, 0x27, 0x10, 0x00, 0x01}, // frame 90: register 10000
		adu: []byte{
			0x00, 0x2b, 0x00, 0x00, 0x00, 0x03, 0x01, // MBAP: tid 43, length 3
			0x83, // function 3 | 0x80
			0x02, // illegal data address
		},
		want: Response{TransactionID: 43, Unit: 1, Function: FuncReadHoldingRegisters, Exception: ExIllegalDataAddress},
	},
	{
		name: "FC1 illegal data value, frame 97 (the request is refused by us too)",
		req:  nil, // frame 96 asks for 2001 coils: it would never be forwarded
		adu: []byte{
			0x00, 0x2e, 0x00, 0x00, 0x00, 0x03, 0x01, // MBAP: tid 46
			0x81, // function 1 | 0x80
			0x03, // illegal data value
		},
		want: Response{TransactionID: 46, Unit: 1, Function: FuncReadCoils, Exception: ExIllegalDataValue},
	},
	{
		name: "FC65 illegal function, frame 106",
		req:  []byte{0x42, 0x42, 0, 0, 0, 4, 1, 0x41, 0x00, 0x00},
		adu: []byte{
			0x42, 0x42, 0x00, 0x00, 0x00, 0x03, 0x01, // MBAP: tid 0x4242
			0xc1, // function 65 | 0x80
			0x01, // illegal function
		},
		want: Response{TransactionID: 0x4242, Unit: 1, Function: 65, Exception: ExIllegalFunction},
	},
	{
		name: "FC43 server device failure, zeek_modbus-eit frame 4",
		req:  []byte{0x00, 0x00, 0, 0, 0, 5, 0xff, 0x2b, 0x0e, 0x01, 0x00},
		adu: []byte{
			0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xff, // MBAP: tid 0, unit 255
			0xab, // function 43 | 0x80
			0x04, // server device failure
		},
		want: Response{Unit: 0xff, Function: FuncEncapsulatedInterface, Exception: ExServerDeviceFailure},
	},
	{
		name: "FC23 gateway path unavailable, 4SICS frame 2 (unpaired)",
		req:  nil,
		adu: []byte{
			0x00, 0x0b, 0x00, 0x00, 0x00, 0x03, 0x01, // MBAP: tid 11
			0x97, // function 23 | 0x80
			0x0a, // gateway path unavailable
		},
		want: Response{TransactionID: 11, Unit: 1, Function: FuncReadWriteMultipleRegisters, Exception: ExGatewayPathUnavailable},
	},
	{"FC2 illegal data address", []byte{0, 1, 0, 0, 0, 6, 1, 0x02, 0, 0, 0, 1}, []byte{0, 1, 0, 0, 0, 3, 1, 0x82, 0x02},
		Response{TransactionID: 1, Unit: 1, Function: 2, Exception: 2}},
	{"FC4 server device failure", []byte{0, 1, 0, 0, 0, 6, 1, 0x04, 0, 0, 0, 1}, []byte{0, 1, 0, 0, 0, 3, 1, 0x84, 0x04},
		Response{TransactionID: 1, Unit: 1, Function: 4, Exception: 4}},
	{"FC5 illegal data address", []byte{0, 1, 0, 0, 0, 6, 1, 0x05, 0, 1, 0xff, 0}, []byte{0, 1, 0, 0, 0, 3, 1, 0x85, 0x02},
		Response{TransactionID: 1, Unit: 1, Function: 5, Exception: 2}},
	{"FC6 acknowledge", []byte{0, 1, 0, 0, 0, 6, 1, 0x06, 0, 1, 0, 1}, []byte{0, 1, 0, 0, 0, 3, 1, 0x86, 0x05},
		Response{TransactionID: 1, Unit: 1, Function: 6, Exception: 5}},
	{"FC7 illegal function", []byte{0, 1, 0, 0, 0, 2, 1, 0x07}, []byte{0, 1, 0, 0, 0, 3, 1, 0x87, 0x01},
		Response{TransactionID: 1, Unit: 1, Function: 7, Exception: 1}},
	{"FC8 illegal data value", []byte{0, 1, 0, 0, 0, 6, 1, 0x08, 0, 0, 0, 0}, []byte{0, 1, 0, 0, 0, 3, 1, 0x88, 0x03},
		Response{TransactionID: 1, Unit: 1, Function: 8, Exception: 3}},
	{"FC11 server busy", []byte{0, 1, 0, 0, 0, 2, 1, 0x0b}, []byte{0, 1, 0, 0, 0, 3, 1, 0x8b, 0x06},
		Response{TransactionID: 1, Unit: 1, Function: 11, Exception: 6}},
	{"FC12 illegal function", []byte{0, 1, 0, 0, 0, 2, 1, 0x0c}, []byte{0, 1, 0, 0, 0, 3, 1, 0x8c, 0x01},
		Response{TransactionID: 1, Unit: 1, Function: 12, Exception: 1}},
	{"FC15 illegal data address", []byte{0, 1, 0, 0, 0, 8, 1, 0x0f, 0, 0, 0, 1, 1, 1}, []byte{0, 1, 0, 0, 0, 3, 1, 0x8f, 0x02},
		Response{TransactionID: 1, Unit: 1, Function: 15, Exception: 2}},
	{"FC16 gateway target failed to respond", []byte{0, 1, 0, 0, 0, 9, 1, 0x10, 0, 0, 0, 1, 2, 0, 1}, []byte{0, 1, 0, 0, 0, 3, 1, 0x90, 0x0b},
		Response{TransactionID: 1, Unit: 1, Function: 16, Exception: 0x0b}},
	{"FC17 illegal function", []byte{0, 1, 0, 0, 0, 2, 1, 0x11}, []byte{0, 1, 0, 0, 0, 3, 1, 0x91, 0x01},
		Response{TransactionID: 1, Unit: 1, Function: 17, Exception: 1}},
	{"FC20 memory parity error", []byte{0, 1, 0, 0, 0, 0x0a, 1, 0x14, 7, 6, 0, 1, 0, 0, 0, 1}, []byte{0, 1, 0, 0, 0, 3, 1, 0x94, 0x08},
		Response{TransactionID: 1, Unit: 1, Function: 20, Exception: 8}},
	{"FC21 memory parity error", []byte{0, 1, 0, 0, 0, 0x0c, 1, 0x15, 9, 6, 0, 1, 0, 0, 0, 1, 0, 1}, []byte{0, 1, 0, 0, 0, 3, 1, 0x95, 0x08},
		Response{TransactionID: 1, Unit: 1, Function: 21, Exception: 8}},
	{"FC22 illegal data address", []byte{0, 1, 0, 0, 0, 8, 1, 0x16, 0, 1, 0, 0, 0, 0}, []byte{0, 1, 0, 0, 0, 3, 1, 0x96, 0x02},
		Response{TransactionID: 1, Unit: 1, Function: 22, Exception: 2}},
	{"FC24 illegal data value", []byte{0, 1, 0, 0, 0, 4, 1, 0x18, 0, 0}, []byte{0, 1, 0, 0, 0, 3, 1, 0x98, 0x03},
		Response{TransactionID: 1, Unit: 1, Function: 24, Exception: 3}},
}

func TestResponseCodec(t *testing.T) {
	cases := append(responseCases[:len(responseCases):len(responseCases)], exceptionCases...)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var req *Request
			if tc.req != nil {
				req = mustRequest(t, tc.req)
			}
			t.Run("decode", func(t *testing.T) {
				var got Response
				n, err := got.Decode(tc.adu, req)
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if n != len(tc.adu) {
					t.Errorf("Decode consumed %d bytes, want %d", n, len(tc.adu))
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("Decode\n got %+v\nwant %+v", got, tc.want)
				}
			})
			t.Run("encode", func(t *testing.T) {
				got, err := tc.want.Append(nil)
				if err != nil {
					t.Fatalf("Append: %v", err)
				}
				if !bytes.Equal(got, tc.adu) {
					t.Errorf("Append\n got % x\nwant % x", got, tc.adu)
				}
			})
		})
	}
}

// Responses that must not reach the client. req nil means decoded unpaired.
var responseErrors = []struct {
	name   string
	req    []byte
	adu    []byte
	reason string
	isFrag bool // *FramingError instead of *ResponseError
}{
	{"FC20 empty answer from pymodbus, frame 85",
		[]byte{0x00, 0x28, 0, 0, 0, 0x0a, 1, 0x14, 0x07, 6, 0, 1, 0, 0, 0, 2}, // frame 84
		[]byte{
			0x00, 0x28, 0x00, 0x00, 0x00, 0x03, 0x01, // MBAP: tid 40, length 3
			0x14, // function: read file record
			0x00, // response data length 0: no sub-response for the one sub-request
		}, ReasonBadByteCount, false},
	{"FC43/14 malformed, zeek_modbus-eit frame 2",
		[]byte{0, 0, 0, 0, 0, 5, 0, 0x2b, 0x0e, 0x01, 0x00},
		[]byte{
			0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x00, // MBAP: length 12, unit 0
			0x2b, 0x0e, 0x01, // FC 43 / MEI 14, basic
			0x00,       // conformity 0 (invalid)
			0x4d, 0xb7, // more follows 0x4d (invalid), next object 0xb7
			0x00,                   // 0 objects...
			0x00, 0x00, 0x00, 0x00, // ...yet 4 more bytes
		}, ReasonLengthMismatch, true},
	{"transaction id differs", []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1}, []byte{0, 2, 0, 0, 0, 5, 1, 3, 2, 0, 1}, ReasonTransactionMismatch, false},
	{"unit id differs", []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1}, []byte{0, 1, 0, 0, 0, 5, 2, 3, 2, 0, 1}, ReasonUnitMismatch, false},
	{"function differs", []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1}, []byte{0, 1, 0, 0, 0, 5, 1, 4, 2, 0, 1}, ReasonFunctionMismatch, false},
	{"exception for another function", []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1}, []byte{0, 1, 0, 0, 0, 3, 1, 0x84, 2}, ReasonFunctionMismatch, false},
	{"exception code 0x07", []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1}, []byte{0, 1, 0, 0, 0, 3, 1, 0x83, 7}, ReasonBadExceptionCode, false},
	{"exception code 0", nil, []byte{0, 1, 0, 0, 0, 3, 1, 0x83, 0}, ReasonBadExceptionCode, false},
	{"exception for function 0", nil, []byte{0, 1, 0, 0, 0, 3, 1, 0x80, 1}, ReasonInvalidFunction, false},
	{"exception with two code bytes", nil, []byte{0, 1, 0, 0, 0, 4, 1, 0x83, 2, 0}, ReasonLengthMismatch, true},
	{"FC3 byte count 4 for 1 register", []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1}, []byte{0, 1, 0, 0, 0, 7, 1, 3, 4, 0, 1, 0, 2}, ReasonByteCountMismatch, false},
	{"FC3 odd byte count, unpaired", nil, []byte{0, 1, 0, 0, 0, 6, 1, 3, 3, 0, 1, 0}, ReasonByteCountMismatch, false},
	{"FC3 byte count past the PDU", []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1}, []byte{0, 1, 0, 0, 0, 5, 1, 3, 4, 0, 1}, ReasonLengthMismatch, true},
	{"FC3 hidden second response", []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1},
		[]byte{0, 1, 0, 0, 0, 0x10, 1, 3, 2, 0, 1 /* hidden: */, 0, 2, 0, 0, 0, 5, 1, 3, 2, 0, 9}, ReasonLengthMismatch, true},
	{"FC1 byte count 2 for 8 coils", []byte{0, 1, 0, 0, 0, 6, 1, 1, 0, 0, 0, 8}, []byte{0, 1, 0, 0, 0, 5, 1, 1, 2, 0xff, 0}, ReasonByteCountMismatch, false},
	{"FC1 byte count 0, unpaired", nil, []byte{0, 1, 0, 0, 0, 3, 1, 1, 0}, ReasonBadByteCount, false},
	{"FC5 echo differs", []byte{0, 1, 0, 0, 0, 6, 1, 5, 0, 1, 0xff, 0}, []byte{0, 1, 0, 0, 0, 6, 1, 5, 0, 1, 0, 0}, ReasonEchoMismatch, false},
	{"FC5 bad value, unpaired", nil, []byte{0, 1, 0, 0, 0, 6, 1, 5, 0, 1, 0, 1}, ReasonBadValue, false},
	{"FC6 echo differs", []byte{0, 1, 0, 0, 0, 6, 1, 6, 0, 1, 0, 1}, []byte{0, 1, 0, 0, 0, 6, 1, 6, 0, 1, 0, 2}, ReasonEchoMismatch, false},
	{"FC6 response with extra byte", []byte{0, 1, 0, 0, 0, 6, 1, 6, 0, 1, 0, 1}, []byte{0, 1, 0, 0, 0, 7, 1, 6, 0, 1, 0, 1, 0}, ReasonLengthMismatch, true},
	{"FC7 two data bytes", []byte{0, 1, 0, 0, 0, 2, 1, 7}, []byte{0, 1, 0, 0, 0, 4, 1, 7, 0, 0}, ReasonLengthMismatch, true},
	{"FC8/00 echo differs", []byte{0, 1, 0, 0, 0, 6, 1, 8, 0, 0, 0xa5, 0x37}, []byte{0, 1, 0, 0, 0, 6, 1, 8, 0, 0, 0xa5, 0x38}, ReasonEchoMismatch, false},
	{"FC8 sub-function differs", []byte{0, 1, 0, 0, 0, 6, 1, 8, 0, 0x0b, 0, 0}, []byte{0, 1, 0, 0, 0, 6, 1, 8, 0, 0x0c, 0, 0}, ReasonEchoMismatch, false},
	{"FC8 reserved sub-function, unpaired", nil, []byte{0, 1, 0, 0, 0, 6, 1, 8, 0, 0x13, 0, 0}, ReasonUnknownSubfunction, false},
	{"FC11 status 0x1234", []byte{0, 1, 0, 0, 0, 2, 1, 0x0b}, []byte{0, 1, 0, 0, 0, 6, 1, 0x0b, 0x12, 0x34, 0, 0}, ReasonBadValue, false},
	{"FC12 byte count 5", []byte{0, 1, 0, 0, 0, 2, 1, 0x0c}, []byte{0, 1, 0, 0, 0, 8, 1, 0x0c, 5, 0, 0, 0, 0, 0}, ReasonBadByteCount, false},
	{"FC12 65 events", []byte{0, 1, 0, 0, 0, 2, 1, 0x0c}, append([]byte{0, 1, 0, 0, 0, 74, 1, 0x0c, 71, 0, 0, 0, 0, 0, 0}, make([]byte, 65)...), ReasonBadByteCount, false},
	{"FC15 echo differs", []byte{0, 1, 0, 0, 0, 8, 1, 0x0f, 0, 0, 0, 1, 1, 1}, []byte{0, 1, 0, 0, 0, 6, 1, 0x0f, 0, 0, 0, 2}, ReasonEchoMismatch, false},
	{"FC16 quantity 0, unpaired", nil, []byte{0, 1, 0, 0, 0, 6, 1, 0x10, 0, 0, 0, 0}, ReasonBadQuantity, false},
	{"FC17 byte count 0", []byte{0, 1, 0, 0, 0, 2, 1, 0x11}, []byte{0, 1, 0, 0, 0, 3, 1, 0x11, 0}, ReasonBadByteCount, false},
	{"FC20 sub-response too short for the request", []byte{0, 1, 0, 0, 0, 0x0a, 1, 0x14, 7, 6, 0, 1, 0, 0, 0, 2},
		[]byte{0, 1, 0, 0, 0, 7, 1, 0x14, 4, 3, 6, 0, 1}, ReasonBadSubresponse, false},
	{"FC20 reference type 5", nil, []byte{0, 1, 0, 0, 0, 7, 1, 0x14, 4, 3, 5, 0, 1}, ReasonBadReferenceType, false},
	{"FC21 echo differs", []byte{0, 1, 0, 0, 0, 0x0c, 1, 0x15, 9, 6, 0, 1, 0, 0, 0, 1, 0, 1},
		[]byte{0, 1, 0, 0, 0, 0x0c, 1, 0x15, 9, 6, 0, 1, 0, 0, 0, 1, 0, 2}, ReasonEchoMismatch, false},
	{"FC22 echo differs", []byte{0, 1, 0, 0, 0, 8, 1, 0x16, 0, 1, 0, 0, 0, 0}, []byte{0, 1, 0, 0, 0, 8, 1, 0x16, 0, 1, 0, 0, 0, 1}, ReasonEchoMismatch, false},
	{"FC23 byte count for the write half", []byte{0, 1, 0, 0, 0, 0x0d, 1, 0x17, 0, 0, 0, 2, 0, 0, 0, 1, 2, 0, 1},
		[]byte{0, 1, 0, 0, 0, 5, 1, 0x17, 2, 0, 1}, ReasonByteCountMismatch, false},
	{"FC24 FIFO count 32", nil, append([]byte{0, 1, 0, 0, 0, 70, 1, 0x18, 0, 66, 0, 32}, make([]byte, 64)...), ReasonBadFIFOCount, false},
	{"FC24 count and byte count disagree", nil, []byte{0, 1, 0, 0, 0, 8, 1, 0x18, 0, 4, 0, 2, 0, 1}, ReasonByteCountMismatch, false},
	{"FC24 byte count 1", nil, []byte{0, 1, 0, 0, 0, 5, 1, 0x18, 0, 1, 0}, ReasonBadByteCount, false},
	{"FC43/14 conformity 0x04", nil, []byte{0, 1, 0, 0, 0, 8, 1, 0x2b, 0x0e, 1, 0x04, 0, 0, 0}, ReasonBadConformityLevel, false},
	{"FC43/14 next object without more follows", nil, []byte{0, 1, 0, 0, 0, 8, 1, 0x2b, 0x0e, 1, 0x01, 0, 2, 0}, ReasonBadMoreFollows, false},
	{"FC43/14 individual access with two objects", nil, []byte{0, 1, 0, 0, 0, 12, 1, 0x2b, 0x0e, 4, 0x81, 0, 0, 2, 0, 0, 1, 0}, ReasonBadMoreFollows, false},
	{"FC43/14 other object than asked", []byte{0, 1, 0, 0, 0, 5, 1, 0x2b, 0x0e, 4, 5},
		[]byte{0, 1, 0, 0, 0, 11, 1, 0x2b, 0x0e, 4, 0x81, 0, 0, 1, 4, 1, 'x'}, ReasonEchoMismatch, false},
	{"FC43/14 answers FC43/13", []byte{0, 1, 0, 0, 0, 3, 1, 0x2b, 0x0d},
		[]byte{0, 1, 0, 0, 0, 8, 1, 0x2b, 0x0e, 1, 0x01, 0, 0, 0}, ReasonEchoMismatch, false},
	{"FC43 reserved MEI type, unpaired", nil, []byte{0, 1, 0, 0, 0, 3, 1, 0x2b, 0x05}, ReasonUnknownMEIType, false},
	{"FC43/14 object runs past the PDU", nil, []byte{0, 1, 0, 0, 0, 11, 1, 0x2b, 0x0e, 1, 0x01, 0, 0, 1, 0, 5, 'a'}, ReasonLengthMismatch, true},
	{"function code 0", nil, []byte{0, 1, 0, 0, 0, 2, 1, 0}, ReasonInvalidFunction, false},
}

func TestResponseErrors(t *testing.T) {
	for _, tc := range responseErrors {
		t.Run(tc.name, func(t *testing.T) {
			var req *Request
			if tc.req != nil {
				req = mustRequest(t, tc.req)
			}
			var r Response
			n, err := r.Decode(tc.adu, req)
			if tc.isFrag {
				var fe *FramingError
				if !errors.As(err, &fe) || fe.Reason != tc.reason || !errors.Is(err, ErrFraming) {
					t.Fatalf("Decode error %v, want framing %s", err, tc.reason)
				}
				if n != 0 {
					t.Errorf("n = %d after a framing error", n)
				}
				return
			}
			var re *ResponseError
			if !errors.As(err, &re) || !errors.Is(err, ErrResponse) {
				t.Fatalf("Decode error %v (%T), want *ResponseError %s", err, err, tc.reason)
			}
			if re.Reason != tc.reason {
				t.Errorf("reason %s, want %s (%v)", re.Reason, tc.reason, err)
			}
			if n != len(tc.adu) {
				t.Errorf("n = %d, want %d", n, len(tc.adu))
			}
		})
	}
}

// A response whose structure is fine on its own can still be refused when
// paired, and only then: these pass unpaired.
func TestResponseUnpairedStructureOnly(t *testing.T) {
	adu := []byte{0, 2, 0, 0, 0, 5, 1, 3, 2, 0, 1} // tid 2, one register
	var r Response
	if _, err := r.Decode(adu, nil); err != nil {
		t.Fatalf("unpaired: %v", err)
	}
	if r.Quantity != 1 {
		t.Errorf("unpaired FC3 Quantity = %d, want the register count 1", r.Quantity)
	}
	req := mustRequest(t, []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1})
	if _, err := r.Decode(adu, req); ReasonOf(err) != ReasonTransactionMismatch {
		t.Errorf("paired: %v, want %s", err, ReasonTransactionMismatch)
	}
}

// The encoder zeroes coil padding bits: bits that no Operation describes
// are never forwarded (spec §6.1: "padded with zeros").
func TestCoilPaddingIsZeroedOnEncode(t *testing.T) {
	t.Run("FC15 request", func(t *testing.T) {
		in := []byte{0, 1, 0, 0, 0, 9, 1, 0x0f, 0, 20, 0, 10, 2, 0xcd, 0xff} // 10 coils, last byte 0xff
		var r Request
		if _, err := r.Decode(in); err != nil {
			t.Fatal(err)
		}
		out, err := r.Append(nil)
		if err != nil {
			t.Fatal(err)
		}
		want := []byte{0, 1, 0, 0, 0, 9, 1, 0x0f, 0, 20, 0, 10, 2, 0xcd, 0x03}
		if !bytes.Equal(out, want) {
			t.Errorf("Append = % x, want % x", out, want)
		}
		if in[len(in)-1] != 0xff {
			t.Error("Append modified its input")
		}
	})
	t.Run("FC1 response", func(t *testing.T) {
		req := mustRequest(t, []byte{0, 1, 0, 0, 0, 6, 1, 0x01, 0, 0, 0, 3})
		in := []byte{0, 1, 0, 0, 0, 4, 1, 0x01, 1, 0xfd} // 3 coils, junk above bit 2
		var r Response
		if _, err := r.Decode(in, req); err != nil {
			t.Fatal(err)
		}
		out, err := r.Append(nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := []byte{0, 1, 0, 0, 0, 4, 1, 0x01, 1, 0x05}; !bytes.Equal(out, want) {
			t.Errorf("Append = % x, want % x", out, want)
		}
	})
}

func TestExpectsResponse(t *testing.T) {
	listen := mustRequest(t, []byte{0, 3, 0, 0, 0, 6, 1, 0x08, 0x00, 0x04, 0x00, 0x00})
	if listen.ExpectsResponse() {
		t.Error("FC 8/04 (force listen only mode) is answered by nothing (spec §6.8.1)")
	}
	for _, tc := range requestCases {
		r := mustRequest(t, tc.adu)
		if r.Function == FuncDiagnostics && r.Subfunction == DiagForceListenOnlyMode {
			continue
		}
		if !r.ExpectsResponse() {
			t.Errorf("%s: ExpectsResponse false", tc.name)
		}
	}
}

func TestAppendException(t *testing.T) {
	got := AppendException(make([]byte, 0, MaxADULen), 0x1234, 7, FuncWriteMultipleRegisters, ExGatewayTargetFailedToRespond)
	want := []byte{
		0x12, 0x34, // transaction id
		0x00, 0x00, // protocol id
		0x00, 0x03, // length: unit + 2
		0x07, // unit
		0x90, // 0x10 | 0x80
		0x0b, // gateway target device failed to respond
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("AppendException = % x, want % x", got, want)
	}
	var r Response
	if _, err := r.Decode(got, &Request{TransactionID: 0x1234, Unit: 7, Function: FuncWriteMultipleRegisters}); err != nil {
		t.Fatalf("our own exception does not decode: %v", err)
	}
}
