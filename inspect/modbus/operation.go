package modbus

import "github.com/conduit-ot/conduit/inspect"

// Operation names (input.operation.name), one per function code or MEI type.
const (
	NameReadCoils                      = "read_coils"
	NameReadDiscreteInputs             = "read_discrete_inputs"
	NameReadHoldingRegisters           = "read_holding_registers"
	NameReadInputRegisters             = "read_input_registers"
	NameWriteSingleCoil                = "write_single_coil"
	NameWriteSingleRegister            = "write_single_register"
	NameReadExceptionStatus            = "read_exception_status"
	NameDiagnostics                    = "diagnostics"
	NameGetCommEventCounter            = "get_comm_event_counter"
	NameGetCommEventLog                = "get_comm_event_log"
	NameWriteMultipleCoils             = "write_multiple_coils"
	NameWriteMultipleRegisters         = "write_multiple_registers"
	NameReportServerID                 = "report_server_id"
	NameReadFileRecord                 = "read_file_record"
	NameWriteFileRecord                = "write_file_record"
	NameMaskWriteRegister              = "mask_write_register"
	NameReadWriteMultipleRegisters     = "read_write_multiple_registers"
	NameReadFIFOQueue                  = "read_fifo_queue"
	NameCANopenGeneralReference        = "canopen_general_reference"
	NameReadDeviceIdentification       = "read_device_identification"
	NameEncapsulatedInterfaceTransport = "encapsulated_interface_transport"
	NameUnknownFunction                = "unknown_function"
)

// Classify returns the policy name and access class of a request with
// function code fc and, for FC 43, MEI type mei (ignored otherwise).
// Anything not a public function code (and FC 43 with a reserved MEI type)
// is AccessOther, which the reference policy denies unless listed.
func Classify(fc, mei uint8) (name string, access inspect.Access) {
	switch fc {
	case FuncReadCoils:
		return NameReadCoils, inspect.AccessRead
	case FuncReadDiscreteInputs:
		return NameReadDiscreteInputs, inspect.AccessRead
	case FuncReadHoldingRegisters:
		return NameReadHoldingRegisters, inspect.AccessRead
	case FuncReadInputRegisters:
		return NameReadInputRegisters, inspect.AccessRead
	case FuncWriteSingleCoil:
		return NameWriteSingleCoil, inspect.AccessWrite
	case FuncWriteSingleRegister:
		return NameWriteSingleRegister, inspect.AccessWrite
	case FuncReadExceptionStatus:
		return NameReadExceptionStatus, inspect.AccessDiagnostic
	case FuncDiagnostics:
		return NameDiagnostics, inspect.AccessDiagnostic
	case FuncGetCommEventCounter:
		return NameGetCommEventCounter, inspect.AccessDiagnostic
	case FuncGetCommEventLog:
		return NameGetCommEventLog, inspect.AccessDiagnostic
	case FuncWriteMultipleCoils:
		return NameWriteMultipleCoils, inspect.AccessWrite
	case FuncWriteMultipleRegisters:
		return NameWriteMultipleRegisters, inspect.AccessWrite
	case FuncReportServerID:
		return NameReportServerID, inspect.AccessDiagnostic
	case FuncReadFileRecord:
		return NameReadFileRecord, inspect.AccessRead
	case FuncWriteFileRecord:
		return NameWriteFileRecord, inspect.AccessWrite
	case FuncMaskWriteRegister:
		return NameMaskWriteRegister, inspect.AccessWrite
	case FuncReadWriteMultipleRegisters:
		return NameReadWriteMultipleRegisters, inspect.AccessWrite
	case FuncReadFIFOQueue:
		return NameReadFIFOQueue, inspect.AccessRead
	case FuncEncapsulatedInterface:
		switch mei {
		case MEIReadDeviceIdentification:
			return NameReadDeviceIdentification, inspect.AccessDiagnostic
		case MEICANopenGeneralReference:
			// Reads or writes a CANopen object dictionary entry; which
			// one is inside opaque data, so it is neither read nor write.
			return NameCANopenGeneralReference, inspect.AccessOther
		}
		return NameEncapsulatedInterfaceTransport, inspect.AccessOther
	}
	return NameUnknownFunction, inspect.AccessOther
}

