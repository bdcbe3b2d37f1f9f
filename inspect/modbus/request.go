package modbus

// Request is a decoded Modbus/TCP request ADU. Which fields are meaningful
// depends on Function:
//
//	FC 1, 2, 3, 4     Address, Quantity
//	FC 5, 6           Address, Value (FC 5: CoilOn or CoilOff)
//	FC 7, 11, 12, 17  nothing
//	FC 8              Subfunction, Data (sub-function data; 2 bytes except for Return Query Data)
//	FC 15             Address, Quantity, Data (packed coils, LSB first; byte count = len(Data))
//	FC 16             Address, Quantity, Data (2*Quantity register bytes, big-endian)
//	FC 20, 21         Data (the sub-requests after the byte count, FC 21 with their record data)
//	FC 22             Address, AndMask, OrMask
//	FC 23             ReadAddress, ReadQuantity (read half); Address, Quantity, Data (write half)
//	FC 24             Address (FIFO pointer address)
//	FC 43/14          MEIType, DeviceIDCode, ObjectID
//	FC 43/13, other   MEIType, Data (opaque MEI data)
//	any other code    Data (opaque: every byte after the function code)
//
// Data is a sub-slice of the decoded ADU (zero-copy): valid only as long as
// that buffer is, e.g. until the Framer's next Next. Copy to retain.
type Request struct {
	TransactionID uint16
	Unit          uint8
	Function      uint8

	Address  uint16
	Quantity uint16
	Value    uint16

	ReadAddress  uint16
	ReadQuantity uint16

	AndMask uint16
	OrMask  uint16

	Subfunction  uint16
	MEIType      uint8
	DeviceIDCode uint8
	ObjectID     uint8

	Data []byte
}

// Decode decodes and validates the request ADU at the start of b (b may
// hold more bytes, e.g. pipelined ADUs; only the first is decoded) and
// returns the ADU's length.
//
// On a *FramingError r is unspecified and n is 0: nothing after it on the
// connection can be framed. On a *ProtocolError n is the ADU's length and r
// holds everything decoded up to the failed check — at least TransactionID,
// Unit and Function — so that Request.AppendException can answer it and
// Request.Operation can describe it for the audit trail; r must not be
// forwarded.
func (r *Request) Decode(b []byte) (n int, err error) {
	n, unit, pdu, err := splitADU(b)
	if err != nil {
		return 0, err
	}
	*r = Request{TransactionID: be16(b), Unit: unit, Function: pdu[0]}
	c := cursor{b: pdu, off: 1}
	switch r.Function {
	case FuncReadCoils, FuncReadDiscreteInputs, FuncReadHoldingRegisters, FuncReadInputRegisters:
		r.Address, r.Quantity = c.u16(), c.u16()
	case FuncWriteSingleCoil, FuncWriteSingleRegister:
		r.Address, r.Value = c.u16(), c.u16()
	case FuncReadExceptionStatus, FuncGetCommEventCounter, FuncGetCommEventLog, FuncReportServerID:
		// The function code alone (spec §6.7, §6.9, §6.10, §6.13).
	case FuncDiagnostics:
		r.Subfunction = c.u16()
		switch {
		case c.short:
		case r.Subfunction == DiagReturnQueryData:
			r.Data = c.rest() // "Any" data, echoed (spec §6.8.1)
		case diagKnown(r.Subfunction):
			r.Data = c.bytes(diagDataLen)
		default:
			// A reserved sub-function has no defined data length, so the
			// MBAP length is the only boundary; refuse it as a device would.
			r.Data = c.rest()
			return n, protocolErr(ReasonUnknownSubfunction, ExIllegalFunction,
				"FC 8 sub-function %#04x is reserved", r.Subfunction)
		}
	case FuncWriteMultipleCoils, FuncWriteMultipleRegisters:
		r.Address, r.Quantity = c.u16(), c.u16()
		r.Data = c.bytes(int(c.u8()))
	case FuncReadFileRecord, FuncWriteFileRecord:
		r.Data = c.bytes(int(c.u8()))
	case FuncMaskWriteRegister:
		r.Address, r.AndMask, r.OrMask = c.u16(), c.u16(), c.u16()
	case FuncReadWriteMultipleRegisters:
		r.ReadAddress, r.ReadQuantity = c.u16(), c.u16()
		r.Address, r.Quantity = c.u16(), c.u16()
		r.Data = c.bytes(int(c.u8()))
	case FuncReadFIFOQueue:
		r.Address = c.u16()
	case FuncEncapsulatedInterface:
		r.MEIType = c.u8()
		switch {
		case c.short:
		case r.MEIType == MEIReadDeviceIdentification:
			r.DeviceIDCode, r.ObjectID = c.u8(), c.u8()
		case r.MEIType == MEICANopenGeneralReference:
			r.Data = c.rest()
		default:
			r.Data = c.rest()
			return n, protocolErr(ReasonUnknownMEIType, ExIllegalFunction,
				"FC 43 MEI type %#02x is reserved", r.MEIType)
		}
	default:
		// Reserved, user-defined and unassigned codes are opaque: every
		// byte the MBAP length covers, nothing more (spec §5).
		r.Data = c.rest()
	}
	if !c.exact() {
		return 0, lengthMismatch("request", r.Function, &c)
	}
	return n, r.validate()
}

