package modbus

import (
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/conduit-ot/conduit/inspect"
)

// modbusOp builds the expected Operation for a table row.
func modbusOp(name string, access inspect.Access, m inspect.Modbus) inspect.Operation {
	return inspect.Operation{Protocol: inspect.ProtocolModbus, Name: name, Access: access, Modbus: m}
}

// equalOps compares two Operations, treating nil and empty slices alike.
func equalOps(a, b inspect.Operation) bool {
	if !slices.Equal(a.Modbus.Values, b.Modbus.Values) || len(a.Modbus.FileRecords) != len(b.Modbus.FileRecords) {
		return false
	}
	for i := range a.Modbus.FileRecords {
		x, y := a.Modbus.FileRecords[i], b.Modbus.FileRecords[i]
		if x.File != y.File || x.Record != y.Record || x.Length != y.Length || !slices.Equal(x.Values, y.Values) {
			return false
		}
	}
	a.Modbus.Values, b.Modbus.Values = nil, nil
	a.Modbus.FileRecords, b.Modbus.FileRecords = nil, nil
	return reflect.DeepEqual(a, b)
}

var operationCases = []struct {
	name string
	adu  []byte
	want inspect.Operation
}{
	{"FC1, frame 16", []byte{0, 6, 0, 0, 0, 6, 1, 0x01, 0x00, 0x00, 0x07, 0xd0},
		modbusOp(NameReadCoils, inspect.AccessRead, inspect.Modbus{Unit: 1, Function: 1, Table: inspect.TableCoils, Quantity: 2000})},
	{"FC2, frame 4", []byte{0, 1, 0, 0, 0, 6, 1, 0x02, 0x00, 0x00, 0x00, 0x10},
		modbusOp(NameReadDiscreteInputs, inspect.AccessRead, inspect.Modbus{Unit: 1, Function: 2, Table: inspect.TableDiscreteInputs, Quantity: 16})},
	{"FC3, frame 14", []byte{0, 5, 0, 0, 0, 6, 1, 0x03, 0x1f, 0x40, 0x00, 0x7d},
		modbusOp(NameReadHoldingRegisters, inspect.AccessRead, inspect.Modbus{Unit: 1, Function: 3, Table: inspect.TableHoldingRegisters, Address: 8000, Quantity: 125})},
	{"FC4, frame 8", []byte{0, 2, 0, 0, 0, 6, 1, 0x04, 0x00, 0x64, 0x00, 0x0a},
		modbusOp(NameReadInputRegisters, inspect.AccessRead, inspect.Modbus{Unit: 1, Function: 4, Table: inspect.TableInputRegisters, Address: 100, Quantity: 10})},
	{"FC5 ON is 1, frame 18", []byte{0, 7, 0, 0, 0, 6, 1, 0x05, 0x00, 0x0a, 0xff, 0x00},
		modbusOp(NameWriteSingleCoil, inspect.AccessWrite, inspect.Modbus{Unit: 1, Function: 5, Table: inspect.TableCoils, Address: 10, Quantity: 1, Values: []uint16{1}})},
	{"FC5 OFF is 0, frame 22", []byte{0, 9, 0, 0, 0, 6, 1, 0x05, 0x00, 0x0a, 0x00, 0x00},
		modbusOp(NameWriteSingleCoil, inspect.AccessWrite, inspect.Modbus{Unit: 1, Function: 5, Table: inspect.TableCoils, Address: 10, Quantity: 1, Values: []uint16{0}})},
	{"FC6, frame 144", []byte{0, 1, 0, 0, 0, 6, 1, 0x06, 0x00, 0x04, 0x03, 0x09},
		modbusOp(NameWriteSingleRegister, inspect.AccessWrite, inspect.Modbus{Unit: 1, Function: 6, Table: inspect.TableHoldingRegisters, Address: 4, Quantity: 1, Values: []uint16{777}})},
	{"FC7, frame 76", []byte{0, 0x24, 0, 0, 0, 2, 1, 0x07},
		modbusOp(NameReadExceptionStatus, inspect.AccessDiagnostic, inspect.Modbus{Unit: 1, Function: 7})},
	{"FC8/10, frame 66", []byte{0, 0x1f, 0, 0, 0, 6, 1, 0x08, 0x00, 0x0a, 0x00, 0x00},
		modbusOp(NameDiagnostics, inspect.AccessDiagnostic, inspect.Modbus{Unit: 1, Function: 8, Subfunction: 10, HasSubfunction: true})},
	{"FC8/00, frame 62", []byte{0, 0x1d, 0, 0, 0, 6, 1, 0x08, 0x00, 0x00, 0xb8, 0xfa},
		modbusOp(NameDiagnostics, inspect.AccessDiagnostic, inspect.Modbus{Unit: 1, Function: 8, Subfunction: 0, HasSubfunction: true})},
	{"FC11, frame 78", []byte{0, 0x25, 0, 0, 0, 2, 1, 0x0b},
		modbusOp(NameGetCommEventCounter, inspect.AccessDiagnostic, inspect.Modbus{Unit: 1, Function: 11})},
	{"FC12, frame 80", []byte{0, 0x26, 0, 0, 0, 2, 1, 0x0c},
		modbusOp(NameGetCommEventLog, inspect.AccessDiagnostic, inspect.Modbus{Unit: 1, Function: 12})},
	{"FC15 coils as 0/1, frame 30", []byte{0, 0x0d, 0, 0, 0, 0x0a, 1, 0x0f, 0x00, 0x14, 0x00, 0x13, 0x03, 0x2b, 0x3e, 0x03},
		modbusOp(NameWriteMultipleCoils, inspect.AccessWrite, inspect.Modbus{Unit: 1, Function: 15, Table: inspect.TableCoils, Address: 20, Quantity: 19,
			// 0x2b = 00101011, 0x3e = 00111110, 0x03 = 011 (LSB first)
			Values: []uint16{1, 1, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0}})},
	{"FC16, frame 134", []byte{0, 1, 0, 0, 0, 0x0b, 1, 0x10, 0x00, 0x00, 0x00, 0x02, 0x04, 0x00, 0x7b, 0x01, 0xc8},
		modbusOp(NameWriteMultipleRegisters, inspect.AccessWrite, inspect.Modbus{Unit: 1, Function: 16, Table: inspect.TableHoldingRegisters, Quantity: 2, Values: []uint16{123, 456}})},
	{"FC17, frame 82", []byte{0, 0x27, 0, 0, 0, 2, 1, 0x11},
		modbusOp(NameReportServerID, inspect.AccessDiagnostic, inspect.Modbus{Unit: 1, Function: 17})},
	{"FC20 two groups, spec", []byte{0, 3, 0, 0, 0, 0x11, 1, 0x14, 0x0e, 6, 0, 4, 0, 1, 0, 2, 6, 0, 3, 0, 9, 0, 2},
		modbusOp(NameReadFileRecord, inspect.AccessRead, inspect.Modbus{Unit: 1, Function: 20, Table: inspect.TableFile,
			FileRecords: []inspect.FileRecord{{File: 4, Record: 1, Length: 2}, {File: 3, Record: 9, Length: 2}}})},
	{"FC21 two groups", []byte{0, 1, 0, 0, 0, 0x19, 1, 0x15, 0x16,
		6, 0, 4, 0, 7, 0, 3, 0x06, 0xaf, 0x04, 0xbe, 0x10, 0x0d, // file 4 record 7: 3 registers
		6, 0, 1, 0, 0, 0, 1, 0x00, 0x2a}, // file 1 record 0: 1 register
		modbusOp(NameWriteFileRecord, inspect.AccessWrite, inspect.Modbus{Unit: 1, Function: 21, Table: inspect.TableFile,
			Values: []uint16{0x06af, 0x04be, 0x100d, 42},
			FileRecords: []inspect.FileRecord{
				{File: 4, Record: 7, Length: 3, Values: []uint16{0x06af, 0x04be, 0x100d}},
				{File: 1, Record: 0, Length: 1, Values: []uint16{42}},
			}})},
	{"FC22, frame 44", []byte{0, 0x14, 0, 0, 0, 8, 1, 0x16, 0x00, 0x78, 0xf0, 0xf2, 0x00, 0x25},
		modbusOp(NameMaskWriteRegister, inspect.AccessWrite, inspect.Modbus{Unit: 1, Function: 22, Table: inspect.TableHoldingRegisters,
			Address: 120, Quantity: 1, AndMask: 0xf0f2, OrMask: 0x25})},
	{"FC23 write half is Address/Quantity/Values, frame 52",
		[]byte{0, 0x18, 0, 0, 0, 0x0f, 1, 0x17, 0x23, 0x28, 0x00, 0x04, 0x00, 0x8c, 0x00, 0x02, 0x04, 0x00, 0x07, 0x00, 0x08},
		modbusOp(NameReadWriteMultipleRegisters, inspect.AccessWrite, inspect.Modbus{Unit: 1, Function: 23, Table: inspect.TableHoldingRegisters,
			Address: 140, Quantity: 2, Values: []uint16{7, 8}, ReadAddress: 9000, ReadQuantity: 4})},
	{"FC24, spec", []byte{0, 1, 0, 0, 0, 4, 1, 0x18, 0x04, 0xde},
		modbusOp(NameReadFIFOQueue, inspect.AccessRead, inspect.Modbus{Unit: 1, Function: 24, Table: inspect.TableFIFO, Address: 1246})},
	{"FC43/14, frame 60", []byte{0, 0x1c, 0, 0, 0, 5, 1, 0x2b, 0x0e, 0x04, 0x04},
		modbusOp(NameReadDeviceIdentification, inspect.AccessDiagnostic, inspect.Modbus{Unit: 1, Function: 43,
			Subfunction: 14, HasSubfunction: true, DeviceIDCode: 4, ObjectID: 4})},
	{"FC43/13", []byte{0, 5, 0, 0, 0, 7, 1, 0x2b, 0x0d, 0x00, 0x10, 0x18, 0x00},
		modbusOp(NameCANopenGeneralReference, inspect.AccessOther, inspect.Modbus{Unit: 1, Function: 43, Subfunction: 13, HasSubfunction: true})},
	{"FC65, frame 104", []byte{0x42, 0x42, 0, 0, 0, 4, 1, 0x41, 0x00, 0x00},
		modbusOp(NameUnknownFunction, inspect.AccessOther, inspect.Modbus{Unit: 1, Function: 65})},
	{"FC90 UMAS", []byte{0, 1, 0, 0, 0, 4, 0, 0x5a, 0x00, 0x02},
		modbusOp(NameUnknownFunction, inspect.AccessOther, inspect.Modbus{Unit: 0, Function: 90})},
}

