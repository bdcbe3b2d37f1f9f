package replay

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/conduit-ot/conduit/inspect/capture"
)

// ProgressBar draws reading progress on one terminal line (carriage
// returns, no escape sequences):
//
//	capture.pcapng [==========>          ]  52%  104.0/200.0 MiB  310 MB/s
//
// It stays silent for the first Delay, so short replays print nothing.
// Update is called from the goroutine that reads (capture.Options.Progress).
type ProgressBar struct {
	w     io.Writer
	Delay time.Duration // nothing is drawn before (default 300 ms)
	Every time.Duration // at most one redraw per (default 100 ms)
	now   func() time.Time

	start, last time.Time
	file        string    // the file being read
	fileStart   time.Time // when its first progress came
	drawn       int       // width of the line drawn, 0 if none
}

// NewProgressBar returns a bar drawing on w (a terminal's stderr).
func NewProgressBar(w io.Writer) *ProgressBar {
	return &ProgressBar{w: w, Delay: 300 * time.Millisecond, Every: 100 * time.Millisecond, now: time.Now}
}

const barWidth = 30

// Update redraws the bar for p.
func (b *ProgressBar) Update(p capture.Progress) {
	now := b.now()
	if b.start.IsZero() {
		b.start = now
	}
	if p.File != b.file {
		b.file, b.fileStart = p.File, now
	}
	final := p.Size >= 0 && p.Read >= p.Size
	if now.Sub(b.start) < b.Delay || (!final && now.Sub(b.last) < b.Every) {
		return
	}
	b.last = now
	var line strings.Builder
	line.WriteString(filepath.Base(p.File))
	mb := func(n int64) string { return fmt.Sprintf("%.1f", float64(n)/(1<<20)) }
	if p.Size > 0 {
		frac := min(float64(p.Read)/float64(p.Size), 1)
		full := int(frac * barWidth)
		bar := strings.Repeat("=", full)
		if full < barWidth {
			bar += ">" + strings.Repeat(" ", barWidth-full-1)
		}
		fmt.Fprintf(&line, " [%s] %3.0f%%  %s/%s MiB", bar, 100*frac, mb(p.Read), mb(p.Size))
	} else {
		fmt.Fprintf(&line, "  %s MiB", mb(p.Read))
	}
	if el := now.Sub(b.fileStart).Seconds(); el > 0 {
		fmt.Fprintf(&line, "  %.0f MB/s", float64(p.Read)/1e6/el)
	}
	s := line.String()
	pad := max(b.drawn-len(s), 0)
	fmt.Fprintf(b.w, "\r%s%s", s, strings.Repeat(" ", pad))
	b.drawn = len(s)
}

// Done erases the bar, if one was drawn, so the report starts on a clean
// line.
func (b *ProgressBar) Done() {
	if b.drawn > 0 {
		fmt.Fprintf(b.w, "\r%s\r", strings.Repeat(" ", b.drawn))
		b.drawn = 0
	}
}