// lengthMismatch is the framing error for a PDU that is shorter or longer
// than its function code and count fields say — the shape of the
// length-smuggling attack (libmodbus issue 514).
func lengthMismatch(kind string, fc uint8, c *cursor) error {
	if c.short {
		return framingErr(ReasonLengthMismatch, "FC %d %s PDU of %d bytes is too short for its fields", fc, kind, len(c.b))
	}
	return framingErr(ReasonLengthMismatch, "FC %d %s PDU is %d bytes but its fields end after %d", fc, kind, len(c.b), c.off)
}

// diagKnown reports whether sub is an FC 8 sub-function of spec §6.8.1
// other than Return Query Data.
func diagKnown(sub uint16) bool {
	switch sub {
	case DiagRestartCommunications, DiagReturnDiagnosticRegister, DiagChangeASCIIInputDelimiter,
		DiagForceListenOnlyMode, DiagClearCounters, DiagReturnBusMessageCount,
		DiagReturnBusCommunicationErrorCount, DiagReturnBusExceptionErrorCount,
		DiagReturnServerMessageCount, DiagReturnServerNoResponseCount, DiagReturnServerNAKCount,
		DiagReturnServerBusyCount, DiagReturnBusCharacterOverrunCount, DiagClearOverrunCounter:
		return true
	}
	return false
}