func TestOperation(t *testing.T) {
	var op inspect.Operation // reused across rows, as the proxy does per connection
	for _, tc := range operationCases {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRequest(t, tc.adu)
			r.Operation(&op)
			if !equalOps(op, tc.want) {
				t.Errorf("Operation\n got %+v\nwant %+v", op, tc.want)
			}
		})
	}
}

// A refused request can still be described for the audit trail, and its
// description never reads past the data it has.
func TestOperationAfterProtocolError(t *testing.T) {
	for _, tc := range []struct {
		name string
		adu  []byte
		want inspect.Operation
	}{
		{"FC43 reserved MEI type", []byte{0, 0, 0, 0, 0, 6, 1, 0x2b, 0x00, 0x00, 0x00, 0x00},
			modbusOp(NameEncapsulatedInterfaceTransport, inspect.AccessOther, inspect.Modbus{Unit: 1, Function: 43, Subfunction: 0, HasSubfunction: true})},
		{"FC16 byte count 4 for quantity 3", []byte{0, 1, 0, 0, 0, 0x0b, 1, 0x10, 0x00, 0x05, 0x00, 0x03, 0x04, 0, 1, 0, 2},
			modbusOp(NameWriteMultipleRegisters, inspect.AccessWrite, inspect.Modbus{Unit: 1, Function: 16, Table: inspect.TableHoldingRegisters,
				Address: 5, Quantity: 3, Values: []uint16{1, 2}})},
		{"FC15 quantity 1969, 1 data byte", []byte{0, 1, 0, 0, 0, 8, 1, 0x0f, 0x00, 0x00, 0x07, 0xb1, 0x01, 0x81},
			modbusOp(NameWriteMultipleCoils, inspect.AccessWrite, inspect.Modbus{Unit: 1, Function: 15, Table: inspect.TableCoils,
				Quantity: 1969, Values: []uint16{1, 0, 0, 0, 0, 0, 0, 1}})},
		{"FC21 record overruns", []byte{0, 1, 0, 0, 0, 0x0c, 1, 0x15, 0x09, 6, 0, 1, 0, 0, 0, 2, 0, 1},
			modbusOp(NameWriteFileRecord, inspect.AccessWrite, inspect.Modbus{Unit: 1, Function: 21, Table: inspect.TableFile})},
		{"FC8 reserved sub-function", []byte{0, 1, 0, 0, 0, 6, 1, 0x08, 0x00, 0x13, 0x00, 0x00},
			modbusOp(NameDiagnostics, inspect.AccessDiagnostic, inspect.Modbus{Unit: 1, Function: 8, Subfunction: 19, HasSubfunction: true})},
		{"function code 0x80", []byte{0, 1, 0, 0, 0, 2, 1, 0x80},
			modbusOp(NameUnknownFunction, inspect.AccessOther, inspect.Modbus{Unit: 1, Function: 0x80})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			_, err := r.Decode(tc.adu)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("Decode: %v, want a protocol error", err)
			}
			var op inspect.Operation
			r.Operation(&op)
			if !equalOps(op, tc.want) {
				t.Errorf("Operation\n got %+v\nwant %+v", op, tc.want)
			}
		})
	}
}

