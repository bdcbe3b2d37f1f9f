package policy

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/conduit-ot/conduit/inspect"
	"github.com/conduit-ot/conduit/pki"
	"github.com/conduit-ot/conduit/rules"
)

// The decision cache is only correct if two inputs with the same key have
// the same document. These tests check that property directly: by mutating
// every field of rich inputs one at a time, and on random inputs.

func keyOf(in *Input) ([]byte, bool) {
	var w keyWriter
	w.reset(1<<20, nil)
	writeInput(&w, in)
	return bytes.Clone(w.buf), w.ok()
}

func richInputs() []*Input {
	id := &pki.Identity{
		CommonName: "eng-01", Subject: "CN=eng-01", Issuer: "CN=CA",
		DNSNames: []string{"a"}, URIs: []string{"spiffe://x"}, IPAddresses: []string{"10.0.0.1"},
		OrganizationalUnits: []string{"ou"}, Roles: []string{"engineer"}, Serial: "01", FingerprintSHA256: "ab",
		NotBefore: time.Unix(1_700_000_000, 0), NotAfter: time.Unix(1_800_000_000, 0),
	}
	var ins []*Input
	for _, m := range []inspect.Modbus{
		{Unit: 1, Function: 3, Table: inspect.TableHoldingRegisters, Address: 1, Quantity: 2},
		{Unit: 1, Function: 16, Table: inspect.TableHoldingRegisters, Address: 1, Quantity: 2, Values: []uint16{3, 4}},
		{Unit: 1, Function: 15, Table: inspect.TableCoils, Address: 1, Quantity: 2, Values: []uint16{0, 1}},
		{Unit: 1, Function: 23, Table: inspect.TableHoldingRegisters, Address: 1, Quantity: 1, Values: []uint16{9}, ReadAddress: 5, ReadQuantity: 6},
		{Unit: 1, Function: 22, Table: inspect.TableHoldingRegisters, Address: 1, Quantity: 1, AndMask: 7, OrMask: 8},
		{Unit: 1, Function: 21, Table: inspect.TableFile, FileRecords: []inspect.FileRecord{{File: 1, Record: 2, Length: 1, Values: []uint16{5}}}},
		{Unit: 1, Function: 20, Table: inspect.TableFile, FileRecords: []inspect.FileRecord{{File: 1, Record: 2, Length: 1}}},
		{Unit: 1, Function: 24, Table: inspect.TableFIFO, Address: 4},
		{Unit: 1, Function: 43, Subfunction: 14, HasSubfunction: true, DeviceIDCode: 1, ObjectID: 2},
		{Unit: 1, Function: 8, Subfunction: 4, HasSubfunction: true},
	} {
		ins = append(ins, &Input{
			Protocol: inspect.ProtocolModbus, Listener: "plc", Upstream: "u:1",
			Client: netip.MustParseAddrPort("10.1.2.3:4"), Identity: id,
			Op: &inspect.Operation{Protocol: inspect.ProtocolModbus, Access: inspect.AccessWrite, Name: "n", Modbus: m},
		})
	}
	ins = append(ins, &Input{
		Protocol: inspect.ProtocolOPCUA, Listener: "ua", Upstream: "u:2",
		Client: netip.MustParseAddrPort("[fe80::1%eth0]:5"), Identity: id,
		Op: &inspect.Operation{Protocol: inspect.ProtocolOPCUA, Access: inspect.AccessWrite, Name: "write", OPCUA: &inspect.OPCUA{
			Service: "Write", TypeID: 673, SecurityMode: "sign", SecurityPolicy: "p", ClientCertSubject: "s", ClientCertThumbprint: "t",
			Session: &inspect.OPCUASession{IdentityType: "username", UserName: "u"},
			Writes:  []inspect.OPCUAWrite{{NodeID: "n", Attribute: "Value", IndexRange: "1", Value: []any{1.5, "x", map[string]any{"k": true}}, Type: "Double"}},
			Calls:   []inspect.OPCUACall{{ObjectID: "o", MethodID: "m", Arguments: []any{int64(1), nil}}},
			Nodes:   []inspect.OPCUANode{{NodeID: "a", ParentID: "b", ReferenceType: "c", NodeClass: "d", BrowseName: "e"}},
		}},
	})
	return ins
}

