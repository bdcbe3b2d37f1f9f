package modbus

import "bytes"

// Response is a decoded Modbus/TCP response ADU. Which fields are meaningful
// depends on Function:
//
//	exception         Exception (non-zero), nothing else
//	FC 1, 2           Quantity (coils/inputs requested), Data (packed bits after the byte count)
//	FC 3, 4, 23       Quantity (registers), Data (2*Quantity register bytes)
//	FC 5, 6           Address, Value (echo)
//	FC 7              Data (the one output data byte)
//	FC 8              Subfunction, Data (sub-function data)
//	FC 11             Status, EventCount
//	FC 12             Status, EventCount, MessageCount, Data (0-64 event bytes)
//	FC 15, 16         Address, Quantity (echo)
//	FC 17             Data (server id, run indicator status, additional data)
//	FC 20             Data (the sub-responses after the byte count)
//	FC 21             Data (the echoed sub-requests after the byte count)
//	FC 22             Address, AndMask, OrMask (echo)
//	FC 24             Quantity (FIFO count), Data (2*Quantity FIFO register bytes)
//	FC 43/14          MEIType, DeviceIDCode, Conformity, MoreFollows, NextObjectID, ObjectCount, Data (the object list)
//	FC 43/13          MEIType, Data (opaque MEI data)
//	any other code    Data (opaque: every byte after the function code)
//
// For FC 1 and 2 the byte count cannot tell how many bits are padding, so
// Quantity comes from the paired request; decoded without one it is
// 8 × byte count. For FC 3, 4 and 23 it is the register count.
//
// Data is a sub-slice of the decoded ADU (zero-copy): valid only as long as
// that buffer is. Copy to retain.
type Response struct {
	TransactionID uint16
	Unit          uint8
	Function      uint8 // without ExceptionBit
	Exception     uint8 // non-zero for an exception response

	Address  uint16
	Quantity uint16
	Value    uint16
	AndMask  uint16
	OrMask   uint16

	Subfunction uint16

	Status       uint16
	EventCount   uint16
	MessageCount uint16

	MEIType      uint8
	DeviceIDCode uint8
	Conformity   uint8
	MoreFollows  uint8
	NextObjectID uint8
	ObjectCount  uint8

	Data []byte
}

// IsException reports whether r is an exception response.
func (r *Response) IsException() bool { return r.Exception != 0 }

