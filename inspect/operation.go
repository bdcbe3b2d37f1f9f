// Package inspect holds what every protocol decoder produces: the
// protocol-neutral Operation that the policy input and the audit event are
// built from. The decoders themselves live in one sub-package per protocol
// (inspect/modbus, inspect/opcua); inspect/capture feeds recorded traffic to
// the same decoders.
//
// Nothing here knows about sockets, policy or audit (see
// ../../shared/ARCHITECTURE.md): an Operation is plain data.
package inspect

// Protocol names as they appear in input.protocol, network.protocol and
// listener configuration.
const (
	ProtocolModbus = "modbus"
	ProtocolOPCUA  = "opcua"
)

// Access classifies an operation for the policy (input.operation.access).
type Access uint8

const (
	// AccessOther is anything that is not plainly a read, a write or a
	// diagnostic: unknown and user-defined function codes, session
	// management, encapsulated transports. The reference policy denies it
	// unless listed.
	AccessOther Access = iota
	// AccessRead reads process data and changes nothing on the device.
	AccessRead
	// AccessWrite changes process data, configuration or the address space.
	AccessWrite
	// AccessDiagnostic queries or changes the device's communication state
	// (Modbus FC 7, 8, 11, 12, 17, 43/14).
	AccessDiagnostic
)

var accessNames = [...]string{
	AccessOther:      "other",
	AccessRead:       "read",
	AccessWrite:      "write",
	AccessDiagnostic: "diagnostic",
}

// String returns the policy-facing name: "read", "write", "diagnostic" or
// "other".
func (a Access) String() string {
	if int(a) < len(accessNames) {
		return accessNames[a]
	}
	return "other"
}

// Operation is one request as the policy sees it. Exactly one of the
// protocol sections is meaningful, chosen by Protocol.
//
// Decoders fill an Operation in place and may point its slices into their
// own scratch buffers: an Operation is valid until the decoder that filled it
// decodes the next frame. Copy to retain (see Clone).
type Operation struct {
	Protocol string // ProtocolModbus or ProtocolOPCUA
	Access   Access
	// Name is the snake_case operation name, e.g. "read_holding_registers",
	// "write_single_coil", "diagnostics", "unknown_function" for Modbus and
	// "write", "call", "read", "browse", "add_nodes" for OPC UA services.
	Name string

	Modbus Modbus // valid when Protocol == ProtocolModbus
	OPCUA  *OPCUA // non-nil when Protocol == ProtocolOPCUA
}

// Reset clears o for reuse, keeping the capacity of its slices.
func (o *Operation) Reset() {
	values := o.Modbus.Values[:0]
	records := o.Modbus.FileRecords[:0]
	*o = Operation{}
	o.Modbus.Values = values
	o.Modbus.FileRecords = records
}

// Clone returns a deep copy of o that does not share memory with any decoder.
func (o *Operation) Clone() *Operation {
	c := *o
	c.Modbus.Values = append([]uint16(nil), o.Modbus.Values...)
	if o.Modbus.FileRecords != nil {
		c.Modbus.FileRecords = make([]FileRecord, len(o.Modbus.FileRecords))
		for i, r := range o.Modbus.FileRecords {
			r.Values = append([]uint16(nil), r.Values...)
			c.Modbus.FileRecords[i] = r
		}
	}
	if o.OPCUA != nil {
		c.OPCUA = o.OPCUA.Clone()
	}
	return &c
}

// Table is the Modbus data table an operation addresses.
type Table uint8

const (
	TableNone Table = iota
	TableCoils
	TableDiscreteInputs
	TableInputRegisters
	TableHoldingRegisters
	TableFile // FC 20/21 file records
	TableFIFO // FC 24 FIFO queue (address = FIFO pointer address)
)

var tableNames = [...]string{
	TableNone:             "",
	TableCoils:            "coils",
	TableDiscreteInputs:   "discrete_inputs",
	TableInputRegisters:   "input_registers",
	TableHoldingRegisters: "holding_registers",
	TableFile:             "file",
	TableFIFO:             "fifo",
}

// String returns the policy-facing table name ("" for none).
func (t Table) String() string {
	if int(t) < len(tableNames) {
		return tableNames[t]
	}
	return ""
}

