// Package replay answers "what would this policy have done with last week's
// traffic?" from packet captures, and learns a baseline policy from them.
//
// It is the capture side of the one path every byte takes
// (../../shared/ARCHITECTURE.md, invariant 4):
//
//	capture.pcapng ─▶ inspect/capture (gopacket reassembly, per flow and direction)
//	               ─▶ inspect/modbus FrameLength, Request.Decode, Request.Operation   (the proxy's decoders)
//	                  inspect/opcua  Split, Channel.Feed, Channel.Decode
//	               ─▶ policy.Input, built as the proxy builds it ─▶ policy.Decider
//
// It lives outside inspect/ because it uses the policy engine.
//
// # What counts as an operation, and its decision
//
// Exactly what the proxy would audit as a request:
//
//   - A Modbus request that decodes is decided by the policy. One that is
//     well framed but breaks the protocol's rules (a *modbus.ProtocolError:
//     a quantity of 0, a reserved sub-function ...) is denied without asking
//     the policy, with rule "protocol.<reason>" and reason "protocol
//     violation: ...", as the proxy records it.
//   - An OPC UA OPN, MSG or CLO from the client, once complete, is decoded by
//     the channel; an opaque (SignAndEncrypt) one becomes an operation with
//     opaque true, as in the proxy. A body that does not decode but does not
//     end the connection is a protocol violation as above. Sessions are
//     tracked from ActivateSession and CloseSession responses, so later
//     requests carry the session identity, as the proxy's do.
//   - The policy input has the listener's name and upstream address, the
//     client address and port from the flow, and a null identity: a
//     capture carries no verified certificate.
//
// Operations are decided one by one. Where the proxy would also have closed
// the connection (a deny with action reset, a malformed frame), replay keeps
// reading the capture, so the report also shows what the client went on to
// send.
//
// # Listeners and protocols
//
// With a configuration, a flow belongs to the listener whose listen or
// upstream address is the flow's server address (a capture taken on the IT
// or on the OT side); a listen address without a host matches by port. A
// flow that matches no listener gets a synthetic one named
// "<protocol>-<address>-<port>" with the server address as upstream; so do
// all flows without a configuration. The protocol is the listener's, else
// the port's (502 and 802 Modbus, 4840 OPC UA), else sniffed from the first
// client bytes (an MBAP header, an OPC UA HEL/OPN/MSG/CLO); other flows are
// counted and not inspected. TLS is reported as an encrypted flow where it
// is expected (port 802, listener sides with TLS, sniffed flows), and as
// "not Modbus" on a plain Modbus address.
//
// # Imperfect captures
//
// Reassembly (inspect/capture) handles reordering, retransmissions and
// connections picked up mid-way. After a hole in a stream, or at the start
// of a direction picked up mid-way, decoding resynchronises at the next
// segment that starts with a valid header; the bytes skipped are reported
// as "skipped", not as malformed. Malformed frames are reported with file,
// flow, direction, stream offset and capture time. Each file is reassembled
// on its own, so that the result does not depend on the order of unrelated
// files.
//
// # Learning
//
// Learn reads captures the same way and writes, per client address and
// listener, a grant in the reference policy's data format
// (rules/README.md): Modbus units, read and write ranges with the observed
// value extremes, diagnostic and other function codes; OPC UA read, browse
// and subscribe flags, written nodes with numeric extremes, method calls,
// address-space changes, HistoryUpdate nodes, session users and pinned
// encrypted channels. Data.Encode is deterministic and MergeData idempotent,
// so learning the same captures onto an existing file changes nothing.
package replay
