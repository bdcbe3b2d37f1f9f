package modbus

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// Request codec table: each ADU annotated field by field next to the struct
// it decodes to. "frame N" is the frame number in
// testdata/pcap/local_pymodbus_allfc.pcapng (pymodbus 3.0 client, port
// 15020); "spec" marks the examples of the Modbus Application Protocol
// V1.1b3.
var requestCases = []struct {
	name string
	adu  []byte
	want Request
}{
	{
		name: "FC1 read coils, frame 16",
		adu: []byte{
			0x00, 0x06, // transaction id 6
			0x00, 0x00, // protocol id
			0x00, 0x06, // length: unit + 5 PDU bytes
			0x01,       // unit id
			0x01,       // function: read coils
			0x00, 0x00, // starting address 0
			0x07, 0xd0, // quantity 2000 (the maximum)
		},
		want: Request{TransactionID: 6, Unit: 1, Function: FuncReadCoils, Address: 0, Quantity: 2000},
	},
	{
		name: "FC2 read discrete inputs, frame 4",
		adu: []byte{
			0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 1, length 6, unit 1
			0x02,       // function: read discrete inputs
			0x00, 0x00, // starting address 0
			0x00, 0x10, // quantity 16
		},
		want: Request{TransactionID: 1, Unit: 1, Function: FuncReadDiscreteInputs, Quantity: 16},
	},
	{
		name: "FC3 read holding registers, frame 14",
		adu: []byte{
			0x00, 0x05, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 5, length 6, unit 1
			0x03,       // function: read holding registers
			0x1f, 0x40, // starting address 8000
			0x00, 0x7d, // quantity 125 (the maximum)
		},
		want: Request{TransactionID: 5, Unit: 1, Function: FuncReadHoldingRegisters, Address: 8000, Quantity: 125},
	},
	{
		name: "FC4 read input registers, frame 8",
		adu: []byte{
			0x00, 0x02, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 2, length 6, unit 1
			0x04,       // function: read input registers
			0x00, 0x64, // starting address 100
			0x00, 0x0a, // quantity 10
		},
		want: Request{TransactionID: 2, Unit: 1, Function: FuncReadInputRegisters, Address: 100, Quantity: 10},
	},
	{
		name: "FC5 write single coil ON, frame 18",
		adu: []byte{
			0x00, 0x07, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 7, length 6, unit 1
			0x05,       // function: write single coil
			0x00, 0x0a, // output address 10
			0xff, 0x00, // value ON
		},
		want: Request{TransactionID: 7, Unit: 1, Function: FuncWriteSingleCoil, Address: 10, Value: CoilOn},
	},
	{
		name: "FC5 write single coil OFF, frame 22",
		adu: []byte{
			0x00, 0x09, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 9, length 6, unit 1
			0x05,       // function: write single coil
			0x00, 0x0a, // output address 10
			0x00, 0x00, // value OFF
		},
		want: Request{TransactionID: 9, Unit: 1, Function: FuncWriteSingleCoil, Address: 10, Value: CoilOff},
	},
	{
		name: "FC6 write single register, frame 34",
		adu: []byte{
			0x00, 0x0f, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 15, length 6, unit 1
			0x06,       // function: write single register
			0x00, 0x64, // register address 100
			0x0e, 0x61, // value 3681
		},
		want: Request{TransactionID: 15, Unit: 1, Function: FuncWriteSingleRegister, Address: 100, Value: 3681},
	},
	{
		name: "FC6 write single register, mbpoll, frame 144",
		adu: []byte{
			0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 1, length 6, unit 1
			0x06,       // function: write single register
			0x00, 0x04, // register address 4 (mbpoll reference 5)
			0x03, 0x09, // value 777
		},
		want: Request{TransactionID: 1, Unit: 1, Function: FuncWriteSingleRegister, Address: 4, Value: 777},
	},
	{
		name: "FC7 read exception status, frame 76",
		adu: []byte{
			0x00, 0x24, 0x00, 0x00, // tid 36, protocol 0
			0x00, 0x02, // length: unit + function code only
			0x01, // unit id
			0x07, // function: read exception status
		},
		want: Request{TransactionID: 36, Unit: 1, Function: FuncReadExceptionStatus},
	},
	{
		name: "FC8/00 return query data, frame 62",
		adu: []byte{
			0x00, 0x1d, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 29, length 6, unit 1
			0x08,       // function: diagnostics
			0x00, 0x00, // sub-function 0: return query data
			0xb8, 0xfa, // data to echo
		},
		want: Request{TransactionID: 29, Unit: 1, Function: FuncDiagnostics, Subfunction: DiagReturnQueryData, Data: []byte{0xb8, 0xfa}},
	},
	{
		name: "FC8/01 restart communications, clear log, spec",
		adu: []byte{
			0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP
			0x08,       // function: diagnostics
			0x00, 0x01, // sub-function 1: restart communications option
			0xff, 0x00, // FF00: clear the event log too
		},
		want: Request{TransactionID: 1, Unit: 1, Function: FuncDiagnostics, Subfunction: DiagRestartCommunications, Data: []byte{0xff, 0x00}},
	},
	{
		name: "FC8/02 return diagnostic register, frame 64",
		adu: []byte{
			0x00, 0x1e, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 30
			0x08,       // function: diagnostics
			0x00, 0x02, // sub-function 2: return diagnostic register
			0x00, 0x00, // data 0000
		},
		want: Request{TransactionID: 30, Unit: 1, Function: FuncDiagnostics, Subfunction: DiagReturnDiagnosticRegister, Data: []byte{0, 0}},
	},
	{
		name: "FC8/03 change ASCII input delimiter, spec",
		adu: []byte{
			0x00, 0x02, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP
			0x08,       // function: diagnostics
			0x00, 0x03, // sub-function 3
			0x0d, 0x00, // "CHAR 00": CR
		},
		want: Request{TransactionID: 2, Unit: 1, Function: FuncDiagnostics, Subfunction: DiagChangeASCIIInputDelimiter, Data: []byte{0x0d, 0}},
	},
	{
		name: "FC8/04 force listen only mode (no response), spec",
		adu: []byte{
			0x00, 0x03, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP
			0x08,       // function: diagnostics
			0x00, 0x04, // sub-function 4
			0x00, 0x00, // data
		},
		want: Request{TransactionID: 3, Unit: 1, Function: FuncDiagnostics, Subfunction: DiagForceListenOnlyMode, Data: []byte{0, 0}},
	},
	{
		name: "FC8/10 clear counters, frame 66",
		adu: []byte{
			0x00, 0x1f, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 31
			0x08,       // function: diagnostics
			0x00, 0x0a, // sub-function 10: clear counters and diagnostic register
			0x00, 0x00, // data
		},
		want: Request{TransactionID: 31, Unit: 1, Function: FuncDiagnostics, Subfunction: DiagClearCounters, Data: []byte{0, 0}},
	},
	{
		name: "FC8/14 return server message count, frame 74",
		adu: []byte{
			0x00, 0x23, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 35
			0x08,       // function: diagnostics
			0x00, 0x0e, // sub-function 14
			0x00, 0x00, // data
		},
		want: Request{TransactionID: 35, Unit: 1, Function: FuncDiagnostics, Subfunction: DiagReturnServerMessageCount, Data: []byte{0, 0}},
	},
	{
		name: "FC11 get comm event counter, frame 78",
		adu: []byte{
			0x00, 0x25, 0x00, 0x00, 0x00, 0x02, 0x01, // MBAP: tid 37, length 2
			0x0b, // function: get comm event counter
		},
		want: Request{TransactionID: 37, Unit: 1, Function: FuncGetCommEventCounter},
	},
	{
		name: "FC12 get comm event log, frame 80",
		adu: []byte{
			0x00, 0x26, 0x00, 0x00, 0x00, 0x02, 0x01, // MBAP: tid 38, length 2
			0x0c, // function: get comm event log
		},
		want: Request{TransactionID: 38, Unit: 1, Function: FuncGetCommEventLog},
	},
	{
		name: "FC15 write multiple coils, frame 30",
		adu: []byte{
			0x00, 0x0d, 0x00, 0x00, // tid 13
			0x00, 0x0a, // length 10
			0x01,       // unit id
			0x0f,       // function: write multiple coils
			0x00, 0x14, // starting address 20
			0x00, 0x13, // quantity 19
			0x03,             // byte count 3 = ceil(19/8)
			0x2b, 0x3e, 0x03, // coils 20-27, 28-35, 36-38 (top 5 bits zero)
		},
		want: Request{TransactionID: 13, Unit: 1, Function: FuncWriteMultipleCoils, Address: 20, Quantity: 19, Data: []byte{0x2b, 0x3e, 0x03}},
	},
	{
		name: "FC16 write multiple registers, frame 38",
		adu: []byte{
			0x00, 0x11, 0x00, 0x00, // tid 17
			0x00, 0x1b, // length 27
			0x01,       // unit id
			0x10,       // function: write multiple registers
			0x00, 0x6e, // starting address 110
			0x00, 0x0a, // quantity 10
			0x14,                                                       // byte count 20
			0xfe, 0x69, 0xeb, 0x11, 0x19, 0xc3, 0x40, 0x67, 0xc2, 0x89, // registers 110-114
			0xdc, 0x1f, 0x1a, 0x38, 0x3b, 0xb8, 0xc5, 0x18, 0x97, 0x46, // registers 115-119
		},
		want: Request{TransactionID: 17, Unit: 1, Function: FuncWriteMultipleRegisters, Address: 110, Quantity: 10,
			Data: []byte{0xfe, 0x69, 0xeb, 0x11, 0x19, 0xc3, 0x40, 0x67, 0xc2, 0x89, 0xdc, 0x1f, 0x1a, 0x38, 0x3b, 0xb8, 0xc5, 0x18, 0x97, 0x46}},
	},
	{
		name: "FC16 write multiple registers, mbpoll, frame 134",
		adu: []byte{
			0x00, 0x01, 0x00, 0x00, 0x00, 0x0b, 0x01, // MBAP: tid 1, length 11
			0x10,       // function: write multiple registers
			0x00, 0x00, // starting address 0 (mbpoll reference 1)
			0x00, 0x02, // quantity 2
			0x04,       // byte count 4
			0x00, 0x7b, // 123
			0x01, 0xc8, // 456
		},
		want: Request{TransactionID: 1, Unit: 1, Function: FuncWriteMultipleRegisters, Quantity: 2, Data: []byte{0x00, 0x7b, 0x01, 0xc8}},
	},
	{
		name: "FC17 report server id, frame 82",
		adu: []byte{
			0x00, 0x27, 0x00, 0x00, 0x00, 0x02, 0x01, // MBAP: tid 39, length 2
			0x11, // function: report server id
		},
		want: Request{TransactionID: 39, Unit: 1, Function: FuncReportServerID},
	},
	{
		name: "FC20 read file record, frame 84",
		adu: []byte{
			0x00, 0x28, 0x00, 0x00, 0x00, 0x0a, 0x01, // MBAP: tid 40, length 10
			0x14,       // function: read file record
			0x07,       // byte count: one sub-request
			0x06,       // reference type 6
			0x00, 0x01, // file 1
			0x00, 0x00, // record 0
			0x00, 0x02, // record length 2 registers
		},
		want: Request{TransactionID: 40, Unit: 1, Function: FuncReadFileRecord, Data: []byte{6, 0, 1, 0, 0, 0, 2}},
	},
	{
		name: "FC20 read file record, two groups, spec",
		adu: []byte{
			0x00, 0x03, 0x00, 0x00, 0x00, 0x11, 0x01, // MBAP: length 17
			0x14,                                     // function: read file record
			0x0e,                                     // byte count 14: two sub-requests
			0x06, 0x00, 0x04, 0x00, 0x01, 0x00, 0x02, // ref 6, file 4, record 1, 2 registers
			0x06, 0x00, 0x03, 0x00, 0x09, 0x00, 0x02, // ref 6, file 3, record 9, 2 registers
		},
		want: Request{TransactionID: 3, Unit: 1, Function: FuncReadFileRecord, Data: []byte{6, 0, 4, 0, 1, 0, 2, 6, 0, 3, 0, 9, 0, 2}},
	},
	{
		name: "FC21 write file record, frame 86",
		adu: []byte{
			0x00, 0x29, 0x00, 0x00, 0x00, 0x0e, 0x01, // MBAP: tid 41, length 14
			0x15,       // function: write file record
			0x0b,       // request data length 11
			0x06,       // reference type 6
			0x00, 0x01, // file 1
			0x00, 0x00, // record 0
			0x00, 0x02, // record length 2
			0x00, 0x01, // data 1
			0x00, 0x02, // data 2
		},
		want: Request{TransactionID: 41, Unit: 1, Function: FuncWriteFileRecord, Data: []byte{6, 0, 1, 0, 0, 0, 2, 0, 1, 0, 2}},
	},
	{
		name: "FC22 mask write register, frame 44",
		adu: []byte{
			0x00, 0x14, 0x00, 0x00, 0x00, 0x08, 0x01, // MBAP: tid 20, length 8
			0x16,       // function: mask write register
			0x00, 0x78, // reference address 120
			0xf0, 0xf2, // AND mask
			0x00, 0x25, // OR mask
		},
		want: Request{TransactionID: 20, Unit: 1, Function: FuncMaskWriteRegister, Address: 120, AndMask: 0xf0f2, OrMask: 0x25},
	},
	{
		name: "FC23 read/write multiple registers, frame 48",
		adu: []byte{
			0x00, 0x16, 0x00, 0x00, 0x00, 0x13, 0x01, // MBAP: tid 22, length 19
			0x17,       // function: read/write multiple registers
			0x00, 0x82, // read starting address 130
			0x00, 0x04, // quantity to read 4
			0x00, 0x82, // write starting address 130
			0x00, 0x04, // quantity to write 4
			0x08,                                           // write byte count 8
			0xc7, 0xe5, 0x48, 0xe3, 0x63, 0xf2, 0x85, 0x4e, // 4 registers
		},
		want: Request{TransactionID: 22, Unit: 1, Function: FuncReadWriteMultipleRegisters,
			ReadAddress: 130, ReadQuantity: 4, Address: 130, Quantity: 4,
			Data: []byte{0xc7, 0xe5, 0x48, 0xe3, 0x63, 0xf2, 0x85, 0x4e}},
	},
	{
		name: "FC23 read/write, different halves, frame 52",
		adu: []byte{
			0x00, 0x18, 0x00, 0x00, 0x00, 0x0f, 0x01, // MBAP: tid 24, length 15
			0x17,       // function: read/write multiple registers
			0x23, 0x28, // read starting address 9000
			0x00, 0x04, // quantity to read 4
			0x00, 0x8c, // write starting address 140
			0x00, 0x02, // quantity to write 2
			0x04,                   // write byte count 4
			0x00, 0x07, 0x00, 0x08, // 7, 8
		},
		want: Request{TransactionID: 24, Unit: 1, Function: FuncReadWriteMultipleRegisters,
			ReadAddress: 9000, ReadQuantity: 4, Address: 140, Quantity: 2, Data: []byte{0, 7, 0, 8}},
	},
	{
		name: "FC24 read FIFO queue, frame 88",
		adu: []byte{
			0x00, 0x2a, 0x00, 0x00, 0x00, 0x04, 0x01, // MBAP: tid 42, length 4
			0x18,       // function: read FIFO queue
			0x00, 0x00, // FIFO pointer address 0
		},
		want: Request{TransactionID: 42, Unit: 1, Function: FuncReadFIFOQueue},
	},
	{
		name: "FC43/14 read device identification basic, frame 54",
		adu: []byte{
			0x00, 0x19, 0x00, 0x00, 0x00, 0x05, 0x01, // MBAP: tid 25, length 5
			0x2b, // function: encapsulated interface transport
			0x0e, // MEI type 14: read device identification
			0x01, // read device id code 1: basic, stream
			0x00, // object id 0
		},
		want: Request{TransactionID: 25, Unit: 1, Function: FuncEncapsulatedInterface, MEIType: MEIReadDeviceIdentification, DeviceIDCode: 1},
	},
	{
		name: "FC43/14 read one object, frame 60",
		adu: []byte{
			0x00, 0x1c, 0x00, 0x00, 0x00, 0x05, 0x01, // MBAP: tid 28, length 5
			0x2b, 0x0e, // FC 43 / MEI 14
			0x04, // read device id code 4: individual access
			0x04, // object id 4: ProductName
		},
		want: Request{TransactionID: 28, Unit: 1, Function: FuncEncapsulatedInterface, MEIType: MEIReadDeviceIdentification, DeviceIDCode: 4, ObjectID: 4},
	},
	{
		name: "FC43/14 unit 255, zeek_modbus-eit frame 3",
		adu: []byte{
			0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0xff, // MBAP: tid 0, length 5, unit 255
			0x2b, 0x0e, 0x01, 0x00, // FC 43 / MEI 14, basic, object 0
		},
		want: Request{Unit: 0xff, Function: FuncEncapsulatedInterface, MEIType: MEIReadDeviceIdentification, DeviceIDCode: 1},
	},
	{
		name: "FC43/13 CANopen general reference (opaque MEI data)",
		adu: []byte{
			0x00, 0x05, 0x00, 0x00, 0x00, 0x07, 0x01, // MBAP: length 7
			0x2b,                   // function: encapsulated interface transport
			0x0d,                   // MEI type 13: CANopen general reference
			0x00, 0x10, 0x18, 0x00, // opaque CANopen data, copied as is
		},
		want: Request{TransactionID: 5, Unit: 1, Function: FuncEncapsulatedInterface, MEIType: MEICANopenGeneralReference, Data: []byte{0x00, 0x10, 0x18, 0x00}},
	},
	{
		name: "FC65 user-defined (opaque), frame 104",
		adu: []byte{
			0x42, 0x42, 0x00, 0x00, 0x00, 0x04, 0x01, // MBAP: tid 0x4242, length 4
			0x41,       // function 65: user-defined
			0x00, 0x00, // opaque data
		},
		want: Request{TransactionID: 0x4242, Unit: 1, Function: 65, Data: []byte{0, 0}},
	},
	{
		name: "FC90 UMAS (reserved, opaque), no data",
		adu: []byte{
			0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, // MBAP: length 2, unit 0
			0x5a, // function 90
		},
		want: Request{TransactionID: 1, Function: 90, Data: []byte{}},
	},
	{
		name: "FC29 reserved (opaque), zeek_fuzz-72 frame 3",
		adu: []byte{
			0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: length 6
			0x1d,                   // function 29
			0x00, 0x00, 0x00, 0x00, // opaque data
		},
		want: Request{Unit: 1, Function: 29, Data: []byte{0, 0, 0, 0}},
	},
}

