package replay

import (
	"strings"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/inspect/capture"
)

func TestProgressBar(t *testing.T) {
	var out strings.Builder
	b := NewProgressBar(&out)
	now := time.Unix(0, 0)
	b.now = func() time.Time { return now }
	step := func(d time.Duration, read int64) {
		now = now.Add(d)
		b.Update(capture.Progress{File: "/captures/week.pcapng", Read: read, Size: 200 << 20})
	}
	step(0, 1<<20)
	step(100*time.Millisecond, 10<<20)
	if out.Len() != 0 {
		t.Fatalf("drawn before the delay: %q", out.String())
	}
	step(300*time.Millisecond, 100<<20)
	want := "\rweek.pcapng [===============>              ]  50%  100.0/200.0 MiB  262 MB/s"
	if out.String() != want {
		t.Errorf("bar\n%q\nwant\n%q", out.String(), want)
	}
	step(10*time.Millisecond, 101<<20) // too soon to redraw
	step(0, 200<<20)                   // the end of the file is always drawn
	if !strings.HasSuffix(out.String(), "[==============================] 100%  200.0/200.0 MiB  512 MB/s") {
		t.Errorf("final %q", out.String())
	}
	out.Reset()
	b.Done()
	if n := len(want) - 1; out.String() != "\r"+strings.Repeat(" ", n)+"\r" {
		t.Errorf("done %q", out.String())
	}
	out.Reset()
	b.Done()
	if out.Len() != 0 {
		t.Error("Done twice draws")
	}
}