// Decode decodes the response ADU at the start of b and validates it, and
// returns the ADU's length.
//
// req is the request this response answers. The proxy must always pass it:
// then the transaction id, unit id and function code must match, counts
// must fit the request (FC 3 byte count = 2 × quantity, ...), and echoing
// responses (FC 5, 6, 8, 15, 16, 21, 22) must echo it. With req == nil —
// only for capture replay of an unpaired response — just the response's own
// structure is checked.
//
// Errors: *FramingError (n is 0) when the PDU length differs from what its
// function code and count fields imply; *ResponseError (n is the ADU
// length) when it is well-framed but invalid or does not answer req.
func (r *Response) Decode(b []byte, req *Request) (n int, err error) {
	n, unit, pdu, err := splitADU(b)
	if err != nil {
		return 0, err
	}
	*r = Response{TransactionID: be16(b), Unit: unit}
	fc := pdu[0]
	c := cursor{b: pdu, off: 1}
	if fc&ExceptionBit != 0 {
		r.Function = fc &^ ExceptionBit
		r.Exception = c.u8()
		if !c.exact() {
			return 0, lengthMismatch("exception response", fc, &c)
		}
		if r.Exception == 0 {
			// Exception == 0 means "normal response" in Response, so the
			// code must be refused here; check would see a normal one.
			return n, responseErr(ReasonBadExceptionCode, "exception code 0")
		}
		return n, r.check(req)
	}
	r.Function = fc
	switch fc {
	case FuncReadCoils, FuncReadDiscreteInputs:
		r.Data = c.bytes(int(c.u8()))
		r.Quantity = uint16(8 * len(r.Data))
	case FuncReadHoldingRegisters, FuncReadInputRegisters, FuncReadWriteMultipleRegisters:
		r.Data = c.bytes(int(c.u8()))
		r.Quantity = uint16(len(r.Data) / 2)
	case FuncWriteSingleCoil, FuncWriteSingleRegister:
		r.Address, r.Value = c.u16(), c.u16()
	case FuncReadExceptionStatus:
		r.Data = c.bytes(1)
	case FuncDiagnostics:
		r.Subfunction = c.u16()
		if r.Subfunction == DiagReturnQueryData || !diagKnown(r.Subfunction) {
			r.Data = c.rest()
		} else {
			r.Data = c.bytes(diagDataLen)
		}
	case FuncGetCommEventCounter:
		r.Status, r.EventCount = c.u16(), c.u16()
	case FuncGetCommEventLog:
		body := c.bytes(int(c.u8()))
		if !c.short && len(body) < commEventLogFixedLen {
			return n, responseErr(ReasonBadByteCount, "FC 12 byte count %d, at least %d", len(body), commEventLogFixedLen)
		}
		bc := cursor{b: body}
		r.Status, r.EventCount, r.MessageCount = bc.u16(), bc.u16(), bc.u16()
		r.Data = bc.rest()
	case FuncWriteMultipleCoils, FuncWriteMultipleRegisters:
		r.Address, r.Quantity = c.u16(), c.u16()
	case FuncReportServerID, FuncReadFileRecord, FuncWriteFileRecord:
		r.Data = c.bytes(int(c.u8()))
	case FuncMaskWriteRegister:
		r.Address, r.AndMask, r.OrMask = c.u16(), c.u16(), c.u16()
	case FuncReadFIFOQueue:
		body := c.bytes(int(c.u16()))
		if !c.short && len(body) < fifoCountLen {
			return n, responseErr(ReasonBadByteCount, "FC 24 byte count %d, at least %d", len(body), fifoCountLen)
		}
		bc := cursor{b: body}
		r.Quantity = bc.u16()
		r.Data = bc.rest()
	case FuncEncapsulatedInterface:
		r.MEIType = c.u8()
		if r.MEIType == MEIReadDeviceIdentification {
			r.DeviceIDCode, r.Conformity, r.MoreFollows = c.u8(), c.u8(), c.u8()
			r.NextObjectID, r.ObjectCount = c.u8(), c.u8()
			r.Data = c.rest()
			if !c.short && !deviceIDObjectsFit(r.Data, r.ObjectCount) {
				return 0, framingErr(ReasonLengthMismatch,
					"FC 43/14 response: %d objects do not fill the %d bytes left in the PDU", r.ObjectCount, len(r.Data))
			}
		} else {
			r.Data = c.rest()
		}
	default:
		r.Data = c.rest()
	}
	if !c.exact() {
		return 0, lengthMismatch("response", fc, &c)
	}
	if req != nil && req.Function == fc {
		// The byte count alone cannot say how many coils were asked for.
		switch fc {
		case FuncReadCoils, FuncReadDiscreteInputs, FuncReadHoldingRegisters, FuncReadInputRegisters:
			r.Quantity = req.Quantity
		case FuncReadWriteMultipleRegisters:
			r.Quantity = req.ReadQuantity
		}
	}
	return n, r.check(req)
}

// deviceIDObjectsFit reports whether count objects (id, length, value)
// fill objs exactly.
func deviceIDObjectsFit(objs []byte, count uint8) bool {
	off := 0
	for i := 0; i < int(count); i++ {
		if len(objs)-off < deviceIDObjectHeaderLen {
			return false
		}
		off += deviceIDObjectHeaderLen + int(objs[off+1])
		if off > len(objs) {
			return false
		}
	}
	return off == len(objs)
}

