package sim

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/server"
	"github.com/gopcua/opcua/server/attrs"
	"github.com/gopcua/opcua/ua"
	"github.com/gopcua/opcua/uasc"
)

// Node ids of the simulated OPC UA line controller. They are the node ids
// the reference policy (rules/data.json, grant opcua-line1) names.
const (
	OPCUALine1         = "ns=2;s=Line1"               // the line object
	OPCUASetpoint      = "ns=2;s=Line1.Setpoint"      // Double, read/write
	OPCUAMode          = "ns=2;s=Line1.Mode"          // String, read/write
	OPCUACounter       = "ns=2;s=Line1.Counter"       // UInt32, read only, counts up
	OPCUAResetCounters = "ns=2;s=Line1.ResetCounters" // method on Line1: Counter = 0
)

// OPCUAWrite is one WriteValue the server received, applied or not.
type OPCUAWrite struct {
	NodeID    string
	Attribute uint32 // attribute id (13 = Value)
	Value     any    // the variant's Go value as gopcua decoded it
	Status    ua.StatusCode
	Received  time.Time
}

// OPCUACall is one method call the server received.
type OPCUACall struct {
	ObjectID string
	MethodID string
	Args     []any
	Status   ua.StatusCode
	Received time.Time
}

// OPCUAOptions configures StartOPCUA.
type OPCUAOptions struct {
	// Addr to listen on; "" picks a free port on 127.0.0.1.
	Addr string
	// Certificate (DER) and PrivateKey enable the Basic256Sha256 Sign and
	// SignAndEncrypt endpoints besides None.
	Certificate []byte
	PrivateKey  *rsa.PrivateKey
	// Unanswered lists node ids whose writes are recorded but never
	// answered: a device that hangs, for response-timeout tests.
	Unanswered []string
	// CountEvery is the Counter's tick (default 200ms; negative: never).
	CountEvery time.Duration
}

// OPCUAServer is a simulated OPC UA line controller built on gopcua's
// server package — an implementation independent of Conduit's inspect/opcua
// — with the nodes of the reference policy. It records every Write and Call
// it receives, so tests can prove from the server side what reached it.
type OPCUAServer struct {
	srv    *server.Server
	addr   string
	ns     *server.NodeNameSpace
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the counter stops

	mu       sync.Mutex
	setpoint float64
	mode     string
	writes   []OPCUAWrite
	calls    []OPCUACall
	silent   map[string]bool

	counter atomic.Uint32
}