// deepCopy copies v, following pointers, slices, maps and interfaces.
func deepCopy(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		c := reflect.New(v.Elem().Type())
		c.Elem().Set(deepCopy(v.Elem()))
		return c
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := range v.Len() {
			c.Index(i).Set(deepCopy(v.Index(i)))
		}
		return c
	case reflect.Map:
		if v.IsNil() {
			return v
		}
		c := reflect.MakeMap(v.Type())
		for _, k := range v.MapKeys() {
			c.SetMapIndex(k, deepCopy(v.MapIndex(k)))
		}
		return c
	case reflect.Interface:
		if v.IsNil() {
			return v
		}
		c := reflect.New(v.Type()).Elem()
		c.Set(deepCopy(v.Elem()))
		return c
	case reflect.Struct:
		c := reflect.New(v.Type()).Elem()
		c.Set(v) // covers structs with unexported fields (time.Time, netip.AddrPort)
		for i := range v.NumField() {
			if c.Field(i).CanSet() {
				c.Field(i).Set(deepCopy(v.Field(i)))
			}
		}
		return c
	}
	return v
}

// mutations calls fn with a name and a mutator for every leaf change
// reachable from v. The mutators change v in place: walk a fresh copy for
// each one.
func mutations(v reflect.Value, path string, fn func(string, func())) {
	if !v.IsValid() {
		return
	}
	at := func(name string, f func()) { fn(path+name, f) }
	switch x := v.Interface().(type) {
	case time.Time:
		at(" +1s", func() { v.Set(reflect.ValueOf(x.Add(time.Second))) })
		at(" +1ns", func() { v.Set(reflect.ValueOf(x.Add(1))) })
		return
	case netip.AddrPort:
		at(" port", func() { v.Set(reflect.ValueOf(netip.AddrPortFrom(x.Addr(), x.Port()+1))) })
		at(" addr", func() { v.Set(reflect.ValueOf(netip.AddrPortFrom(x.Addr().Next(), x.Port()))) })
		at(" zone", func() { v.Set(reflect.ValueOf(netip.AddrPortFrom(x.Addr().WithZone("eth1"), x.Port()))) })
		at(" 4in6", func() { v.Set(reflect.ValueOf(netip.AddrPortFrom(netip.AddrFrom16(x.Addr().As16()), x.Port()))) })
		at(" invalid", func() { v.Set(reflect.ValueOf(netip.AddrPort{})) })
		return
	}
	switch v.Kind() {
	case reflect.String:
		at("+x", func() { v.SetString(v.String() + "x") })
		at("=''", func() { v.SetString("") })
	case reflect.Bool:
		at(" flip", func() { v.SetBool(!v.Bool()) })
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		at("+1", func() { v.SetInt(v.Int() + 1) })
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		at("+1", func() { v.SetUint(v.Uint() + 1) })
		at("=0", func() { v.SetUint(0) })
	case reflect.Float32, reflect.Float64:
		at("+1.5", func() { v.SetFloat(v.Float() + 1.5) })
	case reflect.Pointer:
		if v.IsNil() {
			at("=new", func() { v.Set(reflect.New(v.Type().Elem())) })
			return
		}
		at("=nil", func() { v.Set(reflect.Zero(v.Type())) })
		mutations(v.Elem(), path, fn)
	case reflect.Slice:
		if v.CanSet() {
			at(" append", func() { v.Set(reflect.Append(v, reflect.Zero(v.Type().Elem()))) })
			if v.Len() > 0 {
				at(" drop", func() { v.Set(v.Slice(0, v.Len()-1)) })
			}
		}
		for i := range v.Len() {
			mutations(v.Index(i), fmt.Sprintf("%s[%d]", path, i), fn)
		}
	case reflect.Map:
		at(" add", func() { v.SetMapIndex(reflect.ValueOf("new"), reflect.ValueOf(any(1.0))) })
		for _, k := range v.MapKeys() {
			at(fmt.Sprintf("[%v]=str", k), func() { v.SetMapIndex(k, reflect.ValueOf(any("zzz"))) })
		}
	case reflect.Interface:
		if !v.CanSet() {
			return
		}
		at("=str", func() { v.Set(reflect.ValueOf("zzz")) })
		at("=int", func() { v.Set(reflect.ValueOf(int64(7))) })
		at("=float", func() { v.Set(reflect.ValueOf(7.0)) })
		at("=true", func() { v.Set(reflect.ValueOf(true)) })
		at("=nil", func() { v.Set(reflect.Zero(v.Type())) })
		if !v.IsNil() {
			inner := v.Elem()
			if inner.Kind() == reflect.Slice {
				at(" append", func() { v.Set(reflect.Append(inner, reflect.Zero(inner.Type().Elem()))) })
			}
			if k := inner.Kind(); k == reflect.Slice || k == reflect.Map {
				mutations(inner, path, fn) // slice elements and map entries are settable
			}
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if f := v.Type().Field(i); f.IsExported() {
				mutations(v.Field(i), path+"."+f.Name, fn)
			}
		}
	}
}