// validate applies the checks of the spec's per-function state diagrams to
// the decoded fields, in the spec's order: quantity and value (exception
// 03) before address (exception 02). Decode and Append share it, so the
// encoder can never emit a request the decoder would refuse.
func (r *Request) validate() error {
	switch r.Function {
	case FuncReadCoils, FuncReadDiscreteInputs:
		return checkQuantityRange(r.Function, r.Address, r.Quantity, MaxReadBits)
	case FuncReadHoldingRegisters, FuncReadInputRegisters:
		return checkQuantityRange(r.Function, r.Address, r.Quantity, MaxReadRegisters)
	case FuncWriteSingleCoil:
		if r.Value != CoilOn && r.Value != CoilOff {
			return protocolErr(ReasonBadValue, ExIllegalDataValue,
				"FC 5 output value %#04x, want 0x0000 or 0xFF00", r.Value)
		}
	case FuncDiagnostics:
		return validateDiagRequest(r.Subfunction, r.Data)
	case FuncWriteMultipleCoils:
		if r.Quantity < 1 || r.Quantity > MaxWriteCoils {
			return protocolErr(ReasonBadQuantity, ExIllegalDataValue,
				"FC 15 quantity %d outside 1..%d", r.Quantity, MaxWriteCoils)
		}
		if len(r.Data) != coilBytes(r.Quantity) {
			return protocolErr(ReasonByteCountMismatch, ExIllegalDataValue,
				"FC 15 byte count %d, quantity %d needs %d", len(r.Data), r.Quantity, coilBytes(r.Quantity))
		}
		return checkAddressRange(r.Function, r.Address, r.Quantity)
	case FuncWriteMultipleRegisters:
		if r.Quantity < 1 || r.Quantity > MaxWriteRegisters {
			return protocolErr(ReasonBadQuantity, ExIllegalDataValue,
				"FC 16 quantity %d outside 1..%d", r.Quantity, MaxWriteRegisters)
		}
		if len(r.Data) != 2*int(r.Quantity) {
			return protocolErr(ReasonByteCountMismatch, ExIllegalDataValue,
				"FC 16 byte count %d, quantity %d needs %d", len(r.Data), r.Quantity, 2*int(r.Quantity))
		}
		return checkAddressRange(r.Function, r.Address, r.Quantity)
	case FuncReadFileRecord:
		return validateReadFile(r.Data)
	case FuncWriteFileRecord:
		return validateWriteFile(r.Data, ExIllegalDataValue, ExIllegalDataAddress)
	case FuncReadWriteMultipleRegisters:
		if r.ReadQuantity < 1 || r.ReadQuantity > MaxReadWriteReadRegisters {
			return protocolErr(ReasonBadQuantity, ExIllegalDataValue,
				"FC 23 quantity to read %d outside 1..%d", r.ReadQuantity, MaxReadWriteReadRegisters)
		}
		if r.Quantity < 1 || r.Quantity > MaxReadWriteWriteRegisters {
			return protocolErr(ReasonBadQuantity, ExIllegalDataValue,
				"FC 23 quantity to write %d outside 1..%d", r.Quantity, MaxReadWriteWriteRegisters)
		}
		if len(r.Data) != 2*int(r.Quantity) {
			return protocolErr(ReasonByteCountMismatch, ExIllegalDataValue,
				"FC 23 write byte count %d, quantity %d needs %d", len(r.Data), r.Quantity, 2*int(r.Quantity))
		}
		if err := checkAddressRange(r.Function, r.ReadAddress, r.ReadQuantity); err != nil {
			return err
		}
		return checkAddressRange(r.Function, r.Address, r.Quantity)
	case FuncEncapsulatedInterface:
		switch r.MEIType {
		case MEIReadDeviceIdentification:
			if r.DeviceIDCode < ReadDeviceIDBasic || r.DeviceIDCode > ReadDeviceIDSpecific {
				return protocolErr(ReasonBadDeviceIDCode, ExIllegalDataValue,
					"FC 43/14 read device id code %#02x outside 1..4", r.DeviceIDCode)
			}
		case MEICANopenGeneralReference:
		default:
			return protocolErr(ReasonUnknownMEIType, ExIllegalFunction,
				"FC 43 MEI type %#02x is reserved", r.MEIType)
		}
	case FuncWriteSingleRegister, FuncReadExceptionStatus, FuncGetCommEventCounter,
		FuncGetCommEventLog, FuncReportServerID, FuncMaskWriteRegister, FuncReadFIFOQueue:
		// Every value of their fields is legal.
	default:
		if !validFunction(r.Function) {
			return protocolErr(ReasonInvalidFunction, ExIllegalFunction,
				"function code %#02x is not a request function code (1..127)", r.Function)
		}
	}
	return nil
}

// validFunction reports whether fc may appear in a request: 0 is invalid and
// 128-255 are exception responses (spec §4.1).
func validFunction(fc uint8) bool { return fc != 0 && fc < ExceptionBit }

// coilBytes is the byte count for n packed bits (spec §6.1: N = n/8, +1 if
// a remainder).
func coilBytes(n uint16) int { return (int(n) + 7) / 8 }

func checkQuantityRange(fc uint8, addr, qty uint16, max int) error {
	if qty < 1 || int(qty) > max {
		return protocolErr(ReasonBadQuantity, ExIllegalDataValue,
			"FC %d quantity %d outside 1..%d", fc, qty, max)
	}
	return checkAddressRange(fc, addr, qty)
}

func checkAddressRange(fc uint8, addr, qty uint16) error {
	if int(addr)+int(qty) > AddressSpace {
		return protocolErr(ReasonAddressOverflow, ExIllegalDataAddress,
			"FC %d address %d + quantity %d passes 65536", fc, addr, qty)
	}
	return nil
}

// validateDiagRequest checks FC 8 sub-function data (spec §6.8.1). Data
// lengths are framing and were checked by Decode; Append relies on the same
// check here.
func validateDiagRequest(sub uint16, data []byte) error {
	if sub == DiagReturnQueryData {
		return nil
	}
	if !diagKnown(sub) {
		return protocolErr(ReasonUnknownSubfunction, ExIllegalFunction, "FC 8 sub-function %#04x is reserved", sub)
	}
	if len(data) != diagDataLen {
		return framingErr(ReasonLengthMismatch, "FC 8 sub-function %#04x data is %d bytes, want %d", sub, len(data), diagDataLen)
	}
	v := be16(data)
	switch sub {
	case DiagRestartCommunications:
		if v == 0 || v == diagRestartClearLog {
			return nil
		}
	case DiagChangeASCIIInputDelimiter:
		if v&0xFF == 0 { // "CHAR 00"
			return nil
		}
	default:
		if v == 0 {
			return nil
		}
	}
	return protocolErr(ReasonBadValue, ExIllegalDataValue, "FC 8 sub-function %#04x data %#04x not allowed", sub, v)
}

