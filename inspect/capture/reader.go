package capture

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/google/gopacket/reassembly"
)

// Magic numbers at the start of a capture file.
const (
	magicPcapMicro = 0xa1b2c3d4 // in the file's byte order
	magicPcapNano  = 0xa1b23c4d
	magicPcapng    = 0x0a0d0d0a // section header block type, palindromic
	magicGzip      = 0x1f8b
)

// pageBytes is the payload size of one gopacket reassembly page
// (reassembly.pageBytes, unexported).
const pageBytes = 1900

// readBufSize is the read buffer per file: large enough that reading costs
// a syscall per MiB, not per record.
const readBufSize = 1 << 20

// minReadBufSize is the smallest read buffer: pcapgo wraps a reader in its
// own 4 KiB bufio.Reader unless it already is one at least that large.
const minReadBufSize = 4096

var errFlowLimit = errors.New("too many concurrent flows (Options.MaxFlows): packets of new flows dropped")

// Reader reads captures and delivers every TCP connection in them, both
// directions reassembled, to a StreamFactory. Files read one after the other
// by one Reader form one continuous capture: a flow may span files.
//
// A Reader is not safe for concurrent use. Streams are called from the
// goroutine calling ReadFile, ReadCapture or Close, one at a time; a helper
// goroutine reads and decodes records ahead of it while a file is read.
type Reader struct {
	factory StreamFactory
	opt     Options

	pool        *reassembly.StreamPool
	asm         *reassembly.Assembler
	pagesPerDir int
	maxPend     int
	maxFlows    int
	tickEvery   time.Duration

	free chan *batch // the pipeline's batches, recycled across files
	tcp  layers.TCP  // the segment being handled
	actx asmContext

	flows   map[tupleKey]*flowState
	fedList flowList // reassembled flows not yet complete
	ignored flowList // flows the factory returned nil for, MRU first
	live    int      // flowStates not yet forgotten
	nextGen uint64
	nextID  uint64

	// the packet being fed to the assembler
	cur        *flowState
	curDir     Dir
	curMissing int

	now, lastTick time.Time // capture clock: latest timestamp seen
	closing       EndReason // why the assembler is flushing, if it is

	stats       Stats
	warnedFlows bool
	canceled    error // the context error that stopped a read
	// file is the file being read and fileStart Stats.Packets when it
	// began, for the warnings raised while it is read (warn).
	file      string
	fileStart uint64
	closed    bool
}

// NewReader returns a Reader delivering flows to factory.
func NewReader(factory StreamFactory, opt Options) *Reader {
	if opt.GapTimeout <= 0 {
		opt.GapTimeout = DefaultGapTimeout
	}
	if opt.IdleTimeout <= 0 {
		opt.IdleTimeout = DefaultIdleTimeout
	}
	if opt.MaxBufferedBytesPerDir <= 0 {
		opt.MaxBufferedBytesPerDir = DefaultMaxBufferedBytesPerDir
	}
	if opt.MaxBufferedBytesTotal <= 0 {
		opt.MaxBufferedBytesTotal = DefaultMaxBufferedBytesTotal
	}
	if opt.MaxFlows <= 0 {
		opt.MaxFlows = DefaultMaxFlows
	}
	r := &Reader{
		factory:  factory,
		opt:      opt,
		flows:    make(map[tupleKey]*flowState),
		maxFlows: opt.MaxFlows,
	}
	r.pool = reassembly.NewStreamPool(gpFactory{r})
	r.asm = reassembly.NewAssembler(r.pool)
	r.pagesPerDir = max(1, opt.MaxBufferedBytesPerDir/pageBytes)
	r.asm.MaxBufferedPagesPerConnection = r.pagesPerDir
	r.asm.MaxBufferedPagesTotal = max(1, opt.MaxBufferedBytesTotal/pageBytes)
	r.maxPend = r.pagesPerDir
	r.tickEvery = max(min(opt.GapTimeout, opt.IdleTimeout)/2, 100*time.Millisecond)
	return r
}

// ReadFiles reads the files in order as one capture with a new Reader,
// closes it and returns its statistics. On error (a file that cannot be
// opened or is not a capture, or ctx canceled) the flows read so far are
// still ended; the error names the file.
func ReadFiles(ctx context.Context, factory StreamFactory, opt Options, paths ...string) (Stats, error) {
	r := NewReader(factory, opt)
	for _, p := range paths {
		if err := r.ReadFile(ctx, p); err != nil {
			return r.Close(), err
		}
	}
	return r.Close(), nil
}

