package modbus

// MBAP header and size limits (Implementation Guide §3.1.3, spec §4.1).
const (
	// HeaderLen is the MBAP header including the unit identifier:
	// transaction id (2), protocol id (2), length (2), unit id (1).
	HeaderLen = 7
	// lengthFieldEnd is the offset just past the MBAP length field; the
	// length counts every byte after it (unit id + PDU).
	lengthFieldEnd = 6

	// MinLength and MaxLength bound the MBAP length field: a unit id plus a
	// PDU of at least a function code and at most MaxPDULen bytes.
	MinLength = 2
	MaxLength = 1 + MaxPDULen

	// MaxPDULen is inherited from the serial line: 256 - address - CRC.
	MaxPDULen = 253
	// MaxADULen is the largest Modbus/TCP ADU: MBAP (7) + PDU (253).
	MaxADULen = HeaderLen + MaxPDULen

	// ProtocolID is the only protocol identifier Modbus defines.
	ProtocolID = 0

	// FramerBufferSize is the Framer's fixed read buffer: big enough that a
	// burst of pipelined ADUs costs one read system call.
	FramerBufferSize = 4096
)

// Function codes (spec §5.1, §6).
const (
	FuncReadCoils                  uint8 = 0x01
	FuncReadDiscreteInputs         uint8 = 0x02
	FuncReadHoldingRegisters       uint8 = 0x03
	FuncReadInputRegisters         uint8 = 0x04
	FuncWriteSingleCoil            uint8 = 0x05
	FuncWriteSingleRegister        uint8 = 0x06
	FuncReadExceptionStatus        uint8 = 0x07
	FuncDiagnostics                uint8 = 0x08
	FuncGetCommEventCounter        uint8 = 0x0B
	FuncGetCommEventLog            uint8 = 0x0C
	FuncWriteMultipleCoils         uint8 = 0x0F
	FuncWriteMultipleRegisters     uint8 = 0x10
	FuncReportServerID             uint8 = 0x11
	FuncReadFileRecord             uint8 = 0x14
	FuncWriteFileRecord            uint8 = 0x15
	FuncMaskWriteRegister          uint8 = 0x16
	FuncReadWriteMultipleRegisters uint8 = 0x17
	FuncReadFIFOQueue              uint8 = 0x18
	FuncEncapsulatedInterface      uint8 = 0x2B

	// ExceptionBit is set in the function code of an exception response.
	ExceptionBit uint8 = 0x80
)

// MEI types of FC 43 (spec §6.19, Annex A: 0-12 and 15-255 are reserved).
const (
	MEICANopenGeneralReference  uint8 = 0x0D
	MEIReadDeviceIdentification uint8 = 0x0E
)

// Read Device ID codes of FC 43/14 (spec §6.21).
const (
	ReadDeviceIDBasic    uint8 = 0x01 // stream access, basic objects
	ReadDeviceIDRegular  uint8 = 0x02 // stream access, regular objects
	ReadDeviceIDExtended uint8 = 0x03 // stream access, extended objects
	ReadDeviceIDSpecific uint8 = 0x04 // individual access, one object
)

// FC 43/14 response conformity levels (spec §6.21).
const (
	ConformityBasic              uint8 = 0x01
	ConformityRegular            uint8 = 0x02
	ConformityExtended           uint8 = 0x03
	ConformityBasicIndividual    uint8 = 0x81
	ConformityRegularIndividual  uint8 = 0x82
	ConformityExtendedIndividual uint8 = 0x83
	moreFollowsNo                uint8 = 0x00
	moreFollowsYes               uint8 = 0xFF
	deviceIDResponseFixedLen           = 5 // code, conformity, more follows, next id, number of objects
	deviceIDObjectHeaderLen            = 2 // object id, object length
)

// FC 8 sub-function codes (spec §6.8.1). 5-9, 19 and 21-65535 are reserved.
const (
	DiagReturnQueryData                  uint16 = 0x00
	DiagRestartCommunications            uint16 = 0x01
	DiagReturnDiagnosticRegister         uint16 = 0x02
	DiagChangeASCIIInputDelimiter        uint16 = 0x03
	DiagForceListenOnlyMode              uint16 = 0x04
	DiagClearCounters                    uint16 = 0x0A
	DiagReturnBusMessageCount            uint16 = 0x0B
	DiagReturnBusCommunicationErrorCount uint16 = 0x0C
	DiagReturnBusExceptionErrorCount     uint16 = 0x0D
	DiagReturnServerMessageCount         uint16 = 0x0E
	DiagReturnServerNoResponseCount      uint16 = 0x0F
	DiagReturnServerNAKCount             uint16 = 0x10
	DiagReturnServerBusyCount            uint16 = 0x11
	DiagReturnBusCharacterOverrunCount   uint16 = 0x12
	DiagClearOverrunCounter              uint16 = 0x14

	// diagDataLen is the data field size of every sub-function but 0
	// (Return Query Data, "any").
	diagDataLen = 2
	// diagRestartClearLog is the FC 8/01 data asking to clear the event log.
	diagRestartClearLog uint16 = 0xFF00
)

