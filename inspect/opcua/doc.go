// Package opcua inspects OPC UA binary (opc.tcp) traffic for the Conduit
// proxy: UA-TCP framing (Part 6 §7.1), secure-channel tracking and chunk
// reassembly (Part 6 §6.7), bounded decoding of service requests (Part 4,
// Part 6 §5.2) into an inspect.Operation, and the few encoders the proxy
// needs (ERR, clamped HEL/ACK, ServiceFault, sequence renumbering, endpoint
// URL rewriting).
//
// The package is pure bytes: no sockets, no policy, no audit. Every parser
// returns an error instead of panicking, checks every declared length or
// count against the bytes that remain before it slices or allocates, and
// decodes exactly (a structure that leaves bytes over is an error), so the
// proxy and the server can never read one message two ways.
//
// Layers, one file group each:
//
//	uacp*.go      UA-TCP: message header, HEL/ACK/ERR/RHE, stream framer and splitter
//	uasc*.go      secure conversation: security headers, Channel (tracking, reassembly, sign stripping)
//	binary*.go    the bounded binary decoder (built-in types, schemas of the standard structures)
//	service*.go   service table, request decoding into inspect.Operation
//	encode*.go    ServiceFault, Renumberer, endpoint rewrite, chunking
//
// Slices returned by decoders point into the caller's buffers or the
// package's scratch space and are valid until the next call on the same
// object: copy to retain.
package opcua
