package audit

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/conduit-ot/conduit/inspect"
)

// The hot path of the audit trail is one event per Modbus request. Its
// encoding through zap's ObjectEncoder interface costs most of a
// microsecond: an interface call per field, keys escaped at run time, every
// string scanned twice. appendModbusRequest writes the same bytes directly:
// the same keys in the same order, the same separators, the same string
// escaping (appendString is zap's safeAppendStringLike), numbers and time
// formatted by the same strconv and time functions, and the static part of
// the line (ecs, observer, source, destination, network, tls) taken from
// the connection's cached zap encoder (base.static). Every other event goes
// through zap. A differential test (TestFastPathMatchesZap) compares the
// two byte for byte on generated events.

// fastPath reports whether ev is a Modbus request event that
// appendModbusRequest encodes.
func fastPath(ev *Event) bool {
	return ev.Action == ActionRequest && ev.Op != nil && ev.Op.Protocol == inspect.ProtocolModbus &&
		ev.protocol() == inspect.ProtocolModbus && len(ev.Bytes) == 0 && ev.lost == nil
}

// sep is zap's addElementSeparator.
func sep(dst []byte) []byte {
	if n := len(dst); n > 0 {
		switch dst[n-1] {
		case '{', '[', ':', ',', ' ':
			return dst
		}
	}
	return append(dst, ',')
}

// key appends a separator and "k": (k needs no escaping).
func key(dst []byte, k string) []byte {
	dst = sep(dst)
	dst = append(dst, '"')
	dst = append(dst, k...)
	return append(dst, '"', ':')
}

func addString(dst []byte, k, v string) []byte {
	dst = key(dst, k)
	return appendString(dst, v)
}

func addUint(dst []byte, k string, v uint64) []byte {
	return strconv.AppendUint(key(dst, k), v, 10)
}

const hexDigits = "0123456789abcdef"

// appendString appends s quoted and escaped exactly as zap's JSON encoder
// does: \\ \" \n \r \t, other control characters as \u00XX, invalid UTF-8
// as \ufffd, everything else as is.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	last := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			dst = append(dst, s[last:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			last = i
			continue
		}
		if c >= 0x20 && c != '\\' && c != '"' {
			i++
			continue
		}
		dst = append(dst, s[last:i]...)
		switch c {
		case '\\', '"':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
		}
		i++
		last = i
	}
	dst = append(dst, s[last:]...)
	return append(dst, '"')
}

func appendStrings(dst []byte, k string, l *strList4) []byte {
	dst = key(dst, k)
	dst = append(dst, '[')
	for _, s := range l.v[:l.n] {
		dst = appendString(sep(dst), s)
	}
	return append(dst, ']')
}

func appendUint16s(dst []byte, k string, vs []uint16) []byte {
	dst = key(dst, k)
	dst = append(dst, '[')
	for _, v := range vs {
		dst = strconv.AppendUint(sep(dst), uint64(v), 10)
	}
	return append(dst, ']')
}

