package opcua

import (
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/gopcua/opcua/ua"
)

// kind is what the bounded walker reads. Kinds 1..25 are the built-in types
// with the ids of Part 6 §5.1.2 Table 1, so a Variant's type byte is a kind.
type kind uint8

const (
	kNull kind = iota
	kBoolean
	kSByte
	kByte
	kInt16
	kUInt16
	kInt32
	kUInt32
	kInt64
	kUInt64
	kFloat
	kDouble
	kString
	kDateTime
	kGUID
	kByteString
	kXMLElement
	kNodeID
	kExpandedNodeID
	kStatusCode
	kQualifiedName
	kLocalizedText
	kExtensionObject
	kDataValue
	kVariant
	kDiagnosticInfo
	kLastBuiltin = kDiagnosticInfo

	kStruct      kind = 100
	kArray       kind = 101
	kEndpointURL kind = 102 // a String recorded for RewriteEndpointURLs (EndpointUrl, DiscoveryUrls)
)

var builtinNames = [...]string{
	kNull: "Null", kBoolean: "Boolean", kSByte: "SByte", kByte: "Byte", kInt16: "Int16",
	kUInt16: "UInt16", kInt32: "Int32", kUInt32: "UInt32", kInt64: "Int64", kUInt64: "UInt64",
	kFloat: "Float", kDouble: "Double", kString: "String", kDateTime: "DateTime", kGUID: "Guid",
	kByteString: "ByteString", kXMLElement: "XmlElement", kNodeID: "NodeId",
	kExpandedNodeID: "ExpandedNodeId", kStatusCode: "StatusCode", kQualifiedName: "QualifiedName",
	kLocalizedText: "LocalizedText", kExtensionObject: "ExtensionObject", kDataValue: "DataValue",
	kVariant: "Variant", kDiagnosticInfo: "DiagnosticInfo",
}

// builtinMinSize is the smallest encoding of each built-in type; array
// counts are checked against it (count * min <= bytes left).
var builtinMinSize = [...]int{
	kNull: 0, kBoolean: 1, kSByte: 1, kByte: 1, kInt16: 2, kUInt16: 2, kInt32: 4, kUInt32: 4,
	kInt64: 8, kUInt64: 8, kFloat: 4, kDouble: 8, kString: 4, kDateTime: 8, kGUID: 16,
	kByteString: 4, kXMLElement: 4, kNodeID: 2, kExpandedNodeID: 2, kStatusCode: 4,
	kQualifiedName: 6, kLocalizedText: 1, kExtensionObject: 3, kDataValue: 1, kVariant: 1,
	kDiagnosticInfo: 1,
}

// schema describes the binary layout of a structure: the gopcua generated
// types serve as the field lists (their order is the encoding order, Part 6
// §5.2.6), but none of gopcua's decoding code runs on untrusted bytes.
type schema struct {
	kind   kind
	name   string
	fields []field // kStruct
	elem   *schema // kArray
	min    int     // smallest encoding
}

type field struct {
	name string
	s    *schema
}

var (
	schemaOnce    sync.Once
	schemaByType  map[reflect.Type]*schema
	schemaByEncID map[uint32]*schema // ExtensionObject bodies, by binary encoding id
	schemaErr     error
	builtinSchema [kLastBuiltin + 1]*schema
)

func init() {
	for k := kBoolean; k <= kLastBuiltin; k++ {
		builtinSchema[k] = &schema{kind: k, name: builtinNames[k], min: builtinMinSize[k]}
	}
}

var (
	tNodeID          = reflect.TypeFor[ua.NodeID]()
	tExpandedNodeID  = reflect.TypeFor[ua.ExpandedNodeID]()
	tVariant         = reflect.TypeFor[ua.Variant]()
	tDataValue       = reflect.TypeFor[ua.DataValue]()
	tDiagnosticInfo  = reflect.TypeFor[ua.DiagnosticInfo]()
	tLocalizedText   = reflect.TypeFor[ua.LocalizedText]()
	tQualifiedName   = reflect.TypeFor[ua.QualifiedName]()
	tGUID            = reflect.TypeFor[ua.GUID]()
	tExtensionObject = reflect.TypeFor[ua.ExtensionObject]()
	tXMLElement      = reflect.TypeFor[ua.XMLElement]()
	tStatusCode      = reflect.TypeFor[ua.StatusCode]()
	tTime            = reflect.TypeFor[time.Time]()
	tEndpointDesc    = reflect.TypeFor[ua.EndpointDescription]()
	tAppDesc         = reflect.TypeFor[ua.ApplicationDescription]()
)

