package modbus

import (
	"errors"
	"io"
)

// Header is the MBAP header (Implementation Guide §3.1.3).
type Header struct {
	TransactionID uint16
	ProtocolID    uint16 // always 0 once framing has accepted the header
	Length        uint16 // bytes after the length field: unit id + PDU
	Unit          uint8
}

// ADULen is the length of the whole ADU the header announces.
func (h Header) ADULen() int { return lengthFieldEnd + int(h.Length) }

// ParseHeader validates and returns the MBAP header at the start of b. It
// applies exactly the checks of FrameLength, and fails with ReasonTruncated
// when b is shorter than HeaderLen.
func ParseHeader(b []byte) (Header, error) {
	if _, err := frameLength(b); err != nil {
		return Header{}, err
	}
	if len(b) < HeaderLen {
		return Header{}, framingErr(ReasonTruncated, "%d bytes, need %d for the MBAP header", len(b), HeaderLen)
	}
	return Header{
		TransactionID: be16(b[0:]),
		ProtocolID:    be16(b[2:]),
		Length:        be16(b[4:]),
		Unit:          b[6],
	}, nil
}

// FrameLength is the push-style splitter for reassembled stream bytes
// (capture replay): given the bytes buffered so far for one direction of a
// connection, it returns the length of the first complete ADU at the start of
// b, or 0 meaning "need more bytes", or a *FramingError. The ADU is
// b[:n]; the caller then discards those n bytes and calls again.
//
// Only the MBAP header is checked here — protocol id 0 and length 2..254 —
// and as early as the bytes allow: a bad protocol id is reported after 4
// bytes, a bad length after 6, never after waiting for a body. Whether the
// PDU inside is as long as its function code implies is for Request.Decode
// and Response.Decode, which know the direction.
func FrameLength(b []byte) (int, error) { return frameLength(b) }

// frameLength is the single definition of Modbus/TCP framing, shared by
// FrameLength, ParseHeader, the Framer and both decoders.
func frameLength(b []byte) (int, error) {
	if len(b) >= 4 && (b[2] != 0 || b[3] != 0) {
		return 0, framingErr(ReasonBadProtocolID, "protocol id %#04x, want 0", be16(b[2:]))
	}
	if len(b) < lengthFieldEnd {
		return 0, nil
	}
	l := be16(b[4:])
	if l < MinLength || l > MaxLength {
		return 0, framingErr(ReasonBadLength, "MBAP length %d outside %d..%d", l, MinLength, MaxLength)
	}
	n := lengthFieldEnd + int(l)
	if len(b) < n {
		return 0, nil
	}
	return n, nil
}

// splitADU frames the first ADU of b for the decoders: it returns the ADU's
// length, its unit id and its PDU, or a *FramingError (ReasonTruncated when
// b holds less than the header announces).
func splitADU(b []byte) (n int, unit uint8, pdu []byte, err error) {
	n, err = frameLength(b)
	if err != nil {
		return 0, 0, nil, err
	}
	if n == 0 {
		return 0, 0, nil, framingErr(ReasonTruncated, "%d bytes do not hold the ADU the MBAP header announces", len(b))
	}
	return n, b[HeaderLen-1], b[HeaderLen:n:n], nil
}

// maxEmptyReads bounds how often a misbehaving reader may return (0, nil)
// before Next gives up with io.ErrNoProgress, as bufio does.
const maxEmptyReads = 100

// errBadReadCount reports a reader that claims more bytes than it was given.
var errBadReadCount = errors.New("modbus: reader returned an invalid count")

