package modbus

import (
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/conduit-ot/conduit/inspect"
)

// memDevice is a tiny Modbus/TCP server built only from this package:
// Framer to cut the stream, Request.Decode to validate, Response.Append to
// answer, AppendException for refusals — answering from in-memory tables.
// Every response it sends is first checked with Response.Decode against
// the request, the validation the proxy applies to real devices.
type memDevice struct {
	t  testing.TB
	ln net.Listener

	mu        sync.Mutex
	coils     []bool
	discretes []bool
	holding   []uint16
	input     []uint16
	files     map[[2]uint16]uint16 // (file, record) → register
	fifo      map[uint16][]uint16
	objects   map[uint8]string // device identification objects
	serverID  []byte
	messages  uint16
	ops       map[string]int // operation names decoded
	refused   map[string]int // reason codes of refused requests
	wg        sync.WaitGroup
}

func newMemDevice(t testing.TB) *memDevice {
	t.Helper()
	d := &memDevice{
		t:         t,
		coils:     make([]bool, AddressSpace),
		discretes: make([]bool, AddressSpace),
		holding:   make([]uint16, AddressSpace),
		input:     make([]uint16, AddressSpace),
		files:     map[[2]uint16]uint16{},
		fifo:      map[uint16][]uint16{},
		objects: map[uint8]string{
			0: "Conduit", 1: "CDT-MB", 2: "1.0", 3: "https://example.invalid/", 4: "conduit test device",
			5: "memDevice", 6: "inspect/modbus",
		},
		serverID: append([]byte("Conduit-test"), 0xff), // server id, run indicator ON
		ops:      map[string]int{},
		refused:  map[string]int{},
	}
	for i := range d.input {
		d.input[i] = uint16(i)
		d.discretes[i] = i%3 == 0
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.ln = ln
	d.wg.Add(1)
	go d.accept()
	t.Cleanup(func() {
		ln.Close()
		d.wg.Wait()
	})
	return d
}

func (d *memDevice) addr() string { return d.ln.Addr().String() }

func (d *memDevice) accept() {
	defer d.wg.Done()
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer c.Close()
			d.serve(c)
		}()
	}
}