// schemas compiles the schema of every standard structure once.
func schemas() error {
	schemaOnce.Do(func() {
		schemaByType = make(map[reflect.Type]*schema)
		schemaByEncID = make(map[uint32]*schema, len(extObjectTypes))
		for id, t := range extObjectTypes {
			s, err := compile(t, map[reflect.Type]bool{})
			if err != nil {
				schemaErr = err
				return
			}
			schemaByEncID[id] = s
		}
		for _, svc := range services {
			if svc.goType == nil {
				continue
			}
			s, err := compile(svc.goType, map[reflect.Type]bool{})
			if err != nil {
				schemaErr = err
				return
			}
			svc.schema = s
		}
	})
	return schemaErr
}

func compile(t reflect.Type, inProgress map[reflect.Type]bool) (*schema, error) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case tNodeID:
		return builtinSchema[kNodeID], nil
	case tExpandedNodeID:
		return builtinSchema[kExpandedNodeID], nil
	case tVariant:
		return builtinSchema[kVariant], nil
	case tDataValue:
		return builtinSchema[kDataValue], nil
	case tDiagnosticInfo:
		return builtinSchema[kDiagnosticInfo], nil
	case tLocalizedText:
		return builtinSchema[kLocalizedText], nil
	case tQualifiedName:
		return builtinSchema[kQualifiedName], nil
	case tGUID:
		return builtinSchema[kGUID], nil
	case tExtensionObject:
		return builtinSchema[kExtensionObject], nil
	case tXMLElement:
		return builtinSchema[kXMLElement], nil
	case tStatusCode:
		return builtinSchema[kStatusCode], nil
	case tTime:
		return builtinSchema[kDateTime], nil
	}
	if s, ok := schemaByType[t]; ok {
		return s, nil
	}
	switch t.Kind() {
	case reflect.Bool:
		return builtinSchema[kBoolean], nil
	case reflect.Int8:
		return builtinSchema[kSByte], nil
	case reflect.Uint8:
		return builtinSchema[kByte], nil
	case reflect.Int16:
		return builtinSchema[kInt16], nil
	case reflect.Uint16:
		return builtinSchema[kUInt16], nil
	case reflect.Int32:
		return builtinSchema[kInt32], nil
	case reflect.Uint32:
		return builtinSchema[kUInt32], nil
	case reflect.Int64:
		return builtinSchema[kInt64], nil
	case reflect.Uint64:
		return builtinSchema[kUInt64], nil
	case reflect.Float32:
		return builtinSchema[kFloat], nil
	case reflect.Float64:
		return builtinSchema[kDouble], nil
	case reflect.String:
		return builtinSchema[kString], nil
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return builtinSchema[kByteString], nil
		}
		elem, err := compile(t.Elem(), inProgress)
		if err != nil {
			return nil, err
		}
		return &schema{kind: kArray, name: "[]" + elem.name, elem: elem, min: 4}, nil
	case reflect.Struct:
		if inProgress[t] {
			return nil, fmt.Errorf("opcua: recursive structure %s", t)
		}
		inProgress[t] = true
		defer delete(inProgress, t)
		s := &schema{kind: kStruct, name: t.Name()}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				return nil, fmt.Errorf("opcua: %s.%s is unexported", t, f.Name)
			}
			fs, err := compile(f.Type, inProgress)
			if err != nil {
				return nil, err
			}
			switch {
			case t == tEndpointDesc && f.Name == "EndpointURL":
				fs = &schema{kind: kEndpointURL, name: "String", min: 4}
			case t == tAppDesc && f.Name == "DiscoveryURLs":
				url := &schema{kind: kEndpointURL, name: "String", min: 4}
				fs = &schema{kind: kArray, name: "[]String", elem: url, min: 4}
			}
			s.fields = append(s.fields, field{name: f.Name, s: fs})
			s.min += fs.min
		}
		schemaByType[t] = s
		return s, nil
	}
	return nil, fmt.Errorf("opcua: unsupported field type %s", t)
}