// Operation fills op (after op.Reset) with what the policy needs to know
// about r: Protocol "modbus", Access, Name and the Modbus section.
//
//   - Values holds what is written, coils as 0/1: FC 5 (one value), FC 6,
//     FC 15, FC 16, FC 23 (the write half; ReadAddress/ReadQuantity are the
//     read half) and FC 21 (the records' data concatenated; each
//     FileRecords[i].Values is a sub-slice of it). FC 22 has no value of its
//     own: AndMask and OrMask, Address, Quantity 1.
//   - FC 20/21: Table file and one FileRecords entry per sub-request.
//   - FC 24: Table fifo, Address the FIFO pointer address.
//   - FC 8: Subfunction; FC 43: Subfunction = MEI type, and for 43/14
//     DeviceIDCode and ObjectID. HasSubfunction is set for both.
//
// It does not allocate once op's Values and FileRecords have grown: it
// reuses their capacity (the first call sizes them for the largest request
// so they never grow again). The slices belong to op and are overwritten by
// the next fill; Clone to retain.
//
// Operation may be called after Decode returned a *ProtocolError, to
// describe the refused request in the audit trail: it never reads past
// Data, whatever the other fields say.
func (r *Request) Operation(op *inspect.Operation) {
	op.Reset()
	op.Protocol = inspect.ProtocolModbus
	op.Name, op.Access = Classify(r.Function, r.MEIType)
	m := &op.Modbus
	m.Unit = r.Unit
	m.Function = r.Function
	switch r.Function {
	case FuncReadCoils, FuncReadDiscreteInputs, FuncReadHoldingRegisters, FuncReadInputRegisters:
		m.Table = readTable(r.Function)
		m.Address, m.Quantity = r.Address, r.Quantity
	case FuncWriteSingleCoil:
		m.Table, m.Address, m.Quantity = inspect.TableCoils, r.Address, 1
		v := uint16(0)
		if r.Value == CoilOn {
			v = 1
		}
		m.Values = append(values(m.Values, 1), v)
	case FuncWriteSingleRegister:
		m.Table, m.Address, m.Quantity = inspect.TableHoldingRegisters, r.Address, 1
		m.Values = append(values(m.Values, 1), r.Value)
	case FuncWriteMultipleCoils:
		m.Table, m.Address, m.Quantity = inspect.TableCoils, r.Address, r.Quantity
		n := min(int(r.Quantity), 8*len(r.Data))
		m.Values = values(m.Values, n)
		for i := 0; i < n; i++ {
			m.Values = append(m.Values, uint16(r.Data[i/8]>>(i%8)&1))
		}
	case FuncWriteMultipleRegisters:
		m.Table, m.Address, m.Quantity = inspect.TableHoldingRegisters, r.Address, r.Quantity
		m.Values = appendRegisters(values(m.Values, len(r.Data)/2), r.Data)
	case FuncReadWriteMultipleRegisters:
		m.Table, m.Address, m.Quantity = inspect.TableHoldingRegisters, r.Address, r.Quantity
		m.ReadAddress, m.ReadQuantity = r.ReadAddress, r.ReadQuantity
		m.Values = appendRegisters(values(m.Values, len(r.Data)/2), r.Data)
	case FuncMaskWriteRegister:
		m.Table, m.Address, m.Quantity = inspect.TableHoldingRegisters, r.Address, 1
		m.AndMask, m.OrMask = r.AndMask, r.OrMask
	case FuncReadFIFOQueue:
		m.Table, m.Address = inspect.TableFIFO, r.Address
	case FuncReadFileRecord, FuncWriteFileRecord:
		m.Table = inspect.TableFile
		fillFileRecords(m, r.Data, r.Function == FuncWriteFileRecord)
	case FuncDiagnostics:
		m.Subfunction, m.HasSubfunction = r.Subfunction, true
	case FuncEncapsulatedInterface:
		m.Subfunction, m.HasSubfunction = uint16(r.MEIType), true
		if r.MEIType == MEIReadDeviceIdentification {
			m.DeviceIDCode, m.ObjectID = r.DeviceIDCode, r.ObjectID
		}
	}
}

func readTable(fc uint8) inspect.Table {
	switch fc {
	case FuncReadCoils:
		return inspect.TableCoils
	case FuncReadDiscreteInputs:
		return inspect.TableDiscreteInputs
	case FuncReadHoldingRegisters:
		return inspect.TableHoldingRegisters
	}
	return inspect.TableInputRegisters
}

// values returns v emptied, with room for n values. The first growth sizes
// it for the largest request (FC 15, 1968 coils) so that it never grows
// again.
func values(v []uint16, n int) []uint16 {
	if cap(v) < n {
		return make([]uint16, 0, max(n, MaxWriteCoils))
	}
	return v[:0]
}

func appendRegisters(dst []uint16, b []byte) []uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		dst = append(dst, be16(b[i:]))
	}
	return dst
}

// maxSubRequests is the most 7-byte sub-requests a one-byte byte count can
// announce, so that even a refused request never grows FileRecords again.
const maxSubRequests = 0xFF / fileSubRequestLen

// fillFileRecords parses FC 20/21 sub-requests into m.FileRecords; for
// FC 21 their data goes to m.Values, which each record's Values slices.
// It stops at the first sub-request that does not fit.
func fillFileRecords(m *inspect.Modbus, data []byte, write bool) {
	recs := m.FileRecords[:0]
	if cap(recs) < maxSubRequests {
		recs = make([]inspect.FileRecord, 0, maxSubRequests)
	}
	if write {
		m.Values = values(m.Values, len(data)/2)
	}
	for off := 0; len(data)-off >= fileSubRequestLen; {
		rec := inspect.FileRecord{
			File:   be16(data[off+1:]),
			Record: be16(data[off+3:]),
			Length: be16(data[off+5:]),
		}
		off += fileSubRequestLen
		if write {
			n := 2 * int(rec.Length)
			if n > len(data)-off {
				break
			}
			first := len(m.Values)
			m.Values = appendRegisters(m.Values, data[off:off+n])
			rec.Values = m.Values[first:len(m.Values):len(m.Values)]
			off += n
		}
		recs = append(recs, rec)
	}
	m.FileRecords = recs
}