func TestClassifyEveryCode(t *testing.T) {
	want := map[uint8]inspect.Access{
		1: inspect.AccessRead, 2: inspect.AccessRead, 3: inspect.AccessRead, 4: inspect.AccessRead,
		20: inspect.AccessRead, 24: inspect.AccessRead,
		5: inspect.AccessWrite, 6: inspect.AccessWrite, 15: inspect.AccessWrite, 16: inspect.AccessWrite,
		21: inspect.AccessWrite, 22: inspect.AccessWrite, 23: inspect.AccessWrite,
		7: inspect.AccessDiagnostic, 8: inspect.AccessDiagnostic, 11: inspect.AccessDiagnostic,
		12: inspect.AccessDiagnostic, 17: inspect.AccessDiagnostic,
	}
	for fc := 0; fc < 256; fc++ {
		name, access := Classify(uint8(fc), 0)
		if fc == int(FuncEncapsulatedInterface) {
			continue
		}
		if w, ok := want[uint8(fc)]; ok {
			if access != w || name == NameUnknownFunction {
				t.Errorf("FC %d: %s/%s, want %s", fc, name, access, w)
			}
		} else if access != inspect.AccessOther || name != NameUnknownFunction {
			t.Errorf("FC %d: %s/%s, want unknown_function/other", fc, name, access)
		}
	}
	for mei := 0; mei < 256; mei++ {
		name, access := Classify(FuncEncapsulatedInterface, uint8(mei))
		switch mei {
		case 14:
			if name != NameReadDeviceIdentification || access != inspect.AccessDiagnostic {
				t.Errorf("43/14: %s/%s", name, access)
			}
		case 13:
			if name != NameCANopenGeneralReference || access != inspect.AccessOther {
				t.Errorf("43/13: %s/%s", name, access)
			}
		default:
			if name != NameEncapsulatedInterfaceTransport || access != inspect.AccessOther {
				t.Errorf("43/%d: %s/%s", mei, name, access)
			}
		}
	}
}

