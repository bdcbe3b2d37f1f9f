package modbus

// cursor is a bounds-checked big-endian reader with a sticky error: a read
// past the end returns zero and sets short, and the caller checks short (and
// how much is left) once, after reading every field. This keeps field
// parsing linear and makes an out-of-range index impossible.
type cursor struct {
	b     []byte
	off   int
	short bool
}

func (c *cursor) u8() uint8 {
	if c.off >= len(c.b) {
		c.short = true
		return 0
	}
	v := c.b[c.off]
	c.off++
	return v
}

func (c *cursor) u16() uint16 {
	if len(c.b)-c.off < 2 {
		c.short = true
		c.off = len(c.b)
		return 0
	}
	v := uint16(c.b[c.off])<<8 | uint16(c.b[c.off+1])
	c.off += 2
	return v
}

// bytes returns the next n bytes as a sub-slice whose capacity ends at its
// length, so that appending to it can never overwrite the bytes that follow.
func (c *cursor) bytes(n int) []byte {
	if n < 0 || len(c.b)-c.off < n {
		c.short = true
		c.off = len(c.b)
		return nil
	}
	v := c.b[c.off : c.off+n : c.off+n]
	c.off += n
	return v
}

// rest returns everything not yet read.
func (c *cursor) rest() []byte {
	v := c.b[c.off:len(c.b):len(c.b)]
	c.off = len(c.b)
	return v
}

// left is the number of unread bytes.
func (c *cursor) left() int { return len(c.b) - c.off }

// exact reports whether every read succeeded and nothing is left over:
// the PDU was exactly as long as its fields say.
func (c *cursor) exact() bool { return !c.short && c.off == len(c.b) }

func be16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

func appendU16(dst []byte, v uint16) []byte { return append(dst, byte(v>>8), byte(v)) }