// validateReadFile checks FC 20 sub-requests (spec §6.14): byte count and
// lengths (exception 03) before references (exception 02).
func validateReadFile(data []byte) error {
	bc := len(data)
	if bc < MinReadFileByteCount || bc > MaxReadFileByteCount || bc%fileSubRequestLen != 0 {
		return protocolErr(ReasonBadByteCount, ExIllegalDataValue,
			"FC 20 byte count %d, want a multiple of %d in %d..%d", bc, fileSubRequestLen, MinReadFileByteCount, MaxReadFileByteCount)
	}
	resp := 0
	for off := 0; off < bc; off += fileSubRequestLen {
		l := be16(data[off+5:])
		if l == 0 {
			return protocolErr(ReasonBadRecordLength, ExIllegalDataValue, "FC 20 sub-request %d has record length 0", off/fileSubRequestLen)
		}
		resp += fileSubResponseHeaderLen + 2*int(l)
	}
	if resp > maxReadFileResponseData {
		// "The quantity of registers to be read, combined with all other
		// fields in the expected response, must not exceed ... 253 bytes."
		return protocolErr(ReasonBadRecordLength, ExIllegalDataValue,
			"FC 20 response would carry %d data bytes, at most %d fit", resp, maxReadFileResponseData)
	}
	for off := 0; off < bc; off += fileSubRequestLen {
		if err := checkFileReference(FuncReadFileRecord, data[off], be16(data[off+1:]), be16(data[off+3:]), be16(data[off+5:]), ExIllegalDataAddress); err != nil {
			return err
		}
	}
	return nil
}

// validateWriteFile checks FC 21 sub-requests (spec §6.15); responses echo
// them and are checked with the same rules, under other error codes.
func validateWriteFile(data []byte, exValue, exAddress uint8) error {
	bc := len(data)
	if bc < MinWriteFileByteCount || bc > MaxWriteFileByteCount {
		return fileErr(ReasonBadByteCount, exValue, "FC 21 byte count %d outside %d..%d", bc, MinWriteFileByteCount, MaxWriteFileByteCount)
	}
	for off := 0; off < bc; {
		if bc-off < fileSubRequestLen {
			return fileErr(ReasonByteCountMismatch, exValue, "FC 21 byte count %d ends inside a sub-request header at %d", bc, off)
		}
		l := int(be16(data[off+5:]))
		if l == 0 {
			return fileErr(ReasonBadRecordLength, exValue, "FC 21 sub-request at %d has record length 0", off)
		}
		next := off + fileSubRequestLen + 2*l
		if next > bc {
			return fileErr(ReasonByteCountMismatch, exValue, "FC 21 sub-request at %d needs %d bytes, byte count leaves %d", off, next-off, bc-off)
		}
		off = next
	}
	for off := 0; off < bc; {
		l := be16(data[off+5:])
		if err := checkFileReference(FuncWriteFileRecord, data[off], be16(data[off+1:]), be16(data[off+3:]), l, exAddress); err != nil {
			return err
		}
		off += fileSubRequestLen + 2*int(l)
	}
	return nil
}

// fileErr builds a *ProtocolError for requests (exception != 0) and a
// *ResponseError for responses (exception == 0).
func fileErr(reason string, exception uint8, format string, args ...any) error {
	if exception == 0 {
		return responseErr(reason, format, args...)
	}
	return protocolErr(reason, exception, format, args...)
}

func checkFileReference(fc, ref uint8, file, record, length uint16, exception uint8) error {
	switch {
	case ref != FileReferenceType:
		return fileErr(ReasonBadReferenceType, exception, "FC %d reference type %d, want %d", fc, ref, FileReferenceType)
	case file < MinFileNumber:
		return fileErr(ReasonBadFileNumber, exception, "FC %d file number 0", fc)
	case record > MaxFileRecord || int(record)+int(length) > fileRecordSpace:
		return fileErr(ReasonBadRecordNumber, exception, "FC %d record %d + length %d passes record 9999", fc, record, length)
	}
	return nil
}

// ExpectsResponse reports whether a device answers r. Only FC 8/04 (Force
// Listen Only Mode) is defined to get no response (spec §6.8.1); the proxy
// must not wait for one.
func (r *Request) ExpectsResponse() bool {
	return !(r.Function == FuncDiagnostics && r.Subfunction == DiagForceListenOnlyMode)
}