// After the first fill, filling an Operation allocates nothing, even for
// the largest write.
func TestOperationDoesNotAllocate(t *testing.T) {
	coils := make([]byte, HeaderLen+6+246)
	copy(coils, []byte{0, 1, 0, 0, 0, byte(1 + 6 + 246), 1, 0x0f, 0, 0, 0x07, 0xb0, 246}) // 1968 coils
	reqs := []*Request{
		mustRequest(t, coils),
		mustRequest(t, []byte{0, 0x11, 0, 0, 0, 0x1b, 1, 0x10, 0x00, 0x6e, 0x00, 0x0a, 0x14,
			0xfe, 0x69, 0xeb, 0x11, 0x19, 0xc3, 0x40, 0x67, 0xc2, 0x89, 0xdc, 0x1f, 0x1a, 0x38, 0x3b, 0xb8, 0xc5, 0x18, 0x97, 0x46}),
		mustRequest(t, []byte{0, 3, 0, 0, 0, 0x11, 1, 0x14, 0x0e, 6, 0, 4, 0, 1, 0, 2, 6, 0, 3, 0, 9, 0, 2}),
		mustRequest(t, []byte{0, 0x29, 0, 0, 0, 0x0e, 1, 0x15, 0x0b, 6, 0, 1, 0, 0, 0, 2, 0, 1, 0, 2}),
	}
	var op inspect.Operation
	for _, r := range reqs {
		r.Operation(&op) // warm up: sizes the slices once
	}
	allocs := testing.AllocsPerRun(100, func() {
		for _, r := range reqs {
			r.Operation(&op)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per fill", allocs)
	}
	if len(op.Modbus.FileRecords) != 1 || len(op.Modbus.Values) != 2 {
		t.Errorf("last fill: %+v", op.Modbus)
	}
}
