package policy

import (
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// The decision cache key (keyWriter) needs to cover only what the policy
// can read of the input document: a field the policy never reads cannot
// change its decision. The one that matters is input.client.port: it is
// different for every connection, and the reference policy never reads it,
// so with the port in the key every new connection misses the cache on its
// first request of each shape (an OPA evaluation of 0.1-1 ms instead of a
// lookup of 0.2 µs).
//
// readTree is what one compiled policy version may read, found by walking
// every reference to input in its modules. It is conservative: anything
// that is not a reference with a static path — input passed whole (f(input),
// walk(input), json.marshal(input), object.get(input, ...)), a dynamic key
// (input[x], input.client[k]), a with target — reads the whole subtree at
// the static part of its path.

// readTree is a node of the input document: either read in full (all), or
// read in the parts its children name. A missing child is a field the
// policy never reads.
type readTree struct {
	all  bool
	kids []*readTree // by field id
}

// inputReads returns what the modules of c can read of the input document,
// or nil when that is all of it (nothing to leave out of the cache key).
func inputReads(c *ast.Compiler) *readTree {
	root := &readTree{}
	var vis *ast.GenericVisitor
	vis = ast.NewGenericVisitor(func(x any) bool {
		switch x := x.(type) {
		case ast.Ref:
			if len(x) == 0 || !x[0].Equal(ast.InputRootDocument) {
				return false
			}
			root.add(staticPath(x))
			// Dynamic parts may hold references of their own
			// (input.client[input.key]).
			for _, t := range x[1:] {
				vis.Walk(t)
			}
			return true
		case ast.Var:
			// input anywhere but at the head of a reference: passed whole.
			// (The compiler turns a bare input into the reference
			// input; this is a backstop.)
			if x.Equal(ast.InputRootDocument.Value) {
				root.add(nil)
			}
		case *ast.Head:
			// The generic walk does not visit a rule head's reference
			// (a.b[input.x].c := ...); its other parts it does. (The
			// compiler moves such terms into the body; a backstop.)
			if x.Reference != nil {
				vis.Walk(x.Reference)
			}
		}
		return false
	})
	for _, m := range c.Modules {
		vis.Walk(m)
	}
	if root.all {
		return nil
	}
	return root
}

// staticPath is the leading string keys of an input reference (after
// input itself): input.client.port is [client port], input.client[x].y is
// [client], input[0] is [].
func staticPath(r ast.Ref) []string {
	var path []string
	for _, t := range r[1:] {
		s, ok := t.Value.(ast.String)
		if !ok {
			break
		}
		path = append(path, string(s))
	}
	return path
}

// add marks path, and everything under it, as read.
func (n *readTree) add(path []string) {
	for _, name := range path {
		if n.all {
			return
		}
		f := fieldNamed(name)
		if f == nil {
			// No field of the document has this name: the reference
			// reads nothing (an undefined key). Dynamic keys (inside OPC
			// UA values) are always kept in the key, see keyWriter.keep.
			return
		}
		if int(f.id) >= len(n.kids) {
			n.kids = append(n.kids, make([]*readTree, int(f.id)+1-len(n.kids))...)
		}
		if n.kids[f.id] == nil {
			n.kids[f.id] = &readTree{}
		}
		n = n.kids[f.id]
	}
	n.all, n.kids = true, nil
}

// kid returns the part of n read under field id, or nil if none is.
func (n *readTree) kid(id byte) *readTree {
	if int(id) < len(n.kids) {
		return n.kids[id]
	}
	return nil
}

// equal reports whether a and b read the same (nil is the whole document).
func (a *readTree) equal(b *readTree) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.all != b.all {
		return false
	}
	for i := range max(len(a.kids), len(b.kids)) {
		var x, y *readTree
		if i < len(a.kids) {
			x = a.kids[i]
		}
		if i < len(b.kids) {
			y = b.kids[i]
		}
		if (x == nil) != (y == nil) || (x != nil && !x.equal(y)) {
			return false
		}
	}
	return true
}

// String lists the read paths, for messages and tests: "client.address,
// listener, modbus, ...", or "input" for the whole document.
func (n *readTree) String() string {
	if n == nil {
		return "input"
	}
	var out []string
	var walk func(n *readTree, prefix string)
	walk = func(n *readTree, prefix string) {
		if n.all {
			out = append(out, strings.TrimPrefix(prefix, "."))
			return
		}
		for id, k := range n.kids {
			if k != nil {
				walk(k, prefix+"."+fields[id-1].name)
			}
		}
	}
	walk(n, "")
	slices.Sort(out)
	return strings.Join(out, ", ")
}

func fieldNamed(name string) *field {
	for _, f := range fields {
		if f.name == name {
			return f
		}
	}
	return nil
}
