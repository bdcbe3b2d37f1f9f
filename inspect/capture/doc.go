// Package capture replays recorded traffic: it reads pcap and pcapng files
// (detected by magic, optionally gzip-compressed) with gopacket's pure-Go
// readers, reassembles every TCP connection in both directions with
// gopacket's reassembly package, and hands the ordered byte streams to a
// protocol-agnostic consumer — the same inspect/<protocol> decoders the
// live proxy uses (see ../../../shared/ARCHITECTURE.md).
//
// # Use
//
//	r := capture.NewReader(factory, capture.Options{IsServer: capture.ServerPorts(502, 802, 4840)})
//	for _, p := range paths {
//		if err := r.ReadFile(ctx, p); err != nil { ... } // not a capture, I/O, canceled
//	}
//	stats := r.Close() // ends the flows still open (EndEOF)
//
// factory.NewStream is called once per TCP connection with its Flow (id,
// client and server, first-seen time) and returns the connection's Stream,
// or nil to skip it. The Stream receives Data per direction, in order, each
// byte once; Gap when bytes are missing; End once.
//
// # What the reassembly does with imperfect captures
//
//   - Out-of-order segments wait for the missing ones; retransmitted and
//     overlapping bytes are delivered once (the first copy to reach the
//     stream position wins; of two buffered copies, the later one).
//   - A hole not filled within GapTimeout of capture time, or when the
//     buffering caps are reached, is reported with Gap(dir, n) and the data
//     after it delivered.
//   - A connection whose handshake was not captured starts at its first
//     segment carrying data; Gap(dir, GapUnknown) precedes the first Data of
//     a direction picked up mid-way, so decoders resynchronise. Client and
//     server come from the SYN or SYN-ACK when captured, else from
//     Options.IsServer, else the lower port is the server.
//   - FIN both ways ends a flow (EndFIN); a RST exactly at the stream
//     position ends it (EndRST); stale or forged RSTs and FINs behind the
//     stream position are ignored and counted. Flows idle for IdleTimeout end
//     with EndIdle, the rest at Close with EndEOF. A new SYN on a 4-tuple
//     still held starts a new flow.
//   - Segments cut by the snap length are delivered as far as captured,
//     followed by a Gap at once.
//   - Non-TCP packets, IP fragments (not reassembled), malformed headers and
//     unknown link types are counted in Stats, never fatal.
//   - A file cut mid-record, or whose record framing breaks, ends with a
//     warning in Stats after everything before the cut was delivered; a
//     file that is not a capture is an error naming it.
//
// Supported link types: Ethernet (with 802.1Q/QinQ tags), Linux cooked
// SLL and SLL2, BSD loopback/null (DLT_NULL, DLT_LOOP), raw IPv4/IPv6.
//
// # Memory
//
// Bounded by the options: out-of-order data per direction
// (MaxBufferedBytesPerDir, default 1 MiB) and in total
// (MaxBufferedBytesTotal, default 128 MiB) in 1900-byte pages of about
// 2 KiB each; concurrent connections (MaxFlows, default 262144, about
// 1 KiB each without buffered data); one record (MaxPacketSize, 256 KiB).
// Idle connections are dropped after IdleTimeout of capture time.
//
// # Cost
//
// Reading is a two-stage pipeline: a helper goroutine reads records
// (ZeroCopyReadPacketData) and decodes link and IP headers with
// preallocated layers (DecodingLayerParser) into recycled batches; the
// calling goroutine tracks flows, reassembles and calls the Streams. Nothing
// is allocated per record; a record is copied once, into its batch;
// in-order segments reach the Stream without further copying, out-of-order
// data is copied once more into the assembler's pages.
package capture
