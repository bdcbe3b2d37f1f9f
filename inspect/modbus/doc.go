// Package modbus frames, decodes, validates and re-encodes Modbus/TCP
// application data units (ADUs) — requests, responses and exception
// responses — for every public function code, and turns a request into the
// protocol-neutral inspect.Operation the policy sees.
//
// References: MODBUS Application Protocol Specification V1.1b3 (cited as
// "spec §x.y") and MODBUS Messaging on TCP/IP Implementation Guide V1.0b
// (the MBAP header).
//
// # One path for every byte
//
//	conn ──▶ Framer.Next ──▶ Request.Decode ──▶ Request.Operation ──▶ policy
//	                               │                                    │ allow
//	                               └─ *ProtocolError ─▶ AppendException ▼
//	                                                        Request.Append ──▶ device
//	device ──▶ Framer.Next ──▶ Response.Decode(adu, &req) ──▶ Response.Append ──▶ client
//
// Capture replay uses FrameLength on reassembled stream bytes instead of the
// Framer; both share the single definition of framing in frameLength.
//
// # Three kinds of error
//
//   - *FramingError (errors.Is(err, ErrFraming)): the byte stream cannot be
//     trusted — protocol id not 0, MBAP length outside 2..254, or a PDU
//     whose length differs from what its function code and count fields
//     imply (the libmodbus issue 514 length-smuggling attack, where a read's
//     MBAP length hides a second, write PDU). Close the connection.
//   - *ProtocolError (errors.Is(err, ErrProtocol)): a well-framed request
//     that a conforming device would refuse (illegal quantity, address
//     overflow, bad value...). It carries the exception code that device
//     would send; answer with Request.AppendException, never forward, keep
//     the connection.
//   - *ResponseError (errors.Is(err, ErrResponse)): a well-framed response
//     that is invalid or does not answer the request it is paired with.
//     Drop it and answer the client with an exception.
//
// Every error carries a short stable reason code (the Reason* constants),
// usable as an audit reason and a metric label; ReasonOf extracts it.
//
// Requests are checked in the order of the spec's per-function state
// diagrams: function (01), then quantities, values and byte counts (03),
// then addresses (02). A *ProtocolError carries:
//
//	01 ILLEGAL FUNCTION      invalid_function (0, 128-255), unknown_subfunction (FC 8: 5-9, 19, 21-65535),
//	                         unknown_mei_type (FC 43: 0-12, 15-255; spec Annex A)
//	03 ILLEGAL DATA VALUE    bad_quantity, byte_count_mismatch, bad_value, bad_device_id_code,
//	                         bad_byte_count, bad_record_length
//	02 ILLEGAL DATA ADDRESS  address_overflow, bad_reference_type, bad_file_number, bad_record_number
//
// Reserved, user-defined and unassigned function codes (e.g. 65, 90 UMAS)
// are not errors: they decode as opaque requests (Operation: AccessOther,
// "unknown_function") so that the policy sees them and, by default, denies
// them; FC 43/13 (CANopen) is opaque in the same way. When a policy allows
// one, Append forwards exactly the function code and the bytes the MBAP
// length covered.
//
// # Memory
//
// Decoding is zero-copy: Request.Data and Response.Data are sub-slices of
// the decoded ADU and are valid only as long as that buffer is (for a Framer,
// until the next call to Next). Copy to retain. Encoding appends to a caller
// buffer. Neither allocates; see the benchmarks.
//
// # Canonical re-encoding
//
// Append re-encodes from the decoded fields only. For every well-formed ADU
// the result is byte-identical to the input, with one deliberate exception:
// the unused high bits of the last coil byte (FC 15 requests, FC 1/2
// responses) are written as zero, as spec §6.1 and §6.11 require, so bits
// that no Operation describes are never forwarded.
package modbus