func TestCacheKeyCoversDocument(t *testing.T) {
	changed := 0
	for bi, base := range richInputs() {
		baseDoc, err := Document(base)
		if err != nil {
			t.Fatal(err)
		}
		baseKey, ok := keyOf(base)
		if !ok {
			t.Fatal("no key for a rich input")
		}
		total := 0
		mutations(reflect.ValueOf(deepCopy(reflect.ValueOf(base)).Interface().(*Input)).Elem(), "Input",
			func(string, func()) { total++ })
		for n := range total {
			// Walk a fresh copy and apply its n-th mutation.
			c := deepCopy(reflect.ValueOf(base)).Interface().(*Input)
			var name string
			i := 0
			mutations(reflect.ValueOf(c).Elem(), "Input", func(p string, f func()) {
				if i == n {
					name = p
					f()
				}
				i++
			})
			doc, derr := Document(c)
			key, kok := keyOf(c)
			if (derr == nil) != kok {
				t.Errorf("input %d %s: document error %v, key ok %v", bi, name, derr, kok)
			}
			if derr != nil {
				continue
			}
			sameDoc := ast.Compare(doc, baseDoc) == 0
			if !sameDoc {
				changed++
			}
			if bytes.Equal(key, baseKey) && !sameDoc {
				t.Errorf("input %d %s: the document changed but the cache key did not", bi, name)
			}
		}
	}
	if changed < 300 {
		t.Errorf("only %d mutations changed a document: the test does not reach the fields", changed)
	}
	t.Logf("%d mutations changed the document; each changed the key", changed)
}

func TestCacheKeyRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	seen := map[string]ast.Value{}
	collisions := 0
	for range 20000 {
		m := inspect.Modbus{
			Unit: uint8(r.IntN(3)), Function: uint8([]int{3, 6, 16, 8, 22, 23}[r.IntN(6)]),
			Table: inspect.Table(r.IntN(5)), Address: uint16(r.IntN(3)), Quantity: uint16(r.IntN(3)),
			Subfunction: uint16(r.IntN(2)), HasSubfunction: r.IntN(2) == 0,
			AndMask: uint16(r.IntN(2)), OrMask: uint16(r.IntN(2)), ReadAddress: uint16(r.IntN(2)),
		}
		for range r.IntN(3) {
			m.Values = append(m.Values, uint16(r.IntN(2)))
		}
		in := &Input{
			Protocol: inspect.ProtocolModbus, Listener: pick("a", "b", ""), Upstream: pick("", "x"),
			Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(r.IntN(2))}), uint16(r.IntN(2))),
			Op:     &inspect.Operation{Protocol: inspect.ProtocolModbus, Access: inspect.Access(r.IntN(4)), Name: pick("n", "m"), Modbus: m},
		}
		if r.IntN(4) == 0 {
			in.Identity = &pki.Identity{CommonName: pick("a", "b"), Roles: []string{pick("a", "b")}[:r.IntN(2)]}
		}
		doc, err := Document(in)
		if err != nil {
			t.Fatal(err)
		}
		key, ok := keyOf(in)
		if !ok {
			t.Fatal("no key")
		}
		if prev, dup := seen[string(key)]; dup {
			collisions++
			if ast.Compare(prev, doc) != 0 {
				t.Fatalf("same key, different documents:\n%v\n%v", prev, doc)
			}
		}
		seen[string(key)] = doc
	}
	if collisions == 0 {
		t.Error("no repeated key: the domain is too large to test anything")
	}
}