// Append validates r with the same rules as Decode and appends its ADU to
// dst. The MBAP length is computed, never copied. With a dst of capacity
// MaxADULen it does not allocate. On error — a *ProtocolError for a rule a
// device would refuse, a *FramingError when the fields cannot make a PDU of
// the implied length (FC 8 data size, more than 253 bytes) — dst is
// returned unchanged.
//
// For every request Decode accepts, Append reproduces the input bytes
// exactly, except that unused bits of the last FC 15 coil byte are written
// as zero (see the package documentation).
func (r *Request) Append(dst []byte) ([]byte, error) {
	if err := r.validate(); err != nil {
		return dst, err
	}
	start := len(dst)
	dst = append(dst, byte(r.TransactionID>>8), byte(r.TransactionID), 0, 0, 0, 0, r.Unit, r.Function)
	switch r.Function {
	case FuncReadCoils, FuncReadDiscreteInputs, FuncReadHoldingRegisters, FuncReadInputRegisters:
		dst = appendU16(appendU16(dst, r.Address), r.Quantity)
	case FuncWriteSingleCoil, FuncWriteSingleRegister:
		dst = appendU16(appendU16(dst, r.Address), r.Value)
	case FuncReadExceptionStatus, FuncGetCommEventCounter, FuncGetCommEventLog, FuncReportServerID:
	case FuncDiagnostics:
		dst = append(appendU16(dst, r.Subfunction), r.Data...)
	case FuncWriteMultipleCoils:
		dst = appendU16(appendU16(dst, r.Address), r.Quantity)
		dst = append(append(dst, byte(len(r.Data))), r.Data...)
		dst[len(dst)-1] &= lastCoilMask(r.Quantity)
	case FuncWriteMultipleRegisters:
		dst = appendU16(appendU16(dst, r.Address), r.Quantity)
		dst = append(append(dst, byte(len(r.Data))), r.Data...)
	case FuncReadFileRecord, FuncWriteFileRecord:
		dst = append(append(dst, byte(len(r.Data))), r.Data...)
	case FuncMaskWriteRegister:
		dst = appendU16(appendU16(appendU16(dst, r.Address), r.AndMask), r.OrMask)
	case FuncReadWriteMultipleRegisters:
		dst = appendU16(appendU16(dst, r.ReadAddress), r.ReadQuantity)
		dst = appendU16(appendU16(dst, r.Address), r.Quantity)
		dst = append(append(dst, byte(len(r.Data))), r.Data...)
	case FuncReadFIFOQueue:
		dst = appendU16(dst, r.Address)
	case FuncEncapsulatedInterface:
		dst = append(dst, r.MEIType)
		if r.MEIType == MEIReadDeviceIdentification {
			dst = append(dst, r.DeviceIDCode, r.ObjectID)
		} else {
			dst = append(dst, r.Data...)
		}
	default:
		dst = append(dst, r.Data...)
	}
	return finishADU(dst, start)
}

// finishADU writes the MBAP length of the ADU that starts at dst[start], or
// undoes the append when the PDU is longer than MaxPDULen.
func finishADU(dst []byte, start int) ([]byte, error) {
	l := len(dst) - start - lengthFieldEnd
	if l > MaxLength {
		return dst[:start], framingErr(ReasonBadLength, "encoded PDU is %d bytes, at most %d fit", l-1, MaxPDULen)
	}
	dst[start+4], dst[start+5] = byte(l>>8), byte(l)
	return dst, nil
}

// lastCoilMask keeps the bits of the last packed byte that hold one of n
// coils; the rest must be zero (spec §6.1, §6.11).
func lastCoilMask(n uint16) byte {
	if r := n % 8; r != 0 {
		return byte(1)<<r - 1
	}
	return 0xFF
}

// AppendException appends the exception response a conforming device would
// send to r with the given code (e.g. the Exception of a *ProtocolError, or
// ExGatewayTargetFailedToRespond when the device did not answer).
func (r *Request) AppendException(dst []byte, code uint8) []byte {
	return AppendException(dst, r.TransactionID, r.Unit, r.Function, code)
}

// AppendException appends an exception response ADU: the MBAP header, then
// function|0x80 and the exception code (spec §7). It does not allocate when
// dst has room for HeaderLen+2 bytes.
func AppendException(dst []byte, transactionID uint16, unit, function, code uint8) []byte {
	return append(dst,
		byte(transactionID>>8), byte(transactionID), 0, 0, 0, 1+pduLenException,
		unit, function|ExceptionBit, code)
}