// StartOPCUA starts the simulated server and returns once it accepts
// connections.
func StartOPCUA(opts OPCUAOptions) (*OPCUAServer, error) {
	if opts.CountEvery == 0 {
		opts.CountEvery = 200 * time.Millisecond
	}
	s := &OPCUAServer{mode: "auto", setpoint: 500, silent: map[string]bool{}, done: make(chan struct{})}
	for _, n := range opts.Unanswered {
		s.silent[n] = true
	}
	// gopcua's server binds its own listener and advertises the port it
	// was given, so choose a free port first (retrying if another process
	// takes it before the server binds).
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		addr := opts.Addr
		if addr == "" {
			if addr, err = freePort(); err != nil {
				return nil, err
			}
		}
		if err = s.start(addr, opts); err == nil || opts.Addr != "" {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if opts.CountEvery > 0 {
		go s.count(opts.CountEvery)
	} else {
		close(s.done)
	}
	return s, nil
}

func (s *OPCUAServer) start(addr string, opts OPCUAOptions) error {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return err
	}
	sopts := []server.Option{
		server.EndPoint(host, port),
		server.EnableSecurity("None", ua.MessageSecurityModeNone),
		server.EnableAuthMode(ua.UserTokenTypeAnonymous),
		server.ServerName("Conduit simulated line controller"),
		server.ManufacturerName("Conduit"),
		server.ProductName("conduit sim"),
	}
	if opts.Certificate != nil && opts.PrivateKey != nil {
		sopts = append(sopts,
			server.EnableSecurity("Basic256Sha256", ua.MessageSecurityModeSign),
			server.EnableSecurity("Basic256Sha256", ua.MessageSecurityModeSignAndEncrypt),
			server.EnableAuthMode(ua.UserTokenTypeUserName),
			server.Certificate(opts.Certificate),
			server.PrivateKey(opts.PrivateKey),
		)
	}
	silenceServerLog()
	srv := server.New(sopts...)
	// ns=1 is the server's own namespace, ns=2 the line: the node ids of
	// the reference policy.
	server.NewNodeNameSpace(srv, "urn:conduit:sim")
	s.ns = server.NewNodeNameSpace(srv, "urn:conduit:sim:line1")
	if s.ns.ID() != 2 {
		return fmt.Errorf("sim: line namespace got index %d, want 2", s.ns.ID())
	}
	s.addNodes(srv)
	// Handlers registered before Start take precedence over gopcua's own.
	srv.RegisterHandler(id.WriteRequest_Encoding_DefaultBinary, s.handleWrite)
	srv.RegisterHandler(id.CallRequest_Encoding_DefaultBinary, s.handleCall)
	// gopcua answers GetEndpoints only with endpoints whose URL equals the
	// one the client asked with; Part 4 §5.4.4 makes that URL a hint
	// ("to determine what URLs to return"), and servers in the field return
	// their endpoints whatever it is. A client behind a proxy asks with the
	// proxy's URL, so the simulator answers like those servers.
	srv.RegisterHandler(id.GetEndpointsRequest_Encoding_DefaultBinary, func(_ *uasc.SecureChannel, r ua.Request, _ uint32) (ua.Response, error) {
		req, ok := r.(*ua.GetEndpointsRequest)
		if !ok {
			return nil, ua.StatusBadRequestTypeInvalid
		}
		return &ua.GetEndpointsResponse{ResponseHeader: okHeader(req.RequestHeader), Endpoints: srv.Endpoints()}, nil
	})

	ctx, cancel := context.WithCancel(context.Background())
	if err := srv.Start(ctx); err != nil {
		cancel()
		return err
	}
	s.srv, s.addr, s.ctx, s.cancel = srv, net.JoinHostPort(host, portStr), ctx, cancel
	return nil
}

var silenceOnce sync.Once

// silenceServerLog drops what gopcua's server prints with the standard
// logger (node set import progress, "Started listening"), once per process.
// Conduit logs with zap, so nothing of its own goes through the standard
// logger.
func silenceServerLog() {
	silenceOnce.Do(func() { log.SetOutput(io.Discard) })
}