// ReadFile reads one pcap or pcapng file (optionally gzip-compressed).
// It returns an error naming the file if the file cannot be read or is not
// a capture, or ctx.Err() if ctx is canceled; a file truncated or corrupt
// after some records is not an error: reading it stops there and Stats
// carries a warning.
func (r *Reader) ReadFile(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("capture: %w", err)
	}
	defer f.Close()
	size := int64(-1)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		size = fi.Size()
	}
	return r.ReadCapture(ctx, path, f, size)
}

// ReadCapture is ReadFile for any reader: name is used in errors, warnings
// and progress, size (or -1) in progress. in is read from a helper
// goroutine, and no longer once ReadCapture has returned.
func (r *Reader) ReadCapture(ctx context.Context, name string, in io.Reader, size int64) error {
	if r.closed {
		return errors.New("capture: Reader used after Close")
	}
	if r.canceled != nil {
		return r.canceled
	}
	cr := &countingReader{r: in}
	bufSize := readBufSize
	if size >= 0 && size < readBufSize {
		bufSize = max(int(size)+1, minReadBufSize)
	}
	br := bufio.NewReaderSize(cr, bufSize)
	src, err := openSource(br)
	if err != nil {
		return fmt.Errorf("capture: %s: %w", name, err)
	}
	r.stats.Files++
	return r.readRecords(ctx, name, src, cr, size)
}

// Close ends every flow still open (EndEOF, after delivering the data
// buffered behind holes as gaps, or EndCanceled without delivering it if a
// read was canceled) and returns the final statistics. Close is idempotent;
// the Reader cannot be used to read afterwards.
func (r *Reader) Close() Stats {
	if r.closed {
		return r.Stats()
	}
	r.closed = true
	if r.canceled != nil {
		for f := r.fedList.head; f != nil; f = f.next {
			r.end(f, EndCanceled)
		}
	} else {
		r.closing = EndEOF
		r.asm.FlushAll()
		r.closing = 0
		// FlushAll completes every connection the assembler holds, and
		// every fed flow is one; this is a backstop.
		for f := r.fedList.head; f != nil; f = f.next {
			r.end(f, EndEOF)
		}
	}
	r.fedList = flowList{}
	r.ignored = flowList{}
	r.flows = nil
	r.live = 0
	return r.Stats()
}

// Stats returns a copy of the statistics so far.
func (r *Reader) Stats() Stats {
	s := r.stats
	s.Warnings = append([]Warning(nil), r.stats.Warnings...)
	return s
}

func (r *Reader) warnFile(file string, packets uint64, err error) {
	if len(r.stats.Warnings) >= maxWarnings {
		r.stats.WarningsDropped++
		return
	}
	r.stats.Warnings = append(r.stats.Warnings, Warning{File: file, Packet: packets, Err: err})
}

// warn records a warning about the file being read.
func (r *Reader) warn(err error) { r.warnFile(r.file, r.stats.Packets-r.fileStart, err) }

// tick runs the capture-time timers: holes older than GapTimeout are given
// up, flows idle for IdleTimeout ended.
func (r *Reader) tick() {
	r.lastTick = r.now
	r.closing = EndIdle
	r.asm.FlushWithOptions(reassembly.FlushOptions{
		T:  r.now.Add(-r.opt.GapTimeout),
		TC: r.now.Add(-r.opt.IdleTimeout),
	})
	r.closing = 0
	r.sweepIgnored(r.now.Add(-r.opt.IdleTimeout))
}

// countingReader counts the bytes read from the file, for progress.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// errReaderPanic marks the warning for a file whose record reader panicked.
var errReaderPanic = errors.New("record reader panicked")

// source yields the records of one file.
type source interface {
	// next returns the next record; data is valid until the next call.
	// err is io.EOF at a clean end, wraps ErrTruncated or ErrCorrupt
	// otherwise.
	next() (data []byte, ci gopacket.CaptureInfo, lt linkType, err error)
}