// referenceVersion compiles the embedded reference policy.
func referenceVersion(t *testing.T) *version {
	t.Helper()
	snap, err := Source{Path: "rules", FS: rules.FS}.load()
	if err != nil {
		t.Fatal(err)
	}
	v, err := compile(context.Background(), snap, 0)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestReferenceReads(t *testing.T) {
	// What the reference policy reads of the input document; the cache
	// key leaves out the rest: client.port above all, and upstream,
	// operation.name, opcua.type_id and opcua.nodes.
	want := "client.address, client.identity, listener, modbus, opcua.calls, opcua.client_certificate, " +
		"opcua.opaque, opcua.security_mode, opcua.security_policy, opcua.service, opcua.session, " +
		"opcua.writes, operation.access, protocol"
	if got := referenceVersion(t).reads.String(); got != want {
		t.Errorf("reads\n got %s\nwant %s", got, want)
	}
}

// project keeps of doc what reads covers, as the masked key does.
func project(doc ast.Value, reads *readTree) ast.Value {
	obj, ok := doc.(ast.Object)
	if reads == nil || reads.all || !ok {
		return doc
	}
	out := ast.NewObject()
	obj.Foreach(func(k, v *ast.Term) {
		f := fieldNamed(string(k.Value.(ast.String)))
		if f == nil {
			out.Insert(k, v)
			return
		}
		if n := reads.kid(f.id); n != nil {
			out.Insert(k, ast.NewTerm(project(v.Value, n)))
		}
	})
	return out
}

func TestMaskedCacheKeyRandom(t *testing.T) {
	reads := referenceVersion(t).reads
	r := rand.New(rand.NewPCG(3, 4))
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	seen := map[string]ast.Value{}
	collisions := 0
	var w keyWriter
	for range 20000 {
		m := inspect.Modbus{
			Unit: uint8(r.IntN(2)), Function: uint8([]int{3, 16, 8}[r.IntN(3)]),
			Table: inspect.Table(r.IntN(5)), Address: uint16(r.IntN(2)), Quantity: uint16(r.IntN(2)),
		}
		for range r.IntN(2) {
			m.Values = append(m.Values, uint16(r.IntN(2)))
		}
		in := &Input{
			Protocol: inspect.ProtocolModbus, Listener: pick("a", "b"), Upstream: pick("", "x", "y"),
			Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(r.IntN(2))}), uint16(r.IntN(1000))),
			Op:     &inspect.Operation{Protocol: inspect.ProtocolModbus, Access: inspect.Access(r.IntN(4)), Name: pick("n", "m"), Modbus: m},
		}
		if r.IntN(4) == 0 {
			in.Identity = &pki.Identity{CommonName: pick("a", "b"), Serial: pick("1", "2")}
		}
		doc, err := Document(in)
		if err != nil {
			t.Fatal(err)
		}
		w.reset(1<<20, reads)
		writeInput(&w, in)
		if !w.ok() || w.skip != 0 || len(w.stack) != 0 {
			t.Fatalf("key writer state after a document: ok %v, skip %d, stack %d", w.ok(), w.skip, len(w.stack))
		}
		proj := project(doc, reads)
		if prev, dup := seen[string(w.buf)]; dup {
			collisions++
			if ast.Compare(prev, proj) != 0 {
				t.Fatalf("same key, different documents where the policy reads:\n%v\n%v", prev, proj)
			}
		}
		seen[string(w.buf)] = proj
	}
	// Ports, upstreams and names vary but are not read: most inputs share
	// a key with another.
	if collisions < 10000 {
		t.Errorf("only %d repeated keys: the unread fields are in the key", collisions)
	}
}

// The key decodes back to the document (the parts of it a policy reads),
// value for value as astWriter builds it: what a reload evaluates to warm
// the new version's cache.
func TestDecodeKey(t *testing.T) {
	reads := referenceVersion(t).reads
	check := func(name string, in *Input) {
		t.Helper()
		doc, err := Document(in)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []*readTree{nil, reads} {
			var w keyWriter
			w.reset(1<<20, r)
			writeInput(&w, in)
			got, err := decodeKey(w.buf)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if want := project(doc, r); ast.Compare(got, want) != 0 {
				t.Fatalf("%s (reads %v):\n got %v\nwant %v", name, r, got, want)
			}
		}
	}
	for i, in := range richInputs() {
		check(fmt.Sprintf("rich input %d", i), in)
		// And with every mutation of it (other addresses, zones, times,
		// nil identity, values of every type...).
		total := 0
		mutations(reflect.ValueOf(deepCopy(reflect.ValueOf(in)).Interface().(*Input)).Elem(), "Input",
			func(string, func()) { total++ })
		for n := range total {
			c := deepCopy(reflect.ValueOf(in)).Interface().(*Input)
			var name string
			j := 0
			mutations(reflect.ValueOf(c).Elem(), "Input", func(p string, f func()) {
				if j == n {
					name = p
					f()
				}
				j++
			})
			if _, err := Document(c); err != nil {
				continue
			}
			check(fmt.Sprintf("rich input %d %s", i, name), c)
		}
	}
	for _, bad := range [][]byte{nil, {'{'}, {'{', 200, 's'}, {'x'}, {'s', 5, 'a'}, {'{', 0, 0}} {
		if _, err := decodeKey(bad); err == nil {
			t.Errorf("decodeKey(%q) accepted", bad)
		}
	}
}

func TestCacheRecentFirst(t *testing.T) {
	c := newDecisionCache(64)
	for _, k := range []string{"a", "b", "c", "d"} {
		c.put([]byte(k), outcome{reason: k})
	}
	if _, ok := c.get([]byte("b")); !ok {
		t.Fatal("miss")
	}
	c.put([]byte("e"), outcome{reason: "e"})
	c.get([]byte("a"))
	// The clock ticks per insertion: a (hit after e's insertion) and e
	// are the most recent, then b (hit after d's insertion) and d, then c.
	got := c.recent(4)
	slices.Sort(got[:2])
	slices.Sort(got[2:])
	if fmt.Sprint(got) != "[a e b d]" {
		t.Errorf("recent(4) = %v, want [a e b d] (each pair in any order)", got)
	}
	if all := c.recent(100); len(all) != 5 {
		t.Errorf("recent(100) = %v", all)
	}
}