func (d *memDevice) serve(c net.Conn) {
	f := NewFramer(c)
	var (
		req  Request
		resp Response
		chk  Response
		op   inspect.Operation
		out  = make([]byte, 0, MaxADULen)
		data [MaxPDULen]byte
	)
	for {
		adu, err := f.Next()
		if err != nil {
			return // EOF, or framing error: close
		}
		_, err = req.Decode(adu)
		req.Operation(&op)
		var pe *ProtocolError
		if errors.As(err, &pe) {
			d.count(d.refused, pe.Reason)
			out = req.AppendException(out[:0], pe.Exception)
		} else if err != nil {
			d.t.Errorf("memDevice: framing error, closing: %v", err)
			return
		} else {
			d.count(d.ops, op.Name)
			resp = Response{TransactionID: req.TransactionID, Unit: req.Unit, Function: req.Function}
			if ex := d.handle(&req, &resp, data[:0]); ex != 0 {
				out = req.AppendException(out[:0], ex)
			} else if !req.ExpectsResponse() {
				continue
			} else if out, err = resp.Append(out[:0]); err != nil {
				d.t.Errorf("memDevice: cannot encode the response to FC %d: %v", req.Function, err)
				return
			}
		}
		if _, err := chk.Decode(out, &req); err != nil {
			d.t.Errorf("memDevice: own response % x fails validation: %v", out, err)
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

func (d *memDevice) count(m map[string]int, k string) {
	d.mu.Lock()
	m[k]++
	d.mu.Unlock()
}

// handle executes req on the tables and fills resp, using scratch for
// response data; it returns an exception code or 0.
func (d *memDevice) handle(req *Request, resp *Response, scratch []byte) uint8 {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.messages++
	a, q := int(req.Address), int(req.Quantity)
	switch req.Function {
	case FuncReadCoils, FuncReadDiscreteInputs:
		bits := d.coils
		if req.Function == FuncReadDiscreteInputs {
			bits = d.discretes
		}
		resp.Quantity, resp.Data = req.Quantity, packBits(scratch, bits[a:a+q])
	case FuncReadHoldingRegisters, FuncReadInputRegisters:
		regs := d.holding
		if req.Function == FuncReadInputRegisters {
			regs = d.input
		}
		resp.Quantity, resp.Data = req.Quantity, putRegisters(scratch, regs[a:a+q])
	case FuncWriteSingleCoil:
		d.coils[a] = req.Value == CoilOn
		resp.Address, resp.Value = req.Address, req.Value
	case FuncWriteSingleRegister:
		d.holding[a] = req.Value
		resp.Address, resp.Value = req.Address, req.Value
	case FuncWriteMultipleCoils:
		for i := 0; i < q; i++ {
			d.coils[a+i] = req.Data[i/8]>>(i%8)&1 == 1
		}
		resp.Address, resp.Quantity = req.Address, req.Quantity
	case FuncWriteMultipleRegisters:
		for i := 0; i < q; i++ {
			d.holding[a+i] = be16(req.Data[2*i:])
		}
		resp.Address, resp.Quantity = req.Address, req.Quantity
	case FuncReadExceptionStatus:
		resp.Data = append(scratch, 0x6d) // spec §6.7 example
	case FuncDiagnostics:
		resp.Subfunction = req.Subfunction
		if diagEchoes(req.Subfunction) {
			resp.Data = req.Data
			break
		}
		var v uint16 // diagnostic register 0; every counter: messages seen
		if req.Subfunction != DiagReturnDiagnosticRegister {
			v = d.messages
		}
		resp.Data = appendU16(scratch, v)
	case FuncGetCommEventCounter:
		resp.EventCount = d.messages
	case FuncGetCommEventLog:
		resp.EventCount, resp.MessageCount = d.messages, d.messages
		resp.Data = append(scratch, 0x20, 0x00)
	case FuncReportServerID:
		resp.Data = d.serverID
	case FuncReadFileRecord:
		for off := 0; off < len(req.Data); off += fileSubRequestLen {
			file, rec, n := be16(req.Data[off+1:]), be16(req.Data[off+3:]), be16(req.Data[off+5:])
			scratch = append(scratch, byte(1+2*n), FileReferenceType)
			for i := uint16(0); i < n; i++ {
				scratch = appendU16(scratch, d.files[[2]uint16{file, rec + i}])
			}
		}
		resp.Data = scratch
	case FuncWriteFileRecord:
		for off := 0; off < len(req.Data); {
			file, rec, n := be16(req.Data[off+1:]), be16(req.Data[off+3:]), be16(req.Data[off+5:])
			off += fileSubRequestLen
			for i := uint16(0); i < n; i++ {
				d.files[[2]uint16{file, rec + i}] = be16(req.Data[off:])
				off += 2
			}
		}
		resp.Data = req.Data
	case FuncMaskWriteRegister:
		// Result = (Current AND And_Mask) OR (Or_Mask AND (NOT And_Mask)), spec §6.16
		d.holding[a] = d.holding[a]&req.AndMask | req.OrMask&^req.AndMask
		resp.Address, resp.AndMask, resp.OrMask = req.Address, req.AndMask, req.OrMask
	case FuncReadWriteMultipleRegisters:
		for i := 0; i < q; i++ { // the write is performed before the read
			d.holding[a+i] = be16(req.Data[2*i:])
		}
		ra, rq := int(req.ReadAddress), int(req.ReadQuantity)
		resp.Quantity, resp.Data = req.ReadQuantity, putRegisters(scratch, d.holding[ra:ra+rq])
	case FuncReadFIFOQueue:
		queue := d.fifo[req.Address]
		if len(queue) > MaxFIFOCount {
			return ExIllegalDataValue
		}
		resp.Quantity, resp.Data = uint16(len(queue)), putRegisters(scratch, queue)
	case FuncEncapsulatedInterface:
		if req.MEIType != MEIReadDeviceIdentification {
			return ExIllegalFunction
		}
		return d.deviceID(req, resp, scratch)
	default:
		return ExIllegalFunction
	}
	return 0
}

// deviceID answers FC 43/14 with regular identification (objects 0-6):
// streams from the requested object (from 0 if unknown), or one object.
func (d *memDevice) deviceID(req *Request, resp *Response, scratch []byte) uint8 {
	resp.MEIType, resp.DeviceIDCode, resp.Conformity = MEIReadDeviceIdentification, req.DeviceIDCode, ConformityRegularIndividual
	last := map[uint8]uint8{ReadDeviceIDBasic: 2, ReadDeviceIDRegular: 6, ReadDeviceIDExtended: 6}
	if req.DeviceIDCode == ReadDeviceIDSpecific {
		v, ok := d.objects[req.ObjectID]
		if !ok {
			return ExIllegalDataAddress
		}
		resp.ObjectCount = 1
		resp.Data = append(append(scratch, req.ObjectID, byte(len(v))), v...)
		return 0
	}
	first := req.ObjectID
	if first > last[req.DeviceIDCode] {
		first = 0 // "the server responds as if object 0 were pointed out"
	}
	for id := first; id <= last[req.DeviceIDCode]; id++ {
		v := d.objects[id]
		scratch = append(append(scratch, id, byte(len(v))), v...)
		resp.ObjectCount++
	}
	resp.Data = scratch
	return 0
}

func packBits(dst []byte, bits []bool) []byte {
	for i := 0; i < len(bits); i += 8 {
		var b byte
		for j := 0; j < 8 && i+j < len(bits); j++ {
			if bits[i+j] {
				b |= 1 << j
			}
		}
		dst = append(dst, b)
	}
	return dst
}

func putRegisters(dst []byte, regs []uint16) []byte {
	for _, v := range regs {
		dst = appendU16(dst, v)
	}
	return dst
}
