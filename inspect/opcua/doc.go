// Package opcua inspects OPC UA binary (opc.tcp) traffic for the Conduit
// proxy: UA-TCP framing (Part 6 §7.1), secure-channel tracking and chunk
// reassembly (Part 6 §6.7), bounded decoding of service requests (Part 4,
// Part 6 §5.2) into an inspect.Operation, and the few encoders the proxy
// needs (ERR, clamped HEL/ACK, ServiceFault, sequence renumbering, endpoint
// URL rewriting).
//
// The package is pure bytes: no sockets, no policy, no audit. Every parser
// returns an error instead of panicking, checks every declared length or
// count against the bytes that remain before it slices or allocates, bounds
// nesting, and decodes exactly (a structure that leaves bytes over, an
// unknown ExtensionObject, a boolean other than 0/1, an unknown mask bit or
// invalid UTF-8 is an error), so the proxy and the server can never read
// one message two ways.
//
// # Files
//
//	uacp*.go        UA-TCP: header, HEL/ACK/ERR/RHE, Framer (io.Reader) and Split (push)
//	uasc.go         security policies, asymmetric header, certificate subject/thumbprint
//	channel.go      Channel: handshake, ids, tokens, sequence numbers, reassembly, Sign stripping
//	binary*.go      the bounded cursor, NodeIds, Variants, the schema walker
//	extobjects_gen.go  standard structure layouts (generated from gopcua's type list)
//	service*.go     service table and request decoding into inspect.Operation
//	session.go      Sessions: the session each request runs in
//	encode.go       ServiceFault, chunking, Renumberer, endpoint rewrite
//
// gopcua (github.com/gopcua/opcua/ua) supplies only type layouts (its
// generated structs list the fields of every standard structure in encoding
// order) and constants; none of its decoding code runs on untrusted bytes:
// its decoder allocates a declared element count before checking the bytes
// that remain.
//
// # Wiring (one Channel per TCP connection)
//
//	ch := opcua.NewChannel(opcua.Config{Limits: lim, SecurityMode: mode})
//	fr := opcua.NewFramer(conn, ch.MaxChunkSize(opcua.ClientToServer))
//	for {
//		_, chunk, err := fr.Next()              // header validated before the body is read
//		msg, err := ch.Feed(opcua.ClientToServer, chunk)
//		fr.SetMaxChunkSize(ch.MaxChunkSize(opcua.ClientToServer)) // after HEL/ACK
//		switch {
//		case msg.Hello != nil:   forward ClampHello(*msg.Hello, lim).Encode(...)
//		case !msg.Complete:      hold (the Channel keeps the chunk)
//		case msg.Type.Secure():  info, err := ch.Decode(msg, &op) → policy → forward msg.Chunks
//		                         (renumbered with a Renumberer + Channel.SetSequenceNumber)
//		                         or, on deny, drop them (Renumberer.Drop) and answer
//		                         AppendServiceFault(FaultParams{... RequestHandle: info.RequestHandle})
//		}
//	}
//
// Server→client chunks go through the same Channel (Feed with
// ServerToClient): ACK (clamp with ClampAcknowledge), OPN responses (channel
// and token ids), responses (RewriteEndpoints for GetEndpoints, FindServers and
// CreateSession; ResponseTypeID tells which). Every readable response is
// checked with ValidateResponse before it is forwarded.
//
// Any error from Feed poisons the Channel (fail closed): close the
// connection, after an ERR (EncodeError) where the protocol allows one. An
// error from Decode denies that request only, unless ClosesConnection says
// the body broke its own framing or a cap: then the connection ends too.
//
// Sessions tracks the session (and identity) each request runs in, from
// ActivateSession and CloseSession and the server's answers to them.
//
// # Forwarding
//
// The proxy forwards the original chunks of a request (msg.Chunks), with
// only the sequence number rewritten, after DecodeRequest has decoded the
// whole body exactly. This is equivalent to re-encoding what was decoded:
// the decoder consumes every byte with a strict grammar (no skipped spans,
// no trailing bytes, no unknown structures, canonical booleans and masks),
// so the validated bytes are the only encoding of what was inspected. As
// independent evidence, TestCaptureRequestsCanonical re-encodes all 191
// requests of the captures with gopcua's encoder: 166 are byte-identical and
// the other 25 (node-opcua) differ only where gopcua writes an empty String
// as null (length -1 instead of 0), a choice of gopcua's encoder, not a
// second reading of the message. Re-encoding with gopcua would therefore
// change what node-opcua clients send; forwarding the validated bytes does
// not. Endpoint rewriting is the one place where bodies change: it splices
// the new URL strings into the validated response and copies every other
// byte.
//
// Slices returned by decoders point into the caller's buffers or the
// package's scratch space and are valid until the next call on the same
// object: copy to retain (inspect.Operation.Clone).
package opcua
