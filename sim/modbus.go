// Package sim provides simulated OT devices for the demo, the integration
// tests and the benchmarks.
//
// The Modbus PLC is served by github.com/simonvetter/modbus — an
// implementation independent of Conduit's own codec — so that a test through
// the proxy checks Conduit against somebody else's reading of the protocol,
// not against itself. Every write the PLC applies is logged, so tests can
// compare what the device received with the audit trail.
package sim

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"sync"
	"time"

	mb "github.com/simonvetter/modbus"
)

// Table sizes of the simulated PLC (addresses 0..TableSize-1).
const TableSize = 1000

// Write is one write the PLC applied.
type Write struct {
	Unit     uint8
	Table    string // "coils" or "holding_registers"
	Address  uint16
	Values   []uint16 // coils as 0/1
	Client   string   // address the request came from (the proxy, when proxied)
	Received time.Time
}

// PLC is a simulated Modbus/TCP PLC: coils, discrete inputs, holding and
// input registers, each TableSize long, for any unit id.
type PLC struct {
	srv  *mb.ModbusServer
	addr string

	mu       sync.Mutex
	coils    [TableSize]bool
	discrete [TableSize]bool
	holding  [TableSize]uint16
	input    [TableSize]uint16
	writes   []Write
	requests int
}

// PLCOptions configures StartPLC.
type PLCOptions struct {
	// Addr to listen on; "" picks a free port on 127.0.0.1.
	Addr string
	// TLS makes the PLC speak Modbus/TCP Security (mbaps): its certificate
	// and the CAs its clients' certificates must chain to.
	TLSCert      *tls.Certificate
	TLSClientCAs *x509.CertPool
	// MaxClients bounds concurrent connections (default 64).
	MaxClients uint
}

// StartPLC starts a simulated PLC. Input registers and discrete inputs hold
// a recognisable pattern (input register i = 1000+i, discrete input i = i%2).
func StartPLC(opts PLCOptions) (*PLC, error) {
	p := &PLC{}
	for i := range p.input {
		p.input[i] = uint16(1000 + i)
		p.discrete[i] = i%2 == 1
	}
	if opts.MaxClients == 0 {
		opts.MaxClients = 64
	}
	scheme := "tcp"
	if opts.TLSCert != nil {
		scheme = "tcp+tls"
	}
	// The library binds its own listener and cannot report a port it chose,
	// so pick a free one first and retry if another process takes it.
	var lastErr error
	for attempt := 0; attempt < 10; attempt++ {
		addr := opts.Addr
		if addr == "" {
			free, err := freePort()
			if err != nil {
				return nil, err
			}
			addr = free
		}
		srv, err := mb.NewServer(&mb.ServerConfiguration{
			URL:           scheme + "://" + addr,
			Timeout:       10 * time.Minute,
			MaxClients:    opts.MaxClients,
			TLSServerCert: opts.TLSCert,
			TLSClientCAs:  opts.TLSClientCAs,
			Logger:        log.New(io.Discard, "", 0),
		}, p)
		if err != nil {
			return nil, fmt.Errorf("sim: %w", err)
		}
		if err := srv.Start(); err != nil {
			lastErr = err
			if opts.Addr != "" {
				break
			}
			continue
		}
		p.srv, p.addr = srv, addr
		return p, nil
	}
	return nil, fmt.Errorf("sim: start PLC: %w", lastErr)
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("sim: find a free port: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr, nil
}

// Addr is the host:port the PLC listens on.
func (p *PLC) Addr() string { return p.addr }

// Close stops the PLC and closes its connections.
func (p *PLC) Close() error { return p.srv.Stop() }

// Writes returns a copy of every write applied so far, in order.
func (p *PLC) Writes() []Write {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Write, len(p.writes))
	copy(out, p.writes)
	return out
}

// Requests returns how many requests reached the PLC.
func (p *PLC) Requests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests
}

// Holding returns holding register addr.
func (p *PLC) Holding(addr uint16) uint16 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.holding[addr]
}

// Coil returns coil addr.
func (p *PLC) Coil(addr uint16) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.coils[addr]
}

// SetHolding sets holding register addr (test setup).
func (p *PLC) SetHolding(addr, v uint16) {
	p.mu.Lock()
	p.holding[addr] = v
	p.mu.Unlock()
}

func inRange(addr, qty uint16) bool { return int(addr)+int(qty) <= TableSize }

// HandleCoils implements mb.RequestHandler.
func (p *PLC) HandleCoils(req *mb.CoilsRequest) ([]bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	if !inRange(req.Addr, req.Quantity) {
		return nil, mb.ErrIllegalDataAddress
	}
	if req.IsWrite {
		vals := make([]uint16, len(req.Args))
		for i, v := range req.Args {
			p.coils[int(req.Addr)+i] = v
			if v {
				vals[i] = 1
			}
		}
		p.writes = append(p.writes, Write{Unit: req.UnitId, Table: "coils", Address: req.Addr, Values: vals, Client: req.ClientAddr, Received: time.Now()})
		return nil, nil
	}
	return append([]bool(nil), p.coils[req.Addr:int(req.Addr)+int(req.Quantity)]...), nil
}

// HandleDiscreteInputs implements mb.RequestHandler.
func (p *PLC) HandleDiscreteInputs(req *mb.DiscreteInputsRequest) ([]bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	if !inRange(req.Addr, req.Quantity) {
		return nil, mb.ErrIllegalDataAddress
	}
	return append([]bool(nil), p.discrete[req.Addr:int(req.Addr)+int(req.Quantity)]...), nil
}

// HandleHoldingRegisters implements mb.RequestHandler.
func (p *PLC) HandleHoldingRegisters(req *mb.HoldingRegistersRequest) ([]uint16, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	if !inRange(req.Addr, req.Quantity) {
		return nil, mb.ErrIllegalDataAddress
	}
	if req.IsWrite {
		copy(p.holding[req.Addr:], req.Args)
		p.writes = append(p.writes, Write{Unit: req.UnitId, Table: "holding_registers", Address: req.Addr, Values: append([]uint16(nil), req.Args...), Client: req.ClientAddr, Received: time.Now()})
		return nil, nil
	}
	return append([]uint16(nil), p.holding[req.Addr:int(req.Addr)+int(req.Quantity)]...), nil
}

// HandleInputRegisters implements mb.RequestHandler.
func (p *PLC) HandleInputRegisters(req *mb.InputRegistersRequest) ([]uint16, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	if !inRange(req.Addr, req.Quantity) {
		return nil, mb.ErrIllegalDataAddress
	}
	return append([]uint16(nil), p.input[req.Addr:int(req.Addr)+int(req.Quantity)]...), nil
}