func (s *OPCUAServer) addNodes(srv *server.Server) {
	ns := s.ns
	rootNS, _ := srv.Namespace(0)
	rootNS.Objects().AddRef(ns.Objects(), id.HasComponent, true)

	nid := func(name string) *ua.NodeID { return ua.NewStringNodeID(ns.ID(), name) }
	rw := server.DataValueFromValue(byte(ua.AccessLevelTypeCurrentRead | ua.AccessLevelTypeCurrentWrite))
	ro := server.DataValueFromValue(byte(ua.AccessLevelTypeCurrentRead))
	variable := func(name string, typ uint32, access *ua.DataValue, val func() *ua.DataValue) *server.Node {
		return server.NewNode(nid(name), map[ua.AttributeID]*ua.DataValue{
			ua.AttributeIDNodeClass:       server.DataValueFromValue(uint32(ua.NodeClassVariable)),
			ua.AttributeIDBrowseName:      server.DataValueFromValue(attrs.BrowseName(name)),
			ua.AttributeIDDisplayName:     server.DataValueFromValue(attrs.DisplayName(name, name)),
			ua.AttributeIDDataType:        server.DataValueFromValue(ua.NewNumericExpandedNodeID(0, typ)),
			ua.AttributeIDAccessLevel:     access,
			ua.AttributeIDUserAccessLevel: access,
		}, nil, val)
	}

	line := server.NewNode(nid("Line1"), map[ua.AttributeID]*ua.DataValue{
		ua.AttributeIDNodeClass:   server.DataValueFromValue(uint32(ua.NodeClassObject)),
		ua.AttributeIDBrowseName:  server.DataValueFromValue(attrs.BrowseName("Line1")),
		ua.AttributeIDDisplayName: server.DataValueFromValue(attrs.DisplayName("Line1", "Line1")),
	}, nil, nil)
	ns.AddNode(line)
	ns.Objects().AddRef(line, id.Organizes, true)

	setpoint := variable("Line1.Setpoint", id.Double, rw, func() *ua.DataValue {
		s.mu.Lock()
		defer s.mu.Unlock()
		return server.DataValueFromValue(s.setpoint)
	})
	mode := variable("Line1.Mode", id.String, rw, func() *ua.DataValue {
		s.mu.Lock()
		defer s.mu.Unlock()
		return server.DataValueFromValue(s.mode)
	})
	counter := variable("Line1.Counter", id.UInt32, ro, func() *ua.DataValue {
		return server.DataValueFromValue(s.counter.Load())
	})
	reset := server.NewNode(nid("Line1.ResetCounters"), map[ua.AttributeID]*ua.DataValue{
		ua.AttributeIDNodeClass:      server.DataValueFromValue(uint32(ua.NodeClassMethod)),
		ua.AttributeIDBrowseName:     server.DataValueFromValue(attrs.BrowseName("ResetCounters")),
		ua.AttributeIDDisplayName:    server.DataValueFromValue(attrs.DisplayName("ResetCounters", "ResetCounters")),
		ua.AttributeIDExecutable:     server.DataValueFromValue(true),
		ua.AttributeIDUserExecutable: server.DataValueFromValue(true),
	}, nil, nil)
	for _, n := range []*server.Node{setpoint, mode, counter, reset} {
		ns.AddNode(n)
		line.AddRef(n, id.HasComponent, true)
	}
}

// handleWrite records every WriteValue, then applies the ones to the
// line's variables (type-checked) and passes others to the namespace.
func (s *OPCUAServer) handleWrite(_ *uasc.SecureChannel, r ua.Request, _ uint32) (ua.Response, error) {
	req, ok := r.(*ua.WriteRequest)
	if !ok {
		return nil, ua.StatusBadRequestTypeInvalid
	}
	results := make([]ua.StatusCode, len(req.NodesToWrite))
	silent := false
	for i, w := range req.NodesToWrite {
		node := w.NodeID.String()
		var v any
		if w.Value != nil && w.Value.Value != nil {
			v = w.Value.Value.Value()
		}
		results[i] = s.apply(w, node, v)
		s.mu.Lock()
		s.writes = append(s.writes, OPCUAWrite{NodeID: node, Attribute: uint32(w.AttributeID), Value: v, Status: results[i], Received: time.Now()})
		silent = silent || s.silent[node]
		s.mu.Unlock()
	}
	if silent {
		return nil, nil // gopcua sends nothing for a nil response
	}
	return &ua.WriteResponse{
		ResponseHeader: okHeader(req.RequestHeader),
		Results:        results,
	}, nil
}