// check validates r's own structure and, with a request, that r answers it.
// Decode and Append share it, so the encoder can never emit a response the
// decoder would refuse.
func (r *Response) check(req *Request) error {
	if req != nil {
		switch {
		case r.TransactionID != req.TransactionID:
			return responseErr(ReasonTransactionMismatch, "transaction id %d, request had %d", r.TransactionID, req.TransactionID)
		case r.Unit != req.Unit:
			return responseErr(ReasonUnitMismatch, "unit id %d, request had %d", r.Unit, req.Unit)
		case r.Function != req.Function:
			return responseErr(ReasonFunctionMismatch, "function code %d answers a request with function code %d", r.Function, req.Function)
		}
	}
	if !validFunction(r.Function) {
		return responseErr(ReasonInvalidFunction, "function code %#02x", r.Function)
	}
	if r.Exception != 0 {
		if !validException(r.Exception) {
			return responseErr(ReasonBadExceptionCode, "exception code %#02x is not defined", r.Exception)
		}
		return nil
	}
	switch r.Function {
	case FuncReadCoils, FuncReadDiscreteInputs:
		return r.checkItems(MaxReadBits, coilBytes(MaxReadBits), coilBytes(r.Quantity))
	case FuncReadHoldingRegisters, FuncReadInputRegisters:
		return r.checkItems(MaxReadRegisters, 2*MaxReadRegisters, 2*int(r.Quantity))
	case FuncReadWriteMultipleRegisters:
		return r.checkItems(MaxReadWriteReadRegisters, 2*MaxReadWriteReadRegisters, 2*int(r.Quantity))
	case FuncWriteSingleCoil:
		if r.Value != CoilOn && r.Value != CoilOff {
			return responseErr(ReasonBadValue, "FC 5 output value %#04x, want 0x0000 or 0xFF00", r.Value)
		}
		if req != nil && (r.Address != req.Address || r.Value != req.Value) {
			return echoErr(r.Function)
		}
	case FuncWriteSingleRegister:
		if req != nil && (r.Address != req.Address || r.Value != req.Value) {
			return echoErr(r.Function)
		}
	case FuncReadExceptionStatus:
		if len(r.Data) != 1 {
			return framingErr(ReasonLengthMismatch, "FC 7 response data is %d bytes, want 1", len(r.Data))
		}
	case FuncDiagnostics:
		return r.checkDiag(req)
	case FuncGetCommEventCounter:
		return checkCommStatus(r.Function, r.Status)
	case FuncGetCommEventLog:
		if len(r.Data) > MaxCommEvents {
			return responseErr(ReasonBadByteCount, "FC 12 carries %d event bytes, at most %d", len(r.Data), MaxCommEvents)
		}
		return checkCommStatus(r.Function, r.Status)
	case FuncWriteMultipleCoils, FuncWriteMultipleRegisters:
		max := MaxWriteCoils
		if r.Function == FuncWriteMultipleRegisters {
			max = MaxWriteRegisters
		}
		if r.Quantity < 1 || int(r.Quantity) > max {
			return responseErr(ReasonBadQuantity, "FC %d quantity %d outside 1..%d", r.Function, r.Quantity, max)
		}
		if int(r.Address)+int(r.Quantity) > AddressSpace {
			return responseErr(ReasonAddressOverflow, "FC %d address %d + quantity %d passes 65536", r.Function, r.Address, r.Quantity)
		}
		if req != nil && (r.Address != req.Address || r.Quantity != req.Quantity) {
			return echoErr(r.Function)
		}
	case FuncReportServerID:
		// Server id and additional data are device specific, so the run
		// indicator cannot be located; it must at least be there.
		if len(r.Data) < 1 {
			return responseErr(ReasonBadByteCount, "FC 17 byte count 0 leaves no run indicator status")
		}
	case FuncReadFileRecord:
		return checkReadFileResponse(r.Data, req)
	case FuncWriteFileRecord:
		if err := validateWriteFile(r.Data, 0, 0); err != nil {
			return err
		}
		if req != nil && !bytes.Equal(r.Data, req.Data) {
			return echoErr(r.Function)
		}
	case FuncMaskWriteRegister:
		if req != nil && (r.Address != req.Address || r.AndMask != req.AndMask || r.OrMask != req.OrMask) {
			return echoErr(r.Function)
		}
	case FuncReadFIFOQueue:
		if r.Quantity > MaxFIFOCount {
			return responseErr(ReasonBadFIFOCount, "FC 24 FIFO count %d, at most %d", r.Quantity, MaxFIFOCount)
		}
		if len(r.Data) != 2*int(r.Quantity) {
			return responseErr(ReasonByteCountMismatch, "FC 24 FIFO count %d needs %d value bytes, byte count leaves %d",
				r.Quantity, 2*int(r.Quantity), len(r.Data))
		}
	case FuncEncapsulatedInterface:
		return r.checkMEI(req)
	}
	return nil
}