func TestRequestCodec(t *testing.T) {
	for _, tc := range requestCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Run("decode", func(t *testing.T) {
				var got Request
				n, err := got.Decode(tc.adu)
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

// Requests that are well framed but that a conforming device refuses: the
// decoder reports the exception that device would send, and the request is
// never re-encoded.
var requestProtocolErrors = []struct {
	name      string
	adu       []byte
	reason    string
	exception uint8
}{
	{"FC3 quantity 126, frame 94", []byte{
		0x00, 0x2d, 0x00, 0x00, 0x00, 0x06, 0x01, // MBAP: tid 45
		0x03, 0x00, 0x00, // read holding registers at 0
		0x00, 0x7e, // quantity 126 > 125
	}, ReasonBadQuantity, ExIllegalDataValue},
	{"FC1 quantity 2001, frame 96", []byte{
		0x00, 0x2e, 0x00, 0x00, 0x00, 0x06, 0x01,
		0x01, 0x00, 0x00, // read coils at 0
		0x07, 0xd1, // quantity 2001 > 2000
	}, ReasonBadQuantity, ExIllegalDataValue},
	{"FC2 quantity 0", []byte{0, 1, 0, 0, 0, 6, 1, 0x02, 0x00, 0x00, 0x00, 0x00}, ReasonBadQuantity, ExIllegalDataValue},
	{"FC4 address overflow", []byte{
		0, 1, 0, 0, 0, 6, 1,
		0x04, 0xff, 0xff, // read input registers at 65535
		0x00, 0x02, // 2 registers: 65535 + 2 > 65536
	}, ReasonAddressOverflow, ExIllegalDataAddress},
	{"FC3 quantity checked before address", []byte{0, 1, 0, 0, 0, 6, 1, 0x03, 0xff, 0xff, 0x00, 0x7e}, ReasonBadQuantity, ExIllegalDataValue},
	{"FC5 value 0x0001", []byte{
		0, 1, 0, 0, 0, 6, 1,
		0x05, 0x00, 0x0a, // write single coil 10
		0x00, 0x01, // neither 0x0000 nor 0xFF00
	}, ReasonBadValue, ExIllegalDataValue},
	{"FC15 quantity 1969", []byte{
		0, 1, 0, 0, 0, 0x08, 1,
		0x0f, 0x00, 0x00, 0x07, 0xb1, // write multiple coils at 0, quantity 1969 > 1968
		0x01, 0xff, // byte count 1: consistent with the length, not the quantity
	}, ReasonBadQuantity, ExIllegalDataValue},
	{"FC15 byte count 2 for 19 coils", []byte{
		0, 1, 0, 0, 0, 0x09, 1,
		0x0f, 0x00, 0x14, 0x00, 0x13, // write multiple coils 20, quantity 19
		0x02, 0x2b, 0x3e, // byte count 2 (framing matches), 19 coils need 3
	}, ReasonByteCountMismatch, ExIllegalDataValue},
	{"FC15 address overflow", []byte{0, 1, 0, 0, 0, 0x08, 1, 0x0f, 0xff, 0xff, 0x00, 0x02, 0x01, 0x03}, ReasonAddressOverflow, ExIllegalDataAddress},
	{"FC16 quantity 124", []byte{
		0, 1, 0, 0, 0, 0x09, 1,
		0x10, 0x00, 0x00, 0x00, 0x7c, // write multiple registers at 0, quantity 124 > 123
		0x02, 0x00, 0x01, // byte count 2 (124 registers could not even fit a PDU)
	}, ReasonBadQuantity, ExIllegalDataValue},
	{"FC16 byte count 4 for 1 register", []byte{
		0, 1, 0, 0, 0, 0x0b, 1,
		0x10, 0x00, 0x00, 0x00, 0x01, // write 1 register at 0
		0x04, 0, 1, 0, 2, // byte count 4: consistent with the length, not with the quantity
	}, ReasonByteCountMismatch, ExIllegalDataValue},
	{"FC16 address overflow", []byte{0, 1, 0, 0, 0, 0x0b, 1, 0x10, 0xff, 0xff, 0x00, 0x02, 0x04, 0, 1, 0, 2}, ReasonAddressOverflow, ExIllegalDataAddress},
	{"FC23 read quantity 0", []byte{0, 1, 0, 0, 0, 0x0d, 1, 0x17, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 1}, ReasonBadQuantity, ExIllegalDataValue},
	{"FC23 write quantity 122", []byte{
		0, 1, 0, 0, 0, 0x0d, 1,
		0x17, 0x00, 0x00, 0x00, 0x01, // read 1 register at 0
		0x00, 0x00, 0x00, 0x7a, // write 122 registers at 0 (> 121)
		0x02, 0x00, 0x01, // byte count 2
	}, ReasonBadQuantity, ExIllegalDataValue},
	{"FC23 write byte count mismatch", []byte{0, 1, 0, 0, 0, 0x0d, 1, 0x17, 0, 0, 0, 1, 0, 0, 0, 2, 2, 0, 1}, ReasonByteCountMismatch, ExIllegalDataValue},
	{"FC23 read half overflows", []byte{0, 1, 0, 0, 0, 0x0d, 1, 0x17, 0xff, 0xff, 0, 2, 0, 0, 0, 1, 2, 0, 1}, ReasonAddressOverflow, ExIllegalDataAddress},
	{"FC23 write half overflows", []byte{0, 1, 0, 0, 0, 0x0f, 1, 0x17, 0, 0, 0, 2, 0xff, 0xff, 0, 2, 4, 0, 1, 0, 2}, ReasonAddressOverflow, ExIllegalDataAddress},
	{"FC8 reserved sub-function 19", []byte{
		0, 1, 0, 0, 0, 6, 1,
		0x08, 0x00, 0x13, // diagnostics, sub-function 19 (reserved, spec Annex A)
		0x00, 0x00,
	}, ReasonUnknownSubfunction, ExIllegalFunction},
	{"FC8 reserved sub-function 0x1234, no data", []byte{0, 1, 0, 0, 0, 4, 1, 0x08, 0x12, 0x34}, ReasonUnknownSubfunction, ExIllegalFunction},
	{"FC8/01 data 0x0001", []byte{0, 1, 0, 0, 0, 6, 1, 0x08, 0x00, 0x01, 0x00, 0x01}, ReasonBadValue, ExIllegalDataValue},
	{"FC8/02 data not zero", []byte{0, 1, 0, 0, 0, 6, 1, 0x08, 0x00, 0x02, 0x12, 0x34}, ReasonBadValue, ExIllegalDataValue},
	{"FC8/03 delimiter low byte not zero", []byte{0, 1, 0, 0, 0, 6, 1, 0x08, 0x00, 0x03, 0x0d, 0x0a}, ReasonBadValue, ExIllegalDataValue},
	{"FC43 reserved MEI type 0, zeek_fuzz-72 frame 16", []byte{
		0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x01,
		0x2b, 0x00, // FC 43, MEI type 0 (reserved)
		0x00, 0x00, 0x00,
	}, ReasonUnknownMEIType, ExIllegalFunction},
	{"FC43/14 read device id code 5", []byte{0, 1, 0, 0, 0, 5, 1, 0x2b, 0x0e, 0x05, 0x00}, ReasonBadDeviceIDCode, ExIllegalDataValue},
	{"FC43/14 read device id code 0", []byte{0, 1, 0, 0, 0, 5, 1, 0x2b, 0x0e, 0x00, 0x00}, ReasonBadDeviceIDCode, ExIllegalDataValue},
	{"function code 0", []byte{0, 1, 0, 0, 0, 2, 1, 0x00}, ReasonInvalidFunction, ExIllegalFunction},
	{"function code 0x83 in a request", []byte{0, 1, 0, 0, 0, 3, 1, 0x83, 0x02}, ReasonInvalidFunction, ExIllegalFunction},
	{"FC20 byte count 8", []byte{0, 1, 0, 0, 0, 0x0b, 1, 0x14, 0x08, 6, 0, 1, 0, 0, 0, 2, 0}, ReasonBadByteCount, ExIllegalDataValue},
	{"FC20 record length 0", []byte{0, 1, 0, 0, 0, 0x0a, 1, 0x14, 0x07, 6, 0, 1, 0, 0, 0, 0}, ReasonBadRecordLength, ExIllegalDataValue},
	{"FC20 answer would not fit", []byte{0, 1, 0, 0, 0, 0x0a, 1, 0x14, 0x07, 6, 0, 1, 0, 0, 0, 0x7b}, ReasonBadRecordLength, ExIllegalDataValue},
	{"FC20 reference type 7", []byte{0, 1, 0, 0, 0, 0x0a, 1, 0x14, 0x07, 7, 0, 1, 0, 0, 0, 2}, ReasonBadReferenceType, ExIllegalDataAddress},
	{"FC20 file number 0", []byte{0, 1, 0, 0, 0, 0x0a, 1, 0x14, 0x07, 6, 0, 0, 0, 0, 0, 2}, ReasonBadFileNumber, ExIllegalDataAddress},
	{"FC20 record 10000", []byte{0, 1, 0, 0, 0, 0x0a, 1, 0x14, 0x07, 6, 0, 1, 0x27, 0x10, 0, 1}, ReasonBadRecordNumber, ExIllegalDataAddress},
	{"FC20 record 9999 + 2 registers", []byte{0, 1, 0, 0, 0, 0x0a, 1, 0x14, 0x07, 6, 0, 1, 0x27, 0x0f, 0, 2}, ReasonBadRecordNumber, ExIllegalDataAddress},
	{"FC21 byte count 7", []byte{0, 1, 0, 0, 0, 0x0a, 1, 0x15, 0x07, 6, 0, 1, 0, 0, 0, 0}, ReasonBadByteCount, ExIllegalDataValue},
	{"FC21 record overruns byte count", []byte{0, 1, 0, 0, 0, 0x0c, 1, 0x15, 0x09, 6, 0, 1, 0, 0, 0, 2, 0, 1}, ReasonByteCountMismatch, ExIllegalDataValue},
	{"FC21 trailing half sub-request", []byte{0, 1, 0, 0, 0, 0x0e, 1, 0x15, 0x0b, 6, 0, 1, 0, 0, 0, 1, 0, 1, 6, 0}, ReasonByteCountMismatch, ExIllegalDataValue},
	{"FC21 file number 0", []byte{0, 1, 0, 0, 0, 0x0c, 1, 0x15, 0x09, 6, 0, 0, 0, 0, 0, 1, 0, 1}, ReasonBadFileNumber, ExIllegalDataAddress},
}

func TestRequestProtocolErrors(t *testing.T) {
	for _, tc := range requestProtocolErrors {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			n, err := r.Decode(tc.adu)
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("Decode error %v (%T), want *ProtocolError", err, err)
			}
			if !errors.Is(err, ErrProtocol) || errors.Is(err, ErrFraming) {
				t.Errorf("errors.Is: protocol %v framing %v", errors.Is(err, ErrProtocol), errors.Is(err, ErrFraming))
			}
			if pe.Reason != tc.reason || pe.Exception != tc.exception {
				t.Errorf("got %s/%#02x, want %s/%#02x (%v)", pe.Reason, pe.Exception, tc.reason, tc.exception, err)
			}
			if ReasonOf(err) != tc.reason {
				t.Errorf("ReasonOf = %q", ReasonOf(err))
			}
			if n != len(tc.adu) {
				t.Errorf("n = %d, want the ADU length %d so the stream stays in step", n, len(tc.adu))
			}
			// Enough is decoded to answer with the right exception.
			if r.TransactionID != be16(tc.adu) || r.Unit != tc.adu[6] || r.Function != tc.adu[7] {
				t.Errorf("header not kept: %+v", r)
			}
			exc := r.AppendException(nil, pe.Exception)
			want := []byte{tc.adu[0], tc.adu[1], 0, 0, 0, 3, tc.adu[6], tc.adu[7] | 0x80, tc.exception}
			if !bytes.Equal(exc, want) {
				t.Errorf("AppendException = % x, want % x", exc, want)
			}
			// The encoder applies the same rules: it refuses to emit r.
			if out, err := r.Append(nil); err == nil {
				t.Errorf("Append encoded a refused request: % x", out)
			}
		})
	}
}

