package device

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

func TestAnswer(t *testing.T) {
	for _, tc := range []struct {
		name     string
		req, out []byte
	}{
		{"FC3 2 registers at 10",
			[]byte{0, 7, 0, 0, 0, 6, 1, 3, 0, 10, 0, 2},
			[]byte{0, 7, 0, 0, 0, 7, 1, 3, 4, 0, 10, 0, 11}},
		{"FC6 echo",
			[]byte{0, 8, 0, 0, 0, 6, 1, 6, 0, 12, 1, 244},
			[]byte{0, 8, 0, 0, 0, 6, 1, 6, 0, 12, 1, 244}},
		{"FC16 2 registers",
			[]byte{0, 9, 0, 0, 0, 11, 1, 16, 0, 14, 0, 2, 4, 0, 1, 0, 2},
			[]byte{0, 9, 0, 0, 0, 6, 1, 16, 0, 14, 0, 2}},
		{"FC1 10 coils",
			[]byte{0, 1, 0, 0, 0, 6, 1, 1, 0, 0, 0, 10},
			[]byte{0, 1, 0, 0, 0, 5, 1, 1, 2, 0x55, 0x01}},
		{"unknown function",
			[]byte{0, 2, 0, 0, 0, 2, 1, 0x41},
			[]byte{0, 2, 0, 0, 0, 3, 1, 0xc1, 1}},
		{"FC3 quantity 0",
			[]byte{0, 3, 0, 0, 0, 6, 1, 3, 0, 0, 0, 0},
			[]byte{0, 3, 0, 0, 0, 3, 1, 0x83, 3}},
	} {
		if got := Answer(nil, tc.req); !bytes.Equal(got, tc.out) {
			t.Errorf("%s: % x, want % x", tc.name, got, tc.out)
		}
	}
}

// Pipelined requests split at arbitrary points are all answered, in order.
func TestServerPipelined(t *testing.T) {
	s, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var reqs, want []byte
	for i := range 300 {
		r := []byte{byte(i >> 8), byte(i), 0, 0, 0, 6, 1, 3, 0, byte(i % 90), 0, 10}
		reqs = append(reqs, r...)
		want = Answer(want, r)
	}
	go func() {
		for i := 0; i < len(reqs); i += 1000 {
			c.Write(reqs[i:min(i+1000, len(reqs))])
			time.Sleep(time.Millisecond)
		}
	}()
	got := make([]byte, len(want))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("responses differ")
	}
	if s.Requests() != 300 {
		t.Errorf("requests = %d", s.Requests())
	}
}
