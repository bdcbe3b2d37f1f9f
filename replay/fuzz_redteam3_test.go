package replay

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/replay/internal/synth"
)

type allowAllDecider struct{}

func (allowAllDecider) Decide(context.Context, *policy.Input) policy.Decision {
	return policy.Decision{Allow: true}
}

// FuzzReplayStreams: arbitrary client and server byte streams, cut into
// segments, on a Modbus port, an OPC UA port and a port where the
// protocol is sniffed, with and without the handshake, through Replay and
// Learn. Nothing may panic; every operation is decided.
func FuzzReplayStreams(f *testing.F) {
	f.Add(readHR, readHRr, uint8(5), true)
	f.Add(append(append([]byte{}, writeHR...), readZero...), writeHRr, uint8(3), false)
	f.Add([]byte("HELF\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"), []byte("ACKF"), uint8(7), true)
	f.Add([]byte("MSGF\xff\xff\xff\x7f"), []byte("ERRF\x10\x00\x00\x00"), uint8(1), false)
	f.Fuzz(func(t *testing.T, c2s, s2c []byte, cut uint8, hs bool) {
		if len(c2s)+len(s2c) > 1<<16 {
			return
		}
		var buf bytes.Buffer
		w, err := synth.NewWriter(&buf, time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC))
		if err != nil {
			t.Fatal(err)
		}
		step := int(cut)%17 + 1
		for i, srv := range []string{"10.0.0.2:502", "10.0.0.2:4840", "10.0.0.2:1502"} {
			c := w.Conn(ap("10.0.0.1:4000"+string(rune('0'+i))), ap(srv))
			if hs {
				c.Handshake()
			}
			for off := 0; off < max(len(c2s), len(s2c)); off += step {
				if off < len(c2s) {
					c.Send(synth.ToServer, c2s[off:min(off+step, len(c2s))])
				}
				if off < len(s2c) {
					c.Send(synth.ToClient, s2c[off:min(off+step, len(s2c))])
				}
			}
			c.Close()
		}
		path := filepath.Join(t.TempDir(), "f.pcap")
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		rep, err := Replay(context.Background(), []string{path}, Options{Decider: allowAllDecider{}, Records: func(r *Record) { r.AppendJSON(nil) }})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Allowed+rep.Denied != rep.Operations {
			t.Fatalf("operations %d != allowed %d + denied %d", rep.Operations, rep.Allowed, rep.Denied)
		}
		rep.WriteText(&bytes.Buffer{})
		l, err := Learn(context.Background(), []string{path}, LearnOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Data.Encode(); err != nil {
			t.Fatal(err)
		}
	})
}
