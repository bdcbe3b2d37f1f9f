package opcua

import (
	"crypto/x509"
	"reflect"
	"strconv"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// ChannelSecurity is what the secure channel knows of its own security; the
// decoder copies it into every Operation.
type ChannelSecurity struct {
	Mode                 SecurityMode
	Policy               string // URI
	ClientCertSubject    string
	ClientCertThumbprint string // SHA-1, lowercase hex
}

// RequestInfo is what the proxy needs of a request besides the Operation:
// the RequestHandle to answer a denied request with a ServiceFault, even
// when the rest of the body failed to decode (HeaderOK).
type RequestInfo struct {
	Service       *Service // nil when the type id is not a standard request
	TypeID        uint32   // numeric ns=0 id of the binary encoding; 0 if not numeric
	HeaderOK      bool     // RequestHeader decoded: RequestHandle and HasAuthToken are valid
	RequestHandle uint32
	HasAuthToken  bool // AuthenticationToken is not the null NodeId
	// AuthToken is the encoded AuthenticationToken NodeId as it appears in
	// the body (valid when HeaderOK): it names the session the request
	// runs in. It points into the body: copy to retain.
	AuthToken []byte
	// TimeoutHint is the client's timeout for the request in milliseconds
	// (0: none), from the RequestHeader.
	TimeoutHint uint32
}

// Decoder turns complete request bodies into Operations. It owns scratch
// space that the Operation points into: an Operation is valid until the next
// Decode call on the same Decoder. A Decoder is not safe for concurrent use;
// use one per connection (Channel embeds one).
type Decoder struct {
	Limits Limits

	ua      inspect.OPCUA
	session inspect.OPCUASession
	r       reader
	// Scratch slices: the Operation's Writes/Calls/Nodes are nil when empty
	// (so the policy input always shows null for "none") and reuse these
	// otherwise.
	writes []inspect.OPCUAWrite
	calls  []inspect.OPCUACall
	nodes  []inspect.OPCUANode
}

// NewDecoder returns a Decoder with l normalized.
func NewDecoder(l Limits) *Decoder {
	return &Decoder{Limits: l.Normalize()}
}

// DecodeRequest decodes a complete request body (a reassembled message
// after the sequence header: the ExpandedNodeId type id first) and fills op.
//
// The whole body is decoded exactly, with every count checked against the
// bytes left and nesting bounded: any trailing byte, unknown
// ExtensionObject, invalid encoding or limit is an error. On error op is
// still filled as far as known (Service, Name, Access of the type id), so
// the proxy can deny and audit it, but Writes, Calls, Nodes and Session are
// nil (never a partial list); an unknown type id yields Access other,
// Name "unknown_service" and ErrUnknownService.
func (d *Decoder) DecodeRequest(body []byte, sec ChannelSecurity, op *inspect.Operation) (RequestInfo, error) {
	var info RequestInfo
	if err := schemas(); err != nil {
		return info, errorf(CodeInvalidEncoding, "schemas: %v", err)
	}
	d.reset(sec)
	op.Reset()
	op.Protocol = inspect.ProtocolOPCUA
	op.Access = inspect.AccessOther
	op.OPCUA = &d.ua

	r := &d.r
	r.init(body, &d.Limits)
	tid := r.nodeID(true)
	if r.err != nil {
		op.Name = "unknown_service"
		return info, r.err
	}
	if tid.Namespace == 0 && tid.Type == IDNumeric && !tid.HasURI && !tid.HasServer {
		info.TypeID = tid.Numeric
	}
	d.ua.TypeID = info.TypeID
	svc := serviceByID[info.TypeID]
	if svc == nil || info.TypeID == 0 {
		op.Name = "unknown_service"
		// Every request starts with a RequestHeader; read it if possible
		// so the proxy can answer with a ServiceFault.
		info.fillHeader(r)
		d.done()
		return info, errorf(CodeUnknownService, "request type %s", tid)
	}
	info.Service = svc
	op.Access = svc.Access
	op.Name = svc.OpName
	d.ua.Service = svc.Name

	info.fillHeader(r)
	if svc.decode != nil {
		svc.decode(d, r)
	} else {
		for _, f := range svc.schema.fields[1:] { // fields[0] is the RequestHeader
			r.walk(f.s, false)
		}
	}
	d.done()
	err := r.finish()
	if err != nil {
		// Never leave a half-decoded list where a caller could mistake it
		// for the whole request: on error only the service is known.
		d.ua.Writes, d.ua.Calls, d.ua.Nodes, d.ua.Session = nil, nil, nil, nil
	}
	return info, err
}

// done keeps the capacity of the result slices for the next decode and sets
// empty ones to nil.
func (d *Decoder) done() {
	if d.writes = d.ua.Writes[:0]; len(d.ua.Writes) == 0 {
		d.ua.Writes = nil
	}
	if d.calls = d.ua.Calls[:0]; len(d.ua.Calls) == 0 {
		d.ua.Calls = nil
	}
	if d.nodes = d.ua.Nodes[:0]; len(d.ua.Nodes) == 0 {
		d.ua.Nodes = nil
	}
}

func (d *Decoder) reset(sec ChannelSecurity) {
	writes, calls, nodes := d.writes[:0], d.calls[:0], d.nodes[:0]
	d.ua = inspect.OPCUA{
		SecurityMode:         sec.Mode.String(),
		SecurityPolicy:       sec.Policy,
		Opaque:               false,
		ClientCertSubject:    sec.ClientCertSubject,
		ClientCertThumbprint: sec.ClientCertThumbprint,
		Writes:               writes,
		Calls:                calls,
		Nodes:                nodes,
	}
	d.session = inspect.OPCUASession{}
}

// FillOpaque fills op for a message whose body cannot be read
// (SignAndEncrypt, or any OPN under a policy other than None): Opaque true,
// Access other, with what the channel shows in clear. The message type
// still names the service of OPN ("open_secure_channel") and CLO
// ("close_secure_channel"); an encrypted MSG is Name "opaque", TypeID 0.
func (d *Decoder) FillOpaque(t MessageType, sec ChannelSecurity, op *inspect.Operation) {
	d.reset(sec)
	op.Reset()
	op.Protocol = inspect.ProtocolOPCUA
	op.Access = inspect.AccessOther
	op.Name = "opaque"
	var svc *Service
	switch t {
	case MessageOpen:
		svc = serviceByID[id.OpenSecureChannelRequest_Encoding_DefaultBinary]
	case MessageClose:
		svc = serviceByID[id.CloseSecureChannelRequest_Encoding_DefaultBinary]
	}
	if svc != nil {
		op.Name, d.ua.Service, d.ua.TypeID = svc.OpName, svc.Name, svc.TypeID
	}
	d.ua.Opaque = true
	d.done()
	op.OPCUA = &d.ua
}

// requestHeaderFields are the RequestHeader fields the proxy uses.
type requestHeaderFields struct {
	handle      uint32
	hasAuth     bool
	auth        []byte // the encoded AuthenticationToken
	timeoutHint uint32
}

// requestHeader reads a RequestHeader (Part 4 §7.32).
func (r *reader) requestHeader() requestHeaderFields {
	var h requestHeaderFields
	start := r.pos
	auth := r.nodeID(false)
	if r.err == nil {
		h.auth = r.b[start:r.pos]
	}
	r.u64() // Timestamp
	h.handle = r.u32()
	r.u32()         // ReturnDiagnostics
	r.stringBytes() // AuditEntryId
	h.timeoutHint = r.u32()
	r.extensionObject(false)
	h.hasAuth = r.err == nil && !auth.IsNull()
	return h
}

// fillHeader reads the RequestHeader into info.
func (info *RequestInfo) fillHeader(r *reader) {
	h := r.requestHeader()
	info.HeaderOK = r.err == nil
	if info.HeaderOK {
		info.RequestHandle, info.HasAuthToken = h.handle, h.hasAuth
		info.AuthToken, info.TimeoutHint = h.auth, h.timeoutHint
	}
}

// minSize returns the smallest encoding of a gopcua structure type.
func minSize[T any]() int {
	if s := schemaByType[reflect.TypeFor[T]()]; s != nil {
		return s.min
	}
	return 1
}

func schemaFor[T any]() *schema { return schemaByType[reflect.TypeFor[T]()] }

// attributeNames are the attribute ids of Part 6 §A.1 (Part 4 Annex A).
var attributeNames = [...]string{
	1: "NodeId", 2: "NodeClass", 3: "BrowseName", 4: "DisplayName", 5: "Description",
	6: "WriteMask", 7: "UserWriteMask", 8: "IsAbstract", 9: "Symmetric", 10: "InverseName",
	11: "ContainsNoLoops", 12: "EventNotifier", 13: "Value", 14: "DataType", 15: "ValueRank",
	16: "ArrayDimensions", 17: "AccessLevel", 18: "UserAccessLevel",
	19: "MinimumSamplingInterval", 20: "Historizing", 21: "Executable", 22: "UserExecutable",
	23: "DataTypeDefinition", 24: "RolePermissions", 25: "UserRolePermissions",
	26: "AccessRestrictions", 27: "AccessLevelEx",
}

func attributeName(a uint32) string {
	if int(a) < len(attributeNames) && attributeNames[a] != "" {
		return attributeNames[a]
	}
	// Unknown ids stay visible to the policy (which will not match them
	// against "Value"); the server answers Bad_AttributeIdInvalid.
	return "attribute_" + strconv.FormatUint(uint64(a), 10)
}

// nodeClassName maps NodeClass (Part 3 §8.29, Part 4 §7.22) and fails for
// values that are not a single defined class.
func (r *reader) nodeClassName(v uint32) string {
	switch v {
	case 0:
		return "Unspecified"
	case 1:
		return "Object"
	case 2:
		return "Variable"
	case 4:
		return "Method"
	case 8:
		return "ObjectType"
	case 16:
		return "VariableType"
	case 32:
		return "ReferenceType"
	case 64:
		return "DataType"
	case 128:
		return "View"
	}
	r.fail(CodeInvalidEncoding, "node class %d", v)
	return ""
}

// decodeWrite: WriteRequest (Part 4 §5.10.4): NodesToWrite []WriteValue
// {NodeId, AttributeId, IndexRange, DataValue}.
func decodeWrite(d *Decoder, r *reader) {
	n := r.count(minSize[ua.WriteValue]())
	for i := 0; i < n && r.err == nil; i++ {
		node := r.nodeID(false)
		attr := r.u32()
		ir, _ := r.stringBytes()
		v, typ, _, _ := r.dataValueParts(true)
		if r.err != nil {
			return
		}
		d.ua.Writes = append(d.ua.Writes, inspect.OPCUAWrite{
			NodeID:     node.String(),
			Attribute:  attributeName(attr),
			IndexRange: string(ir),
			Value:      v,
			Type:       typ,
		})
	}
}

// decodeCall: CallRequest (Part 4 §5.11.2): MethodsToCall []CallMethodRequest
// {ObjectId, MethodId, InputArguments []Variant}.
func decodeCall(d *Decoder, r *reader) {
	n := r.count(minSize[ua.CallMethodRequest]())
	for i := 0; i < n && r.err == nil; i++ {
		obj := r.nodeID(false)
		method := r.nodeID(false)
		m := r.count(builtinMinSize[kVariant])
		args := make([]any, 0, max(m, 0))
		for j := 0; j < m && r.err == nil; j++ {
			v, _ := r.variant(true)
			args = append(args, v)
		}
		if r.err != nil {
			return
		}
		d.ua.Calls = append(d.ua.Calls, inspect.OPCUACall{
			ObjectID:  obj.String(),
			MethodID:  method.String(),
			Arguments: args,
		})
	}
}

// decodeAddNodes: AddNodesRequest (Part 4 §5.7.2): NodesToAdd []AddNodesItem
// {ParentNodeId (expanded), ReferenceTypeId, RequestedNewNodeId (expanded),
// BrowseName, NodeClass, NodeAttributes (ExtensionObject), TypeDefinition
// (expanded)}. NodeID is the requested new node id ("" when the server is
// to assign one: the null NodeId).
func decodeAddNodes(d *Decoder, r *reader) {
	n := r.count(minSize[ua.AddNodesItem]())
	for i := 0; i < n && r.err == nil; i++ {
		parent := r.nodeID(true)
		ref := r.nodeID(false)
		newID := r.nodeID(true)
		ns := r.u16()
		bn, _ := r.stringBytes()
		class := r.nodeClassName(r.u32())
		r.extensionObject(false) // NodeAttributes: validated, not exposed
		r.nodeID(true)           // TypeDefinition
		if r.err != nil {
			return
		}
		node := inspect.OPCUANode{
			ParentID:      parent.String(),
			ReferenceType: ref.String(),
			NodeClass:     class,
			BrowseName:    qualifiedName(ns, bn),
		}
		if !newID.IsNull() {
			node.NodeID = newID.String()
		}
		d.ua.Nodes = append(d.ua.Nodes, node)
	}
}

// decodeAddReferences: AddReferencesRequest (Part 4 §5.7.3):
// []AddReferencesItem {SourceNodeId, ReferenceTypeId, IsForward,
// TargetServerUri, TargetNodeId (expanded), TargetNodeClass}.
func decodeAddReferences(d *Decoder, r *reader) {
	n := r.count(minSize[ua.AddReferencesItem]())
	for i := 0; i < n && r.err == nil; i++ {
		src := r.nodeID(false)
		ref := r.nodeID(false)
		r.boolean()
		r.stringBytes()
		target := r.nodeID(true)
		r.nodeClassName(r.u32())
		if r.err != nil {
			return
		}
		d.ua.Nodes = append(d.ua.Nodes, inspect.OPCUANode{
			NodeID: src.String(), ParentID: target.String(), ReferenceType: ref.String(),
		})
	}
}

// decodeDeleteNodes: DeleteNodesRequest (Part 4 §5.7.4): []DeleteNodesItem
// {NodeId, DeleteTargetReferences}.
func decodeDeleteNodes(d *Decoder, r *reader) {
	n := r.count(minSize[ua.DeleteNodesItem]())
	for i := 0; i < n && r.err == nil; i++ {
		node := r.nodeID(false)
		r.boolean()
		if r.err != nil {
			return
		}
		d.ua.Nodes = append(d.ua.Nodes, inspect.OPCUANode{NodeID: node.String()})
	}
}

// decodeDeleteReferences: DeleteReferencesRequest (Part 4 §5.7.5):
// []DeleteReferencesItem {SourceNodeId, ReferenceTypeId, IsForward,
// TargetNodeId (expanded), DeleteBidirectional}.
func decodeDeleteReferences(d *Decoder, r *reader) {
	n := r.count(minSize[ua.DeleteReferencesItem]())
	for i := 0; i < n && r.err == nil; i++ {
		src := r.nodeID(false)
		ref := r.nodeID(false)
		r.boolean()
		target := r.nodeID(true)
		r.boolean()
		if r.err != nil {
			return
		}
		d.ua.Nodes = append(d.ua.Nodes, inspect.OPCUANode{
			NodeID: src.String(), ParentID: target.String(), ReferenceType: ref.String(),
		})
	}
}

// decodeHistoryUpdate: HistoryUpdateRequest (Part 4 §5.10.5):
// HistoryUpdateDetails []ExtensionObject, each one of the Part 11 §6.9
// detail structures. They are reported as Writes (so one policy rule on
// node and attribute covers Write and HistoryUpdate):
//   - UpdateDataDetails, UpdateStructureDataDetails: one write per
//     DataValue, Attribute "Value", with value and type;
//   - UpdateEventDetails: one write per event, Attribute "EventNotifier",
//     Value the event fields ([]any), Type "HistoryEventFieldList";
//   - DeleteRawModifiedDetails, DeleteAtTimeDetails: one write, Attribute
//     "Value", Value nil, Type "Delete";
//   - DeleteEventDetails: one write, Attribute "EventNotifier", Value nil,
//     Type "Delete".
//
// Any other detail type is an error.
func decodeHistoryUpdate(d *Decoder, r *reader) {
	n := r.count(builtinMinSize[kExtensionObject])
	for i := 0; i < n && r.err == nil; i++ {
		if !r.enter() {
			return
		}
		typeID, body, hasBody := r.extObjHeader()
		if r.err == nil && !hasBody {
			r.fail(CodeInvalidEncoding, "history update detail %s without body", typeID)
		}
		if r.err != nil {
			return
		}
		s := r.extSchema(typeID)
		if s == nil {
			return
		}
		sub := r.sub(body)
		node := sub.nodeID(false)
		nodeStr := node.String()
		switch typeID.Numeric {
		case id.UpdateDataDetails_Encoding_DefaultBinary, id.UpdateStructureDataDetails_Encoding_DefaultBinary:
			sub.u32() // PerformInsertReplace
			m := sub.count(builtinMinSize[kDataValue])
			for j := 0; j < m && sub.err == nil; j++ {
				v, typ, _, _ := sub.dataValueParts(true)
				if sub.err == nil {
					d.ua.Writes = append(d.ua.Writes, inspect.OPCUAWrite{NodeID: nodeStr, Attribute: "Value", Value: v, Type: typ})
				}
			}
		case id.UpdateEventDetails_Encoding_DefaultBinary:
			sub.u32() // PerformInsertReplace
			sub.walk(schemaFor[ua.EventFilter](), false)
			m := sub.count(minSize[ua.HistoryEventFieldList]())
			for j := 0; j < m && sub.err == nil; j++ {
				k := sub.count(builtinMinSize[kVariant])
				fields := make([]any, 0, max(k, 0))
				for f := 0; f < k && sub.err == nil; f++ {
					v, _ := sub.variant(true)
					fields = append(fields, v)
				}
				if sub.err == nil {
					d.ua.Writes = append(d.ua.Writes, inspect.OPCUAWrite{NodeID: nodeStr, Attribute: "EventNotifier", Value: fields, Type: "HistoryEventFieldList"})
				}
			}
		case id.DeleteRawModifiedDetails_Encoding_DefaultBinary, id.DeleteAtTimeDetails_Encoding_DefaultBinary:
			for _, f := range s.fields[1:] {
				sub.walk(f.s, false)
			}
			d.ua.Writes = append(d.ua.Writes, inspect.OPCUAWrite{NodeID: nodeStr, Attribute: "Value", Type: "Delete"})
		case id.DeleteEventDetails_Encoding_DefaultBinary:
			for _, f := range s.fields[1:] {
				sub.walk(f.s, false)
			}
			d.ua.Writes = append(d.ua.Writes, inspect.OPCUAWrite{NodeID: nodeStr, Attribute: "EventNotifier", Type: "Delete"})
		default:
			sub.fail(CodeUnknownExtObject, "history update detail %s", typeID)
		}
		if err := sub.finish(); err != nil && r.err == nil {
			r.err = err
		}
		r.join(&sub)
		r.leave()
	}
}

// decodeActivateSession: ActivateSessionRequest (Part 4 §5.6.3). Only the
// identity token's type and user name are exposed; passwords, token data and
// signatures are validated and dropped.
func decodeActivateSession(d *Decoder, r *reader) {
	r.walk(schemaFor[ua.SignatureData](), false) // ClientSignature
	r.walk(&schema{kind: kArray, elem: schemaFor[ua.SignedSoftwareCertificate](), min: 4}, false)
	r.walk(&schema{kind: kArray, elem: builtinSchema[kString], min: 4}, false) // LocaleIds
	d.session = inspect.OPCUASession{}
	if r.enter() {
		typeID, body, hasBody := r.extObjHeader()
		if r.err == nil {
			if !hasBody {
				// Part 4 §7.41: a null token means anonymous; a typed token
				// without body is malformed.
				if !typeID.IsNull() {
					r.fail(CodeInvalidEncoding, "identity token %s without body", typeID)
				}
				d.session.IdentityType = "anonymous"
			} else {
				d.identityToken(r, typeID, body)
			}
		}
	}
	r.leave()
	r.walk(schemaFor[ua.SignatureData](), false) // UserTokenSignature
	if r.err == nil {
		d.ua.Session = &d.session
	}
}

func (d *Decoder) identityToken(r *reader, typeID NodeID, body []byte) {
	s := r.extSchema(typeID)
	if s == nil {
		return
	}
	sub := r.sub(body)
	switch typeID.Numeric {
	case id.AnonymousIdentityToken_Encoding_DefaultBinary:
		sub.walk(s, false)
		d.session.IdentityType = "anonymous"
	case id.UserNameIdentityToken_Encoding_DefaultBinary:
		sub.stringBytes() // PolicyId
		name, _ := sub.stringBytes()
		sub.byteString()  // Password: never exposed
		sub.stringBytes() // EncryptionAlgorithm
		d.session.IdentityType = "username"
		d.session.UserName = string(name)
	case id.X509IdentityToken_Encoding_DefaultBinary:
		sub.stringBytes() // PolicyId
		der, _ := sub.byteString()
		d.session.IdentityType = "x509"
		if sub.err == nil {
			// The user name of an X.509 identity is its certificate
			// subject; an unparsable certificate is an error (deny).
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				sub.fail(CodeInvalidEncoding, "x509 identity token: %v", err)
			} else {
				d.session.UserName = cert.Subject.String()
			}
		}
	case id.IssuedIdentityToken_Encoding_DefaultBinary:
		sub.walk(s, false)
		d.session.IdentityType = "issued"
	default:
		sub.fail(CodeUnknownExtObject, "identity token %s", typeID)
	}
	if err := sub.finish(); err != nil && r.err == nil {
		r.err = err
	}
	r.join(&sub)
}
