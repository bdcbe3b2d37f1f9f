package opcua

import (
	"errors"
	"fmt"
)

// Code is a stable reason code for a decoding or limit failure. Codes double
// as audit reasons and metric labels (STYLE.md habit 12), so they never
// change once released.
type Code string

const (
	CodeTruncated         Code = "truncated"        // fewer bytes than a field or declared size needs
	CodeTrailingBytes     Code = "trailing_bytes"   // bytes left after a complete structure
	CodeBadMessageType    Code = "bad_message_type" // not HEL/ACK/ERR/RHE/OPN/MSG/CLO
	CodeBadChunkType      Code = "bad_chunk_type"   // not C/F/A, or C/A where only F is allowed
	CodeChunkTooSmall     Code = "chunk_too_small"  // declared size below the minimum for its type
	CodeChunkTooLarge     Code = "chunk_too_large"  // declared size above the negotiated/configured limit
	CodeInvalidHello      Code = "invalid_hello"    // HEL/ACK/RHE field out of range
	CodeInvalidEncoding   Code = "invalid_encoding" // a field violates Part 6 encoding rules
	CodeArrayTooLong      Code = "array_too_long"   // declared count exceeds the bytes left or MaxArrayLength
	CodeDepthExceeded     Code = "depth_exceeded"   // nesting deeper than MaxDepth
	CodeTooManyValues     Code = "limit_values"     // more decoded values than MaxValues
	CodeUnknownExtObject  Code = "unknown_extension_object"
	CodeUnknownService    Code = "unknown_service"       // type id not a standard request (decoded as "other")
	CodeUnexpectedMessage Code = "unexpected_message"    // message not valid in the channel's state
	CodeSequence          Code = "bad_sequence_number"   // not the previous number + 1 (Part 6 §6.7.2.4)
	CodeChannelMismatch   Code = "channel_mismatch"      // secure channel or token id does not match the channel
	CodeSecurityMismatch  Code = "security_mismatch"     // policy/mode inconsistent with the listener configuration
	CodeUnsupportedPolicy Code = "unsupported_policy"    // security policy URI not known
	CodeChunkCount        Code = "limit_chunk_count"     // more chunks in one message than allowed
	CodeMessageSize       Code = "limit_message_size"    // reassembled message larger than allowed
	CodeOpenRequests      Code = "limit_open_requests"   // too many unfinished multi-chunk messages
	CodeMessageTimeout    Code = "limit_message_timeout" // a multi-chunk message was not finished in time
	CodeOpaque            Code = "opaque"                // body is encrypted; the operation cannot be inspected
	CodeNotRewritable     Code = "not_rewritable"        // rewrite asked on a signed or encrypted channel
	CodeEncode            Code = "encode"                // an encoder was handed values it cannot encode
)

// Error is every error this package returns. Compare with errors.Is against
// the Err* sentinels (only the Code is compared) or read the Code.
type Error struct {
	Code   Code
	Detail string
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return "opcua: " + string(e.Code)
	}
	return "opcua: " + string(e.Code) + ": " + e.Detail
}

// Is makes errors.Is(err, ErrTruncated) true for every truncation error,
// whatever its detail.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

func errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Detail: fmt.Sprintf(format, args...)}
}

// Sentinels for errors.Is.
var (
	ErrTruncated         = &Error{Code: CodeTruncated}
	ErrTrailingBytes     = &Error{Code: CodeTrailingBytes}
	ErrBadMessageType    = &Error{Code: CodeBadMessageType}
	ErrBadChunkType      = &Error{Code: CodeBadChunkType}
	ErrChunkTooSmall     = &Error{Code: CodeChunkTooSmall}
	ErrChunkTooLarge     = &Error{Code: CodeChunkTooLarge}
	ErrInvalidHello      = &Error{Code: CodeInvalidHello}
	ErrInvalidEncoding   = &Error{Code: CodeInvalidEncoding}
	ErrArrayTooLong      = &Error{Code: CodeArrayTooLong}
	ErrDepthExceeded     = &Error{Code: CodeDepthExceeded}
	ErrTooManyValues     = &Error{Code: CodeTooManyValues}
	ErrUnknownExtObject  = &Error{Code: CodeUnknownExtObject}
	ErrUnknownService    = &Error{Code: CodeUnknownService}
	ErrUnexpectedMessage = &Error{Code: CodeUnexpectedMessage}
	ErrSequence          = &Error{Code: CodeSequence}
	ErrChannelMismatch   = &Error{Code: CodeChannelMismatch}
	ErrSecurityMismatch  = &Error{Code: CodeSecurityMismatch}
	ErrUnsupportedPolicy = &Error{Code: CodeUnsupportedPolicy}
	ErrChunkCount        = &Error{Code: CodeChunkCount}
	ErrMessageSize       = &Error{Code: CodeMessageSize}
	ErrOpenRequests      = &Error{Code: CodeOpenRequests}
	ErrMessageTimeout    = &Error{Code: CodeMessageTimeout}
	ErrOpaque            = &Error{Code: CodeOpaque}
	ErrNotRewritable     = &Error{Code: CodeNotRewritable}
	ErrEncode            = &Error{Code: CodeEncode}
)

// CodeOf returns the Code of an error from this package, or "" for others.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// ClosesConnection reports whether an error of DecodeRequest (or
// Channel.Decode) ends the connection rather than refusing one request: the
// body is shorter or longer than its structure, or a count or nesting
// breaks a cap, so nothing more on the connection can be trusted. The proxy
// closes the connection for it (after an ERR); replay reports it as
// malformed. Every other decode error (an unknown service or structure, an
// invalid value) is a well-framed request refused on its own, with a
// ServiceFault where the channel allows one. Errors of Feed always end the
// connection and are not classified here.
func ClosesConnection(err error) bool {
	switch CodeOf(err) {
	case CodeTruncated, CodeTrailingBytes, CodeArrayTooLong, CodeDepthExceeded, CodeTooManyValues:
		return true
	}
	return false
}
