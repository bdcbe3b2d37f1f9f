package modbus

import (
	"errors"
	"fmt"
)

// Sentinels for errors.Is: every error this package returns for bad input
// matches exactly one of them.
var (
	// ErrFraming matches *FramingError: close the connection.
	ErrFraming = errors.New("modbus: framing error")
	// ErrProtocol matches *ProtocolError: answer with its exception code.
	ErrProtocol = errors.New("modbus: protocol error")
	// ErrResponse matches *ResponseError: drop the response.
	ErrResponse = errors.New("modbus: invalid response")
)

// Reason codes: short, stable, snake_case. They double as audit reasons and
// metric labels, so they never change meaning once released.
const (
	// Framing (*FramingError).
	ReasonBadProtocolID  = "bad_protocol_id" // MBAP protocol id is not 0
	ReasonBadLength      = "bad_length"      // MBAP length outside 2..254
	ReasonLengthMismatch = "length_mismatch" // PDU length differs from what the function code and its count fields imply
	ReasonTruncated      = "truncated"       // Decode was given fewer bytes than the MBAP header announces

	// Request validation (*ProtocolError).
	ReasonInvalidFunction    = "invalid_function"    // function code 0 or >= 0x80 in a request (exception 01)
	ReasonUnknownSubfunction = "unknown_subfunction" // FC 8 reserved sub-function (exception 01)
	ReasonUnknownMEIType     = "unknown_mei_type"    // FC 43 reserved MEI type (exception 01)
	ReasonBadQuantity        = "bad_quantity"        // quantity outside the function's range (exception 03)
	ReasonByteCountMismatch  = "byte_count_mismatch" // byte count inconsistent with the quantity (exception 03; also responses)
	ReasonBadValue           = "bad_value"           // FC 5 value, FC 8 data, FC 11/12 status (exception 03; also responses)
	ReasonBadDeviceIDCode    = "bad_device_id_code"  // FC 43/14 read device id code not 1..4 (exception 03; also responses)
	ReasonBadByteCount       = "bad_byte_count"      // FC 20/21 byte count out of range (exception 03; also responses)
	ReasonBadRecordLength    = "bad_record_length"   // FC 20/21 record length 0, or the FC 20 answer would not fit (exception 03)
	ReasonAddressOverflow    = "address_overflow"    // address + quantity > 0x10000 (exception 02)
	ReasonBadReferenceType   = "bad_reference_type"  // FC 20/21 reference type not 6 (exception 02; also responses)
	ReasonBadFileNumber      = "bad_file_number"     // FC 20/21 file number 0 (exception 02)
	ReasonBadRecordNumber    = "bad_record_number"   // FC 20/21 record > 0x270F or record + length > 10000 (exception 02)

	// Response validation (*ResponseError), besides the shared ones above.
	ReasonTransactionMismatch = "transaction_mismatch" // transaction id differs from the request's
	ReasonUnitMismatch        = "unit_mismatch"        // unit id differs from the request's
	ReasonFunctionMismatch    = "function_mismatch"    // function code is neither the request's nor request|0x80
	ReasonEchoMismatch        = "echo_mismatch"        // an echoing response (FC 5, 6, 8, 15, 16, 21, 22, 43) does not echo the request
	ReasonBadExceptionCode    = "bad_exception_code"   // exception code not defined by spec §7
	ReasonBadFIFOCount        = "bad_fifo_count"       // FC 24 FIFO count > 31
	ReasonBadConformityLevel  = "bad_conformity_level" // FC 43/14 conformity level not 01-03 or 81-83
	ReasonBadMoreFollows      = "bad_more_follows"     // FC 43/14 more follows/next object id/object count inconsistent
	ReasonBadSubresponse      = "bad_subresponse"      // FC 20 sub-responses do not answer the sub-requests
)

// FramingError reports bytes that cannot be framed as Modbus/TCP. After one,
// nothing else on the connection can be trusted.
type FramingError struct {
	Reason string // one of the framing Reason* constants
	Detail string // human-readable explanation
}

func (e *FramingError) Error() string {
	return "modbus: framing: " + e.Reason + ": " + e.Detail
}

// Is makes errors.Is(err, ErrFraming) true.
func (e *FramingError) Is(target error) bool { return target == ErrFraming }

// ProtocolError reports a well-framed request that a conforming device would
// refuse. Answer it with Exception (see Request.AppendException); the
// connection stays usable.
type ProtocolError struct {
	Reason    string // one of the request Reason* constants
	Exception uint8  // the exception code a conforming device sends
	Detail    string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("modbus: protocol: %s (exception %#02x): %s", e.Reason, e.Exception, e.Detail)
}

// Is makes errors.Is(err, ErrProtocol) true.
func (e *ProtocolError) Is(target error) bool { return target == ErrProtocol }

// ResponseError reports a well-framed response that is invalid or does not
// answer the request it was paired with.
type ResponseError struct {
	Reason string
	Detail string
}

func (e *ResponseError) Error() string {
	return "modbus: response: " + e.Reason + ": " + e.Detail
}

// Is makes errors.Is(err, ErrResponse) true.
func (e *ResponseError) Is(target error) bool { return target == ErrResponse }

// ReasonOf returns the reason code of a *FramingError, *ProtocolError or
// *ResponseError anywhere in err's chain, and "" for any other error.
func ReasonOf(err error) string {
	var fe *FramingError
	if errors.As(err, &fe) {
		return fe.Reason
	}
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return pe.Reason
	}
	var re *ResponseError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

// The constructors below keep formatting off the success path: the detail
// string is built only when an error is actually returned.

func framingErr(reason, format string, args ...any) error {
	return &FramingError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

func protocolErr(reason string, exception uint8, format string, args ...any) error {
	return &ProtocolError{Reason: reason, Exception: exception, Detail: fmt.Sprintf(format, args...)}
}

func responseErr(reason, format string, args ...any) error {
	return &ResponseError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// validException reports whether code is an exception code of spec §7.
// Code 07 (NAK) exists only in the pre-V1.1 Modicon documents and 09 was
// never assigned, so both are refused.
func validException(code uint8) bool {
	switch code {
	case ExIllegalFunction, ExIllegalDataAddress, ExIllegalDataValue,
		ExServerDeviceFailure, ExAcknowledge, ExServerDeviceBusy,
		ExMemoryParityError, ExGatewayPathUnavailable, ExGatewayTargetFailedToRespond:
		return true
	}
	return false
}