func (s *OPCUAServer) apply(w *ua.WriteValue, node string, v any) ua.StatusCode {
	switch node {
	case OPCUASetpoint, OPCUAMode, OPCUACounter:
		if w.AttributeID != ua.AttributeIDValue {
			return ua.StatusBadNotWritable
		}
	default:
		if w.NodeID.Namespace() == s.ns.ID() {
			return ua.StatusBadNodeIDUnknown
		}
		ns, err := s.srv.Namespace(int(w.NodeID.Namespace()))
		if err != nil {
			return ua.StatusBadNodeIDUnknown
		}
		return ns.SetAttribute(w.NodeID, w.AttributeID, w.Value)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch node {
	case OPCUASetpoint:
		f, ok := v.(float64)
		if !ok {
			return ua.StatusBadTypeMismatch
		}
		s.setpoint = f
	case OPCUAMode:
		m, ok := v.(string)
		if !ok {
			return ua.StatusBadTypeMismatch
		}
		s.mode = m
	default: // OPCUACounter
		return ua.StatusBadNotWritable
	}
	if s.srv != nil && s.srv.MonitoredItemService != nil {
		go s.srv.ChangeNotification(w.NodeID)
	}
	return ua.StatusOK
}

// handleCall records every call; ResetCounters on Line1 sets Counter to 0.
func (s *OPCUAServer) handleCall(_ *uasc.SecureChannel, r ua.Request, _ uint32) (ua.Response, error) {
	req, ok := r.(*ua.CallRequest)
	if !ok {
		return nil, ua.StatusBadRequestTypeInvalid
	}
	results := make([]*ua.CallMethodResult, len(req.MethodsToCall))
	for i, m := range req.MethodsToCall {
		obj, method := m.ObjectID.String(), m.MethodID.String()
		var args []any
		for _, a := range m.InputArguments {
			args = append(args, a.Value())
		}
		st := ua.StatusBadMethodInvalid
		switch {
		case method == OPCUAResetCounters && obj != OPCUALine1:
			st = ua.StatusBadMethodInvalid
		case method == OPCUAResetCounters && len(args) != 0:
			st = ua.StatusBadTooManyArguments
		case method == OPCUAResetCounters:
			s.counter.Store(0)
			st = ua.StatusOK
		}
		s.mu.Lock()
		s.calls = append(s.calls, OPCUACall{ObjectID: obj, MethodID: method, Args: args, Status: st, Received: time.Now()})
		s.mu.Unlock()
		results[i] = &ua.CallMethodResult{StatusCode: st}
	}
	return &ua.CallResponse{ResponseHeader: okHeader(req.RequestHeader), Results: results}, nil
}

func okHeader(h *ua.RequestHeader) *ua.ResponseHeader {
	var handle uint32
	if h != nil {
		handle = h.RequestHandle
	}
	return &ua.ResponseHeader{
		Timestamp:          time.Now(),
		RequestHandle:      handle,
		ServiceResult:      ua.StatusOK,
		ServiceDiagnostics: &ua.DiagnosticInfo{},
		StringTable:        []string{},
		AdditionalHeader:   ua.NewExtensionObject(nil),
	}
}

func (s *OPCUAServer) count(every time.Duration) {
	defer close(s.done)
	ctr := ua.MustParseNodeID(OPCUACounter)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.counter.Add(1)
			if s.srv.MonitoredItemService != nil {
				s.srv.ChangeNotification(ctr)
			}
		case <-s.ctx.Done():
			return
		}
	}
}

// Addr returns host:port.
func (s *OPCUAServer) Addr() string { return s.addr }

// Endpoint returns the server's endpoint URL, opc.tcp://host:port.
func (s *OPCUAServer) Endpoint() string { return "opc.tcp://" + s.addr }

// Writes returns a copy of every WriteValue received, in order.
func (s *OPCUAServer) Writes() []OPCUAWrite {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]OPCUAWrite(nil), s.writes...)
}

// Calls returns a copy of every method call received, in order.
func (s *OPCUAServer) Calls() []OPCUACall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]OPCUACall(nil), s.calls...)
}

// Setpoint, Mode and Counter return the current values.
func (s *OPCUAServer) Setpoint() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.setpoint
}

func (s *OPCUAServer) Mode() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mode
}

func (s *OPCUAServer) Counter() uint32 { return s.counter.Load() }

// Close stops the server and closes every connection.
func (s *OPCUAServer) Close() error {
	s.cancel()
	err := s.srv.Close()
	<-s.done
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
