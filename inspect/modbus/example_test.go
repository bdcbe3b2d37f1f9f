package modbus_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/inspect/modbus"
)

// The proxy's request path: frame, decode, describe for the policy, then
// either refuse with an exception or forward the re-encoded bytes.
func Example() {
	client := bytes.NewReader([]byte{
		0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x00, 0x00, 0x00, 0x0a, // read 10 holding registers
		0x00, 0x02, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x00, 0x00, 0x00, 0x7e, // read 126: refused
		0x00, 0x03, 0x00, 0x00, 0x00, 0x06, 0x01, 0x06, 0x00, 0x04, 0x03, 0x09, // write 777 to register 4
		0x00, 0x04, 0x00, 0x00, 0x00, 0x0b, 0x01, 0x03, 0x00, 0x00, 0x00, 0x01, // a read hiding a write:
		0x06, 0x00, 0x01, 0xde, 0xad, //                                           framing error
	})
	f := modbus.NewFramer(client) // one per connection
	var (
		req modbus.Request
		op  inspect.Operation
		out = make([]byte, 0, modbus.MaxADULen)
	)
	for {
		adu, err := f.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			fmt.Println("close:", modbus.ReasonOf(err))
			return
		}
		_, err = req.Decode(adu)
		req.Operation(&op) // also describes refused requests, for the audit event
		var perr *modbus.ProtocolError
		switch {
		case errors.As(err, &perr):
			out = req.AppendException(out[:0], perr.Exception)
			fmt.Printf("refuse %s (%s): % x\n", op.Name, perr.Reason, out)
		case err != nil:
			fmt.Println("close:", modbus.ReasonOf(err))
			return
		default:
			// ... policy decision on op, audit event ...
			out, _ = req.Append(out[:0])
			fmt.Printf("forward %s %s %d+%d %v: % x\n", op.Access, op.Name, op.Modbus.Address, op.Modbus.Quantity, op.Modbus.Values, out)
		}
	}
	// Output:
	// forward read read_holding_registers 0+10 []: 00 01 00 00 00 06 01 03 00 00 00 0a
	// refuse read_holding_registers (bad_quantity): 00 02 00 00 00 03 01 83 03
	// forward write write_single_register 4+1 [777]: 00 03 00 00 00 06 01 06 00 04 03 09
	// close: length_mismatch
}

// Capture replay: reassembled stream bytes are cut with FrameLength.
func ExampleFrameLength() {
	stream := []byte{
		0x00, 0x07, 0x00, 0x00, 0x00, 0x06, 0x01, 0x05, 0x00, 0x0a, 0xff, 0x00, // write coil 10 ON
		0x00, 0x08, 0x00, 0x00, 0x00, 0x06, 0x01, // the next ADU, incomplete
	}
	for {
		n, err := modbus.FrameLength(stream)
		if err != nil {
			fmt.Println("framing:", modbus.ReasonOf(err))
			return
		}
		if n == 0 {
			fmt.Println("need more; buffered", len(stream))
			return
		}
		var req modbus.Request
		if _, err := req.Decode(stream[:n]); err == nil {
			fmt.Printf("FC %d at %d\n", req.Function, req.Address)
		}
		stream = stream[n:]
	}
	// Output:
	// FC 5 at 10
	// need more; buffered 7
}

// Validating a device's answer against the request before re-encoding it
// for the client.
func ExampleResponse_Decode() {
	var req modbus.Request
	req.Decode([]byte{0x00, 0x10, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x00, 0x64, 0x00, 0x01})

	var resp modbus.Response
	for _, adu := range [][]byte{
		{0x00, 0x10, 0x00, 0x00, 0x00, 0x05, 0x01, 0x03, 0x02, 0x0e, 0x61},             // one register
		{0x00, 0x10, 0x00, 0x00, 0x00, 0x07, 0x01, 0x03, 0x04, 0x0e, 0x61, 0x00, 0x00}, // two
	} {
		if _, err := resp.Decode(adu, &req); err != nil {
			fmt.Println("drop:", modbus.ReasonOf(err), "- answer", modbus.ExGatewayTargetFailedToRespond)
			continue
		}
		out, _ := resp.Append(nil)
		fmt.Printf("to client: % x\n", out)
	}
	// Output:
	// to client: 00 10 00 00 00 05 01 03 02 0e 61
	// drop: byte_count_mismatch - answer 11
}
