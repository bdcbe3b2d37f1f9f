// Package device is the benchmark's Modbus/TCP device: a minimal server that
// answers as fast as a loopback socket allows, so that in the side-by-side
// harness the device is never the bottleneck.
//
// Unlike the demo's simulated PLC (sim/, a library server with a mutex
// around its register image) it keeps no state: reads of holding and input
// registers return the register address as its value, coils and discrete
// inputs read as alternating bits, writes are acknowledged as the protocol
// says (FC 5/6 echo, FC 15/16 address and quantity). One goroutine per
// connection reads whatever the socket holds, answers every whole frame in
// it and writes all answers with one write(2): pipelined requests cost one
// read and one write per batch. Anything it does not implement gets
// exception 1 (illegal function); a frame whose MBAP header is invalid
// closes the connection.
package device

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
)

const (
	headerLen = 7   // MBAP header
	maxADU    = 260 // MBAP + 253-byte PDU
)

// Server answers Modbus/TCP requests on a listener.
type Server struct {
	ln       net.Listener
	requests atomic.Uint64
	conns    atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	open     map[net.Conn]struct{}
	closed   atomic.Bool
}

// Listen starts a device on addr (e.g. "127.0.0.1:0").
func Listen(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln, open: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Requests returns the number of requests answered.
func (s *Server) Requests() uint64 { return s.requests.Load() }

// Conns returns the number of open connections.
func (s *Server) Conns() int64 { return s.conns.Load() }

// Close stops accepting and closes every connection.
func (s *Server) Close() error {
	s.closed.Store(true)
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue // EMFILE and friends: the load generator sees the failure
		}
		s.mu.Lock()
		s.open[c] = struct{}{}
		s.mu.Unlock()
		s.conns.Add(1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(c)
			s.mu.Lock()
			delete(s.open, c)
			s.mu.Unlock()
			s.conns.Add(-1)
			c.Close()
		}()
	}
}

func (s *Server) serve(c net.Conn) {
	// A small first buffer keeps idle connections cheap; it grows once if
	// a client pipelines.
	in := make([]byte, 512)
	var out []byte
	have := 0
	for {
		n, err := c.Read(in[have:])
		have += n
		start := 0
		served := 0
		for {
			adu, ok, bad := frame(in[start:have])
			if bad {
				return
			}
			if !ok {
				break
			}
			out = Answer(out, adu)
			start += len(adu)
			served++
		}
		if served > 0 {
			s.requests.Add(uint64(served))
			if _, werr := c.Write(out); werr != nil {
				return
			}
			out = out[:0]
		}
		// A read that filled the buffer means the client pipelines:
		// grow (up to 16 KiB) so a batch costs one read.
		if n == len(in) && len(in) < 16<<10 {
			in = append(in[:have], make([]byte, len(in))...)[:2*len(in)]
		}
		have = copy(in, in[start:have])
		if err != nil {
			return // io.EOF or a real error: either way the connection is done
		}
	}
}

// frame returns the first whole ADU of b; bad for an MBAP header that no
// valid stream can continue from.
func frame(b []byte) (adu []byte, ok, bad bool) {
	if len(b) < 6 {
		return nil, false, false
	}
	if b[2] != 0 || b[3] != 0 {
		return nil, false, true
	}
	l := int(b[4])<<8 | int(b[5])
	if l < 2 || l > 254 {
		return nil, false, true
	}
	if len(b) < 6+l {
		return nil, false, false
	}
	return b[:6+l], true, false
}

// Answer appends the response to the whole request ADU req to out.
func Answer(out, req []byte) []byte {
	pdu := req[headerLen:]
	fc := pdu[0]
	start := len(out)
	out = append(out, req[0], req[1], 0, 0, 0, 0, req[6])
	u16 := func(b []byte) int { return int(b[0])<<8 | int(b[1]) }
	exception := func(code byte) []byte {
		out = append(out[:start+headerLen], fc|0x80, code)
		return setLen(out, start)
	}
	switch fc {
	case 1, 2: // read coils / discrete inputs
		if len(pdu) != 5 {
			return exception(3)
		}
		qty := u16(pdu[3:])
		if qty < 1 || qty > 2000 {
			return exception(3)
		}
		nb := (qty + 7) / 8
		out = append(out, fc, byte(nb))
		for i := range nb {
			b := byte(0x55)
			if i == nb-1 && qty%8 != 0 {
				b &= byte(1<<(qty%8) - 1)
			}
			out = append(out, b)
		}
	case 3, 4: // read holding / input registers
		if len(pdu) != 5 {
			return exception(3)
		}
		addr, qty := u16(pdu[1:]), u16(pdu[3:])
		if qty < 1 || qty > 125 {
			return exception(3)
		}
		out = append(out, fc, byte(2*qty))
		for i := range qty {
			v := addr + i
			out = append(out, byte(v>>8), byte(v))
		}
	case 5, 6: // write single coil / register: echo
		if len(pdu) != 5 {
			return exception(3)
		}
		out = append(out, pdu...)
	case 15, 16: // write multiple coils / registers
		if len(pdu) < 6 || int(pdu[5]) != len(pdu)-6 {
			return exception(3)
		}
		out = append(out, pdu[:5]...)
	case 8: // diagnostics: echo
		out = append(out, pdu...)
	default:
		return exception(1)
	}
	return setLen(out, start)
}

func setLen(out []byte, start int) []byte {
	l := len(out) - start - 6
	out[start+4], out[start+5] = byte(l>>8), byte(l)
	return out
}