// openSource detects the format by its magic number.
func openSource(br *bufio.Reader) (source, error) {
	magic, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("%w (%d bytes)", ErrNotCapture, len(magic))
	}
	if binary.BigEndian.Uint16(magic) == magicGzip {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		br = bufio.NewReaderSize(gz, readBufSize)
		if magic, err = br.Peek(4); err != nil {
			return nil, fmt.Errorf("%w (gzip content of %d bytes)", ErrNotCapture, len(magic))
		}
	}
	le, be := binary.LittleEndian.Uint32(magic), binary.BigEndian.Uint32(magic)
	switch {
	case le == magicPcapng:
		g := &ngGuard{br: br}
		nr, err := pcapgo.NewNgReader(g, pcapgo.NgReaderOptions{WantMixedLinkType: true, SkipUnknownVersion: true})
		if err != nil {
			return nil, fmt.Errorf("pcapng header: %w", err)
		}
		return &ngSource{r: nr, g: g}, nil
	case le == magicPcapMicro || be == magicPcapMicro || le == magicPcapNano || be == magicPcapNano:
		var lt linkType
		if hdr, err := br.Peek(pcapHeaderLen); err == nil {
			if le == magicPcapMicro || le == magicPcapNano {
				lt = linkType(binary.LittleEndian.Uint32(hdr[20:]))
			} else {
				lt = linkType(binary.BigEndian.Uint32(hdr[20:]))
			}
		}
		pr, err := pcapgo.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("pcap header: %w", err)
		}
		// The header's snap length is advisory (some writers exceed it) but
		// the record length must be bounded before pcapgo allocates for it.
		pr.SetSnaplen(MaxPacketSize)
		return &pcapSource{r: pr, lt: lt}, nil
	}
	return nil, fmt.Errorf("%w (magic %08x)", ErrNotCapture, be)
}

// pcapHeaderLen is the size of the pcap file header; the link type is its
// last field (its upper 16 bits carry FCS information, dropped by the
// uint16 conversion).
const pcapHeaderLen = 24

type pcapSource struct {
	r  *pcapgo.Reader
	lt linkType
}

func (s *pcapSource) next() ([]byte, gopacket.CaptureInfo, linkType, error) {
	data, ci, err := s.r.ZeroCopyReadPacketData()
	switch {
	case err == nil:
		return data, ci, s.lt, nil
	case err == io.EOF && ci.CaptureLength == 0:
		return nil, ci, 0, io.EOF // at a record boundary
	case err == io.EOF, errors.Is(err, io.ErrUnexpectedEOF):
		return nil, ci, 0, ErrTruncated
	}
	return nil, ci, 0, fmt.Errorf("%w: %v", ErrCorrupt, err)
}

type ngSource struct {
	r *pcapgo.NgReader
	g *ngGuard
}

func (s *ngSource) next() ([]byte, gopacket.CaptureInfo, linkType, error) {
	data, ci, err := s.r.ZeroCopyReadPacketData()
	switch {
	case err == nil:
		// NgReader has checked the index against its own interface list,
		// which the guard's mirrors block by block.
		var lt linkType = linkUnknown
		if ci.InterfaceIndex < len(s.g.ifaces) {
			lt = s.g.ifaces[ci.InterfaceIndex]
		}
		return data, ci, lt, nil
	case err == io.EOF:
		return nil, ci, 0, io.EOF // the guard says: at a block boundary
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, ErrTruncated):
		return nil, ci, 0, ErrTruncated
	case errors.Is(err, ErrCorrupt):
		return nil, ci, 0, err
	}
	return nil, ci, 0, fmt.Errorf("%w: %v", ErrCorrupt, err)
}

// pcapng block types and sizes checked by ngGuard.
const (
	ngBlockSHB        = 0x0a0d0d0a
	ngBlockIDB        = 0x00000001
	ngIDBMinLen       = 20 // type, length, link type, reserved, snap length, trailing length
	ngOptEnd          = 0
	ngOptTSResol      = 9          // if_tsresol
	ngBlockPacket     = 0x00000002 // obsolete Packet Block
	ngBlockSimple     = 0x00000003
	ngBlockEnhanced   = 0x00000006
	ngByteOrderMagic  = 0x1a2b3c4d
	ngMinBlockLen     = 12 // type, length, trailing length
	ngPacketHeaderLen = 28 // type .. original length of EPB / PB
	ngSimpleHeaderLen = 12
)

// ngGuard frames the pcapng block stream before pcapgo.NgReader parses it,
// because NgReader trusts length fields: it allocates a packet's captured
// length before reading it (a 4 GiB allocation from 28 bytes of input) and
// reports a file cut mid-block as a clean io.EOF. The guard checks each
// block's total length and, for packet blocks, the captured length against
// it and MaxPacketSize, before passing the block on; and it reports an end
// of input inside a block as ErrTruncated.
//
// It also records each interface's link type at full width (see linkType).
// NgReader reads through a small buffer that is refilled only when empty,
// and the guard passes on at most one block per Read, so when NgReader
// returns a packet the guard has not yet looked past that packet's block:
// ifaces is the interface list of the packet's section.
type ngGuard struct {
	br        *bufio.Reader
	remaining int64 // bytes of the current block not yet passed on
	bigEndian bool
	ifaces    []linkType // link type per interface of the current section
	err       error
}