// appendModbusRequest appends ev (fastPath(ev) holds) as one JSON line, the
// same bytes as the zap path: see MarshalLogObject and the object types in
// encode.go, whose order it follows field by field.
func (st *encState) appendModbusRequest(dst []byte, ev *Event, static []byte) []byte {
	dst = append(dst, '{')
	if !ev.Time.IsZero() {
		dst = key(dst, "@timestamp")
		dst = append(dst, '"')
		dst = ev.Time.UTC().AppendFormat(dst, time.RFC3339Nano)
		dst = append(dst, '"')
	}
	if len(static) > 0 {
		dst = sep(dst)
		dst = append(dst, static...)
	}

	// event.*
	dst = key(dst, "event")
	dst = append(dst, '{')
	dst = addString(dst, "kind", "event")
	classify(ev, &st.cats, &st.types)
	if st.cats.n > 0 {
		dst = appendStrings(dst, "category", &st.cats)
	}
	dst = appendStrings(dst, "type", &st.types)
	dst = addString(dst, "action", ev.Action)
	if outcome := ev.outcome(); outcome != "" {
		dst = addString(dst, "outcome", outcome)
	}
	if ev.Reason != "" {
		dst = addString(dst, "reason", ev.Reason)
	}
	if ev.DecisionID != "" {
		dst = addString(dst, "id", ev.DecisionID)
	}
	if ev.Seq != 0 {
		dst = addUint(dst, "sequence", ev.Seq)
	}
	dst = addString(dst, "module", EventModule)
	dst = addString(dst, "dataset", EventDataset)
	dst = append(dst, '}')

	// rule.*
	if ev.Rule != "" || ev.Revision != "" {
		dst = key(dst, "rule")
		dst = append(dst, '{')
		if ev.Rule != "" {
			dst = addString(dst, "id", ev.Rule)
		}
		if ev.Revision != "" {
			dst = addString(dst, "version", ev.Revision)
		}
		dst = append(dst, '}')
	}

	// conduit.* (hasConduit: Op is set)
	dst = key(dst, "conduit")
	dst = append(dst, '{')
	if ev.Listener != "" {
		dst = addString(dst, "listener", ev.Listener)
	}
	if ev.ConnID != 0 {
		dst = addUint(dst, "connection_id", ev.ConnID)
	}
	if ev.DryRun {
		dst = key(dst, "dry_run")
		dst = append(dst, "true"...)
	}
	if ev.DenyAction != "" {
		dst = addString(dst, "deny_action", ev.DenyAction)
	}
	op := ev.Op
	dst = key(dst, "operation")
	dst = append(dst, '{')
	dst = addString(dst, "access", op.Access.String())
	if op.Name != "" {
		dst = addString(dst, "name", op.Name)
	}
	dst = append(dst, '}')
	if id := ev.Identity; id != nil && len(id.Roles) > 0 {
		dst = key(dst, "client")
		dst = append(dst, '{')
		dst = key(dst, "roles")
		dst = append(dst, '[')
		for _, r := range id.Roles {
			dst = appendString(sep(dst), r)
		}
		dst = append(dst, ']', '}')
	}
	dst = append(dst, '}')

	// modbus.*
	m := &op.Modbus
	dst = key(dst, "modbus")
	dst = append(dst, '{')
	dst = addUint(dst, "unit", uint64(m.Unit))
	dst = addUint(dst, "function", uint64(m.Function))
	if m.HasSubfunction {
		dst = addUint(dst, "subfunction", uint64(m.Subfunction))
	}
	if m.Table != inspect.TableNone {
		dst = addString(dst, "table", m.Table.String())
	}
	switch m.Table {
	case inspect.TableNone, inspect.TableFile:
	case inspect.TableFIFO:
		dst = addUint(dst, "address", uint64(m.Address))
	default:
		dst = addUint(dst, "address", uint64(m.Address))
		dst = addUint(dst, "quantity", uint64(m.Quantity))
	}
	if len(m.Values) > 0 {
		dst = appendUint16s(dst, "values", m.Values)
	}
	switch m.Function {
	case 22:
		dst = addUint(dst, "and_mask", uint64(m.AndMask))
		dst = addUint(dst, "or_mask", uint64(m.OrMask))
	case 23:
		dst = addUint(dst, "read_address", uint64(m.ReadAddress))
		dst = addUint(dst, "read_quantity", uint64(m.ReadQuantity))
	case 43:
		if m.HasSubfunction && m.Subfunction == 14 {
			dst = addUint(dst, "device_id_code", uint64(m.DeviceIDCode))
			dst = addUint(dst, "object_id", uint64(m.ObjectID))
		}
	}
	if len(m.FileRecords) > 0 {
		dst = key(dst, "file_records")
		dst = append(dst, '[')
		for i := range m.FileRecords {
			r := &m.FileRecords[i]
			dst = append(sep(dst), '{')
			dst = addUint(dst, "file", uint64(r.File))
			dst = addUint(dst, "record", uint64(r.Record))
			dst = addUint(dst, "length", uint64(r.Length))
			if len(r.Values) > 0 {
				dst = appendUint16s(dst, "values", r.Values)
			}
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	if ev.ExceptionCode != 0 {
		dst = addUint(dst, "exception_code", uint64(ev.ExceptionCode))
	}
	dst = append(dst, '}')

	return append(dst, '}', '\n')
}
