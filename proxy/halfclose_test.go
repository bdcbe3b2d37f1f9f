package proxy

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// A client that sends its requests and half-closes (shutdown(SHUT_WR)) still
// gets every answer; then the proxy closes its side.
func TestClientHalfCloseGetsEveryAnswer(t *testing.T) {
	plc := startPLC(t)
	plc.SetHolding(1, 0x0102)
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), allowAll(), &memRecorder{})
	c := dialRaw(t, l.Addr().String())
	for i := 0; i < 3; i++ {
		c.send(fmt.Sprintf("%04x 0000 0006 01 03 0001 0001", i+1))
	}
	if err := c.Conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for i := 0; i < 3; i++ {
		got[fmt.Sprintf("% x", c.recv())] = true
	}
	for i := 0; i < 3; i++ {
		want := fmt.Sprintf("% x", unhex(t, fmt.Sprintf("%04x 0000 0005 01 03 02 0102", i+1)))
		if !got[want] {
			t.Fatalf("missing answer %s in %v", want, got)
		}
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after the answers: %d bytes, %v; want EOF", n, err)
	}
}

// A denied request from a client that half-closed still gets its exception.
func TestClientHalfCloseGetsRefusal(t *testing.T) {
	plc := startPLC(t)
	l := startProxy(t, listenerConfig(t, plc.Addr(), ""), denyWrites(), &memRecorder{})
	c := dialRaw(t, l.Addr().String())
	c.send("0009 0000 0006 01 06 000c 0001")
	c.Conn.(*net.TCPConn).CloseWrite()
	c.expect("0009 0000 0003 01 86 01")
	if plc.Requests() != 0 {
		t.Fatal("the denied write reached the device")
	}
}
