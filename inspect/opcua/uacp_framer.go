package opcua

import (
	"errors"
	"io"
)

// Framer reads whole chunks from a stream: it reads the 8-byte header,
// validates the declared size against the message type's bounds and the
// current maximum chunk size, and only then reads the body (STYLE.md habit
// 4). The returned chunk is a slice of the Framer's buffer, valid until the
// next call. The buffer grows to the largest chunk seen and is reused, so
// steady-state framing allocates nothing.
type Framer struct {
	r        io.Reader
	buf      []byte
	maxChunk uint32
}

// NewFramer returns a Framer reading from r that accepts OPN/MSG/CLO chunks
// up to maxChunkSize bytes (0 = DefaultMaxChunkSize).
func NewFramer(r io.Reader, maxChunkSize uint32) *Framer {
	f := &Framer{r: r}
	f.SetMaxChunkSize(maxChunkSize)
	return f
}

// SetMaxChunkSize changes the limit, e.g. to Channel.MaxChunkSize after
// HEL/ACK. It never exceeds MaxChunkSizeCeiling.
func (f *Framer) SetMaxChunkSize(n uint32) {
	if n == 0 {
		n = DefaultMaxChunkSize
	}
	f.maxChunk = min(n, MaxChunkSizeCeiling)
}

// Next returns the next whole chunk and its header. io.EOF means the stream
// ended cleanly between chunks; io.ErrUnexpectedEOF that it ended inside
// one. Any other error is a *Error from header validation.
func (f *Framer) Next() (Header, []byte, error) {
	if cap(f.buf) < HeaderSize {
		f.buf = make([]byte, HeaderSize, 4096)
	}
	f.buf = f.buf[:HeaderSize]
	if _, err := io.ReadFull(f.r, f.buf); err != nil {
		return Header{}, nil, err
	}
	h, err := ParseHeader(f.buf, f.maxChunk)
	if err != nil {
		return h, nil, err
	}
	n := int(h.Size)
	if cap(f.buf) < n {
		nb := make([]byte, n)
		copy(nb, f.buf[:HeaderSize])
		f.buf = nb
	}
	f.buf = f.buf[:n]
	if _, err := io.ReadFull(f.r, f.buf[HeaderSize:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return h, nil, err
	}
	return h, f.buf, nil
}

// Split is the push-style counterpart of Framer for capture replay: given
// the bytes received so far it returns the length of the first complete
// chunk (n > 0), or n == 0 and a nil error when more bytes are needed, or
// an error when the header is invalid. It applies the same validation as
// the Framer and never looks past the declared size.
func Split(b []byte, maxChunkSize uint32) (n int, h Header, err error) {
	if len(b) < HeaderSize {
		return 0, Header{}, nil
	}
	if maxChunkSize == 0 {
		maxChunkSize = DefaultMaxChunkSize
	}
	h, err = ParseHeader(b, min(maxChunkSize, MaxChunkSizeCeiling))
	if err != nil {
		return 0, h, err
	}
	if len(b) < int(h.Size) {
		return 0, h, nil
	}
	return int(h.Size), h, nil
}