func echoErr(fc uint8) error {
	return responseErr(ReasonEchoMismatch, "FC %d response does not echo the request", fc)
}

// checkItems checks the data of a read response: a byte count in range, and
// equal to what Quantity items need (the request's quantity when paired).
func (r *Response) checkItems(maxQty, maxBytes, want int) error {
	if len(r.Data) < 1 || len(r.Data) > maxBytes {
		return responseErr(ReasonBadByteCount, "FC %d byte count %d outside 1..%d", r.Function, len(r.Data), maxBytes)
	}
	if r.Quantity < 1 || int(r.Quantity) > maxQty {
		return responseErr(ReasonBadQuantity, "FC %d quantity %d outside 1..%d", r.Function, r.Quantity, maxQty)
	}
	if len(r.Data) != want {
		return responseErr(ReasonByteCountMismatch, "FC %d byte count %d, %d items need %d", r.Function, len(r.Data), r.Quantity, want)
	}
	return nil
}

func checkCommStatus(fc uint8, status uint16) error {
	if status != commStatusIdle && status != commStatusBusy {
		return responseErr(ReasonBadValue, "FC %d status word %#04x, want 0x0000 or 0xFFFF", fc, status)
	}
	return nil
}

// diagEchoes reports whether the FC 8 sub-function's response echoes the
// request data (spec §6.8.1); the others return a counter or register.
func diagEchoes(sub uint16) bool {
	switch sub {
	case DiagReturnQueryData, DiagRestartCommunications, DiagChangeASCIIInputDelimiter,
		DiagForceListenOnlyMode, DiagClearCounters, DiagClearOverrunCounter:
		return true
	}
	return false
}

func (r *Response) checkDiag(req *Request) error {
	if r.Subfunction != DiagReturnQueryData && !diagKnown(r.Subfunction) {
		return responseErr(ReasonUnknownSubfunction, "FC 8 sub-function %#04x is reserved", r.Subfunction)
	}
	if r.Subfunction != DiagReturnQueryData && len(r.Data) != diagDataLen {
		return framingErr(ReasonLengthMismatch, "FC 8 sub-function %#04x response data is %d bytes, want %d",
			r.Subfunction, len(r.Data), diagDataLen)
	}
	if req == nil {
		return nil
	}
	if r.Subfunction != req.Subfunction {
		return responseErr(ReasonEchoMismatch, "FC 8 sub-function %#04x answers %#04x", r.Subfunction, req.Subfunction)
	}
	if diagEchoes(r.Subfunction) && !bytes.Equal(r.Data, req.Data) {
		return echoErr(r.Function)
	}
	return nil
}

