package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/google/gopacket"
)

// Reading a file runs as a two-stage pipeline. A helper goroutine reads the
// records and decodes their link and IP headers into batches; the goroutine
// that called ReadCapture tracks flows, reassembles and calls the Streams.
// Batches are recycled, so the steady state allocates nothing; records are
// copied once, from the reader's buffer into the batch.
const (
	batchBytes   = 512 << 10 // record bytes per batch (a larger record gets a batch alone)
	batchRecords = 2048      // records per batch
	batchesTotal = 4         // batches in flight per Reader
)

// record is one capture record, decoded as far as the helper goes.
type record struct {
	ts     time.Time
	capLen int
	kind   decodeResult
	// TCP only: the addresses, the bytes missing past the snap length,
	// and where the TCP header and payload are in the batch.
	src, dst       [16]byte
	v4             bool
	missing        int
	tcpOff, tcpEnd int
}

type batch struct {
	buf  []byte
	recs []record
	// read is the number of file bytes read when the batch was sent (for
	// progress; the counter itself belongs to the helper goroutine).
	read int64
	// err ends the file after recs: io.EOF at a clean end, else wrapping
	// ErrTruncated or ErrCorrupt.
	err error
}

// produce reads and decodes records into batches taken from free and sends
// them on full, until the source ends or done is closed. It closes full.
func produce(src source, cr *countingReader, sizeHint int64, free <-chan *batch, full chan<- *batch, done <-chan struct{}) {
	defer close(full)
	dec := newPacketDecoder()
	var b *batch
	take := func() bool {
		select {
		case b = <-free:
			b.buf, b.recs, b.err = b.buf[:0], b.recs[:0], nil
			if b.buf == nil {
				// Small files get small buffers; append grows them.
				b.buf = make([]byte, 0, min(batchBytes, max(sizeHint, 4096)))
				b.recs = make([]record, 0, min(batchRecords, max(sizeHint/64, 16)))
			}
			return true
		case <-done:
			return false
		}
	}
	send := func() {
		b.read = cr.n
		full <- b // never blocks: full has room for every batch
	}
	if !take() {
		return
	}
	defer func() {
		// A panic in the third-party record readers on a malformed file
		// ends the file with a warning instead of the whole replay. The
		// known ones are prevented by ngGuard; FuzzReadCapture fails on any.
		if p := recover(); p != nil {
			b.err = fmt.Errorf("%w: %w: %v", ErrCorrupt, errReaderPanic, p)
			send()
		}
	}()
	for {
		data, ci, lt, err := src.next()
		if err != nil {
			b.err = err
			send()
			return
		}
		if len(b.recs) > 0 && (len(b.recs) == cap(b.recs) || len(b.buf)+len(data) > batchBytes) {
			send()
			if !take() {
				return
			}
		}
		off := len(b.buf)
		b.buf = append(b.buf, data...)
		rec := record{ts: ci.Timestamp, capLen: len(data)}
		rec.kind = dec.decode(lt, b.buf[off:], ci.Length)
		if rec.kind == resTCP {
			rec.src, rec.dst, rec.v4, rec.missing = dec.src, dec.dst, dec.v4, dec.missing
			// The TCP header is a subslice of b.buf: its index is where its
			// capacity says it starts.
			rec.tcpOff = cap(b.buf) - cap(dec.tcp.Contents)
			rec.tcpEnd = rec.tcpOff + len(dec.tcp.Contents) + len(dec.tcp.Payload)
		}
		b.recs = append(b.recs, rec)
	}
}

// readRecords runs the pipeline over one file.
func (r *Reader) readRecords(ctx context.Context, name string, src source, cr *countingReader, size int64) error {
	if r.free == nil {
		r.free = make(chan *batch, batchesTotal)
		for i := 0; i < batchesTotal; i++ {
			r.free <- &batch{}
		}
	}
	full := make(chan *batch, batchesTotal)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		produce(src, cr, size, r.free, full, done)
	}()
	defer func() {
		close(done)
		for b := range full { // let the helper finish, keep its batches
			r.free <- b
		}
		wg.Wait()
	}()

	var filePackets uint64
	r.file, r.fileStart = name, r.stats.Packets
	var lastProgress int64 = -readBufSize
	progress := func(read int64) {
		if r.opt.Progress != nil {
			lastProgress = read
			r.opt.Progress(Progress{File: name, Read: read, Size: size, Packets: r.stats.Packets})
		}
	}
	for b := range full {
		for i := range b.recs {
			r.record(b, &b.recs[i])
		}
		filePackets += uint64(len(b.recs))
		if err := b.err; err != nil {
			if err != io.EOF {
				if errors.Is(err, ErrTruncated) {
					r.stats.FilesTruncated++
				} else {
					r.stats.FilesCorrupt++
				}
				r.warnFile(name, filePackets, err)
			}
			progress(b.read)
			r.free <- b
			return nil
		}
		read := b.read
		r.free <- b
		if err := ctx.Err(); err != nil {
			r.canceled = err
			return err
		}
		if read-lastProgress >= readBufSize {
			progress(read)
		}
	}
	return nil
}

// record handles one capture record on the consuming side.
func (r *Reader) record(b *batch, rec *record) {
	r.stats.Packets++
	r.stats.Bytes += uint64(rec.capLen)
	if rec.ts.After(r.now) {
		if r.lastTick.IsZero() {
			r.lastTick = rec.ts
		}
		r.now = rec.ts
		if r.now.Sub(r.lastTick) >= r.tickEvery {
			r.tick()
		}
	}
	switch rec.kind {
	case resTCP:
		// Decoded once already by the helper; this only refills our own
		// layer, which the assembler needs (TCP's flow fields are private).
		if err := r.tcp.DecodeFromBytes(b.buf[rec.tcpOff:rec.tcpEnd], gopacket.NilDecodeFeedback); err != nil {
			r.stats.Undecodable++
			return
		}
		r.stats.TCPPackets++
		r.handleTCP(&r.tcp, rec)
	case resNonTCP:
		r.stats.NonTCP++
	case resFragment:
		r.stats.Fragments++
	case resUndecodable:
		r.stats.Undecodable++
	case resUnknownLink:
		r.stats.UnknownLinkType++
	}
}