// Exception codes (spec §7).
const (
	ExIllegalFunction              uint8 = 0x01
	ExIllegalDataAddress           uint8 = 0x02
	ExIllegalDataValue             uint8 = 0x03
	ExServerDeviceFailure          uint8 = 0x04
	ExAcknowledge                  uint8 = 0x05
	ExServerDeviceBusy             uint8 = 0x06
	ExMemoryParityError            uint8 = 0x08
	ExGatewayPathUnavailable       uint8 = 0x0A
	ExGatewayTargetFailedToRespond uint8 = 0x0B
)

// Quantity and value limits (spec §6).
const (
	MaxReadBits                = 2000 // FC 1, 2 quantity (0x07D0)
	MaxReadRegisters           = 125  // FC 3, 4 quantity (0x007D)
	MaxWriteCoils              = 1968 // FC 15 quantity (0x07B0)
	MaxWriteRegisters          = 123  // FC 16 quantity (0x007B)
	MaxReadWriteReadRegisters  = 125  // FC 23 quantity to read (0x007D)
	MaxReadWriteWriteRegisters = 121  // FC 23 quantity to write (0x0079)
	MaxFIFOCount               = 31   // FC 24 queued registers (spec §6.18)
	MaxCommEvents              = 64   // FC 12 event bytes (spec §6.10)

	// AddressSpace is the size of every data table: address + quantity
	// must not pass it (spec §4.4, "Starting Address + Quantity == OK").
	AddressSpace = 0x10000

	CoilOn  uint16 = 0xFF00 // FC 5 value for ON
	CoilOff uint16 = 0x0000 // FC 5 value for OFF

	// commStatusIdle and commStatusBusy are the only status words of
	// FC 11 and FC 12 responses (spec §6.9).
	commStatusIdle uint16 = 0x0000
	commStatusBusy uint16 = 0xFFFF
	// commEventLogFixedLen is status + event count + message count.
	commEventLogFixedLen = 6
)

// File record limits (spec §6.14, §6.15).
const (
	FileReferenceType = 6      // the only reference type
	MaxFileRecord     = 0x270F // records are addressed 0..9999
	fileRecordSpace   = 0x2710 // record number + length must not pass it
	MinFileNumber     = 0x0001

	fileSubRequestLen = 7 // reference type, file, record, length

	MinReadFileByteCount  = 0x07 // one sub-request
	MaxReadFileByteCount  = 0xF5 // 35 sub-requests
	MinWriteFileByteCount = 0x09 // one sub-request with one register
	MaxWriteFileByteCount = 0xFB // a full PDU
	// maxReadFileResponseData bounds the expected response's data length
	// ("Resp. data Length 0x07 to 0xF5"): a read whose answer cannot fit is
	// refused rather than forwarded.
	maxReadFileResponseData = 0xF5
	// fileSubResponseHeaderLen is file response length + reference type.
	fileSubResponseHeaderLen = 2
)

// PDU lengths implied by function code (function code included).
const (
	pduLenAddrQty      = 5  // function, address, quantity/value
	pduLenFuncOnly     = 1  // FC 7, 11, 12, 17 requests
	pduLenMultiWrite   = 6  // FC 15, 16 before the data: function, address, quantity, byte count
	pduLenMaskWrite    = 7  // FC 22: function, address, AND mask, OR mask
	pduLenReadWrite    = 10 // FC 23 before the data
	pduLenFIFORequest  = 3  // FC 24: function, pointer address
	pduLenDiagHeader   = 3  // FC 8: function, sub-function
	pduLenMEIHeader    = 2  // FC 43: function, MEI type
	pduLenDeviceIDReq  = 4  // FC 43/14: function, MEI type, code, object id
	pduLenException    = 2  // function|0x80, exception code
	pduLenByteCount    = 2  // function, byte count (FC 1-4, 12, 17, 20, 21, 23 responses)
	pduLenFIFOResponse = 5  // function, byte count (2), FIFO count (2)
	pduLenCommCounter  = 5  // FC 11 response: function, status, event count
	pduLenExcStatus    = 2  // FC 7 response: function, output data
	fifoCountLen       = 2  // FC 24: the FIFO count counted in the byte count
)