func (g *ngGuard) u32(b []byte) uint32 {
	if g.bigEndian {
		return binary.BigEndian.Uint32(b)
	}
	return binary.LittleEndian.Uint32(b)
}

func (g *ngGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if g.remaining == 0 {
		if err := g.nextBlock(); err != nil {
			g.err = err
			return 0, err
		}
	}
	n, err := g.br.Read(p[:min(int64(len(p)), g.remaining)])
	g.remaining -= int64(n)
	if err == io.EOF {
		err = ErrTruncated // remaining > 0: inside a block
	}
	if err != nil {
		g.err = err
	}
	return n, err
}

// checkIDB records an interface description's link type and validates its
// timestamp resolution: NgReader computes 2^e or 10^e in a uint64 and
// divides by it, so an exponent from 64 (binary) or 20 (decimal) up is a
// division by zero. NgReader also takes the resolution from a stale buffer
// when the option is empty, and parses the following bytes as options when
// one overruns its block: both are rejected too.
func (g *ngGuard) checkIDB(length int64) error {
	if length < ngIDBMinLen || length > int64(g.br.Size()) {
		return fmt.Errorf("%w: interface block of %d bytes", ErrCorrupt, length)
	}
	blk, err := g.br.Peek(int(length))
	if err != nil {
		return ErrTruncated
	}
	u16 := binary.LittleEndian.Uint16
	if g.bigEndian {
		u16 = binary.BigEndian.Uint16
	}
	g.ifaces = append(g.ifaces, linkType(u16(blk[8:])))
	opts := blk[ngIDBMinLen-4 : length-4]
	for len(opts) >= 4 {
		code, n := u16(opts), int(u16(opts[2:]))
		opts = opts[4:]
		if code == ngOptEnd {
			break
		}
		if padded := (n + 3) &^ 3; padded > len(opts) {
			return fmt.Errorf("%w: interface option %d of %d bytes overruns its block", ErrCorrupt, code, n)
		}
		if code == ngOptTSResol {
			if n == 0 {
				return fmt.Errorf("%w: empty interface timestamp resolution", ErrCorrupt)
			}
			v := opts[0]
			if (v&0x80 != 0 && v&0x7f > 63) || (v&0x80 == 0 && v > 19) {
				return fmt.Errorf("%w: interface timestamp resolution %#x", ErrCorrupt, v)
			}
		}
		opts = opts[(n+3)&^3:]
	}
	return nil
}

// nextBlock validates the header of the block about to be read.
func (g *ngGuard) nextBlock() error {
	hdr, err := g.br.Peek(8)
	if err != nil {
		if len(hdr) == 0 && err == io.EOF {
			return io.EOF
		}
		return ErrTruncated
	}
	if binary.LittleEndian.Uint32(hdr) == ngBlockSHB {
		hdr, err = g.br.Peek(12)
		if err != nil {
			return ErrTruncated
		}
		switch {
		case binary.BigEndian.Uint32(hdr[8:]) == ngByteOrderMagic:
			g.bigEndian = true
		case binary.LittleEndian.Uint32(hdr[8:]) == ngByteOrderMagic:
			g.bigEndian = false
		default:
			return fmt.Errorf("%w: section header byte-order magic %x", ErrCorrupt, hdr[8:12])
		}
		g.ifaces = g.ifaces[:0]
	}
	typ, length := g.u32(hdr), int64(g.u32(hdr[4:]))
	if length < ngMinBlockLen || length%4 != 0 {
		return fmt.Errorf("%w: block type %#x length %d", ErrCorrupt, typ, length)
	}
	switch typ {
	case ngBlockIDB:
		if err := g.checkIDB(length); err != nil {
			return err
		}
	case ngBlockEnhanced, ngBlockPacket:
		if length < ngPacketHeaderLen+4 {
			return fmt.Errorf("%w: packet block length %d", ErrCorrupt, length)
		}
		hdr, err = g.br.Peek(ngPacketHeaderLen)
		if err != nil {
			return ErrTruncated
		}
		if capLen := int64(g.u32(hdr[20:])); capLen > length-ngPacketHeaderLen-4 || capLen > MaxPacketSize {
			return fmt.Errorf("%w: captured length %d in a block of %d", ErrCorrupt, capLen, length)
		}
	case ngBlockSimple:
		hdr, err = g.br.Peek(ngSimpleHeaderLen)
		if err != nil {
			return ErrTruncated
		}
		// NgReader reads min(original length, snap length) bytes.
		if origLen := int64(g.u32(hdr[8:])); origLen > MaxPacketSize {
			return fmt.Errorf("%w: simple packet length %d", ErrCorrupt, origLen)
		}
	}
	g.remaining = length
	return nil
}