// checkReadFileResponse checks FC 20 sub-responses (spec §6.14): each is a
// file response length (reference type + data), the reference type 6 and
// the record data; paired, there is one per sub-request, of its length.
func checkReadFileResponse(data []byte, req *Request) error {
	if len(data) < 1 || len(data) > maxReadFileResponseData {
		return responseErr(ReasonBadByteCount, "FC 20 response data length %d outside 1..%d", len(data), maxReadFileResponseData)
	}
	i := 0
	for off := 0; off < len(data); i++ {
		if len(data)-off < fileSubResponseHeaderLen {
			return responseErr(ReasonByteCountMismatch, "FC 20 response data ends inside sub-response %d", i)
		}
		l := int(data[off])
		if l < 3 || l%2 == 0 {
			return responseErr(ReasonBadSubresponse, "FC 20 sub-response %d length %d is not 1 + 2n (n >= 1)", i, l)
		}
		if off+1+l > len(data) {
			return responseErr(ReasonByteCountMismatch, "FC 20 sub-response %d needs %d bytes, %d left", i, 1+l, len(data)-off)
		}
		if data[off+1] != FileReferenceType {
			return responseErr(ReasonBadReferenceType, "FC 20 sub-response %d reference type %d", i, data[off+1])
		}
		if req != nil {
			at := i * fileSubRequestLen
			if at+fileSubRequestLen > len(req.Data) {
				return responseErr(ReasonBadSubresponse, "FC 20 response has more sub-responses than the %d sub-requests", len(req.Data)/fileSubRequestLen)
			}
			if want := 1 + 2*int(be16(req.Data[at+5:])); l != want {
				return responseErr(ReasonBadSubresponse, "FC 20 sub-response %d length %d, the sub-request needs %d", i, l, want)
			}
		}
		off += 1 + l
	}
	if req != nil && i*fileSubRequestLen != len(req.Data) {
		return responseErr(ReasonBadSubresponse, "FC 20 response has %d sub-responses for %d sub-requests", i, len(req.Data)/fileSubRequestLen)
	}
	return nil
}

func validConformity(c uint8) bool {
	switch c {
	case ConformityBasic, ConformityRegular, ConformityExtended,
		ConformityBasicIndividual, ConformityRegularIndividual, ConformityExtendedIndividual:
		return true
	}
	return false
}

func (r *Response) checkMEI(req *Request) error {
	if req != nil && r.MEIType != req.MEIType {
		return responseErr(ReasonEchoMismatch, "FC 43 MEI type %#02x answers MEI type %#02x", r.MEIType, req.MEIType)
	}
	switch r.MEIType {
	case MEICANopenGeneralReference:
		return nil
	case MEIReadDeviceIdentification:
	default:
		return responseErr(ReasonUnknownMEIType, "FC 43 MEI type %#02x is reserved", r.MEIType)
	}
	if !deviceIDObjectsFit(r.Data, r.ObjectCount) {
		return framingErr(ReasonLengthMismatch, "FC 43/14 response: %d objects do not fill %d bytes", r.ObjectCount, len(r.Data))
	}
	switch {
	case r.DeviceIDCode < ReadDeviceIDBasic || r.DeviceIDCode > ReadDeviceIDSpecific:
		return responseErr(ReasonBadDeviceIDCode, "FC 43/14 read device id code %#02x outside 1..4", r.DeviceIDCode)
	case !validConformity(r.Conformity):
		return responseErr(ReasonBadConformityLevel, "FC 43/14 conformity level %#02x", r.Conformity)
	case r.MoreFollows != moreFollowsNo && r.MoreFollows != moreFollowsYes:
		return responseErr(ReasonBadMoreFollows, "FC 43/14 more follows %#02x, want 0x00 or 0xFF", r.MoreFollows)
	case r.MoreFollows == moreFollowsNo && r.NextObjectID != 0:
		// "If MoreFollows = 00, must be set to 00" (spec §6.21).
		return responseErr(ReasonBadMoreFollows, "FC 43/14 next object id %#02x without more follows", r.NextObjectID)
	case r.DeviceIDCode == ReadDeviceIDSpecific && (r.MoreFollows != moreFollowsNo || r.ObjectCount != 1):
		// Individual access returns exactly the one object asked for.
		return responseErr(ReasonBadMoreFollows, "FC 43/14 individual access with more follows %#02x and %d objects", r.MoreFollows, r.ObjectCount)
	}
	if req != nil {
		if r.DeviceIDCode != req.DeviceIDCode {
			return responseErr(ReasonEchoMismatch, "FC 43/14 read device id code %d answers code %d", r.DeviceIDCode, req.DeviceIDCode)
		}
		if r.DeviceIDCode == ReadDeviceIDSpecific && r.Data[0] != req.ObjectID {
			return responseErr(ReasonEchoMismatch, "FC 43/14 object %#02x answers a request for object %#02x", r.Data[0], req.ObjectID)
		}
	}
	return nil
}