// Modbus is the Modbus part of an Operation (input.modbus). Which fields are
// set depends on the function code; docs/policy.md lists them per code.
//
// For every write (FC 5, 6, 15, 16, 22, 23) Address, Quantity and Values
// describe what is written, so one policy rule covers all of them. Coil
// values are 0 or 1 (FC 5 0xFF00 is 1).
type Modbus struct {
	Unit     uint8
	Function uint8 // without the exception bit
	// Subfunction is the FC 8 sub-function code or the FC 43 MEI type;
	// HasSubfunction says whether it is present.
	Subfunction    uint16
	HasSubfunction bool

	Table    Table
	Address  uint16
	Quantity uint16
	Values   []uint16 // written values (writes only)

	// FC 23 (read/write multiple registers): the read half. The write half
	// is Address/Quantity/Values above.
	ReadAddress  uint16
	ReadQuantity uint16

	// FC 22 (mask write register).
	AndMask uint16
	OrMask  uint16

	// FC 20/21: the sub-requests.
	FileRecords []FileRecord

	// FC 43/14: read device id code and object id.
	DeviceIDCode uint8
	ObjectID     uint8
}

// FileRecord is one sub-request of FC 20 (read) or FC 21 (write).
type FileRecord struct {
	File   uint16
	Record uint16
	Length uint16   // in registers
	Values []uint16 // FC 21 only
}

// OPCUA is the OPC UA part of an Operation (input.opcua).
type OPCUA struct {
	// Service is the service name as in the specification without the
	// "Request" suffix: "Write", "Call", "Read", "Browse", "AddNodes",
	// "OpenSecureChannel", ...
	Service string
	// TypeID is the numeric node id of the request's binary encoding
	// (e.g. 673 for WriteRequest); 0 when not known (opaque channels).
	TypeID uint32

	SecurityMode   string // "none", "sign" or "sign_and_encrypt"
	SecurityPolicy string // policy URI from the OPN asymmetric header
	// Opaque is true when the body could not be inspected (SignAndEncrypt).
	Opaque bool

	// Client application certificate from the asymmetric security header
	// (OpenSecureChannel), when present.
	ClientCertSubject    string
	ClientCertThumbprint string // SHA-1 hex, as OPC UA defines thumbprints

	Session *OPCUASession

	Writes []OPCUAWrite
	Calls  []OPCUACall
	Nodes  []OPCUANode
}

// Clone returns a deep copy of u.
func (u *OPCUA) Clone() *OPCUA {
	c := *u
	if u.Session != nil {
		s := *u.Session
		c.Session = &s
	}
	c.Writes = append([]OPCUAWrite(nil), u.Writes...)
	c.Calls = make([]OPCUACall, len(u.Calls))
	for i, call := range u.Calls {
		call.Arguments = append([]any(nil), call.Arguments...)
		c.Calls[i] = call
	}
	c.Nodes = append([]OPCUANode(nil), u.Nodes...)
	return &c
}

// OPCUASession is what is known of the session a request runs in
// (ActivateSession identity token).
type OPCUASession struct {
	IdentityType string // "anonymous", "username", "x509", "issued"
	UserName     string
}

// OPCUAWrite is one WriteValue of a WriteRequest or one HistoryUpdate detail.
type OPCUAWrite struct {
	NodeID     string // standard string form: "ns=1;s=Setpoint", "i=2258"
	Attribute  string // attribute name, e.g. "Value", "DisplayName"
	IndexRange string
	Value      any    // JSON-compatible: bool, float64, int64, string, []any, nil
	Type       string // built-in type name, e.g. "Double", "Int32"
}

// OPCUACall is one CallMethodRequest.
type OPCUACall struct {
	ObjectID  string
	MethodID  string
	Arguments []any
}

// OPCUANode is one item of AddNodes, DeleteNodes, AddReferences or
// DeleteReferences.
type OPCUANode struct {
	NodeID        string // the node added or deleted, or the reference source
	ParentID      string // AddNodes parent, AddReferences/DeleteReferences target
	ReferenceType string
	NodeClass     string // AddNodes only
	BrowseName    string // AddNodes only
}