// Framer cuts a live byte stream (typically a net.Conn, whose deadlines the
// caller sets) into Modbus/TCP ADUs. It owns a fixed buffer (FramerBufferSize,
// or the size given to NewFramerSize), so a burst of pipelined ADUs costs one
// Read, and it allocates nothing per frame.
//
// The MBAP header is validated as soon as it is buffered and before any
// further read: an oversized or foreign header is refused without waiting
// for (or buffering) the body it announces. A framing error is sticky:
// the stream is desynchronised and every later Next returns it again.
//
// A Framer is not safe for concurrent use.
type Framer struct {
	r     io.Reader
	start int   // first byte not yet returned
	end   int   // end of buffered bytes
	eof   bool  // the reader has reported io.EOF
	rerr  error // a read error that came with data, reported once the data is framed
	err   error // sticky: framing error or end of stream
	buf   []byte
}

// NewFramer returns a Framer reading from r with a FramerBufferSize buffer.
func NewFramer(r io.Reader) *Framer { return NewFramerSize(r, FramerBufferSize) }

// NewFramerSize returns a Framer reading from r with a buffer of size bytes,
// at least MaxADULen (a smaller size is raised to it): small for a proxy
// holding many mostly idle connections, bigger for fewer reads when a peer
// pipelines deeply. The buffer always has room for one maximal ADU.
func NewFramerSize(r io.Reader, size int) *Framer {
	return &Framer{r: r, buf: make([]byte, max(size, MaxADULen))}
}

// Reset discards all state and makes f read from r, reusing the buffer.
func (f *Framer) Reset(r io.Reader) {
	f.r, f.start, f.end, f.eof, f.rerr, f.err = r, 0, 0, false, nil, nil
}

// Buffered returns the number of bytes read from the stream but not yet
// returned as part of a frame.
func (f *Framer) Buffered() int { return f.end - f.start }

// Pending returns those bytes — after a framing error, the header that was
// refused and whatever came with it — for an audit record. It aliases the
// buffer: valid until the next call to Next or Reset; copy to retain.
func (f *Framer) Pending() []byte { return f.buf[f.start:f.end] }

// Next returns the next whole ADU (MBAP header and PDU). The slice aliases
// the Framer's buffer and is valid until the next call to Next or Reset;
// copy to retain.
//
// Errors: a *FramingError (sticky; close the connection); io.EOF when the
// stream ends cleanly at a frame boundary; io.ErrUnexpectedEOF when it ends
// inside a frame (both sticky); any other error from the reader as is — a
// timeout is not sticky and the bytes of a partly received frame are kept,
// so Next may be called again.
func (f *Framer) Next() ([]byte, error) {
	if f.err != nil {
		return nil, f.err
	}
	empty := 0
	for {
		n, err := frameLength(f.buf[f.start:f.end])
		if err != nil {
			f.err = err
			return nil, err
		}
		if n > 0 {
			adu := f.buf[f.start : f.start+n : f.start+n]
			f.start += n
			return adu, nil
		}
		// Need more bytes.
		if f.rerr != nil {
			err, f.rerr = f.rerr, nil
			return nil, err
		}
		if f.eof {
			if f.start == f.end {
				f.err = io.EOF
			} else {
				f.err = io.ErrUnexpectedEOF
			}
			return nil, f.err
		}
		// Keep room for a maximal ADU behind start: move the partial frame
		// (at most MaxADULen-1 bytes) to the front. Slices returned earlier
		// are no longer valid, as documented.
		if f.start == f.end {
			f.start, f.end = 0, 0
		} else if len(f.buf)-f.start < MaxADULen {
			f.end = copy(f.buf, f.buf[f.start:f.end])
			f.start = 0
		}
		m, rerr := f.r.Read(f.buf[f.end:])
		if m < 0 || m > len(f.buf)-f.end {
			f.err = errBadReadCount
			return nil, f.err
		}
		f.end += m
		switch {
		case rerr == io.EOF:
			f.eof = true
		case rerr != nil && m > 0:
			// Frame the bytes first (io.Reader contract), report later.
			f.rerr = rerr
		case rerr != nil:
			return nil, rerr
		case m == 0:
			empty++
			if empty >= maxEmptyReads {
				return nil, io.ErrNoProgress
			}
		}
	}
}