// Append validates r's structure (as Decode does without a request) and
// appends its ADU to dst, computing byte counts and the MBAP length from the
// fields. With a dst of capacity MaxADULen it does not allocate. On error
// dst is returned unchanged.
//
// For every response Decode accepts, Append reproduces the input bytes
// exactly, except that unused bits of the last FC 1/2 data byte (beyond
// Quantity) are written as zero (see the package documentation).
func (r *Response) Append(dst []byte) ([]byte, error) {
	if err := r.check(nil); err != nil {
		return dst, err
	}
	start := len(dst)
	dst = append(dst, byte(r.TransactionID>>8), byte(r.TransactionID), 0, 0, 0, 0, r.Unit)
	if r.Exception != 0 {
		dst = append(dst, r.Function|ExceptionBit, r.Exception)
		return finishADU(dst, start)
	}
	dst = append(dst, r.Function)
	switch r.Function {
	case FuncReadCoils, FuncReadDiscreteInputs:
		dst = append(append(dst, byte(len(r.Data))), r.Data...)
		dst[len(dst)-1] &= lastCoilMask(r.Quantity)
	case FuncReadHoldingRegisters, FuncReadInputRegisters, FuncReadWriteMultipleRegisters,
		FuncReportServerID, FuncReadFileRecord, FuncWriteFileRecord:
		if len(r.Data) > MaxPDULen-pduLenByteCount {
			return dst[:start], framingErr(ReasonBadLength, "FC %d response data of %d bytes does not fit a PDU", r.Function, len(r.Data))
		}
		dst = append(append(dst, byte(len(r.Data))), r.Data...)
	case FuncWriteSingleCoil, FuncWriteSingleRegister:
		dst = appendU16(appendU16(dst, r.Address), r.Value)
	case FuncReadExceptionStatus:
		dst = append(dst, r.Data...)
	case FuncDiagnostics:
		dst = append(appendU16(dst, r.Subfunction), r.Data...)
	case FuncGetCommEventCounter:
		dst = appendU16(appendU16(dst, r.Status), r.EventCount)
	case FuncGetCommEventLog:
		dst = append(dst, byte(commEventLogFixedLen+len(r.Data)))
		dst = appendU16(appendU16(appendU16(dst, r.Status), r.EventCount), r.MessageCount)
		dst = append(dst, r.Data...)
	case FuncWriteMultipleCoils, FuncWriteMultipleRegisters:
		dst = appendU16(appendU16(dst, r.Address), r.Quantity)
	case FuncMaskWriteRegister:
		dst = appendU16(appendU16(appendU16(dst, r.Address), r.AndMask), r.OrMask)
	case FuncReadFIFOQueue:
		dst = appendU16(dst, uint16(fifoCountLen+len(r.Data)))
		dst = append(appendU16(dst, r.Quantity), r.Data...)
	case FuncEncapsulatedInterface:
		dst = append(dst, r.MEIType)
		if r.MEIType == MEIReadDeviceIdentification {
			dst = append(dst, r.DeviceIDCode, r.Conformity, r.MoreFollows, r.NextObjectID, r.ObjectCount)
		}
		dst = append(dst, r.Data...)
	default:
		dst = append(dst, r.Data...)
	}
	return finishADU(dst, start)
}