// Requests whose PDU length differs from what the function code and count
// fields imply: the framing cannot be trusted.
var requestFramingErrors = []struct {
	name   string
	adu    []byte
	reason string
}{
	{"protocol id 1", []byte{0, 1, 0, 1, 0, 6, 1, 3, 0, 0, 0, 1}, ReasonBadProtocolID},
	{"MBAP length 1", []byte{0, 1, 0, 0, 0, 1, 1}, ReasonBadLength},
	{"MBAP length 255", []byte{0, 1, 0, 0, 0, 0xff, 1}, ReasonBadLength},
	{"MBAP length 0xFFFF", []byte{0, 1, 0, 0, 0xff, 0xff, 1, 3}, ReasonBadLength},
	{"shorter than the header", []byte{0, 1, 0, 0, 0, 6}, ReasonTruncated},
	{"shorter than the MBAP length", []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0}, ReasonTruncated},
	{"FC3 PDU 4 bytes", []byte{0, 1, 0, 0, 0, 5, 1, 3, 0, 0, 0}, ReasonLengthMismatch},
	{"FC3 PDU 6 bytes", []byte{0, 1, 0, 0, 0, 7, 1, 3, 0, 0, 0, 1, 0}, ReasonLengthMismatch},
	{"FC7 with data", []byte{0, 1, 0, 0, 0, 3, 1, 7, 0}, ReasonLengthMismatch},
	{"FC8/01 without data", []byte{0, 1, 0, 0, 0, 4, 1, 8, 0, 1}, ReasonLengthMismatch},
	{"FC8/02 with 4 data bytes", []byte{0, 1, 0, 0, 0, 8, 1, 8, 0, 2, 0, 0, 0, 0}, ReasonLengthMismatch},
	{"FC8 without sub-function", []byte{0, 1, 0, 0, 0, 3, 1, 8, 0}, ReasonLengthMismatch},
	{"FC16 byte count says 2, PDU carries 4", []byte{0, 1, 0, 0, 0, 0x0b, 1, 0x10, 0, 0, 0, 1, 2, 0, 1, 0, 2}, ReasonLengthMismatch},
	{"FC16 byte count says 4, PDU carries 2", []byte{0, 1, 0, 0, 0, 0x09, 1, 0x10, 0, 0, 0, 2, 4, 0, 1}, ReasonLengthMismatch},
	{"FC20 byte count past the PDU", []byte{0, 1, 0, 0, 0, 4, 1, 0x14, 7, 6}, ReasonLengthMismatch},
	{"FC22 PDU 5 bytes", []byte{0, 1, 0, 0, 0, 6, 1, 0x16, 0, 0, 0, 0}, ReasonLengthMismatch},
	{"FC24 with extra byte", []byte{0, 1, 0, 0, 0, 5, 1, 0x18, 0, 0, 0}, ReasonLengthMismatch},
	{"FC43 without MEI type", []byte{0, 1, 0, 0, 0, 2, 1, 0x2b}, ReasonLengthMismatch},
	{"FC43/14 without object id", []byte{0, 1, 0, 0, 0, 4, 1, 0x2b, 0x0e, 1}, ReasonLengthMismatch},
	{"FC43/14 with trailing byte", []byte{0, 1, 0, 0, 0, 6, 1, 0x2b, 0x0e, 1, 0, 0}, ReasonLengthMismatch},
	{"MBAP length 254, 10 PDU bytes given", []byte{
		0x00, 0x0b, 0x00, 0x00, 0x00, 0xfe, 0x01, // MBAP: length 254 (a full PDU)
		0x17, 0x00, 0x00, 0x00, 0x00, 0x00, 0xdf, 0x21, 0x12, 0xbf, // start of 4SICS frame 1
	}, ReasonTruncated},
}

func TestRequestFramingErrors(t *testing.T) {
	for _, tc := range requestFramingErrors {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			n, err := r.Decode(tc.adu)
			var fe *FramingError
			if !errors.As(err, &fe) {
				t.Fatalf("Decode error %v (%T), want *FramingError", err, err)
			}
			if !errors.Is(err, ErrFraming) || errors.Is(err, ErrProtocol) {
				t.Errorf("errors.Is mismatch for %v", err)
			}
			if fe.Reason != tc.reason {
				t.Errorf("reason %s, want %s (%v)", fe.Reason, tc.reason, err)
			}
			if n != 0 {
				t.Errorf("n = %d after a framing error", n)
			}
		})
	}
}
